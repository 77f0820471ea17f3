//! EfficientNet-Lite0..4 in both checkpoint flavours:
//! - the `efficientnet_lite_pytorch` package (lukemelas-style keys `_conv_stem`, `_blocks.N.*`,
//!   `_fc`; TF "same" padding; BN eps 1e-3), picked when `_conv_stem.weight` is present;
//! - timm (`conv_stem`, `blocks.{stage}.{i}.conv_dw`, `classifier`): `efficientnet_liteN` with
//!   PyTorch padding and BN eps 1e-5, `tf_efficientnet_liteN` with TF "same" padding and 1e-3.
//!
//! [`LiteTrunk`] (stem and blocks) also serves LR-ASPP, and [`trunk_tensors_timm`] renames a
//! classification checkpoint's trunk for it.
//!
//! Lite models keep the stem (32) and head (1280) widths and the repeats of the first and last
//! stage fixed, use ReLU6 and no squeeze-excitation.
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.15/timm/models/efficientnet.py
// (`_gen_efficientnet_lite`) and efficientnet_lite_pytorch 0.1.0 `model.py` / `utils.py`.

use candle_core::Tensor;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use super::scaling::{round_channels, scale_depth};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{global_avg_pool, inverted_residual, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

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
/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

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
    trunk: LiteTrunk,
    head: Conv,
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let w = args.weights;
    let (trunk, loader) = LiteTrunk::load(w, "", args.name)?;
    let head_spec = ConvSpec::new(trunk.channels, HEAD, 1, 1).act(Activation::Relu6);
    let (head, fc) = match loader.flavour {
        Flavour::Lukemelas => (loader.conv("_conv_head", "_bn1", head_spec)?, "_fc"),
        Flavour::Timm => (loader.conv("conv_head", "bn2", head_spec)?, "classifier"),
    };
    let classifier = Linear::load(w, fc, (HEAD, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(EfficientNetLite { trunk, head }),
        classifier,
        classifier_key: fc,
    })
}

/// How one checkpoint's convolutions load: its key flavour, key prefix, padding and BN eps.
struct Loader<'a> {
    weights: &'a Weights,
    prefix: &'a str,
    flavour: Flavour,
    padding: Option<Padding>,
    eps: f64,
}

impl Loader<'_> {
    fn conv(&self, name: &str, bn: &str, spec: ConvSpec) -> Result<Conv, ModelError> {
        let spec = match self.padding {
            Some(p) => spec.pad(p),
            None => spec,
        };
        let (name, bn) = (
            format!("{}{name}", self.prefix),
            format!("{}{bn}", self.prefix),
        );
        Conv::load(
            self.weights,
            &name,
            Some(BatchNorm {
                prefix: &bn,
                eps: self.eps,
            }),
            spec,
        )
    }
}

/// The stem and the MBConv blocks (no head convolution): what classification pools and what
/// LR-ASPP taps at two depths.
pub(crate) struct LiteTrunk {
    stem: Conv,
    blocks: Vec<MbConv>,
    /// Stage (0-based, timm's `blocks.{stage}`) of each block.
    stages: Vec<usize>,
    /// Output channels of each stage.
    stage_channels: Vec<usize>,
    /// Output channels of the last block.
    channels: usize,
}

/// Outputs of two stages of the trunk.
pub(crate) struct LiteFeatures {
    /// Output of stage `low_stage`.
    pub(crate) low: Tensor,
    /// Output of the last block.
    pub(crate) high: Tensor,
}

