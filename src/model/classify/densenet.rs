//! DenseNet-121 with torchvision key names: `features.conv0` / `norm0`, dense layers
//! `features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}`, transitions
//! `features.transition{t}.{norm,conv}`, `features.norm5`, `classifier`. Checkpoints saved before
//! torchvision 0.4 spell the dense-layer modules `norm.1`, `conv.1`, `norm.2`, `conv.2`
//! (torchvision rewrites them with a regex on load); both spellings are accepted.
//!
//! The concatenation that defines a dense block is never materialised: each block's output
//! buffer is allocated once at its final width and every layer writes its new channels straight
//! into its own channel slice of it, while reading the channels before that slice as its input.
// Based on https://github.com/pytorch/vision/blob/v0.20.0/torchvision/models/densenet.py

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use crate::model::error::ModelError;
use crate::model::kernels::{
    self, avg_pool_2x2, scale_shift_act, Activation, ChannelAffine, ConvGeometry, ConvOutput, Nhwc,
};
use crate::model::layers::{load_batch_norm, map_nhwc, max_pool, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &["densenet121"];
/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

const BN_EPS: f64 = 1e-5;
/// Checkpoint prefix of the final linear layer.
const CLASSIFIER_KEY: &str = "classifier";
/// Channels each dense layer adds to its block.
const GROWTH: usize = 32;
/// Width of a dense layer's 1x1 bottleneck, as a multiple of `GROWTH`.
const BN_SIZE: usize = 4;
/// Channels out of the stem.
const INIT_FEATURES: usize = 64;
/// Dense layers per block.
const BLOCKS: [usize; 4] = [6, 12, 24, 16];

/// How the checkpoint names the modules inside a dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// `norm1`, `conv1`, `norm2`, `conv2` (torchvision >= 0.4).
    Current,
    /// `norm.1`, `conv.1`, `norm.2`, `conv.2`: the original `densenet121-a639ec97.pth` era.
    Legacy,
}

impl Spelling {
    fn detect(weights: &Weights) -> Self {
        if weights.contains("features.denseblock1.denselayer1.norm.1.weight") {
            Spelling::Legacy
        } else {
            Spelling::Current
        }
    }

    /// Key prefix of module `kind` (`norm` / `conv`) number `index` (1 / 2) of a dense layer.
    fn module(self, layer: &str, kind: &str, index: usize) -> String {
        match self {
            Spelling::Current => format!("{layer}.{kind}{index}"),
            Spelling::Legacy => format!("{layer}.{kind}.{index}"),
        }
    }
}

/// A batch norm followed by a ReLU and then a convolution. The ReLU sits between norm and conv,
/// so the norm cannot be folded into the conv's weights; it runs as one fused affine + ReLU pass.
struct NormRelu {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl NormRelu {
    fn load(weights: &Weights, prefix: &str, channels: usize) -> Result<Self, ModelError> {
        let bn = BatchNorm {
            prefix,
            eps: BN_EPS,
        };
        let (scale, shift) = load_batch_norm(weights, bn, channels)?;
        Ok(NormRelu { scale, shift })
    }

    fn channels(&self) -> usize {
        self.scale.len()
    }

