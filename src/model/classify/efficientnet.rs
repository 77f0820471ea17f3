//! EfficientNet B0-B7 and EfficientNetV2-S classifiers, from torchvision and timm checkpoints:
//! - torchvision `efficientnet_b0` ... `efficientnet_b7`, `efficientnet_v2_s` (keys
//!   `features.*`, `classifier.1`; PyTorch padding; BN eps 1e-5 for B0-B4, 1e-3 for B5-B7 and
//!   V2-S);
//! - timm `efficientnet_b0` ... `efficientnet_b7` (the same names: told apart by timm's
//!   `conv_stem.weight`) and `efficientnetv2_rw_s`, with PyTorch padding and eps 1e-5;
//!   `tf_efficientnet_b0` ... `tf_efficientnet_b7` and `tf_efficientnetv2_s`, ported from
//!   TensorFlow: TF "same" padding, eps 1e-3.
//!
//! B1-B7 scale B0's channels (rounded to multiples of 8, stem and head included) and every
//! stage's depth (rounded up); the blocks are in `efficientnet_blocks.rs`.
//!
//! [`EfficientNetTrunk`] (stem and blocks, no head) also serves segmentation_models_pytorch's
//! U-Net and FPN encoders, from timm's keys or the lukemelas `efficientnet_pytorch` port's
//! ([`TrunkKeys`]).
// Based on timm 1.0.31 `timm/models/efficientnet.py` (`_gen_efficientnet`,
// `_gen_efficientnetv2_s`) and torchvision 0.29 `torchvision/models/efficientnet.py`
// (read, not copied).

use candle_core::Tensor;

use super::efficientnet_blocks::{Block, BlockAt, BlockSpec, Keys, Kind, Loader};
use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use super::scaling::{round_channels, scale_depth};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{global_avg_pool, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &[
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "tf_efficientnet_b0",
    "tf_efficientnet_b1",
    "tf_efficientnet_b2",
    "tf_efficientnet_b3",
    "tf_efficientnet_b4",
    "tf_efficientnet_b5",
    "tf_efficientnet_b6",
    "tf_efficientnet_b7",
    "efficientnet_v2_s",
    "tf_efficientnetv2_s",
    "efficientnetv2_rw_s",
];

/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// One stage before scaling: its blocks' kind, kernel, first stride, expansion ratio, output
/// channels, repeats and squeeze-excitation.
struct Stage {
    kind: Kind,
    kernel: usize,
    stride: usize,
    expand: usize,
    c_out: usize,
    repeats: usize,
    se: bool,
}

const fn stage(
    kind: Kind,
    (kernel, stride, expand): (usize, usize, usize),
    (c_out, repeats): (usize, usize),
    se: bool,
) -> Stage {
    Stage {
        kind,
        kernel,
        stride,
        expand,
        c_out,
        repeats,
        se,
    }
}

/// EfficientNet-B0.
const B0: &[Stage] = &[
    stage(Kind::MbConv, (3, 1, 1), (16, 1), true),
    stage(Kind::MbConv, (3, 2, 6), (24, 2), true),
    stage(Kind::MbConv, (5, 2, 6), (40, 2), true),
    stage(Kind::MbConv, (3, 2, 6), (80, 3), true),
    stage(Kind::MbConv, (5, 1, 6), (112, 3), true),
    stage(Kind::MbConv, (5, 2, 6), (192, 4), true),
    stage(Kind::MbConv, (3, 1, 6), (320, 1), true),
];

/// EfficientNetV2-S as published (torchvision, timm `tf_efficientnetv2_s`).
const V2_S: &[Stage] = &[
    stage(Kind::Conv, (3, 1, 1), (24, 2), false),
    stage(Kind::Fused, (3, 2, 4), (48, 4), false),
    stage(Kind::Fused, (3, 2, 4), (64, 4), false),
    stage(Kind::MbConv, (3, 2, 4), (128, 6), true),
    stage(Kind::MbConv, (3, 1, 6), (160, 9), true),
    stage(Kind::MbConv, (3, 2, 6), (256, 15), true),
];

/// timm's own `efficientnetv2_rw_s`: a fused first stage, 272 channels at the end.
const V2_RW_S: &[Stage] = &[
    stage(Kind::Fused, (3, 1, 1), (24, 2), false),
    stage(Kind::Fused, (3, 2, 4), (48, 4), false),
    stage(Kind::Fused, (3, 2, 4), (64, 4), false),
    stage(Kind::MbConv, (3, 2, 4), (128, 6), true),
    stage(Kind::MbConv, (3, 1, 6), (160, 9), true),
    stage(Kind::MbConv, (3, 2, 6), (272, 15), true),
];

/// A network's layout: stages, stem and head widths before scaling, and the multipliers.
struct Variant {
    stages: &'static [Stage],
    stem: usize,
    head: usize,
    width: f64,
    depth: f64,
}

/// The layout of architecture `name` (one of [`NAMES`]).
fn variant(name: &str) -> Variant {
    let b = |width, depth| Variant {
        stages: B0,
        stem: 32,
        head: 1280,
        width,
        depth,
    };
    let v2 = |stages, head| Variant {
        stages,
        stem: 24,
        head,
        width: 1.0,
        depth: 1.0,
    };
    match name.trim_start_matches("tf_") {
        "efficientnet_v2_s" | "efficientnetv2_s" => v2(V2_S, 1280),
        "efficientnetv2_rw_s" => v2(V2_RW_S, 1792),
        "efficientnet_b1" => b(1.0, 1.1),
        "efficientnet_b2" => b(1.1, 1.2),
        "efficientnet_b3" => b(1.2, 1.4),
        "efficientnet_b4" => b(1.4, 1.8),
        "efficientnet_b5" => b(1.6, 2.2),
        "efficientnet_b6" => b(1.8, 2.6),
        "efficientnet_b7" => b(2.0, 3.1),
        _ => b(1.0, 1.0),
    }
}

/// Whose keys, padding and batch norm epsilon a checkpoint of `name` has. The plain
/// `efficientnet_bN` names are torchvision's and timm's alike: timm's keys start with
/// `conv_stem`.
fn loader_for<'a>(name: &str, weights: &'a Weights) -> Loader<'a> {
    const TF_EPS: f64 = 1e-3;
    const TORCH_EPS: f64 = 1e-5;
    let (keys, padding, eps) = if name.starts_with("tf_") {
        (Keys::Timm, Some(Padding::TfSame), TF_EPS)
    } else if name == "efficientnetv2_rw_s" || weights.contains("conv_stem.weight") {
        (Keys::Timm, None, TORCH_EPS)
    } else {
        // torchvision took B5-B7 and V2 from TensorFlow ports, with their epsilon.
        let tf_port = matches!(
            name,
            "efficientnet_b5" | "efficientnet_b6" | "efficientnet_b7" | "efficientnet_v2_s"
        );
        (
            Keys::Torchvision,
            None,
            if tf_port { TF_EPS } else { TORCH_EPS },
        )
    };
    Loader {
        weights,
        prefix: "",
        keys,
        padding,
        eps,
    }
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let variant = variant(args.name);
    let loader = loader_for(args.name, args.weights);
    let trunk = EfficientNetTrunk::load_with(&loader, &variant)?;
    let c_in = trunk.channels();
    let head_channels = round_channels(variant.head, variant.width);
    let head = loader.conv(
        &loader.keys.head(variant.stages.len()),
        ConvSpec::new(c_in, head_channels, 1, 1).act(Activation::Silu),
    )?;
    let classifier_key = loader.keys.classifier();
    let classifier = Linear::load(
        args.weights,
        classifier_key,
        (head_channels, args.num_classes),
    )?;
    Ok(Network {
        backbone: Box::new(EfficientNet { trunk, head }),
        classifier,
        classifier_key,
    })
}

