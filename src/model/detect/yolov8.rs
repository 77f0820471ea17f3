//! YOLOv8 n/s/m/l/x detection network with ultralytics key names (`model.N.*`, the layer list of
//! `cfg/models/v8/yolov8.yaml`): Conv+BN+SiLU, C2f, SPPF, nearest upsampling, concatenation and
//! the Detect head with its DFL box decoding, producing exactly `model(x)[0]` in eval mode.
//!
//! Sizes come from the checkpoint's tensor shapes (so custom widths, depths, class counts and
//! DFL bins load too); the scale name only sizes synthetic weights and is checked against the
//! shapes otherwise.
// Based on ultralytics 8.4 nn/modules/{conv,block,head}.py and utils/tal.py (read, not copied).

use candle_core::{Device, Tensor};

use super::labels::COCO;
use super::letterbox::{Placement, PAD_VALUE};
use super::network::{Builder, DetectionArgs, DetectionNetwork};
use super::nms::Candidate;
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, ConvGeometry};
use crate::model::layers::{max_pool, upsample_nearest, BatchNorm, Conv, ConvSpec};
use crate::model::package::Letterbox;
use crate::model::registry::Family;
use crate::model::weights::Weights;

/// Architecture names: `yolov8` takes every size from the checkpoint.
pub(crate) const NAMES: &[&str] = &[
    "yolov8", "yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolov8x",
];
/// This file's architectures, for the detection registry (`registry.rs`).
pub(crate) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// ultralytics' `initialize_weights` sets every BatchNorm2d's eps to 1e-3.
const BN_EPS: f64 = 1e-3;
/// Output strides of the three detection levels (P3, P4, P5).
pub(crate) const STRIDES: [usize; 3] = [8, 16, 32];
/// The largest of [`STRIDES`]: input sides must be multiples of it.
pub(crate) const MAX_STRIDE: usize = 32;
/// Index of the Detect module in the layer list.
const HEAD: &str = "model.22";

/// The sizes that vary between YOLOv8 scales and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YoloV8Dims {
    /// Channels of the yaml's 64 / 128 / 256 / 512 / 1024 after width scaling.
    pub(crate) widths: [usize; 5],
    /// Bottlenecks per C2f for the yaml's repeat counts 3 and 6 after depth scaling.
    pub(crate) repeats: [usize; 2],
    /// Classes.
    pub(crate) num_classes: usize,
    /// DFL bins per box side.
    pub(crate) reg_max: usize,
    /// Hidden channels of the box branch (`c2` in Detect).
    pub(crate) box_channels: usize,
    /// Hidden channels of the class branch (`c3` in Detect).
    pub(crate) class_channels: usize,
}

impl YoloV8Dims {
    /// The sizes of a named scale (`yolov8n` ... `yolov8x`) with `num_classes` classes.
    pub(crate) fn for_scale(name: &str, num_classes: usize) -> Option<Self> {
        let (depth, width, max_channels) = match name {
            "yolov8n" => (0.33, 0.25, 1024),
            "yolov8s" => (0.33, 0.50, 1024),
            "yolov8m" => (0.67, 0.75, 768),
            "yolov8l" => (1.00, 1.00, 512),
            "yolov8x" => (1.00, 1.25, 512),
            _ => return None,
        };
        let ch = |c: usize| ((c.min(max_channels) as f64 * width / 8.0).ceil() as usize) * 8;
        let reps = |n: f64| ((n * depth).round() as usize).max(1);
        let widths = [ch(64), ch(128), ch(256), ch(512), ch(1024)];
        let reg_max = 16;
        Some(YoloV8Dims {
            widths,
            repeats: [reps(3.0), reps(6.0)],
            num_classes,
            reg_max,
            box_channels: 16.max(widths[2] / 4).max(reg_max * 4),
            class_channels: widths[2].max(num_classes.min(100)),
        })
    }