impl LiteTrunk {
    /// Loads the trunk of the Lite variant `name` (`efficientnet_liteN` or
    /// `tf_efficientnet_liteN`, with or without a leading `lraspp_`) under `prefix` (empty or
    /// ending with a dot), in either key flavour.
    fn load<'a>(
        w: &'a Weights,
        prefix: &'a str,
        name: &str,
    ) -> Result<(Self, Loader<'a>), ModelError> {
        let name = name.trim_start_matches("lraspp_");
        let is_tf = name.starts_with("tf_");
        let (width, depth) = multipliers(name);
        let flavour = if !is_tf && w.contains(&format!("{prefix}_conv_stem.weight")) {
            Flavour::Lukemelas
        } else {
            Flavour::Timm
        };
        let (padding, eps) = match (flavour, is_tf) {
            (Flavour::Timm, false) => (None, 1e-5),
            _ => (Some(Padding::TfSame), 1e-3),
        };
        let loader = Loader {
            weights: w,
            prefix,
            flavour,
            padding,
            eps,
        };
        let stem_spec = ConvSpec::new(3, STEM, 3, 2).act(Activation::Relu6);
        let stem = match flavour {
            Flavour::Lukemelas => loader.conv("_conv_stem", "_bn0", stem_spec)?,
            Flavour::Timm => loader.conv("conv_stem", "bn1", stem_spec)?,
        };
        let mut blocks = Vec::new();
        let mut stages = Vec::new();
        let mut stage_channels = Vec::new();
        let mut c_in = STEM;
        let repeats = stage_repeats(depth);
        for (stage, &(kernel, stride, expand, c_out, _)) in STAGES.iter().enumerate() {
            let c_out = round_channels(c_out, width);
            let repeats = repeats[stage];
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
                blocks.push(load_block(&loader, &names, block)?);
                stages.push(stage);
                c_in = c_out;
            }
            stage_channels.push(c_out);
        }
        let trunk = LiteTrunk {
            stem,
            blocks,
            stages,
            stage_channels,
            channels: c_in,
        };
        Ok((trunk, loader))
    }

    /// Loads the trunk of `name` under `prefix`, for a segmentation network.
    pub(crate) fn load_prefixed(w: &Weights, prefix: &str, name: &str) -> Result<Self, ModelError> {
        Ok(Self::load(w, prefix, name)?.0)
    }

    /// Output channels of stage `stage` (0-based).
    pub(crate) fn stage_channels(&self, stage: usize) -> usize {
        self.stage_channels[stage]
    }

    /// Output channels of the last block.
    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    /// `(n, h, w, 3)` NHWC -> the output of stage `low_stage` and of the last block.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        low_stage: usize,
    ) -> candle_core::Result<LiteFeatures> {
        let mut xs = self.stem.forward(xs)?;
        let mut low = None;
        for (i, block) in self.blocks.iter().enumerate() {
            xs = match &block.expand {
                Some(expand) => {
                    let convs = (expand, &block.depthwise, &block.project);
                    inverted_residual(&xs, convs, block.has_skip)?
                }
                None => {
                    let ys = block.depthwise.forward(&xs)?;
                    if block.has_skip {
                        block.project.forward_add(&ys, &xs)?
                    } else {
                        block.project.forward(&ys)?
                    }
                }
            };
            let stage_ends = self.stages.get(i + 1) != Some(&self.stages[i]);
            if stage_ends && self.stages[i] == low_stage {
                low = Some(xs.clone());
            }
        }
        Ok(LiteFeatures {
            low: low.unwrap_or_else(|| xs.clone()),
            high: xs,
        })
    }
}

/// Width and depth multipliers of Lite variant `name` (`..._liteN`).
fn multipliers(name: &str) -> (f64, f64) {
    let variant = name
        .chars()
        .last()
        .and_then(|c| c.to_digit(10))
        .filter(|v| *v <= 4)
        .unwrap_or(0);
    [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8)][variant as usize]
}

/// Blocks per stage of a variant with depth multiplier `depth`.
fn stage_repeats(depth: f64) -> Vec<usize> {
    STAGES
        .iter()
        .enumerate()
        .map(|(stage, s)| {
            if stage == 0 || stage == STAGES.len() - 1 {
                s.4
            } else {
                scale_depth(s.4, depth)
            }
        })
        .collect()
}

