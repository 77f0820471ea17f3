//! The blocks of EfficientNet B0-B7 and EfficientNetV2 (`efficientnet.rs`), and where each
//! library keeps their tensors (torchvision, timm, and the lukemelas `efficientnet_pytorch` port
//! that segmentation_models_pytorch's `efficientnet-bN` encoders vendor).
//!
//! Three block kinds, each with SiLU after every convolution but the last 1x1:
//! - [`Kind::Conv`]: one `k x k` convolution, the input added after its activation (V2's
//!   first stage: timm `ConvBnAct`, torchvision `FusedMBConv` without expansion);
//! - [`Kind::Fused`]: a `k x k` expansion and a 1x1 projection (timm `EdgeResidual`,
//!   torchvision `FusedMBConv`);
//! - [`Kind::MbConv`]: a 1x1 expansion (none at ratio 1), a depthwise convolution,
//!   squeeze-excitation (SiLU, sigmoid gate) and a 1x1 projection (timm `InvertedResidual` /
//!   `DepthwiseSeparableConv`, torchvision `MBConv`).
//!
//! A skip is added when the stride is 1 and the channels do not change (stochastic depth is
//! the identity in eval mode).
// Based on timm 1.0.31 `timm/models/_efficientnet_blocks.py`, torchvision 0.29
// `torchvision/models/efficientnet.py` and segmentation_models_pytorch 0.6.0
// `encoders/_efficientnet.py` (read, not copied).

use candle_core::Tensor;

use super::squeeze_excitation::{self, SeSpec, SqueezeExcitation};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{expand_depthwise, inverted_residual, BatchNorm, Conv, ConvSpec};
use crate::model::weights::Weights;

/// A block kind (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Conv,
    Fused,
    MbConv,
}

/// Whose checkpoint names the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    /// `features.0.{0,1}` stem, `features.{stage + 1}.{i}.block.{j}` (`.0` conv, `.1` batch
    /// norm, `.fc1` / `.fc2` for the SE), the last `features.N` head, `classifier.1`.
    Torchvision,
    /// `conv_stem` / `bn1`, `blocks.{stage}.{i}.{conv, conv_exp, conv_pw, conv_dw, conv_pwl}`
    /// with `bn1..3` in order, `se.conv_reduce` / `se.conv_expand`, `conv_head` / `bn2`,
    /// `classifier`.
    Timm,
    /// lukemelas `efficientnet_pytorch`: `_conv_stem` / `_bn0`, `_blocks.{flat index}` with
    /// `_expand_conv` / `_bn0`, `_depthwise_conv` / `_bn1`, `_se_reduce` / `_se_expand`,
    /// `_project_conv` / `_bn2`, then `_conv_head` / `_bn1` and `_fc`.
    Lukemelas,
}

/// A convolution's `(weight prefix, batch norm prefix)`.
pub(super) type Pair = (String, String);

impl Keys {
    /// The stem convolution.
    pub(super) fn stem(self) -> Pair {
        match self {
            Keys::Torchvision => ("features.0.0".into(), "features.0.1".into()),
            Keys::Timm => ("conv_stem".into(), "bn1".into()),
            Keys::Lukemelas => ("_conv_stem".into(), "_bn0".into()),
        }
    }

    /// The final 1x1 convolution, after `stages` stages.
    pub(super) fn head(self, stages: usize) -> Pair {
        match self {
            Keys::Torchvision => {
                let i = stages + 1;
                (format!("features.{i}.0"), format!("features.{i}.1"))
            }
            Keys::Timm => ("conv_head".into(), "bn2".into()),
            Keys::Lukemelas => ("_conv_head".into(), "_bn1".into()),
        }
    }

    /// The linear classifier.
    pub(super) fn classifier(self) -> &'static str {
        match self {
            Keys::Torchvision => "classifier.1",
            Keys::Timm => "classifier",
            Keys::Lukemelas => "_fc",
        }
    }
}

/// A convolution's role in its block, which names it in each library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// [`Kind::Conv`]'s only convolution.
    Conv,
    /// [`Kind::Fused`]'s `k x k` expansion.
    FusedExpand,
    /// [`Kind::MbConv`]'s 1x1 expansion.
    Expand,
    /// The depthwise convolution.
    Depthwise,
    /// The final 1x1 projection; `expanded` when the block has an expansion before it.
    Project { expanded: bool },
}

