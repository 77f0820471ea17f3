//! YOLO11 n/s/m/l/x detection network with ultralytics key names (`model.N.*`, the layer list of
//! `cfg/models/11/yolo11.yaml`): C3k2 blocks (plain bottlenecks, or C3k ones: always for the m, l
//! and x scales, in layers 6, 8 and 22 for n and s), SPPF, C2PSA attention (`psa.rs`) and the
//! Detect head whose class branch uses depthwise convolutions; what it shares with YOLOv8 is in
//! `ultralytics.rs` and `ultralytics_detect.rs`.
//!
//! As for YOLOv8, sizes come from the checkpoint's tensor shapes; the scale name only sizes
//! synthetic weights and is checked against the shapes otherwise.
// Based on ultralytics 8.4 nn/modules/block.py (C3k2, C3k), nn/tasks.py (parse_model) and
// cfg/models/11/yolo11.yaml (read, not copied).

use candle_core::Tensor;

use super::labels::COCO;
use super::network::{Builder, DetectionArgs, DetectionNetwork};
use super::psa::C2Psa;
use super::ultralytics::{conv, Block, Bottleneck, C2f, Sppf};
use super::ultralytics_detect::{ClassBranch, Head, HeadDims, Trunk, UltralyticsYolo};
use crate::model::error::ModelError;
use crate::model::layers::{upsample_nearest, Conv};
use crate::model::registry::Family;
use crate::model::weights::Weights;

/// Architecture names: `yolo11` takes every size from the checkpoint.
pub(crate) const NAMES: &[&str] = &[
    "yolo11", "yolo11n", "yolo11s", "yolo11m", "yolo11l", "yolo11x",
];
/// This file's architectures, for the detection registry (`registry.rs`).
pub(crate) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Index of the Detect module in the layer list.
pub(crate) const HEAD: &str = "model.23";
/// Index of the C2PSA module.
const PSA: &str = "model.10";
/// The layers holding a C3k2, in order.
const C3K2_LAYERS: [usize; 8] = [2, 4, 6, 8, 13, 16, 19, 22];
/// Bottlenecks inside each C3k (`C3k(c, c, 2)` in C3k2).
const C3K_BLOCKS: usize = 2;

/// The sizes that vary between YOLO11 scales and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Yolo11Dims {
    /// Channels of the yaml's 64 / 128 / 256 / 512 / 1024 after width scaling.
    pub(crate) widths: [usize; 5],
    /// Blocks per C3k2 ([`C3K2_LAYERS`]).
    pub(crate) blocks: [usize; 8],
    /// Channels of each C3k2's blocks (half of its `cv1`).
    pub(crate) hidden: [usize; 8],
    /// Whether each C3k2's blocks are C3k (else plain bottlenecks).
    pub(crate) c3k: [bool; 8],
    /// PSA blocks in the C2PSA.
    pub(crate) psa_blocks: usize,
    /// The Detect head.
    pub(crate) head: HeadDims,
}

impl Yolo11Dims {
    /// The sizes of a named scale (`yolo11n` ... `yolo11x`) with `num_classes` classes.
    pub(crate) fn for_scale(name: &str, num_classes: usize) -> Option<Self> {
        let (depth, width, max_channels) = match name {
            "yolo11n" => (0.50, 0.25, 1024),
            "yolo11s" => (0.50, 0.50, 1024),
            "yolo11m" => (0.50, 1.00, 512),
            "yolo11l" => (1.00, 1.00, 512),
            "yolo11x" => (1.00, 1.50, 512),
            _ => return None,
        };
        let ch = |c: usize| ((c.min(max_channels) as f64 * width / 8.0).ceil() as usize) * 8;
        let widths = [ch(64), ch(128), ch(256), ch(512), ch(1024)];
        let repeats = ((2.0f64 * depth).round() as usize).max(1);
        // ultralytics' model builder turns every C3k2's c3k on for the m, l and x scales; n and s
        // keep the yaml's own flags (True in layers 6, 8 and 22).
        let all_c3k = matches!(name, "yolo11m" | "yolo11l" | "yolo11x");
        let c3k = C3K2_LAYERS.map(|l| all_c3k || matches!(l, 6 | 8 | 22));
        let [_, _, c256, c512, c1024] = widths;
        let outputs = [c256, c512, c512, c1024, c512, c256, c512, c1024];
        // The first two C3k2 rows have e=0.25, the others C2f's default 0.5.
        let hidden = std::array::from_fn(|i| outputs[i] / if i < 2 { 4 } else { 2 });
        Some(Yolo11Dims {
            widths,
            blocks: [repeats; 8],
            hidden,
            c3k,
            psa_blocks: repeats,
            head: HeadDims::standard([c256, c512, c1024], num_classes),
        })
    }