/// Whose key names a segmentation encoder's EfficientNet trunk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrunkKeys {
    /// timm `efficientnet_bN` (smp's `timm-efficientnet-bN`): PyTorch padding, eps 1e-5.
    Timm,
    /// The lukemelas `efficientnet_pytorch` port (smp's `efficientnet-bN`): TF "same"
    /// padding, eps 1e-3. The port pads statically for its 224-pixel (B0) training size;
    /// on inputs whose sides are multiples of 32 every stride-2 convolution sees an even
    /// size, where that padding and TF "same" are the same `(k - 2) / 2` before, the rest
    /// after.
    Lukemelas,
}

/// The stem and the blocks of an EfficientNet, without the head convolution.
pub(crate) struct EfficientNetTrunk {
    stem: Conv,
    blocks: Vec<Block>,
    /// Output channels of the stem.
    stem_channels: usize,
    /// Output channels of each block.
    block_channels: Vec<usize>,
}

impl EfficientNetTrunk {
    /// Loads the trunk of `name` (`efficientnet_b0` .. `efficientnet_b7`) under `prefix`
    /// (empty or ending with a dot) with the key names `keys`.
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        name: &str,
        keys: TrunkKeys,
    ) -> Result<Self, ModelError> {
        if !name.starts_with("efficientnet_b") || !NAMES.contains(&name) {
            return Err(ModelError::Unsupported(format!(
                "`{name}` is not an EfficientNet B0-B7 trunk"
            )));
        }
        let (keys, padding, eps) = match keys {
            TrunkKeys::Timm => (Keys::Timm, None, 1e-5),
            TrunkKeys::Lukemelas => (Keys::Lukemelas, Some(Padding::TfSame), 1e-3),
        };
        let loader = Loader {
            weights,
            prefix,
            keys,
            padding,
            eps,
        };
        Self::load_with(&loader, &variant(name))
    }

    fn load_with(loader: &Loader<'_>, variant: &Variant) -> Result<Self, ModelError> {
        let stem_channels = round_channels(variant.stem, variant.width);
        let stem = loader.conv(
            &loader.keys.stem(),
            ConvSpec::new(3, stem_channels, 3, 2).act(Activation::Silu),
        )?;
        let mut blocks = Vec::new();
        let mut block_channels = Vec::new();
        let mut c_in = stem_channels;
        for (stage, s) in variant.stages.iter().enumerate() {
            let c_out = round_channels(s.c_out, variant.width);
            for index in 0..scale_depth(s.repeats, variant.depth) {
                let spec = BlockSpec {
                    kind: s.kind,
                    kernel: s.kernel,
                    stride: if index == 0 { s.stride } else { 1 },
                    expand: s.expand,
                    c_in,
                    c_out,
                    se: s.se,
                };
                let at = BlockAt {
                    stage,
                    index,
                    flat: blocks.len(),
                };
                blocks.push(Block::load(loader, at, spec)?);
                block_channels.push(c_out);
                c_in = c_out;
            }
        }
        Ok(EfficientNetTrunk {
            stem,
            blocks,
            stem_channels,
            block_channels,
        })
    }

    /// Output channels of the last block.
    pub(crate) fn channels(&self) -> usize {
        self.block_channels
            .last()
            .copied()
            .unwrap_or(self.stem_channels)
    }

    /// Output channels of the stem.
    pub(crate) fn stem_channels(&self) -> usize {
        self.stem_channels
    }

    /// Output channels of block `index` (0-based over the whole trunk), if there is one.
    pub(crate) fn block_channels(&self, index: usize) -> Option<usize> {
        self.block_channels.get(index).copied()
    }

    /// `(n, h, w, 3)` NHWC -> the stem's output, then the output of each block in `taps`
    /// (increasing block indices). Blocks after the last tap are not run.
    pub(crate) fn forward_taps(
        &self,
        xs: &Tensor,
        taps: &[usize],
    ) -> candle_core::Result<Vec<Tensor>> {
        let mut xs = self.stem.forward(xs)?;
        let mut out = Vec::with_capacity(taps.len() + 1);
        out.push(xs.clone());
        let Some(&last) = taps.last() else {
            return Ok(out);
        };
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            xs = block.forward(&xs)?;
            if taps.contains(&i) {
                out.push(xs.clone());
            }
        }
        Ok(out)
    }

    /// `(n, h, w, 3)` NHWC -> the last block's output.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.stem.forward(xs)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        Ok(xs)
    }
}

