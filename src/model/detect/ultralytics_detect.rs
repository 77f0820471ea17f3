//! ultralytics' `Detect` head, shared by YOLOv8 and YOLO11 (per level a box branch of DFL logits
//! and a class branch, decoded into `model(x)[0]`: box centre, size and class probabilities per
//! anchor, in input pixels), and the [`DetectionNetwork`] both are ([`UltralyticsYolo`]: a
//! family's [`Trunk`] and this head).
// Based on ultralytics 8.4 nn/modules/head.py and utils/tal.py (read, not copied).

use candle_core::{Device, Tensor};

use super::labels::COCO;
use super::letterbox::{Placement, PAD_VALUE};
use super::network::DetectionNetwork;
use super::nms::Candidate;
use super::ultralytics::{conv, conv_spec, MAX_STRIDE, STRIDES};
use crate::model::error::ModelError;
use crate::model::kernels::{exp_slice, Activation};
use crate::model::layers::{Conv, ConvSpec};
use crate::model::package::Letterbox;
use crate::model::weights::Weights;

/// How the head's class branch is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassBranch {
    /// YOLOv8 (ultralytics' `legacy` Detect): two 3x3 `Conv`s.
    Dense,
    /// YOLO11: `DWConv` 3x3 + `Conv` 1x1, twice.
    Depthwise,
}

/// The sizes of a `Detect` head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadDims {
    /// Channels of the P3, P4 and P5 feature maps it reads.
    pub(crate) inputs: [usize; 3],
    /// Classes.
    pub(crate) num_classes: usize,
    /// DFL bins per box side.
    pub(crate) reg_max: usize,
    /// Hidden channels of the box branch (`c2` in Detect).
    pub(crate) box_channels: usize,
    /// Hidden channels of the class branch (`c3` in Detect).
    pub(crate) class_channels: usize,
}

impl HeadDims {
    /// Detect's own sizing for `inputs` channels, `num_classes` classes and 16 DFL bins.
    pub(crate) fn standard(inputs: [usize; 3], num_classes: usize) -> Self {
        let reg_max = 16;
        HeadDims {
            inputs,
            num_classes,
            reg_max,
            box_channels: 16.max(inputs[0] / 4).max(reg_max * 4),
            class_channels: inputs[0].max(num_classes.min(100)),
        }
    }

    /// The sizes the head's tensors under `head` spell out (the class branch's first hidden
    /// layer is `cv3.0.0` for [`ClassBranch::Dense`], `cv3.0.0.1` for the depthwise one).
    pub(crate) fn from_weights(
        w: &Weights,
        head: &str,
        inputs: [usize; 3],
        branch: ClassBranch,
    ) -> Option<Self> {
        let dim0 = |name: &str| w.shape(name).and_then(|s| s.first().copied());
        let class_hidden = match branch {
            ClassBranch::Dense => format!("{head}.cv3.0.0.conv.weight"),
            ClassBranch::Depthwise => format!("{head}.cv3.0.0.1.conv.weight"),
        };
        Some(HeadDims {
            inputs,
            num_classes: dim0(&format!("{head}.cv3.0.2.weight"))?,
            reg_max: dim0(&format!("{head}.cv2.0.2.weight"))? / 4,
            box_channels: dim0(&format!("{head}.cv2.0.0.conv.weight"))?,
            class_channels: dim0(&class_hidden)?,
        })
    }
}

/// Detect: per level a box branch (4 * reg_max DFL logits) and a class branch.
pub(crate) struct Head {
    dims: HeadDims,
    boxes: Vec<Vec<Conv>>,
    classes: Vec<Vec<Conv>>,
    /// The DFL integral weights: `0..reg_max` in every real checkpoint.
    dfl: Vec<f32>,
}

impl Head {
    /// Classes it scores.
    pub(crate) fn num_classes(&self) -> usize {
        self.dims.num_classes
    }