    /// The sizes a checkpoint's shapes spell out; `None` if it holds no YOLOv8 stem.
    pub(crate) fn from_weights(w: &Weights) -> Option<Self> {
        let dim0 = |name: &str| w.shape(name).and_then(|s| s.first().copied());
        let mut widths = [0; 5];
        for (slot, layer) in widths.iter_mut().zip([0, 1, 3, 5, 7]) {
            *slot = dim0(&format!("model.{layer}.conv.weight"))?;
        }
        let count = |layer: usize| {
            (0..)
                .take_while(|k| w.contains(&format!("model.{layer}.m.{k}.cv1.conv.weight")))
                .count()
        };
        Some(YoloV8Dims {
            widths,
            repeats: [count(2), count(4)],
            num_classes: dim0(&format!("{HEAD}.cv3.0.2.weight"))?,
            reg_max: dim0(&format!("{HEAD}.cv2.0.2.weight"))? / 4,
            box_channels: dim0(&format!("{HEAD}.cv2.0.0.conv.weight"))?,
            class_channels: dim0(&format!("{HEAD}.cv3.0.0.conv.weight"))?,
        })
    }
}

/// Conv2d (no bias) + BatchNorm2d + activation, ultralytics' `Conv`.
fn conv(
    w: &Weights,
    prefix: &str,
    (c_in, c_out, k, s): (usize, usize, usize, usize),
    act: bool,
) -> Result<Conv, ModelError> {
    let bn = format!("{prefix}.bn");
    let activation = if act {
        Activation::Silu
    } else {
        Activation::Identity
    };
    Conv::load(
        w,
        &format!("{prefix}.conv"),
        Some(BatchNorm {
            prefix: &bn,
            eps: BN_EPS,
        }),
        ConvSpec::new(c_in, c_out, k, s).act(activation),
    )
}

struct Bottleneck {
    cv1: Conv,
    cv2: Conv,
    shortcut: bool,
}

/// CSP bottleneck with two convolutions: `cv1` splits into halves, each bottleneck extends the
/// list from the last element, `cv2` fuses the concatenation.
struct C2f {
    cv1: Conv,
    cv2: Conv,
    hidden: usize,
    blocks: Vec<Bottleneck>,
}