struct EfficientNet {
    trunk: EfficientNetTrunk,
    head: Conv,
}

impl Backbone for EfficientNet {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        global_avg_pool(&self.head.forward(&self.trunk.forward(xs)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stem, head and block counts of the published networks (timm's and torchvision's model
    /// summaries agree on them).
    #[test]
    fn variants_scale_as_published() {
        let blocks = |name: &str| {
            let v = variant(name);
            v.stages
                .iter()
                .map(|s| scale_depth(s.repeats, v.depth))
                .sum::<usize>()
        };
        let widths = |name: &str| {
            let v = variant(name);
            (
                round_channels(v.stem, v.width),
                round_channels(v.head, v.width),
            )
        };
        assert_eq!(
            (blocks("efficientnet_b0"), widths("efficientnet_b0")),
            (16, (32, 1280))
        );
        assert_eq!(
            (blocks("efficientnet_b2"), widths("tf_efficientnet_b2")),
            (23, (32, 1408))
        );
        assert_eq!(
            (blocks("efficientnet_b4"), widths("efficientnet_b4")),
            (32, (48, 1792))
        );
        assert_eq!(
            (blocks("efficientnet_b7"), widths("efficientnet_b7")),
            (55, (64, 2560))
        );
        assert_eq!(
            (blocks("efficientnet_v2_s"), widths("tf_efficientnetv2_s")),
            (40, (24, 1280))
        );
        assert_eq!(widths("efficientnetv2_rw_s"), (24, 1792));
    }

    #[test]
    fn the_library_is_read_from_the_name_and_the_keys() {
        let empty = Weights::synthetic();
        let tv = loader_for("efficientnet_b0", &empty);
        assert_eq!((tv.keys, tv.eps), (Keys::Torchvision, 1e-5));
        assert_eq!(loader_for("efficientnet_b5", &empty).eps, 1e-3);
        let tf = loader_for("tf_efficientnet_b0", &empty);
        assert_eq!(
            (tf.keys, tf.padding, tf.eps),
            (Keys::Timm, Some(Padding::TfSame), 1e-3)
        );
        let stem = candle_core::Tensor::zeros(
            (32, 3, 3, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .expect("zeros");
        let timm = Weights::from_tensors([("conv_stem.weight".to_string(), stem)].into());
        let b5 = loader_for("efficientnet_b5", &timm);
        assert_eq!((b5.keys, b5.padding, b5.eps), (Keys::Timm, None, 1e-5));
    }
}