impl Role {
    /// timm's module name: the depthwise-separable block (no expansion) calls its projection
    /// `conv_pw`, the inverted residual and the edge residual `conv_pwl`.
    fn timm(self) -> &'static str {
        match self {
            Role::Conv => "conv",
            Role::FusedExpand => "conv_exp",
            Role::Expand | Role::Project { expanded: false } => "conv_pw",
            Role::Depthwise => "conv_dw",
            Role::Project { expanded: true } => "conv_pwl",
        }
    }

    /// lukemelas' `(convolution, batch norm)` names, fixed per role (B0-B7 have only MBConv
    /// blocks, so the first two roles never occur there).
    fn lukemelas(self) -> (&'static str, &'static str) {
        match self {
            Role::Conv | Role::FusedExpand | Role::Expand => ("_expand_conv", "_bn0"),
            Role::Depthwise => ("_depthwise_conv", "_bn1"),
            Role::Project { .. } => ("_project_conv", "_bn2"),
        }
    }
}

/// Names a block's modules in forward order: torchvision numbers them (`block.{j}`), timm
/// names each convolution by its role and numbers the batch norms, lukemelas names both by
/// role under a flat block index.
struct BlockNamer {
    keys: Keys,
    prefix: String,
    /// Modules named so far (torchvision's `j`).
    modules: usize,
    /// Convolutions named so far (timm's batch norm number minus one).
    convs: usize,
}

impl BlockNamer {
    fn new(keys: Keys, at: BlockAt) -> Self {
        let prefix = match keys {
            Keys::Torchvision => format!("features.{}.{}.block", at.stage + 1, at.index),
            Keys::Timm => format!("blocks.{}.{}", at.stage, at.index),
            Keys::Lukemelas => format!("_blocks.{}", at.flat),
        };
        BlockNamer {
            keys,
            prefix,
            modules: 0,
            convs: 0,
        }
    }

    /// The next convolution, in the role `role`.
    fn conv(&mut self, role: Role) -> Pair {
        let p = &self.prefix;
        let pair = match self.keys {
            Keys::Torchvision => (
                format!("{p}.{}.0", self.modules),
                format!("{p}.{}.1", self.modules),
            ),
            Keys::Timm => (
                format!("{p}.{}", role.timm()),
                format!("{p}.bn{}", self.convs + 1),
            ),
            Keys::Lukemelas => {
                let (conv, bn) = role.lukemelas();
                (format!("{p}.{conv}"), format!("{p}.{bn}"))
            }
        };
        self.modules += 1;
        self.convs += 1;
        pair
    }

    /// The squeeze-excitation's reduce and expand convolutions.
    fn se(&mut self) -> Pair {
        let p = &self.prefix;
        let pair = match self.keys {
            Keys::Torchvision => (
                format!("{p}.{}.fc1", self.modules),
                format!("{p}.{}.fc2", self.modules),
            ),
            Keys::Timm => (format!("{p}.se.conv_reduce"), format!("{p}.se.conv_expand")),
            Keys::Lukemelas => (format!("{p}._se_reduce"), format!("{p}._se_expand")),
        };
        self.modules += 1;
        pair
    }
}

/// Where a block sits: its stage and index in the stage (both 0-based), and its index among
/// all the network's blocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockAt {
    pub(super) stage: usize,
    pub(super) index: usize,
    pub(super) flat: usize,
}

/// How a checkpoint's convolutions load: the prefix of its keys (empty, or `encoder.` and the
/// like, ending with a dot), its padding (`None`: PyTorch's symmetric `(k - 1) / 2`) and batch
/// norm epsilon.
pub(super) struct Loader<'a> {
    pub(super) weights: &'a Weights,
    pub(super) prefix: &'a str,
    pub(super) keys: Keys,
    pub(super) padding: Option<Padding>,
    pub(super) eps: f64,
}

impl Loader<'_> {
    /// A convolution with its batch norm folded in.
    pub(super) fn conv(&self, (conv, bn): &Pair, spec: ConvSpec) -> Result<Conv, ModelError> {
        let spec = match self.padding {
            Some(p) => spec.pad(p),
            None => spec,
        };
        let bn = self.key(bn);
        let bn = BatchNorm {
            prefix: &bn,
            eps: self.eps,
        };
        Conv::load(self.weights, &self.key(conv), Some(bn), spec)
    }

    /// `name` under the checkpoint's prefix.
    pub(super) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// One block's shape: its kind, kernel, stride, expansion ratio, channels, SE.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockSpec {
    pub(super) kind: Kind,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) expand: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) se: bool,
}