    /// The sizes a checkpoint's shapes spell out; `None` if it holds no YOLO11 layout.
    pub(crate) fn from_weights(w: &Weights) -> Option<Self> {
        let dim0 = |name: &str| w.shape(name).and_then(|s| s.first().copied());
        let mut widths = [0; 5];
        for (slot, layer) in widths.iter_mut().zip([0, 1, 3, 5, 7]) {
            *slot = dim0(&format!("model.{layer}.conv.weight"))?;
        }
        let count = |prefix: &str, leaf: &str| {
            (0..)
                .take_while(|k| w.contains(&format!("{prefix}.m.{k}.{leaf}")))
                .count()
        };
        let mut hidden = [0; 8];
        for (slot, layer) in hidden.iter_mut().zip(C3K2_LAYERS) {
            *slot = dim0(&format!("model.{layer}.cv1.conv.weight"))? / 2;
        }
        let [_, _, c256, c512, c1024] = widths;
        Some(Yolo11Dims {
            widths,
            blocks: C3K2_LAYERS.map(|l| count(&format!("model.{l}"), "cv1.conv.weight")),
            hidden,
            c3k: C3K2_LAYERS.map(|l| w.contains(&format!("model.{l}.m.0.m.0.cv1.conv.weight"))),
            psa_blocks: count(PSA, "attn.qkv.conv.weight"),
            head: HeadDims::from_weights(w, HEAD, [c256, c512, c1024], ClassBranch::Depthwise)?,
        })
    }
}

/// CSP bottleneck with three convolutions and 3x3 bottlenecks (`C3k`): `cv1` feeds the
/// bottlenecks, `cv2` the bypass, `cv3` fuses both.
struct C3k {
    cv1: Conv,
    cv2: Conv,
    cv3: Conv,
    blocks: Vec<Bottleneck>,
}

impl C3k {
    fn load(w: &Weights, prefix: &str, c: usize, n: usize) -> Result<Self, ModelError> {
        let half = c / 2;
        let blocks = (0..n)
            .map(|i| Bottleneck::load(w, &format!("{prefix}.m.{i}"), (half, half), true))
            .collect::<Result<_, _>>()?;
        Ok(C3k {
            cv1: conv(w, &format!("{prefix}.cv1"), (c, half, 1, 1), true)?,
            cv2: conv(w, &format!("{prefix}.cv2"), (c, half, 1, 1), true)?,
            cv3: conv(w, &format!("{prefix}.cv3"), (2 * half, c, 1, 1), true)?,
            blocks,
        })
    }
}

impl Block for C3k {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut main = self.cv1.forward(xs)?;
        for b in &self.blocks {
            main = b.forward(&main)?;
        }
        let bypass = self.cv2.forward(xs)?;
        self.cv3.forward_concat(&[&main, &bypass])
    }
}

/// The C3k2 at `layers[i]`: a C2f whose blocks are C3k or bottlenecks of half width.
fn c3k2(
    w: &Weights,
    dims: &Yolo11Dims,
    i: usize,
    (c_in, c_out): (usize, usize),
) -> Result<C2f, ModelError> {
    let prefix = format!("model.{}", C3K2_LAYERS[i]);
    let c = dims.hidden[i];
    let blocks = (0..dims.blocks[i])
        .map(|k| -> Result<Box<dyn Block>, ModelError> {
            let p = format!("{prefix}.m.{k}");
            Ok(if dims.c3k[i] {
                Box::new(C3k::load(w, &p, c, C3K_BLOCKS)?)
            } else {
                Box::new(Bottleneck::load(w, &p, (c, c / 2), true)?)
            })
        })
        .collect::<Result<_, _>>()?;
    C2f::load(w, &prefix, (c_in, c, c_out), blocks)
}

/// YOLO11's backbone and neck.
struct Yolo11Trunk {
    /// Layers 0, 1, 3, 5, 7 (stride 2 each), then 17 and 20 (the neck's way down).
    convs: [Conv; 7],
    c3k2: [C2f; 8],
    sppf: Sppf,
    psa: C2Psa,
}

impl Yolo11Trunk {
    fn load(w: &Weights, dims: &Yolo11Dims) -> Result<Self, ModelError> {
        let [c64, c128, c256, c512, c1024] = dims.widths;
        let layer = |i: usize| format!("model.{i}");
        let down =
            |i: usize, c_in: usize, c_out: usize| conv(w, &layer(i), (c_in, c_out, 3, 2), true);
        let convs = [
            down(0, 3, c64)?,
            down(1, c64, c128)?,
            down(3, c256, c256)?,
            down(5, c512, c512)?,
            down(7, c512, c1024)?,
            down(17, c256, c256)?,
            down(20, c512, c512)?,
        ];
        let sizes = [
            (c128, c256),
            (c256, c512),
            (c512, c512),
            (c1024, c1024),
            (c1024 + c512, c512),
            (c512 + c512, c256),
            (c256 + c512, c512),
            (c512 + c1024, c1024),
        ];
        let block = |i: usize| c3k2(w, dims, i, sizes[i]);
        let blocks = [
            block(0)?,
            block(1)?,
            block(2)?,
            block(3)?,
            block(4)?,
            block(5)?,
            block(6)?,
            block(7)?,
        ];
        Ok(Yolo11Trunk {
            convs,
            c3k2: blocks,
            sppf: Sppf::load(w, &layer(9), c1024)?,
            psa: C2Psa::load(w, PSA, c1024, dims.psa_blocks)?,
        })
    }
}