    /// The head under `prefix` (e.g. `model.22`).
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        dims: HeadDims,
        branch: ClassBranch,
    ) -> Result<Self, ModelError> {
        let last = |p: &str, hidden: usize, out: usize| {
            let mut spec = ConvSpec::new(hidden, out, 1, 1);
            spec.has_bias = true;
            Conv::load(w, p, None, spec)
        };
        let (mut boxes, mut classes) = (Vec::new(), Vec::new());
        for (level, &c_in) in dims.inputs.iter().enumerate() {
            let (hb, hc) = (dims.box_channels, dims.class_channels);
            let p = format!("{prefix}.cv2.{level}");
            boxes.push(vec![
                conv(w, &format!("{p}.0"), (c_in, hb, 3, 1), true)?,
                conv(w, &format!("{p}.1"), (hb, hb, 3, 1), true)?,
                last(&format!("{p}.2"), hb, 4 * dims.reg_max)?,
            ]);
            let p = format!("{prefix}.cv3.{level}");
            let dw = |name: &str, c: usize| {
                conv_spec(w, name, ConvSpec::new(c, c, 3, 1).depthwise(), true)
            };
            classes.push(match branch {
                ClassBranch::Dense => vec![
                    conv(w, &format!("{p}.0"), (c_in, hc, 3, 1), true)?,
                    conv(w, &format!("{p}.1"), (hc, hc, 3, 1), true)?,
                    last(&format!("{p}.2"), hc, dims.num_classes)?,
                ],
                ClassBranch::Depthwise => vec![
                    dw(&format!("{p}.0.0"), c_in)?,
                    conv(w, &format!("{p}.0.1"), (c_in, hc, 1, 1), true)?,
                    dw(&format!("{p}.1.0"), hc)?,
                    conv(w, &format!("{p}.1.1"), (hc, hc, 1, 1), true)?,
                    last(&format!("{p}.2"), hc, dims.num_classes)?,
                ],
            });
        }
        let dfl_key = format!("{prefix}.dfl.conv.weight");
        let dfl = if w.contains(&dfl_key) {
            w.get(&dfl_key, &[1, dims.reg_max, 1, 1])?
                .flatten_all()?
                .to_vec1::<f32>()?
        } else {
            (0..dims.reg_max).map(|i| i as f32).collect()
        };
        Ok(Head {
            dims,
            boxes,
            classes,
            dfl,
        })
    }

    /// The three feature maps -> `(n, 4 + nc, anchors)`: per anchor the box centre, width and
    /// height in input pixels, then the class probabilities (sigmoid).
    pub(crate) fn forward(&self, feats: &[Tensor; 3]) -> candle_core::Result<Tensor> {
        let n = feats[0].dim(0)?;
        let (nc, reg_max) = (self.dims.num_classes, self.dims.reg_max);
        let mut levels = Vec::with_capacity(3);
        for (level, f) in feats.iter().enumerate() {
            let run = |branch: &[Conv]| -> candle_core::Result<Vec<f32>> {
                let mut t = f.clone();
                for layer in branch {
                    t = layer.forward(&t)?;
                }
                t.flatten_all()?.to_vec1::<f32>()
            };
            let (_, h, w, _) = f.dims4()?;
            let mut boxes = run(&self.boxes[level])?;
            let mut classes = run(&self.classes[level])?;
            // The exponentials a vector at a time: one `expf` each, on the one core that runs
            // this, they were 4.6% of YOLOv8n's batch-1 CPU samples (docs/performance.md).
            Activation::Sigmoid.apply(&mut classes);
            dfl_exps(&mut boxes, reg_max);
            levels.push(Level {
                h,
                w,
                boxes,
                classes,
            });
        }
        let anchors: usize = levels.iter().map(|l| l.h * l.w).sum();
        let rows = 4 + nc;
        let mut out = vec![0.0f32; n * rows * anchors];
        for b in 0..n {
            let plane = &mut out[b * rows * anchors..][..rows * anchors];
            let mut a = 0;
            for (level, l) in levels.iter().enumerate() {
                let stride = STRIDES[level] as f32;
                for y in 0..l.h {
                    for x in 0..l.w {
                        let pixel = (b * l.h + y) * l.w + x;
                        let exps = &l.boxes[pixel * 4 * reg_max..][..4 * reg_max];
                        let mut dist = [0.0f32; 4];
                        for (side, d) in dist.iter_mut().enumerate() {
                            *d = weighted_mean(&exps[side * reg_max..][..reg_max], &self.dfl);
                        }
                        let (ax, ay) = (x as f32 + 0.5, y as f32 + 0.5);
                        let (x1, y1, x2, y2) =
                            (ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]);
                        plane[a] = (x1 + x2) / 2.0 * stride;
                        plane[anchors + a] = (y1 + y2) / 2.0 * stride;
                        plane[2 * anchors + a] = (x2 - x1) * stride;
                        plane[3 * anchors + a] = (y2 - y1) * stride;
                        for (k, &p) in l.classes[pixel * nc..][..nc].iter().enumerate() {
                            plane[(4 + k) * anchors + a] = p;
                        }
                        a += 1;
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, rows, anchors), &Device::Cpu)
    }
}

/// One level's branch outputs, NHWC-flattened.
struct Level {
    h: usize,
    w: usize,
    boxes: Vec<f32>,
    classes: Vec<f32>,
}

/// Each box side's `reg_max` bins as `exp(logit - max)`, the numerators of the DFL softmax.
fn dfl_exps(boxes: &mut [f32], reg_max: usize) {
    for bins in boxes.chunks_exact_mut(reg_max) {
        let max = bins.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        bins.iter_mut().for_each(|b| *b -= max);
    }
    exp_slice(boxes);
}

/// The expected distance of one box side from its bins' [`dfl_exps`]: the softmax's mean of
/// the DFL weights.
fn weighted_mean(exps: &[f32], weights: &[f32]) -> f32 {
    let sum: f32 = exps.iter().sum();
    exps.iter().zip(weights).map(|(p, w)| p * w).sum::<f32>() / sum
}

