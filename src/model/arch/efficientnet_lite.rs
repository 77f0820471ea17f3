//! EfficientNet-Lite0..4 in both checkpoint flavours:
//! - the `efficientnet_lite_pytorch` package (lukemelas-style keys `_conv_stem`, `_blocks.N.*`,
//!   `_fc`; TF "same" padding; BN eps 1e-3), picked when `_conv_stem.weight` is present;
//! - timm (`conv_stem`, `blocks.{stage}.{i}.conv_dw`, `classifier`): `efficientnet_liteN` with
//!   PyTorch padding and BN eps 1e-5, `tf_efficientnet_liteN` with TF "same" padding and 1e-3.
//!
//! Lite models keep the stem (32) and head (1280) widths and the repeats of the first and last
//! stage fixed, use ReLU6 and no squeeze-excitation.
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.15/timm/models/efficientnet.py
// (`_gen_efficientnet_lite`) and efficientnet_lite_pytorch 0.1.0 `model.py` / `utils.py`.

use candle_core::Tensor;

use super::{Backbone, BuildArgs, Network};
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{global_avg_pool, BatchNorm, Conv, ConvSpec, Linear};
use crate::model::ModelError;

pub(super) const NAMES: &[&str] = &[
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "tf_efficientnet_lite3",
    "tf_efficientnet_lite4",
];

/// (kernel, stride, expand ratio, output channels, repeats) per stage, before scaling.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
];
const STEM: usize = 32;
const HEAD: usize = 1280;

/// Key names of one checkpoint flavour.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `efficientnet_lite_pytorch`: flat block index, `_`-prefixed names.
    Lukemelas,
    /// timm: `blocks.{stage}.{index}`.
    Timm,
}

struct MbConv {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    has_skip: bool,
}

struct EfficientNetLite {
    stem: Conv,
    blocks: Vec<MbConv>,
    head: Conv,
}