    /// `relu(bn(x))` of the first `channels()` channels of each `input` row (rows `row_stride`
    /// apart), written contiguously into `out`.
    fn apply(&self, input: &[f32], row_stride: usize, out: &mut [f32]) {
        let affine = ChannelAffine {
            scale: &self.scale,
            shift: &self.shift,
            activation: Activation::Relu,
        };
        scale_shift_act(input, row_stride, &affine, out);
    }
}

/// `norm1 -> relu -> conv1 (1x1) -> norm2 -> relu -> conv2 (3x3)`; `norm2` and its ReLU are
/// folded into `conv1`.
struct DenseLayer {
    norm1: NormRelu,
    conv1: Conv,
    conv2: Conv,
}

struct DenseBlock {
    c_in: usize,
    layers: Vec<DenseLayer>,
}

/// `norm -> relu -> conv (1x1) -> avg pool 2x2`.
struct Transition {
    norm: NormRelu,
    conv: Conv,
}

struct DenseNet {
    /// `conv0` with `norm0` and its ReLU folded in.
    stem: Conv,
    blocks: Vec<DenseBlock>,
    /// One after every block but the last.
    transitions: Vec<Transition>,
    norm5: NormRelu,
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let w = args.weights;
    let spelling = Spelling::detect(w);
    let stem = Conv::load(
        w,
        "features.conv0",
        Some(BatchNorm {
            prefix: "features.norm0",
            eps: BN_EPS,
        }),
        ConvSpec::new(3, INIT_FEATURES, 7, 2).act(Activation::Relu),
    )?;
    let mut blocks = Vec::new();
    let mut transitions = Vec::new();
    let mut c = INIT_FEATURES;
    for (b, &depth) in BLOCKS.iter().enumerate() {
        let prefix = format!("features.denseblock{}", b + 1);
        let block = load_block(w, spelling, &prefix, c, depth)?;
        c = block.c_out();
        blocks.push(block);
        if b + 1 < BLOCKS.len() {
            let prefix = format!("features.transition{}", b + 1);
            transitions.push(Transition {
                norm: NormRelu::load(w, &format!("{prefix}.norm"), c)?,
                conv: Conv::load(
                    w,
                    &format!("{prefix}.conv"),
                    None,
                    ConvSpec::new(c, c / 2, 1, 1),
                )?,
            });
            c /= 2;
        }
    }
    let norm5 = NormRelu::load(w, "features.norm5", c)?;
    let classifier = Linear::load(w, CLASSIFIER_KEY, (c, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(DenseNet {
            stem,
            blocks,
            transitions,
            norm5,
        }),
        classifier,
        classifier_key: CLASSIFIER_KEY,
    })
}

fn load_block(
    w: &Weights,
    spelling: Spelling,
    prefix: &str,
    c_in: usize,
    depth: usize,
) -> Result<DenseBlock, ModelError> {
    let bottleneck = BN_SIZE * GROWTH;
    let mut layers = Vec::with_capacity(depth);
    for l in 0..depth {
        let c = c_in + l * GROWTH;
        let layer = format!("{prefix}.denselayer{}", l + 1);
        let name = |kind: &str, index: usize| spelling.module(&layer, kind, index);
        let norm2 = name("norm", 2);
        layers.push(DenseLayer {
            norm1: NormRelu::load(w, &name("norm", 1), c)?,
            conv1: Conv::load(
                w,
                &name("conv", 1),
                Some(BatchNorm {
                    prefix: &norm2,
                    eps: BN_EPS,
                }),
                ConvSpec::new(c, bottleneck, 1, 1).act(Activation::Relu),
            )?,
            conv2: Conv::load(
                w,
                &name("conv", 2),
                None,
                ConvSpec::new(bottleneck, GROWTH, 3, 1),
            )?,
        });
    }
    Ok(DenseBlock { c_in, layers })
}

fn nhwc_shape(s: Nhwc) -> Shape {
    Shape::from((s.n, s.h, s.w, s.c))
}

impl DenseBlock {
    fn c_out(&self) -> usize {
        self.c_in + self.layers.len() * GROWTH
    }

