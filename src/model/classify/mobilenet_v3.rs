//! MobileNetV3 Large and Small (width 1.0) with torchvision key names: the classifiers
//! `mobilenet_v3_large` / `mobilenet_v3_small`, and the trunk the segmentation models use
//! (`mobilenet_v3_large(dilated=True).features` under a prefix).
//!
//! `features.0` stem (3x3 s2, hardswish), `features.1..` inverted residual blocks (`block.{j}` =
//! optional 1x1 expand, depthwise, optional squeeze-excitation `fc1`/`fc2`, 1x1 projection),
//! then the 1x1 conv to 6x the last block's channels (960 Large, 576 Small). BatchNorm eps is
//! 0.001 (not PyTorch's default 1e-5). The classifier pools, runs `classifier.0` (a linear layer
//! to 1280 / 1024 features) with hardswish, and `classifier.3` is the head (`classifier.2` is
//! dropout). With `dilated`, the last stage (C4) trades its stride for dilation 2: output
//! stride 16.
// Based on torchvision 0.29 `torchvision/models/mobilenetv3.py` (read, not copied).

use candle_core::{Module, Tensor};

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use super::scaling::make_divisible;
use super::squeeze_excitation::{self, SeSpec, SqueezeExcitation};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{
    expand_depthwise, global_avg_pool, inverted_residual, BatchNorm, Conv, ConvSpec,
};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &[
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
];

/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Checkpoint prefix of the final linear layer (`classifier.0` is the hidden linear layer,
/// `classifier.1` hardswish, `classifier.2` dropout).
const CLASSIFIER_KEY: &str = "classifier.3";

/// One inverted-residual setting: input, kernel, expanded, output channels, squeeze-excitation,
/// hardswish (else ReLU), stride, and whether the block is in the dilatable last stage.
struct BlockSetting {
    c_in: usize,
    kernel: usize,
    expanded: usize,
    c_out: usize,
    se: bool,
    hardswish: bool,
    stride: usize,
    last_stage: bool,
}

// One argument per column of torchvision's table keeps the table below readable.
#[allow(clippy::too_many_arguments)]
const fn b(
    c_in: usize,
    kernel: usize,
    expanded: usize,
    c_out: usize,
    se: bool,
    hardswish: bool,
    stride: usize,
    last_stage: bool,
) -> BlockSetting {
    BlockSetting {
        c_in,
        kernel,
        expanded,
        c_out,
        se,
        hardswish,
        stride,
        last_stage,
    }
}

/// torchvision's `mobilenet_v3_large` table.
const LARGE: &[BlockSetting] = &[
    b(16, 3, 16, 16, false, false, 1, false),
    b(16, 3, 64, 24, false, false, 2, false), // C1
    b(24, 3, 72, 24, false, false, 1, false),
    b(24, 5, 72, 40, true, false, 2, false), // C2
    b(40, 5, 120, 40, true, false, 1, false),
    b(40, 5, 120, 40, true, false, 1, false),
    b(40, 3, 240, 80, false, true, 2, false), // C3
    b(80, 3, 200, 80, false, true, 1, false),
    b(80, 3, 184, 80, false, true, 1, false),
    b(80, 3, 184, 80, false, true, 1, false),
    b(80, 3, 480, 112, true, true, 1, false),
    b(112, 3, 672, 112, true, true, 1, false),
    b(112, 5, 672, 160, true, true, 2, true), // C4
    b(160, 5, 960, 160, true, true, 1, true),
    b(160, 5, 960, 160, true, true, 1, true),
];

/// torchvision's `mobilenet_v3_small` table.
const SMALL: &[BlockSetting] = &[
    b(16, 3, 16, 16, true, false, 2, false),  // C1
    b(16, 3, 72, 24, false, false, 2, false), // C2
    b(24, 3, 88, 24, false, false, 1, false),
    b(24, 5, 96, 40, true, true, 2, false), // C3
    b(40, 5, 240, 40, true, true, 1, false),
    b(40, 5, 240, 40, true, true, 1, false),
    b(40, 5, 120, 48, true, true, 1, false),
    b(48, 5, 144, 48, true, true, 1, false),
    b(48, 5, 288, 96, true, true, 2, true), // C4
    b(96, 5, 576, 96, true, true, 1, true),
    b(96, 5, 576, 96, true, true, 1, true),
];

/// Which of the two published networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    Large,
    Small,
}

