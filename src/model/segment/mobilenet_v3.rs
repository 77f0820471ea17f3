//! MobileNetV3-Large (width 1.0) feature extractor with torchvision key names, as the
//! segmentation models use it (`mobilenet_v3_large(dilated=True).features` under a prefix):
//! `{p}0` stem (3x3 s2, hardswish), `{p}1..15` inverted residual blocks (`block.{j}` = optional
//! 1x1 expand, depthwise, optional squeeze-excitation `fc1`/`fc2`, 1x1 projection), `{p}16`
//! the 1x1 conv to 960 channels. BatchNorm eps is 0.001 (not PyTorch's default 1e-5).
//! With `dilated`, the last stage (C4) trades its stride for dilation 2: output stride 16.
// Based on torchvision 0.29 `torchvision/models/mobilenetv3.py` (read, not copied).

use candle_core::Tensor;

use super::ops::scale_channels;
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{global_avg_pool, BatchNorm, Conv, ConvSpec};
use crate::model::weights::Weights;

const BN_EPS: f64 = 0.001;

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
const LARGE: [BlockSetting; 15] = [
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
/// Output channels of the final 1x1 convolution (`features.16`).
pub(crate) const HIGH_CHANNELS: usize = 960;
/// Channels of `features.4`, the stride-8 "low" features LR-ASPP taps.
pub(crate) const LOW_CHANNELS: usize = 40;
/// Index of the low-level block in `features`.
const LOW_INDEX: usize = 4;

/// torchvision's `_make_divisible(v, 8)`: round to a multiple of 8, never more than 10% down.
fn make_divisible(v: usize) -> usize {
    let rounded = ((v + 4) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v as f64 {
        rounded + 8
    } else {
        rounded
    }
}

struct SqueezeExcitation {
    fc1: Conv,
    fc2: Conv,
}

struct InvertedResidual {
    expand: Option<Conv>,
    depthwise: Conv,
    se: Option<SqueezeExcitation>,
    project: Conv,
    has_skip: bool,
}

/// The 17 modules of `features`, ready to run.
pub(crate) struct MobileNetV3Large {
    stem: Conv,
    blocks: Vec<InvertedResidual>,
    head: Conv,
}

/// The low (stride 8, 40 channels) and high (stride 16 dilated, 960 channels) features.
pub(crate) struct MobileNetFeatures {
    pub(crate) low: Tensor,
    pub(crate) high: Tensor,
}

impl MobileNetV3Large {
    /// Loads `{prefix}{0..16}.*`; `prefix` is e.g. `backbone.` and ends with a dot.
    pub(crate) fn load(w: &Weights, prefix: &str, dilated: bool) -> Result<Self, ModelError> {
        let conv_bn = |name: String, spec: ConvSpec| {
            let bn = format!("{name}.1");
            Conv::load(
                w,
                &format!("{name}.0"),
                Some(BatchNorm {
                    prefix: &bn,
                    eps: BN_EPS,
                }),
                spec,
            )
        };
        let stem = conv_bn(
            format!("{prefix}0"),
            ConvSpec::new(3, 16, 3, 2).act(Activation::Hardswish),
        )?;
        let mut blocks = Vec::with_capacity(LARGE.len());
        for (i, s) in LARGE.iter().enumerate() {
            let p = format!("{prefix}{}.block", i + 1);
            let act = if s.hardswish {
                Activation::Hardswish
            } else {
                Activation::Relu
            };
            let dilation = if dilated && s.last_stage { 2 } else { 1 };
            // torchvision drops the stride wherever it dilates.
            let stride = if dilation > 1 { 1 } else { s.stride };
            let mut j = 0;
            let mut next = || {
                j += 1;
                format!("{p}.{}", j - 1)
            };
            let expand = if s.expanded != s.c_in {
                Some(conv_bn(
                    next(),
                    ConvSpec::new(s.c_in, s.expanded, 1, 1).act(act),
                )?)
            } else {
                None
            };
            let depthwise = conv_bn(
                next(),
                ConvSpec {
                    dilation,
                    padding: Padding::symmetric((s.kernel - 1) / 2 * dilation),
                    ..ConvSpec::new(s.expanded, s.expanded, s.kernel, stride)
                }
                .depthwise()
                .act(act),
            )?;
            let se = if s.se {
                let name = next();
                let squeeze = make_divisible(s.expanded / 4);
                let fc = |leaf: &str, spec: ConvSpec| {
                    Conv::load(
                        w,
                        &format!("{name}.{leaf}"),
                        None,
                        ConvSpec {
                            has_bias: true,
                            ..spec
                        },
                    )
                };
                Some(SqueezeExcitation {
                    fc1: fc(
                        "fc1",
                        ConvSpec::new(s.expanded, squeeze, 1, 1).act(Activation::Relu),
                    )?,
                    fc2: fc(
                        "fc2",
                        ConvSpec::new(squeeze, s.expanded, 1, 1).act(Activation::Hardsigmoid),
                    )?,
                })
            } else {
                None
            };
            let project = conv_bn(next(), ConvSpec::new(s.expanded, s.c_out, 1, 1))?;
            blocks.push(InvertedResidual {
                expand,
                depthwise,
                se,
                project,
                has_skip: s.stride == 1 && s.c_in == s.c_out,
            });
        }
        let head = conv_bn(
            format!("{prefix}16"),
            ConvSpec::new(160, HIGH_CHANNELS, 1, 1).act(Activation::Hardswish),
        )?;
        Ok(MobileNetV3Large { stem, blocks, head })
    }

    /// `(n, h, w, 3)` NHWC -> low and high features.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<MobileNetFeatures> {
        let mut xs = self.stem.forward(xs)?;
        let mut low = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut ys = match &block.expand {
                Some(expand) => expand.forward(&xs)?,
                None => xs.clone(),
            };
            ys = block.depthwise.forward(&ys)?;
            if let Some(se) = &block.se {
                let (n, _, _, c) = ys.dims4()?;
                let pooled = global_avg_pool(&ys)?.reshape((n, 1, 1, c))?;
                let gate = se.fc2.forward(&se.fc1.forward(&pooled)?)?;
                ys = scale_channels(&ys, &gate)?;
            }
            xs = if block.has_skip {
                block.project.forward_add(&ys, &xs)?
            } else {
                block.project.forward(&ys)?
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeeze_channels_follow_torchvision_rounding() {
        // expanded // 4 for the SE blocks of the large table: 72, 120, 480, 672, 960.
        assert_eq!(make_divisible(18), 24);
        assert_eq!(make_divisible(30), 32);
        assert_eq!(make_divisible(120), 120);
        assert_eq!(make_divisible(168), 168);
        assert_eq!(make_divisible(240), 240);
    }
}