/// TF's channel rounding: scale, round to a multiple of 8, never more than 10% down.
fn round_filters(channels: usize, width: f64) -> usize {
    if width == 1.0 {
        return channels;
    }
    let scaled = channels as f64 * width;
    let mut rounded = (((scaled + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * scaled {
        rounded += 8;
    }
    rounded
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let w = args.weights;
    let is_tf = args.name.starts_with("tf_");
    let variant = args
        .name
        .chars()
        .last()
        .and_then(|c| c.to_digit(10))
        .unwrap_or(0);
    let (width, depth) =
        [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8)][variant as usize];
    let flavour = if !is_tf && w.contains("_conv_stem.weight") {
        Flavour::Lukemelas
    } else {
        Flavour::Timm
    };
    let (padding, eps) = match (flavour, is_tf) {
        (Flavour::Timm, false) => (None, 1e-5),
        _ => (Some(Padding::TfSame), 1e-3),
    };
    let conv = |name: &str, bn: &str, spec: ConvSpec| {
        let spec = match padding {
            Some(p) => spec.pad(p),
            None => spec,
        };
        Conv::load(w, name, Some(BatchNorm { prefix: bn, eps }), spec)
    };
    let stem_spec = ConvSpec::new(3, STEM, 3, 2).act(Activation::Relu6);
    let stem = match flavour {
        Flavour::Lukemelas => conv("_conv_stem", "_bn0", stem_spec)?,
        Flavour::Timm => conv("conv_stem", "bn1", stem_spec)?,
    };
    let mut blocks = Vec::new();
    let mut c_in = STEM;
    for (stage, &(kernel, stride, expand, c_out, repeats)) in STAGES.iter().enumerate() {
        let c_out = round_filters(c_out, width);
        let repeats = if stage == 0 || stage == STAGES.len() - 1 {
            repeats
        } else {
            (repeats as f64 * depth).ceil() as usize
        };
        for i in 0..repeats {
            let stride = if i == 0 { stride } else { 1 };
            let block = MbConvSpec {
                c_in,
                c_out,
                kernel,
                stride,
                expand,
            };
            let names = block_names(flavour, (stage, i, blocks.len()), expand != 1);
            blocks.push(load_block(&conv, &names, block)?);
            c_in = c_out;
        }
    }
    let head_spec = ConvSpec::new(c_in, HEAD, 1, 1).act(Activation::Relu6);
    let (head, fc) = match flavour {
        Flavour::Lukemelas => (conv("_conv_head", "_bn1", head_spec)?, "_fc"),
        Flavour::Timm => (conv("conv_head", "bn2", head_spec)?, "classifier"),
    };
    let classifier = Linear::load(w, fc, (HEAD, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(EfficientNetLite { stem, blocks, head }),
        classifier,
        classifier_key: fc,
    })
}

#[derive(Clone, Copy)]
struct MbConvSpec {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
}

/// `(conv, bn)` key prefixes of a block's expand, depthwise and project convolutions.
struct BlockNames {
    expand: Option<(String, String)>,
    depthwise: (String, String),
    project: (String, String),
}

fn block_names(
    flavour: Flavour,
    (stage, index, flat): (usize, usize, usize),
    has_expand: bool,
) -> BlockNames {
    let pair = |p: &str, conv: &str, bn: &str| (format!("{p}.{conv}"), format!("{p}.{bn}"));
    match flavour {
        Flavour::Lukemelas => {
            let p = format!("_blocks.{flat}");
            BlockNames {
                expand: has_expand.then(|| pair(&p, "_expand_conv", "_bn0")),
                depthwise: pair(&p, "_depthwise_conv", "_bn1"),
                project: pair(&p, "_project_conv", "_bn2"),
            }
        }
        Flavour::Timm => {
            let p = format!("blocks.{stage}.{index}");
            if has_expand {
                BlockNames {
                    expand: Some(pair(&p, "conv_pw", "bn1")),
                    depthwise: pair(&p, "conv_dw", "bn2"),
                    project: pair(&p, "conv_pwl", "bn3"),
                }
            } else {
                // timm's DepthwiseSeparable block: conv_dw/bn1 then conv_pw/bn2.
                BlockNames {
                    expand: None,
                    depthwise: pair(&p, "conv_dw", "bn1"),
                    project: pair(&p, "conv_pw", "bn2"),
                }
            }
        }
    }
}

fn load_block<F>(conv: &F, names: &BlockNames, spec: MbConvSpec) -> Result<MbConv, ModelError>
where
    F: Fn(&str, &str, ConvSpec) -> Result<Conv, ModelError>,
{
    let mid = spec.c_in * spec.expand;
    let expand = match &names.expand {
        Some((c, bn)) => Some(conv(
            c,
            bn,
            ConvSpec::new(spec.c_in, mid, 1, 1).act(Activation::Relu6),
        )?),
        None => None,
    };
    let dw_spec = ConvSpec::new(mid, mid, spec.kernel, spec.stride)
        .depthwise()
        .act(Activation::Relu6);
    let depthwise = conv(&names.depthwise.0, &names.depthwise.1, dw_spec)?;
    let project = conv(
        &names.project.0,
        &names.project.1,
        ConvSpec::new(mid, spec.c_out, 1, 1),
    )?;
    let has_skip = spec.stride == 1 && spec.c_in == spec.c_out;
    Ok(MbConv {
        expand,
        depthwise,
        project,
        has_skip,
    })
}

impl Backbone for EfficientNetLite {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.stem.forward(xs)?;
        for block in &self.blocks {
            let mut ys = match &block.expand {
                Some(expand) => expand.forward(&xs)?,
                None => xs.clone(),
            };
            ys = block.depthwise.forward(&ys)?;
            xs = if block.has_skip {
                block.project.forward_add(&ys, &xs)?
            } else {
                block.project.forward(&ys)?
            };
        }
        global_avg_pool(&self.head.forward(&xs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::round_filters;

    #[test]
    fn channel_rounding_follows_tensorflow() {
        assert_eq!(round_filters(16, 1.1), 16);
        assert_eq!(round_filters(24, 1.2), 32);
        assert_eq!(round_filters(40, 1.4), 56);
        assert_eq!(round_filters(320, 1.4), 448);
    }
}