impl Size {
    fn blocks(self) -> &'static [BlockSetting] {
        match self {
            Size::Large => LARGE,
            Size::Small => SMALL,
        }
    }

    /// Channels of the final 1x1 convolution: six times the last block's.
    fn head_channels(self) -> usize {
        6 * self.blocks().last().map_or(0, |s| s.c_out)
    }

    /// Blocks per stage in timm's `arch_def` (the head is one stage more).
    fn timm_stages(self) -> &'static [usize] {
        match self {
            Size::Large => &[1, 2, 3, 4, 2, 3],
            Size::Small => &[1, 2, 3, 2, 3],
        }
    }

    /// timm's `(stage, index)` of block `i` of the table.
    fn timm_stage(self, mut i: usize) -> (usize, usize) {
        for (stage, &count) in self.timm_stages().iter().enumerate() {
            if i < count {
                return (stage, i);
            }
            i -= count;
        }
        (self.timm_stages().len(), i)
    }

    /// Features of the classifier's hidden linear layer (torchvision's `last_channel`).
    fn hidden_features(self) -> usize {
        match self {
            Size::Large => 1280,
            Size::Small => 1024,
        }
    }
}

/// Whose checkpoint names the trunk's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// `features.{i}.block.{j}.{0,1}` (conv, batch norm), `fc1` / `fc2`; batch norm eps 1e-3.
    Torchvision,
    /// timm's `conv_stem` / `bn1`, `blocks.{stage}.{i}.conv_pw` / `conv_dw` / `conv_pwl` with
    /// `bn1..3`, `se.conv_reduce` / `se.conv_expand`, the last stage's `conv` / `bn1`; eps 1e-5.
    Timm,
}

/// `(conv, batch norm)` names of one block's convolutions, and its SE's (reduce, expand).
struct BlockNames {
    expand: Option<(String, String)>,
    depthwise: (String, String),
    se: (String, String),
    project: (String, String),
}

impl Keys {
    fn bn_eps(self) -> f64 {
        match self {
            Keys::Torchvision => 0.001,
            Keys::Timm => 1e-5,
        }
    }

    fn stem(self, prefix: &str) -> (String, String) {
        match self {
            Keys::Torchvision => (format!("{prefix}0.0"), format!("{prefix}0.1")),
            Keys::Timm => (format!("{prefix}conv_stem"), format!("{prefix}bn1")),
        }
    }

    /// Block `i` of the table; `expands` when it has a 1x1 expansion.
    fn block(self, prefix: &str, size: Size, i: usize, expands: bool) -> BlockNames {
        let pair = |p: &str, conv: &str, bn: &str| (format!("{p}.{conv}"), format!("{p}.{bn}"));
        match self {
            Keys::Torchvision => {
                let p = format!("{prefix}{}.block", i + 1);
                let first = usize::from(expands);
                let expand = expands.then(|| pair(&p, "0.0", "0.1"));
                let depthwise = (format!("{p}.{first}.0"), format!("{p}.{first}.1"));
                let se = (
                    format!("{p}.{}.fc1", first + 1),
                    format!("{p}.{}.fc2", first + 1),
                );
                // The projection follows the SE where there is one.
                let uses_se = size.blocks()[i].se;
                let last = first + 1 + usize::from(uses_se);
                let project = (format!("{p}.{last}.0"), format!("{p}.{last}.1"));
                BlockNames {
                    expand,
                    depthwise,
                    se,
                    project,
                }
            }
            Keys::Timm => {
                let (stage, index) = size.timm_stage(i);
                let p = format!("{prefix}blocks.{stage}.{index}");
                let se = (format!("{p}.se.conv_reduce"), format!("{p}.se.conv_expand"));
                if expands {
                    BlockNames {
                        expand: Some(pair(&p, "conv_pw", "bn1")),
                        depthwise: pair(&p, "conv_dw", "bn2"),
                        se,
                        project: pair(&p, "conv_pwl", "bn3"),
                    }
                } else {
                    BlockNames {
                        expand: None,
                        depthwise: pair(&p, "conv_dw", "bn1"),
                        se,
                        project: pair(&p, "conv_pw", "bn2"),
                    }
                }
            }
        }
    }