/// A loaded block.
// A network holds a few dozen blocks, built once at load: the unused bytes of the smaller
// variants cost nothing worth a box on every MBConv block's path.
#[allow(clippy::large_enum_variant)]
pub(super) enum Block {
    Conv {
        conv: Conv,
        skip: bool,
    },
    Fused {
        expand: Conv,
        project: Conv,
        skip: bool,
    },
    MbConv {
        expand: Option<Conv>,
        depthwise: Conv,
        se: Option<SqueezeExcitation>,
        project: Conv,
        skip: bool,
    },
}

impl Block {
    /// Loads the block at `at`.
    pub(super) fn load(
        loader: &Loader<'_>,
        at: BlockAt,
        spec: BlockSpec,
    ) -> Result<Self, ModelError> {
        let mut names = BlockNamer::new(loader.keys, at);
        let BlockSpec {
            kernel: k,
            stride: s,
            c_in,
            c_out,
            ..
        } = spec;
        let skip = s == 1 && c_in == c_out;
        // Expanded channels: `make_divisible(c_in * ratio)`, which is the product itself for
        // the multiples of 8 these networks have.
        let mid = c_in * spec.expand;
        let silu = Activation::Silu;
        Ok(match spec.kind {
            Kind::Conv => {
                let conv = loader.conv(
                    &names.conv(Role::Conv),
                    ConvSpec::new(c_in, c_out, k, s).act(silu),
                )?;
                Block::Conv { conv, skip }
            }
            Kind::Fused => {
                let expand_spec = ConvSpec::new(c_in, mid, k, s).act(silu);
                let expand = loader.conv(&names.conv(Role::FusedExpand), expand_spec)?;
                let project_names = names.conv(Role::Project { expanded: true });
                let project = loader.conv(&project_names, ConvSpec::new(mid, c_out, 1, 1))?;
                Block::Fused {
                    expand,
                    project,
                    skip,
                }
            }
            Kind::MbConv => {
                let expand = match spec.expand {
                    1 => None,
                    _ => {
                        let expand_spec = ConvSpec::new(c_in, mid, 1, 1).act(silu);
                        Some(loader.conv(&names.conv(Role::Expand), expand_spec)?)
                    }
                };
                let dw_spec = ConvSpec::new(mid, mid, k, s).depthwise().act(silu);
                let depthwise = loader.conv(&names.conv(Role::Depthwise), dw_spec)?;
                let se = match spec.se {
                    true => {
                        let (reduce, expand) = names.se();
                        let se_spec = SeSpec {
                            channels: mid,
                            // A quarter of the block's input channels, in both libraries.
                            squeeze: (c_in / 4).max(1),
                            activation: silu,
                            gate: Activation::Sigmoid,
                        };
                        let (reduce, expand) = (loader.key(&reduce), loader.key(&expand));
                        let names = (reduce.as_str(), expand.as_str());
                        Some(SqueezeExcitation::load(loader.weights, names, se_spec)?)
                    }
                    false => None,
                };
                let role = Role::Project {
                    expanded: expand.is_some(),
                };
                let project = loader.conv(&names.conv(role), ConvSpec::new(mid, c_out, 1, 1))?;
                Block::MbConv {
                    expand,
                    depthwise,
                    se,
                    project,
                    skip,
                }
            }
        })
    }

    /// `(n, h, w, c_in)` -> `(n, h', w', c_out)`.
    pub(super) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Block::Conv { conv, skip } => {
                let ys = conv.forward(xs)?;
                // Added after the activation, unlike the other kinds' skips.
                if *skip {
                    ys + xs
                } else {
                    Ok(ys)
                }
            }
            Block::Fused {
                expand,
                project,
                skip,
            } => {
                let ys = expand.forward(xs)?;
                if *skip {
                    project.forward_add(&ys, xs)
                } else {
                    project.forward(&ys)
                }
            }
            Block::MbConv {
                expand,
                depthwise,
                se,
                project,
                skip,
            } => {
                if let (Some(expand), None) = (expand, se) {
                    return inverted_residual(xs, (expand, depthwise, project), *skip);
                }
                let ys = match expand {
                    Some(expand) => expand_depthwise(xs, expand, depthwise)?,
                    None => depthwise.forward(xs)?,
                };
                squeeze_excitation::project(se.as_ref(), project, &ys, skip.then_some(xs))
            }
        }
    }
}