impl C2f {
    fn load(
        w: &Weights,
        prefix: &str,
        (c_in, c_out, n): (usize, usize, usize),
        shortcut: bool,
    ) -> Result<Self, ModelError> {
        let c = c_out / 2;
        let blocks = (0..n)
            .map(|i| {
                Ok(Bottleneck {
                    cv1: conv(w, &format!("{prefix}.m.{i}.cv1"), (c, c, 3, 1), true)?,
                    cv2: conv(w, &format!("{prefix}.m.{i}.cv2"), (c, c, 3, 1), true)?,
                    shortcut,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(C2f {
            cv1: conv(w, &format!("{prefix}.cv1"), (c_in, 2 * c, 1, 1), true)?,
            cv2: conv(
                w,
                &format!("{prefix}.cv2"),
                ((2 + n) * c, c_out, 1, 1),
                true,
            )?,
            hidden: c,
            blocks,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv1.forward(xs)?;
        // The two halves of `y` stay side by side in the concatenation: keep `y` whole.
        let mut last = y.narrow(3, self.hidden, self.hidden)?.contiguous()?;
        let mut parts = vec![y];
        for b in &self.blocks {
            let t = b.cv2.forward(&b.cv1.forward(&last)?)?;
            last = if b.shortcut { (t + &last)? } else { t };
            parts.push(last.clone());
        }
        self.cv2.forward(&Tensor::cat(&parts, 3)?)
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max pools concatenated.
struct Sppf {
    cv1: Conv,
    cv2: Conv,
}

impl Sppf {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let pool = ConvGeometry::square(5, 1, 2);
        let mut parts = vec![self.cv1.forward(xs)?];
        for _ in 0..3 {
            let next = max_pool(parts.last().expect("one part"), pool)?;
            parts.push(next);
        }
        self.cv2.forward(&Tensor::cat(&parts, 3)?)
    }
}

/// Detect: per level a box branch (4 * reg_max DFL logits) and a class branch.
struct Head {
    boxes: Vec<[Conv; 3]>,
    classes: Vec<[Conv; 3]>,
    /// The DFL integral weights: `0..reg_max` in every real checkpoint.
    dfl: Vec<f32>,
}

impl Head {
    fn load(w: &Weights, dims: &YoloV8Dims) -> Result<Self, ModelError> {
        let ch = [dims.widths[2], dims.widths[3], dims.widths[4]];
        let branch = |name: &str,
                      level: usize,
                      hidden: usize,
                      out: usize|
         -> Result<[Conv; 3], ModelError> {
            let p = format!("{HEAD}.{name}.{level}");
            let mut last = ConvSpec::new(hidden, out, 1, 1);
            last.has_bias = true;
            Ok([
                conv(w, &format!("{p}.0"), (ch[level], hidden, 3, 1), true)?,
                conv(w, &format!("{p}.1"), (hidden, hidden, 3, 1), true)?,
                Conv::load(w, &format!("{p}.2"), None, last)?,
            ])
        };
        let boxes = (0..3)
            .map(|l| branch("cv2", l, dims.box_channels, 4 * dims.reg_max))
            .collect::<Result<_, _>>()?;
        let classes = (0..3)
            .map(|l| branch("cv3", l, dims.class_channels, dims.num_classes))
            .collect::<Result<_, _>>()?;
        let dfl_key = format!("{HEAD}.dfl.conv.weight");
        let dfl = if w.contains(&dfl_key) {
            w.get(&dfl_key, &[1, dims.reg_max, 1, 1])?
                .flatten_all()?
                .to_vec1::<f32>()?
        } else {
            (0..dims.reg_max).map(|i| i as f32).collect()
        };
        Ok(Head {
            boxes,
            classes,
            dfl,
        })
    }
}

/// A loaded YOLOv8.
pub(crate) struct YoloV8 {
    dims: YoloV8Dims,
    backbone: [Conv; 5],
    c2f: [C2f; 8],
    sppf: Sppf,
    head_down: [Conv; 2],
    head: Head,
}

impl YoloV8 {
    /// Builds `name` from `w`: sizes from the tensor shapes, or from the scale name for
    /// synthetic weights (`num_classes` classes).
    pub(crate) fn load(name: &str, w: &Weights, num_classes: usize) -> Result<Self, ModelError> {
        let named = YoloV8Dims::for_scale(name, num_classes);
        let dims = match (YoloV8Dims::from_weights(w), named) {
            (Some(found), Some(named)) if found.widths != named.widths || found.repeats != named.repeats => {
                return Err(ModelError::Unsupported(format!(
                    "config.json `architecture` is {name}, but the checkpoint's layer widths {:?} and \
                     depths {:?} are not that scale's {:?} / {:?} (use `yolov8` to take sizes from the \
                     checkpoint)",
                    found.widths, found.repeats, named.widths, named.repeats
                )))
            }
            (Some(found), _) => found,
            (None, Some(named)) => named,
            (None, None) => {
                // Let the missing-tensor error (with its hint) explain what is wrong.
                w.get("model.0.conv.weight", &[0])?;
                return Err(ModelError::Unsupported("`yolov8` needs a checkpoint to size the network".into()));
            }
        };
        let [c64, c128, c256, c512, c1024] = dims.widths;
        let [r3, r6] = dims.repeats;
        let layer = |i: usize| format!("model.{i}");
        let backbone = [
            conv(w, &layer(0), (3, c64, 3, 2), true)?,
            conv(w, &layer(1), (c64, c128, 3, 2), true)?,
            conv(w, &layer(3), (c128, c256, 3, 2), true)?,
            conv(w, &layer(5), (c256, c512, 3, 2), true)?,
            conv(w, &layer(7), (c512, c1024, 3, 2), true)?,
        ];
        let c2f = [
            C2f::load(w, &layer(2), (c128, c128, r3), true)?,
            C2f::load(w, &layer(4), (c256, c256, r6), true)?,
            C2f::load(w, &layer(6), (c512, c512, r6), true)?,
            C2f::load(w, &layer(8), (c1024, c1024, r3), true)?,
            C2f::load(w, &layer(12), (c1024 + c512, c512, r3), false)?,
            C2f::load(w, &layer(15), (c512 + c256, c256, r3), false)?,
            C2f::load(w, &layer(18), (c256 + c512, c512, r3), false)?,
            C2f::load(w, &layer(21), (c512 + c1024, c1024, r3), false)?,
        ];
        // SPPF's first conv is activated in YOLOv8: ultralytics 8.4's SPPF class defaults to an
        // unactivated cv1 (YOLO26), but its model builder puts SiLU back for the v8 yaml rows, and
        // every checkpoint trained before that change has it.
        let sppf = Sppf {
            cv1: conv(w, "model.9.cv1", (c1024, c1024 / 2, 1, 1), true)?,
            cv2: conv(w, "model.9.cv2", (c1024 / 2 * 4, c1024, 1, 1), true)?,
        };
        let head_down = [
            conv(w, &layer(16), (c256, c256, 3, 2), true)?,
            conv(w, &layer(19), (c512, c512, 3, 2), true)?,
        ];
        let head = Head::load(w, &dims)?;
        Ok(YoloV8 {
            dims,
            backbone,
            c2f,
            sppf,
            head_down,
            head,
        })
    }

    /// `(n, h, w, 3)` NHWC in [0, 1] -> the three feature maps the head reads.
    fn features(&self, xs: &Tensor) -> candle_core::Result<[Tensor; 3]> {
        let [b0, b1, b3, b5, b7] = &self.backbone;
        let x = b1.forward(&b0.forward(xs)?)?;
        let x = self.c2f[0].forward(&x)?;
        let p3 = self.c2f[1].forward(&b3.forward(&x)?)?;
        let p4 = self.c2f[2].forward(&b5.forward(&p3)?)?;
        let x = self.c2f[3].forward(&b7.forward(&p4)?)?;
        let p5 = self.sppf.forward(&x)?;
        let up = upsample_nearest(&p5, 2)?;
        let n12 = self.c2f[4].forward(&Tensor::cat(&[&up, &p4], 3)?)?;
        let up = upsample_nearest(&n12, 2)?;
        let out3 = self.c2f[5].forward(&Tensor::cat(&[&up, &p3], 3)?)?;
        let down = self.head_down[0].forward(&out3)?;
        let out4 = self.c2f[6].forward(&Tensor::cat(&[&down, &n12], 3)?)?;
        let down = self.head_down[1].forward(&out4)?;
        let out5 = self.c2f[7].forward(&Tensor::cat(&[&down, &p5], 3)?)?;
        Ok([out3, out4, out5])
    }

    /// `(n, h, w, 3)` NHWC in [0, 1] -> `(n, 4 + nc, anchors)`: per anchor the box centre, width
    /// and height in input pixels, then the class probabilities (sigmoid).
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let feats = self.features(xs)?;
        let (n, nc, reg_max) = (xs.dim(0)?, self.dims.num_classes, self.dims.reg_max);
        let mut levels = Vec::with_capacity(3);
        for (level, f) in feats.iter().enumerate() {
            let run = |branch: &[Conv; 3]| -> candle_core::Result<Vec<f32>> {
                let t = branch[2].forward(&branch[1].forward(&branch[0].forward(f)?)?)?;
                t.flatten_all()?.to_vec1::<f32>()
            };
            let (_, h, w, _) = f.dims4()?;
            levels.push((
                h,
                w,
                run(&self.head.boxes[level])?,
                run(&self.head.classes[level])?,
            ));
        }
        let anchors: usize = levels.iter().map(|(h, w, _, _)| h * w).sum();
        let rows = 4 + nc;
        let mut out = vec![0.0f32; n * rows * anchors];
        let mut probs = vec![0.0f32; reg_max];
        for b in 0..n {
            let plane = &mut out[b * rows * anchors..][..rows * anchors];
            let mut a = 0;
            for (level, (h, w, boxes, classes)) in levels.iter().enumerate() {
                let stride = STRIDES[level] as f32;
                for y in 0..*h {
                    for x in 0..*w {
                        let pixel = (b * h + y) * w + x;
                        let logits = &boxes[pixel * 4 * reg_max..][..4 * reg_max];
                        let mut dist = [0.0f32; 4];
                        for (side, d) in dist.iter_mut().enumerate() {
                            *d = dfl_expectation(
                                &logits[side * reg_max..][..reg_max],
                                &self.head.dfl,
                                &mut probs,
                            );
                        }
                        let (ax, ay) = (x as f32 + 0.5, y as f32 + 0.5);
                        let (x1, y1, x2, y2) =
                            (ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]);
                        plane[a] = (x1 + x2) / 2.0 * stride;
                        plane[anchors + a] = (y1 + y2) / 2.0 * stride;
                        plane[2 * anchors + a] = (x2 - x1) * stride;
                        plane[3 * anchors + a] = (y2 - y1) * stride;
                        for (k, &logit) in classes[pixel * nc..][..nc].iter().enumerate() {
                            plane[(4 + k) * anchors + a] = 1.0 / (1.0 + (-logit).exp());
                        }
                        a += 1;
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, rows, anchors), &Device::Cpu)
    }
}

/// The expected distance of one box side: softmax over the bins, weighted by the DFL weights.
fn dfl_expectation(logits: &[f32], weights: &[f32], probs: &mut [f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        sum += *p;
    }
    probs.iter().zip(weights).map(|(p, w)| p * w).sum::<f32>() / sum
}

/// The YOLOv8 a package names, with its declared classes (COCO's 80 when it declares none).
fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    let classes = args.num_classes.unwrap_or(COCO.len());
    Ok(Box::new(YoloV8::load(args.name, args.weights, classes)?))
}

impl DetectionNetwork for YoloV8 {
    fn raw_output(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(xs)
    }

    fn num_classes(&self) -> usize {
        self.dims.num_classes
    }

    fn default_input_size(&self) -> (usize, usize) {
        (640, 640)
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
        let raw = raw.get(0)?.to_vec2::<f32>()?;
        let anchors = raw.first().map_or(0, Vec::len);
        let mut out = Vec::new();
        for a in 0..anchors {
            let (class_id, score) = raw[4..]
                .iter()
                .map(|row| row[a])
                .enumerate()
                // The first of equal maxima, as torch's max does.
                .fold((0, f32::NEG_INFINITY), |best, (k, s)| {
                    if s > best.1 {
                        (k, s)
                    } else {
                        best
                    }
                });
            if score > threshold {
                let (cx, cy, w, h) = (raw[0][a], raw[1][a], raw[2][a], raw[3][a]);
                out.push(Candidate {
                    xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                    score,
                    class_id,
                });
            }
        }
        Ok(out)
    }

    fn dataset_labels(&self) -> &'static [&'static str] {
        &COCO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_match_the_ultralytics_yaml() {
        let n = YoloV8Dims::for_scale("yolov8n", 80).expect("n");
        assert_eq!(n.widths, [16, 32, 64, 128, 256]);
        assert_eq!(n.repeats, [1, 2]);
        assert_eq!((n.box_channels, n.class_channels), (64, 80));
        let m = YoloV8Dims::for_scale("yolov8m", 80).expect("m");
        assert_eq!(m.widths, [48, 96, 192, 384, 576]);
        assert_eq!(m.repeats, [2, 4]);
        let x = YoloV8Dims::for_scale("yolov8x", 80).expect("x");
        assert_eq!(x.widths, [80, 160, 320, 640, 640]);
        assert_eq!(x.repeats, [3, 6]);
        assert!(YoloV8Dims::for_scale("yolov8", 80).is_none());
    }

    #[test]
    fn dfl_of_a_peaked_distribution_is_its_bin() {
        let weights: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut logits = vec![-50.0f32; 16];
        logits[5] = 50.0;
        let mut probs = vec![0.0; 16];
        assert!((dfl_expectation(&logits, &weights, &mut probs) - 5.0).abs() < 1e-4);
        // Uniform logits: the mean bin.
        let flat = vec![0.0f32; 16];
        assert!((dfl_expectation(&flat, &weights, &mut probs) - 7.5).abs() < 1e-4);
    }
}