/// The expected distance of one box side: softmax over the bins, weighted by the DFL weights.
#[cfg(test)]
fn dfl_expectation(logits: &[f32], weights: &[f32]) -> f32 {
    let mut exps = logits.to_vec();
    dfl_exps(&mut exps, logits.len());
    weighted_mean(&exps, weights)
}

/// A family's backbone and neck: the letterboxed image to the P3, P4 and P5 maps the head reads.
pub(crate) trait Trunk: Send + Sync {
    /// `(n, h, w, 3)` NHWC in [0, 1] -> the three feature maps, NHWC.
    fn features(&self, xs: &Tensor) -> candle_core::Result<[Tensor; 3]>;
}

/// An ultralytics detector: a family's trunk and the `Detect` head.
pub(crate) struct UltralyticsYolo {
    trunk: Box<dyn Trunk>,
    head: Head,
    input_size: (usize, usize),
}

impl UltralyticsYolo {
    /// With ultralytics' default 640x640 input.
    pub(crate) fn new(trunk: Box<dyn Trunk>, head: Head) -> Self {
        UltralyticsYolo {
            trunk,
            head,
            input_size: (640, 640),
        }
    }

    /// The input size a package without one uses (a checkpoint's training `imgsz`), rounded
    /// up to multiples of the largest stride as ultralytics' `check_imgsz` does.
    pub(crate) fn set_input_size(&mut self, (height, width): (usize, usize)) {
        let round = |side: usize| side.div_ceil(MAX_STRIDE).max(1) * MAX_STRIDE;
        self.input_size = (round(height), round(width));
    }

    /// `(n, h, w, 3)` NHWC in [0, 1] -> exactly ultralytics' `model(x)[0]` in eval mode.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.trunk.features(xs)?)
    }
}

impl DetectionNetwork for UltralyticsYolo {
    fn raw_output(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(xs)
    }

    fn num_classes(&self) -> usize {
        self.head.num_classes()
    }

    fn default_input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// As ultralytics' predictor: the smallest canvas with sides multiples of the largest
    /// stride, or the whole input (`"letterbox": "square"`, as exported models).
    fn placement(
        &self,
        original: (usize, usize),
        input_size: (usize, usize),
        letterbox: Letterbox,
    ) -> (Placement, f32) {
        match letterbox {
            Letterbox::Rect => (
                Placement::minimal(original, input_size, MAX_STRIDE),
                PAD_VALUE,
            ),
            Letterbox::Square => (Placement::new(original, input_size), PAD_VALUE),
        }
    }

    /// Boxes of a raw output (first image) whose best class beats `threshold`.
    fn candidates(
        &self,
        raw: &Tensor,
        threshold: f32,
        _canvas: (usize, usize),
    ) -> Result<Vec<Candidate>, ModelError> {
        let raw = raw.get(0)?;
        let (rows, anchors) = raw.dims2()?;
        let raw = raw.flatten_all()?.to_vec1::<f32>()?;
        let row = |r: usize| &raw[r * anchors..][..anchors];
        // Every anchor's best class, a class row at a time (contiguous reads); the first of
        // equal maxima wins, as torch's max does.
        let mut best = vec![(0usize, f32::NEG_INFINITY); anchors];
        for k in 0..rows.saturating_sub(4) {
            for (slot, &score) in best.iter_mut().zip(row(4 + k)) {
                if score > slot.1 {
                    *slot = (k, score);
                }
            }
        }
        let (cxs, cys, ws, hs) = (row(0), row(1), row(2), row(3));
        Ok(best
            .into_iter()
            .enumerate()
            .filter(|&(_, (_, score))| score > threshold)
            .map(|(a, (class_id, score))| {
                let (cx, cy, w, h) = (cxs[a], cys[a], ws[a], hs[a]);
                Candidate {
                    xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    score,
                    class_id,
                }
            })
            .collect())
    }

    fn dataset_labels(&self) -> &'static [&'static str] {
        &COCO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfl_of_a_peaked_distribution_is_its_bin() {
        let weights: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut logits = vec![-50.0f32; 16];
        logits[5] = 50.0;
        assert!((dfl_expectation(&logits, &weights) - 5.0).abs() < 1e-4);
        // Uniform logits: the mean bin.
        let flat = vec![0.0f32; 16];
        assert!((dfl_expectation(&flat, &weights) - 7.5).abs() < 1e-4);
    }

    #[test]
    fn detect_sizes_its_branches_as_ultralytics() {
        let n = HeadDims::standard([64, 128, 256], 80);
        assert_eq!((n.box_channels, n.class_channels), (64, 80));
        let few = HeadDims::standard([128, 256, 512], 3);
        assert_eq!((few.box_channels, few.class_channels), (64, 128));
    }
}
