//! A darknet detector (Tiny YOLOv2 and other plain convolution / max-pool / region stacks)
//! built from its cfg and weights, and the region layer's decoding into boxes.
// Read from pjreddie/darknet src/region_layer.c and OpenCV's darknet importer (not copied).

use candle_core::{Device, Tensor};

use super::cfg::{bad, package_cfg, Cfg, Layer, Region};
use crate::model::detect::labels::VOC;
use crate::model::detect::letterbox::Placement;
use crate::model::detect::network::{Builder, DetectionArgs, DetectionNetwork};
use crate::model::detect::nms::Candidate;
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, ConvGeometry, Padding};
use crate::model::layers::{max_pool, BatchNorm, Conv, ConvSpec};
use crate::model::package::Letterbox;
use crate::model::registry::Family;
use crate::model::weights::Weights;

/// Architecture names built from a darknet `.cfg`.
pub const NAMES: &[&str] = &["tiny_yolov2"];
/// Darknet's letterbox fills with 0.5.
pub const PAD_VALUE: f32 = 0.5;
/// Darknet adds 1e-6 to the standard deviation; folded here as `sqrt(var + 1e-6)`, a relative
/// difference below 1e-6 for any real variance.
const BN_EPS: f64 = 1e-6;
/// This file's architectures, for the detection registry (`detect/registry.rs`).
pub(crate) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// The network a darknet package's `darknet_cfg` describes.
fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    let cfg = package_cfg(args.package)?.ok_or(ModelError::Unsupported(
        "a darknet package needs config.json `darknet_cfg` naming its .cfg file".into(),
    ))?;
    Ok(Box::new(Darknet::load(&Cfg::read(&cfg)?, args.weights)?))
}

enum Step {
    Conv(Conv),
    MaxPool(ConvGeometry),
}

/// A loaded darknet detector.
pub struct Darknet {
    steps: Vec<Step>,
    region: Region,
    input_size: (usize, usize),
}

impl Darknet {
    /// Builds the network of `cfg` from `w` (names from [`Cfg::tensor_layout`]).
    pub fn load(cfg: &Cfg, w: &Weights) -> Result<Self, ModelError> {
        let mut steps = Vec::new();
        let mut c_in = cfg.channels;
        let mut region = None;
        for (i, layer) in cfg.layers.iter().enumerate() {
            match *layer {
                Layer::Conv {
                    filters,
                    size,
                    stride,
                    padding,
                    batch_normalize,
                    leaky,
                } => {
                    let bn = format!("layers.{i}.bn");
                    let mut spec = ConvSpec::new(c_in, filters, size, stride)
                        .pad(Padding::symmetric(padding))
                        .act(if leaky {
                            Activation::LeakyRelu(0.1)
                        } else {
                            Activation::Identity
                        });
                    spec.has_bias = !batch_normalize;
                    let norm = batch_normalize.then_some(BatchNorm {
                        prefix: &bn,
                        eps: BN_EPS,
                    });
                    steps.push(Step::Conv(Conv::load(
                        w,
                        &format!("layers.{i}.conv"),
                        norm,
                        spec,
                    )?));
                    c_in = filters;
                }
                Layer::MaxPool { size, stride } => {
                    let total = size - 1;
                    let mut g = ConvGeometry::square(size, stride, 0);
                    g.padding = Padding::Explicit {
                        top: total / 2,
                        left: total / 2,
                        bottom: total - total / 2,
                        right: total - total / 2,
                    };
                    steps.push(Step::MaxPool(g));
                }
                Layer::Region(ref r) => region = Some(r.clone()),
            }
        }
        let region = region.ok_or_else(|| bad("no [region] layer"))?;
        let expected = region.anchors.len() * (5 + region.classes);
        if c_in != expected {
            return Err(bad(format!(
                "the last convolution has {c_in} filters; the region layer needs anchors x (5 + classes) = {expected}"
            )));
        }
        Ok(Darknet {
            steps,
            region,
            input_size: cfg.input_size,
        })
    }