    /// The final 1x1 convolution to six times the last block's channels.
    fn head(self, prefix: &str, size: Size) -> (String, String) {
        match self {
            Keys::Torchvision => {
                let i = size.blocks().len() + 1;
                (format!("{prefix}{i}.0"), format!("{prefix}{i}.1"))
            }
            Keys::Timm => {
                let stage = size.timm_stages().len();
                let p = format!("{prefix}blocks.{stage}.0");
                (format!("{p}.conv"), format!("{p}.bn1"))
            }
        }
    }
}

/// Output channels of MobileNetV3-Large's final 1x1 convolution (`features.16`).
pub(crate) const HIGH_CHANNELS: usize = 960;
/// Channels of `features.4`, the stride-8 "low" features LR-ASPP taps.
pub(crate) const LOW_CHANNELS: usize = 40;
/// Index of the low-level block in `features`.
const LOW_INDEX: usize = 4;

/// The squeeze width of an SE over `channels`: torchvision's `_make_divisible(channels // 4, 8)`.
fn squeeze_channels(channels: usize) -> usize {
    make_divisible((channels / 4) as f64)
}

struct InvertedResidual {
    expand: Option<Conv>,
    depthwise: Conv,
    se: Option<SqueezeExcitation>,
    project: Conv,
    has_skip: bool,
}

impl InvertedResidual {
    /// The block on `(n, h, w, c_in)`: banded as one op where no squeeze-excitation sits
    /// between the depthwise and the projection.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if let (Some(expand), None) = (&self.expand, &self.se) {
            let convs = (expand, &self.depthwise, &self.project);
            return inverted_residual(xs, convs, self.has_skip);
        }
        let ys = match &self.expand {
            Some(expand) => expand_depthwise(xs, expand, &self.depthwise)?,
            None => self.depthwise.forward(xs)?,
        };
        let skip = self.has_skip.then_some(xs);
        squeeze_excitation::project(self.se.as_ref(), &self.project, &ys, skip)
    }
}

/// The modules of `features`, ready to run.
pub(crate) struct MobileNetV3 {
    stem: Conv,
    blocks: Vec<InvertedResidual>,
    head: Conv,
}

/// The low (stride 8, 40 channels) and high (stride 16 dilated, 960 channels) features.
pub(crate) struct MobileNetFeatures {
    pub(crate) low: Tensor,
    pub(crate) high: Tensor,
}

impl MobileNetV3 {
    /// Loads the trunk under `prefix` (e.g. `backbone.`, ending with a dot) with `keys`' names.
    pub(crate) fn load(
        w: &Weights,
        (prefix, keys): (&str, Keys),
        size: Size,
        dilated: bool,
    ) -> Result<Self, ModelError> {
        let conv_bn = |(conv, bn): (String, String), spec: ConvSpec| {
            let bn = BatchNorm {
                prefix: &bn,
                eps: keys.bn_eps(),
            };
            Conv::load(w, &conv, Some(bn), spec)
        };
        let stem = conv_bn(
            keys.stem(prefix),
            ConvSpec::new(3, 16, 3, 2).act(Activation::Hardswish),
        )?;
        let settings = size.blocks();
        let mut blocks = Vec::with_capacity(settings.len());
        for (i, s) in settings.iter().enumerate() {
            let names = keys.block(prefix, size, i, s.expanded != s.c_in);
            let act = if s.hardswish {
                Activation::Hardswish
            } else {
                Activation::Relu
            };
            let dilation = if dilated && s.last_stage { 2 } else { 1 };
            // torchvision drops the stride wherever it dilates.
            let stride = if dilation > 1 { 1 } else { s.stride };
            let expand = match names.expand {
                Some(pair) => Some(conv_bn(
                    pair,
                    ConvSpec::new(s.c_in, s.expanded, 1, 1).act(act),
                )?),
                None => None,
            };
            let depthwise = conv_bn(
                names.depthwise,
                ConvSpec {
                    dilation,
                    padding: Padding::symmetric((s.kernel - 1) / 2 * dilation),
                    ..ConvSpec::new(s.expanded, s.expanded, s.kernel, stride)
                }
                .depthwise()
                .act(act),
            )?;
            let se = match s.se {
                true => {
                    let spec = SeSpec {
                        channels: s.expanded,
                        squeeze: squeeze_channels(s.expanded),
                        activation: Activation::Relu,
                        gate: Activation::Hardsigmoid,
                    };
                    let (reduce, expand) = (names.se.0.as_str(), names.se.1.as_str());
                    Some(SqueezeExcitation::load(w, (reduce, expand), spec)?)
                }
                false => None,
            };
            let project = conv_bn(names.project, ConvSpec::new(s.expanded, s.c_out, 1, 1))?;
            blocks.push(InvertedResidual {
                expand,
                depthwise,
                se,
                project,
                has_skip: s.stride == 1 && s.c_in == s.c_out,
            });
        }
        let last = settings.last().map_or(16, |s| s.c_out);
        let head = conv_bn(
            keys.head(prefix, size),
            ConvSpec::new(last, size.head_channels(), 1, 1).act(Activation::Hardswish),
        )?;
        Ok(MobileNetV3 { stem, blocks, head })
    }