    /// The whole block on an NHWC slice: `(n, h, w, c_in)` -> `(n, h, w, c_out)`.
    fn run(&self, input: &[f32], shape: Nhwc) -> candle_core::Result<(Vec<f32>, Shape)> {
        if shape.c != self.c_in {
            candle_core::bail!(
                "dense block expects {} channels, got {}",
                self.c_in,
                shape.c
            )
        }
        let c_total = self.c_out();
        let out_shape = Nhwc {
            c: c_total,
            ..shape
        };
        let rows = shape.pixels();
        // `torch.cat([input, new_1, .., new_L], 1)` laid out once: each pixel row holds the
        // block input followed by every layer's `GROWTH` channels, in layer order.
        let mut out = vec![0.0f32; out_shape.len()];
        if rows == 0 {
            return Ok((out, nhwc_shape(out_shape)));
        }
        out.par_chunks_mut(c_total)
            .zip(input.par_chunks(self.c_in))
            .with_min_len(256)
            .for_each(|(dst, src)| dst[..self.c_in].copy_from_slice(src));
        // Scratch sized for the widest layer, reused by all of them.
        let widest = self.c_in + self.layers.len().saturating_sub(1) * GROWTH;
        let mut normed = vec![0.0f32; rows * widest];
        let mut bottleneck = Vec::new();
        let mut c = self.c_in;
        for layer in &self.layers {
            // The layer's input is the first `c` channels of every row: normalise them into a
            // contiguous matrix so the 1x1 convolution is one plain matrix product.
            let x = &mut normed[..rows * c];
            layer.norm1.apply(&out, c_total, x);
            let width = layer.conv1.c_out();
            bottleneck.resize(rows * width, 0.0);
            let target = ConvOutput {
                data: &mut bottleneck,
                row_stride: width,
                residual: None,
            };
            let mid = layer.conv1.run_into(x, Nhwc { c, ..shape }, target)?;
            // The new channels land in their slice of the block buffer: rows `c_total` apart,
            // starting at channel `c`. Nothing at or after channel `c` has been read yet.
            let target = ConvOutput {
                data: &mut out[c..],
                row_stride: c_total,
                residual: None,
            };
            c += layer.conv2.run_into(&bottleneck, mid, target)?.c;
        }
        Ok((out, nhwc_shape(out_shape)))
    }
}

impl Transition {
    /// `(n, h, w, c)` -> `(n, h / 2, w / 2, c / 2)`.
    fn run(&self, input: &[f32], shape: Nhwc) -> candle_core::Result<(Vec<f32>, Shape)> {
        if shape.c != self.norm.channels() {
            candle_core::bail!(
                "transition expects {} channels, got {}",
                self.norm.channels(),
                shape.c
            )
        }
        if shape.h < 2 || shape.w < 2 {
            candle_core::bail!(
                "input too small: a DenseNet transition needs at least 2x2 pixels, got {}x{}",
                shape.h,
                shape.w
            )
        }
        let mut normed = vec![0.0f32; shape.len()];
        self.norm.apply(input, shape.c, &mut normed);
        // torchvision runs conv (1x1) then AvgPool2d(2, 2); we pool first. Both are linear
        // per-pixel maps and the pool weights sum to 1, so mean(W x_i + b) = W mean(x_i) + b:
        // equal up to float rounding, with 4x fewer rows through the matrix product. The
        // floor-mode pool drops the same odd row / column either way.
        let pooled_shape = Nhwc {
            h: shape.h / 2,
            w: shape.w / 2,
            ..shape
        };
        let mut pooled = vec![0.0f32; pooled_shape.len()];
        avg_pool_2x2(&normed, shape, &mut pooled);
        let c_out = self.conv.c_out();
        let mut out = vec![0.0f32; pooled_shape.pixels() * c_out];
        let target = ConvOutput {
            data: &mut out,
            row_stride: c_out,
            residual: None,
        };
        let out_shape = self.conv.run_into(&pooled, pooled_shape, target)?;
        Ok((out, nhwc_shape(out_shape)))
    }
}

impl Backbone for DenseNet {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = max_pool(&self.stem.forward(xs)?, ConvGeometry::square(3, 2, 1))?;
        for (i, block) in self.blocks.iter().enumerate() {
            xs = map_nhwc(&xs, "wick-dense-block", |input, shape| {
                block.run(input, shape)
            })?;
            if let Some(transition) = self.transitions.get(i) {
                xs = map_nhwc(&xs, "wick-densenet-transition", |input, shape| {
                    transition.run(input, shape)
                })?;
            }
        }
        // `norm5`, then the ReLU torchvision applies in `forward`, then the global pool.
        map_nhwc(&xs, "wick-densenet-head", |input, shape| {
            if shape.c != self.norm5.channels() {
                candle_core::bail!(
                    "norm5 expects {} channels, got {}",
                    self.norm5.channels(),
                    shape.c
                )
            }
            let mut normed = vec![0.0f32; shape.len()];
            self.norm5.apply(input, shape.c, &mut normed);
            Ok((
                kernels::global_avg_pool(&normed, shape),
                Shape::from((shape.n, shape.c)),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;

    use crate::model::classify::network::BuildArgs;
    use crate::model::classify::registry::build;
    use crate::model::weights::{synthesize, Weights};

    /// Every state-dict key of torchvision's densenet121 and its shape, from the parity fixture.
    fn torchvision_keys() -> Vec<(String, Vec<usize>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/parity/torchvision_densenet121.json"
        );
        let text = std::fs::read_to_string(path).expect("fixture readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        serde_json::from_value(json["tensors"].clone()).expect("tensors list")
    }

    /// torchvision's pre-0.4 spelling: `denselayerN.norm1.x` -> `denselayerN.norm.1.x`, etc.
    fn legacy(name: &str) -> String {
        if !name.contains(".denselayer") {
            return name.to_string();
        }
        ["norm1", "conv1", "norm2", "conv2"]
            .iter()
            .fold(name.to_string(), |n, m| {
                n.replace(&format!(".{m}."), &format!(".{}.{}.", &m[..4], &m[4..]))
            })
    }

    fn logits(weights: &Weights, input: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
        let args = BuildArgs {
            name: "densenet121",
            weights,
            num_classes: 16,
            config: &Default::default(),
        };
        Ok(build(&args)?.forward(input)?.to_vec2::<f32>()?)
    }

    #[test]
    fn legacy_key_spelling_loads_the_same_network() -> anyhow::Result<()> {
        let keys = torchvision_keys();
        let current: HashMap<_, _> = keys
            .iter()
            .map(|(n, s)| (n.clone(), synthesize(n, s)))
            .collect();
        let old: HashMap<_, _> = keys
            .iter()
            .map(|(n, s)| (legacy(n), synthesize(n, s)))
            .collect();
        assert!(old.contains_key("features.denseblock4.denselayer16.conv.2.weight"));
        assert!(old.contains_key("features.transition3.norm.running_var"));
        let input = synthesize("input", &[1, 3, 64, 64]);
        let want = logits(&Weights::from_tensors(current), &input)?;
        let got = logits(&Weights::from_tensors(old), &input)?;
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn bad_checkpoints_and_tiny_inputs_are_errors() -> anyhow::Result<()> {
        let args = BuildArgs {
            name: "densenet121",
            weights: &Weights::from_tensors(HashMap::new()),
            num_classes: 16,
            config: &Default::default(),
        };
        assert!(build(&args).is_err(), "an empty checkpoint must not build");
        let synthetic = Weights::synthetic();
        // 32x32 reaches the last block at 1x1; 16x16 would need a 1x1 -> 0x0 transition.
        assert_eq!(
            logits(&synthetic, &synthesize("input", &[1, 3, 32, 32]))?[0].len(),
            16
        );
        assert!(logits(&synthetic, &synthesize("input", &[1, 3, 16, 16])).is_err());
        Ok(())
    }
}