    /// `(n, h, w, c)` NHWC in [0, 1] -> the last convolution's output `(n, gh, gw, anchors *
    /// (5 + nc))`, NHWC, before the region layer.
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = xs.clone();
        for step in &self.steps {
            x = match step {
                Step::Conv(c) => c.forward(&x)?,
                Step::MaxPool(g) => max_pool(&x, *g)?,
            };
        }
        Ok(x)
    }

    /// `(n, h, w, c)` NHWC in [0, 1] -> the region output `(n, anchors * (5 + nc), gh, gw)`:
    /// sigmoid x, y and objectness, raw w and h, softmax over the classes of each anchor.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.features(xs)?;
        let (n, gh, gw, c) = x.dims4()?;
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        let per_anchor = 5 + self.region.classes;
        let plane = gh * gw;
        let mut out = vec![0.0f32; data.len()];
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        for b in 0..n {
            for loc in 0..plane {
                let pixel = &data[(b * plane + loc) * c..][..c];
                for (a, entries) in pixel.chunks_exact(per_anchor).enumerate() {
                    let at = |e: usize| ((b * c) + a * per_anchor + e) * plane + loc;
                    out[at(0)] = sigmoid(entries[0]);
                    out[at(1)] = sigmoid(entries[1]);
                    out[at(2)] = entries[2];
                    out[at(3)] = entries[3];
                    out[at(4)] = sigmoid(entries[4]);
                    let classes = &entries[5..];
                    let max = classes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = classes.iter().map(|v| (v - max).exp()).sum();
                    for (k, v) in classes.iter().enumerate() {
                        out[at(5 + k)] = (v - max).exp() / sum;
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, c, gh, gw), &Device::Cpu)
    }

    /// Boxes of a region output (first image) whose best `objectness * class probability`
    /// beats `threshold`, in input pixels of an `input` `(height, width)` canvas.
    pub(crate) fn candidates(
        &self,
        raw: &Tensor,
        threshold: f32,
        input: (usize, usize),
    ) -> Result<Vec<Candidate>, ModelError> {
        let (_, c, gh, gw) = raw.dims4()?;
        let data = raw.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let per_anchor = 5 + self.region.classes;
        let plane = gh * gw;
        let (in_h, in_w) = (input.0 as f32, input.1 as f32);
        let mut out = Vec::new();
        for (a, &(anchor_w, anchor_h)) in
            self.region.anchors.iter().enumerate().take(c / per_anchor)
        {
            let at = |e: usize, loc: usize| data[(a * per_anchor + e) * plane + loc];
            for loc in 0..plane {
                let obj = at(4, loc);
                let (class_id, prob) = (0..self.region.classes)
                    .map(|k| at(5 + k, loc))
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (k, p)| {
                        if p > best.1 {
                            (k, p)
                        } else {
                            best
                        }
                    });
                let score = obj * prob;
                if score <= threshold {
                    continue;
                }
                let (y, x) = ((loc / gw) as f32, (loc % gw) as f32);
                let cx = (x + at(0, loc)) / gw as f32 * in_w;
                let cy = (y + at(1, loc)) / gh as f32 * in_h;
                let w = at(2, loc).exp() * anchor_w / gw as f32 * in_w;
                let h = at(3, loc).exp() * anchor_h / gh as f32 * in_h;
                out.push(Candidate {
                    xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    score,
                    class_id,
                });
            }
        }
        Ok(out)
    }
}

impl DetectionNetwork for Darknet {
    fn raw_output(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(xs)
    }

    fn num_classes(&self) -> usize {
        self.region.classes
    }

    fn default_input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// Darknet networks always get their whole input, as darknet and OpenCV give it.
    fn placement(
        &self,
        original: (usize, usize),
        input_size: (usize, usize),
        _letterbox: Letterbox,
    ) -> (Placement, f32) {
        (Placement::new(original, input_size), PAD_VALUE)
    }

    fn candidates(
        &self,
        raw: &Tensor,
        threshold: f32,
        canvas: (usize, usize),
    ) -> Result<Vec<Candidate>, ModelError> {
        Darknet::candidates(self, raw, threshold, canvas)
    }

    fn dataset_labels(&self) -> &'static [&'static str] {
        &VOC
    }
}