    /// `(n, h, w, 3)` NHWC -> low and high features.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<MobileNetFeatures> {
        let mut xs = self.stem.forward(xs)?;
        let mut low = None;
        for (i, block) in self.blocks.iter().enumerate() {
            xs = block.forward(&xs)?;
            if i + 1 == LOW_INDEX {
                low = Some(xs.clone());
            }
        }
        let high = self.head.forward(&xs)?;
        Ok(MobileNetFeatures {
            low: low.unwrap_or_else(|| high.clone()),
            high,
        })
    }
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let (size, keys) = match args.name {
        "mobilenet_v3_small" => (Size::Small, Keys::Torchvision),
        "mobilenetv3_large_100" => (Size::Large, Keys::Timm),
        "mobilenetv3_small_100" => (Size::Small, Keys::Timm),
        _ => (Size::Large, Keys::Torchvision),
    };
    let w = args.weights;
    let (head, hidden) = (size.head_channels(), size.hidden_features());
    let (trunk, pre_logits, classifier_key) = match keys {
        Keys::Torchvision => (
            MobileNetV3::load(w, ("features.", keys), size, false)?,
            Linear::load(w, "classifier.0", (head, hidden))?,
            CLASSIFIER_KEY,
        ),
        // timm's `conv_head` is the same hidden layer as a 1x1 convolution with a bias.
        Keys::Timm => {
            let weight = w.get("conv_head.weight", &[hidden, head, 1, 1])?;
            let bias = w.get("conv_head.bias", &[hidden])?;
            (
                MobileNetV3::load(w, ("", keys), size, false)?,
                Linear::from_tensors(&weight.reshape((hidden, head))?, &bias)?,
                "classifier",
            )
        }
    };
    let classifier = Linear::load(w, classifier_key, (hidden, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(Classification { trunk, pre_logits }),
        classifier,
        classifier_key,
    })
}

/// The classifier's backbone: the trunk, pooling, and the hidden linear layer with its
/// hardswish (what `classifier.3` reads).
struct Classification {
    trunk: MobileNetV3,
    pre_logits: Linear,
}

impl Backbone for Classification {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        global_avg_pool(&self.trunk.forward(xs)?.high)
    }

    fn forward_pooled(&self, pooled: Tensor) -> candle_core::Result<Tensor> {
        hardswish(&self.pre_logits.forward(&pooled)?)
    }
}

/// PyTorch's `x * relu6(x + 3) / 6` on the pooled features, with the kernels' activation
/// (the one the convolutions fuse).
fn hardswish(xs: &Tensor) -> candle_core::Result<Tensor> {
    let mut values = xs.flatten_all()?.to_vec1::<f32>()?;
    Activation::Hardswish.apply(&mut values);
    Tensor::from_vec(values, xs.shape(), xs.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_channels_are_six_times_the_last_block() {
        assert_eq!(Size::Large.head_channels(), HIGH_CHANNELS);
        assert_eq!(Size::Small.head_channels(), 576);
    }

    #[test]
    fn hardswish_matches_pytorch_at_its_corners() -> candle_core::Result<()> {
        let xs = Tensor::new(
            &[-4f32, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0],
            &candle_core::Device::Cpu,
        )?;
        let got = hardswish(&xs)?.to_vec1::<f32>()?;
        let want = [0.0, 0.0, -0.375, 0.0, 1.125, 3.0, 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        Ok(())
    }

    #[test]
    fn squeeze_channels_follow_torchvision_rounding() {
        // expanded // 4 for the SE blocks of the large table: 72, 120, 480, 672, 960.
        assert_eq!(squeeze_channels(72), 24);
        assert_eq!(squeeze_channels(120), 32);
        assert_eq!(squeeze_channels(480), 120);
        assert_eq!(squeeze_channels(672), 168);
        assert_eq!(squeeze_channels(960), 240);
    }
}