/// The trunk of an EfficientNet-Lite classification checkpoint (`architecture` as configured)
/// under timm's key names (`conv_stem`, `bn1`, `blocks.{stage}.{i}.*`), without the head
/// convolution and the classifier: what the `lraspp_*efficientnet_lite*` networks read under
/// `backbone.`.
pub(crate) fn trunk_tensors_timm(
    weights: &Weights,
    architecture: &str,
) -> Result<LiteTrunkTensors, ModelError> {
    if !NAMES.contains(&architecture) {
        return Err(ModelError::Unsupported(format!(
            "`{architecture}` is not an EfficientNet-Lite ({})",
            NAMES.join(", ")
        )));
    }
    let lukemelas = !architecture.starts_with("tf_") && weights.contains("_conv_stem.weight");
    let variant = architecture.trim_start_matches("tf_");
    let trunk_name = if lukemelas || architecture.starts_with("tf_") {
        format!("tf_{variant}")
    } else {
        variant.to_string()
    };
    // Flat lukemelas block index -> (stage, index in stage).
    let mut position = Vec::new();
    for (stage, &repeats) in stage_repeats(multipliers(architecture).1)
        .iter()
        .enumerate()
    {
        position.extend((0..repeats).map(|i| (stage, i)));
    }
    let mut out = std::collections::HashMap::new();
    for name in weights.names() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let renamed = if lukemelas {
            lukemelas_to_timm(name, &position)
        } else {
            ["conv_stem.", "bn1.", "blocks."]
                .iter()
                .any(|p| name.starts_with(p))
                .then(|| name.to_string())
        };
        if let Some(new_name) = renamed {
            let shape = weights.shape(name).unwrap_or_default().to_vec();
            out.insert(new_name, weights.get(name, &shape)?);
        }
    }
    let width = multipliers(architecture).0;
    Ok(LiteTrunkTensors {
        tensors: out,
        trunk: trunk_name,
        low_channels: round_channels(STAGES[2].3, width),
        high_channels: round_channels(STAGES[STAGES.len() - 1].3, width),
    })
}

/// A Lite trunk renamed for LR-ASPP (see [`trunk_tensors_timm`]).
pub(crate) struct LiteTrunkTensors {
    /// Trunk tensors under timm names, without prefix.
    pub(crate) tensors: std::collections::HashMap<String, Tensor>,
    /// The Lite variant whose padding and BN epsilon the weights need:
    /// `tf_efficientnet_liteN` for lukemelas checkpoints (TF "same" padding, eps 1e-3) and
    /// `tf_` names, else `efficientnet_liteN`.
    pub(crate) trunk: String,
    /// Channels of stage `blocks.2` (LR-ASPP's low features).
    pub(crate) low_channels: usize,
    /// Channels of the last stage (LR-ASPP's high features).
    pub(crate) high_channels: usize,
}

/// A lukemelas trunk key under timm's name (`None` for the head and classifier).
fn lukemelas_to_timm(name: &str, position: &[(usize, usize)]) -> Option<String> {
    if let Some(rest) = name.strip_prefix("_conv_stem.") {
        return Some(format!("conv_stem.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("_bn0.") {
        return Some(format!("bn1.{rest}"));
    }
    let rest = name.strip_prefix("_blocks.")?;
    let (flat, rest) = rest.split_once('.')?;
    let &(stage, index) = position.get(flat.parse::<usize>().ok()?)?;
    let (module, leaf) = rest.split_once('.')?;
    // Stage 0 is timm's DepthwiseSeparable block (no expansion): conv_dw/bn1, conv_pw/bn2.
    let has_expand = stage > 0;
    let timm = match (module, has_expand) {
        ("_expand_conv", _) => "conv_pw",
        ("_bn0", _) => "bn1",
        ("_depthwise_conv", _) => "conv_dw",
        ("_bn1", true) => "bn2",
        ("_bn1", false) => "bn1",
        ("_project_conv", true) => "conv_pwl",
        ("_project_conv", false) => "conv_pw",
        ("_bn2", true) => "bn3",
        ("_bn2", false) => "bn2",
        _ => return None,
    };
    Some(format!("blocks.{stage}.{index}.{timm}.{leaf}"))
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

fn load_block(
    loader: &Loader<'_>,
    names: &BlockNames,
    spec: MbConvSpec,
) -> Result<MbConv, ModelError> {
    let conv = |name: &str, bn: &str, spec: ConvSpec| loader.conv(name, bn, spec);
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
        let last = STAGES.len() - 1;
        let features = self.trunk.forward(xs, last)?;
        global_avg_pool(&self.head.forward(&features.high)?)
    }
}
