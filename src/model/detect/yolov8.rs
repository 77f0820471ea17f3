//! YOLOv8 n/s/m/l/x detection network with ultralytics key names (`model.N.*`, the layer list of
//! `cfg/models/v8/yolov8.yaml`): the C2f sizes and how the layers connect; what it shares with
//! YOLO11 is in `ultralytics.rs` (Conv, bottleneck, C2f, SPPF) and `ultralytics_detect.rs` (the
//! Detect head).
//!
//! Sizes come from the checkpoint's tensor shapes (so custom widths, depths, class counts and
//! DFL bins load too); the scale name only sizes synthetic weights and is checked against the
//! shapes otherwise.
// Based on ultralytics 8.4 nn/modules/block.py and cfg/models/v8/yolov8.yaml (read, not copied).

use candle_core::Tensor;

use super::labels::COCO;
use super::network::{Builder, DetectionArgs, DetectionNetwork};
use super::ultralytics::{conv, Block, Bottleneck, C2f, Sppf};
use super::ultralytics_detect::{ClassBranch, Head, HeadDims, Trunk, UltralyticsYolo};
use crate::model::error::ModelError;
use crate::model::layers::{upsample_nearest, Conv};
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

/// Index of the Detect module in the layer list.
pub(crate) const HEAD: &str = "model.22";

/// The sizes that vary between YOLOv8 scales and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YoloV8Dims {
    /// Channels of the yaml's 64 / 128 / 256 / 512 / 1024 after width scaling.
    pub(crate) widths: [usize; 5],
    /// Bottlenecks per C2f for the yaml's repeat counts 3 and 6 after depth scaling.
    pub(crate) repeats: [usize; 2],
    /// The Detect head.
    pub(crate) head: HeadDims,
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
        Some(YoloV8Dims {
            widths,
            repeats: [reps(3.0), reps(6.0)],
            head: HeadDims::standard([widths[2], widths[3], widths[4]], num_classes),
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
        let inputs = [widths[2], widths[3], widths[4]];
        Some(YoloV8Dims {
            widths,
            repeats: [count(2), count(4)],
            head: HeadDims::from_weights(w, HEAD, inputs, ClassBranch::Dense)?,
        })
    }
}

/// A YOLOv8 C2f: `n` bottlenecks with as many channels as their input.
fn c2f(
    w: &Weights,
    prefix: &str,
    (c_in, c_out, n): (usize, usize, usize),
    shortcut: bool,
) -> Result<C2f, ModelError> {
    let c = c_out / 2;
    let blocks = (0..n)
        .map(|i| {
            let b = Bottleneck::load(w, &format!("{prefix}.m.{i}"), (c, c), shortcut)?;
            Ok(Box::new(b) as Box<dyn Block>)
        })
        .collect::<Result<_, ModelError>>()?;
    C2f::load(w, prefix, (c_in, c, c_out), blocks)
}

/// YOLOv8's backbone and neck.
struct YoloV8Trunk {
    backbone: [Conv; 5],
    c2f: [C2f; 8],
    sppf: Sppf,
    head_down: [Conv; 2],
}

impl YoloV8Trunk {
    fn load(w: &Weights, dims: &YoloV8Dims) -> Result<Self, ModelError> {
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
            c2f(w, &layer(2), (c128, c128, r3), true)?,
            c2f(w, &layer(4), (c256, c256, r6), true)?,
            c2f(w, &layer(6), (c512, c512, r6), true)?,
            c2f(w, &layer(8), (c1024, c1024, r3), true)?,
            c2f(w, &layer(12), (c1024 + c512, c512, r3), false)?,
            c2f(w, &layer(15), (c512 + c256, c256, r3), false)?,
            c2f(w, &layer(18), (c256 + c512, c512, r3), false)?,
            c2f(w, &layer(21), (c512 + c1024, c1024, r3), false)?,
        ];
        let head_down = [
            conv(w, &layer(16), (c256, c256, 3, 2), true)?,
            conv(w, &layer(19), (c512, c512, 3, 2), true)?,
        ];
        Ok(YoloV8Trunk {
            backbone,
            c2f,
            sppf: Sppf::load(w, &layer(9), c1024)?,
            head_down,
        })
    }
}

impl Trunk for YoloV8Trunk {
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
}

/// Builds `name` from `w`: sizes from the tensor shapes, or from the scale name for synthetic
/// weights (`num_classes` classes).
pub(crate) fn load(
    name: &str,
    w: &Weights,
    num_classes: usize,
) -> Result<UltralyticsYolo, ModelError> {
    let named = YoloV8Dims::for_scale(name, num_classes);
    let dims = match (YoloV8Dims::from_weights(w), named) {
        (Some(found), Some(named))
            if found.widths != named.widths || found.repeats != named.repeats =>
        {
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
            return Err(ModelError::Unsupported(
                "`yolov8` needs a checkpoint to size the network".into(),
            ));
        }
    };
    let trunk = YoloV8Trunk::load(w, &dims)?;
    let head = Head::load(w, HEAD, dims.head, ClassBranch::Dense)?;
    Ok(UltralyticsYolo::new(Box::new(trunk), head))
}

/// The YOLOv8 a package names, with its declared classes (COCO's 80 when it declares none).
fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    let classes = args.num_classes.unwrap_or(COCO.len());
    Ok(Box::new(load(args.name, args.weights, classes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_match_the_ultralytics_yaml() {
        let n = YoloV8Dims::for_scale("yolov8n", 80).expect("n");
        assert_eq!(n.widths, [16, 32, 64, 128, 256]);
        assert_eq!(n.repeats, [1, 2]);
        assert_eq!((n.head.box_channels, n.head.class_channels), (64, 80));
        let m = YoloV8Dims::for_scale("yolov8m", 80).expect("m");
        assert_eq!(m.widths, [48, 96, 192, 384, 576]);
        assert_eq!(m.repeats, [2, 4]);
        let x = YoloV8Dims::for_scale("yolov8x", 80).expect("x");
        assert_eq!(x.widths, [80, 160, 320, 640, 640]);
        assert_eq!(x.repeats, [3, 6]);
        assert!(YoloV8Dims::for_scale("yolov8", 80).is_none());
    }
}