impl Trunk for Yolo11Trunk {
    fn features(&self, xs: &Tensor) -> candle_core::Result<[Tensor; 3]> {
        let [l0, l1, l3, l5, l7, l17, l20] = &self.convs;
        let m = &self.c3k2;
        let x = m[0].forward(&l1.forward(&l0.forward(xs)?)?)?;
        let p3 = m[1].forward(&l3.forward(&x)?)?;
        let p4 = m[2].forward(&l5.forward(&p3)?)?;
        let x = m[3].forward(&l7.forward(&p4)?)?;
        let p5 = self.psa.forward(&self.sppf.forward(&x)?)?;
        let up = upsample_nearest(&p5, 2)?;
        let n13 = m[4].forward(&Tensor::cat(&[&up, &p4], 3)?)?;
        let up = upsample_nearest(&n13, 2)?;
        let out16 = m[5].forward(&Tensor::cat(&[&up, &p3], 3)?)?;
        let down = l17.forward(&out16)?;
        let out19 = m[6].forward(&Tensor::cat(&[&down, &n13], 3)?)?;
        let down = l20.forward(&out19)?;
        let out22 = m[7].forward(&Tensor::cat(&[&down, &p5], 3)?)?;
        Ok([out16, out19, out22])
    }
}

/// Builds `name` from `w`: sizes from the tensor shapes, or from the scale name for synthetic
/// weights (`num_classes` classes).
pub(crate) fn load(
    name: &str,
    w: &Weights,
    num_classes: usize,
) -> Result<UltralyticsYolo, ModelError> {
    let named = Yolo11Dims::for_scale(name, num_classes);
    let dims = match (Yolo11Dims::from_weights(w), named) {
        (Some(found), Some(named))
            if (found.widths, found.blocks, found.c3k) != (named.widths, named.blocks, named.c3k) =>
        {
            return Err(ModelError::Unsupported(format!(
                "config.json `architecture` is {name}, but the checkpoint's layer widths {:?}, C3k2 \
                 depths {:?} and C3k flags {:?} are not that scale's {:?} / {:?} / {:?} (use \
                 `yolo11` to take sizes from the checkpoint)",
                found.widths, found.blocks, found.c3k, named.widths, named.blocks, named.c3k
            )))
        }
        (Some(found), _) => found,
        (None, Some(named)) => named,
        (None, None) => {
            // Let the missing-tensor error (with its hint) explain what is wrong.
            w.get("model.0.conv.weight", &[0])?;
            w.get(&format!("{HEAD}.cv3.0.0.1.conv.weight"), &[0])?;
            return Err(ModelError::Unsupported(
                "`yolo11` needs a checkpoint to size the network".into(),
            ));
        }
    };
    let trunk = Yolo11Trunk::load(w, &dims)?;
    let head = Head::load(w, HEAD, dims.head, ClassBranch::Depthwise)?;
    Ok(UltralyticsYolo::new(Box::new(trunk), head))
}

/// The YOLO11 a package names, with its declared classes (COCO's 80 when it declares none).
fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    let classes = args.num_classes.unwrap_or(COCO.len());
    Ok(Box::new(load(args.name, args.weights, classes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_match_the_ultralytics_yaml() {
        let n = Yolo11Dims::for_scale("yolo11n", 80).expect("n");
        assert_eq!(n.widths, [16, 32, 64, 128, 256]);
        assert_eq!(n.blocks, [1; 8]);
        assert_eq!(n.hidden, [16, 32, 64, 128, 64, 32, 64, 128]);
        assert_eq!(n.c3k, [false, false, true, true, false, false, false, true]);
        assert_eq!((n.head.box_channels, n.head.class_channels), (64, 80));
        let m = Yolo11Dims::for_scale("yolo11m", 80).expect("m");
        assert_eq!(m.widths, [64, 128, 256, 512, 512]);
        assert_eq!(m.c3k, [true; 8]);
        let x = Yolo11Dims::for_scale("yolo11x", 80).expect("x");
        assert_eq!(x.widths, [96, 192, 384, 768, 768]);
        assert_eq!((x.blocks, x.psa_blocks), ([2; 8], 2));
        assert!(Yolo11Dims::for_scale("yolo11", 80).is_none());
    }
}
