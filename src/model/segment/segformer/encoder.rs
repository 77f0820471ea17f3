//! SegFormer's encoder, the Mix Transformer (MiT), with Hugging Face transformers' key names
//! (`segformer.encoder.*`). Four stages; each embeds overlapping patches with a strided
//! convolution (7x7 stride 4, then 3x3 stride 2) and a layer norm, runs its blocks and ends in
//! a layer norm. A block is pre-norm attention whose keys and values come from the map
//! shrunk by a `sr x sr` stride-`sr` convolution (+ layer norm), then a Mix-FFN: linear,
//! depthwise 3x3, exact GELU, linear. Both halves add their input back.
// Based on transformers 5 `models/segformer/modeling_segformer.py` (read, not copied).

use candle_core::Tensor;

use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::attention::{attention_kv, HeadSplit, Heads};
use crate::model::layers::transformer::LayerNorm;
use crate::model::layers::{Conv, ConvSpec};
use crate::model::weights::Weights;

/// Every layer norm of the encoder is `nn.LayerNorm`'s default: the config's
/// `layer_norm_eps` (1e-6) is not passed to any of them.
const LAYER_NORM_EPS: f32 = 1e-5;
/// `mlp_ratios`: the Mix-FFN's hidden width over the stage's width (4 in every MiT).
const MLP_RATIO: usize = 4;

/// One MiT variant (`nvidia/mit-b0` ... `mit-b5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MitConfig {
    /// Channels of each stage (`hidden_sizes`).
    pub(crate) widths: [usize; 4],
    /// Blocks per stage (`depths`).
    pub(crate) depths: [usize; 4],
    /// Attention heads per stage (`num_attention_heads`).
    pub(crate) heads: [usize; 4],
    /// Key/value reduction per stage (`sr_ratios`).
    pub(crate) reductions: [usize; 4],
}

/// Patch-embedding kernel and stride per stage (`patch_sizes`, `strides`).
const PATCHES: [(usize, usize); 4] = [(7, 4), (3, 2), (3, 2), (3, 2)];

struct Stage {
    embed: Conv,
    embed_norm: LayerNorm,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

struct Block {
    norm1: LayerNorm,
    query: Conv,
    /// `key` and `value` stacked into one product of twice the width: keys first.
    key_value: Conv,
    /// The key/value map's reduction and its layer norm (absent when the ratio is 1).
    reduce: Option<(Conv, LayerNorm)>,
    heads: usize,
    output: Conv,
    norm2: LayerNorm,
    expand: Conv,
    depthwise: Conv,
    project: Conv,
}

/// The four-stage encoder.
pub(crate) struct MixTransformer {
    stages: Vec<Stage>,
}

impl MixTransformer {
    /// Loads the encoder under `prefix` (`segformer.encoder.`).
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        config: &MitConfig,
    ) -> Result<Self, ModelError> {
        let mut stages = Vec::with_capacity(4);
        let mut c_in = 3;
        for (i, &(patch, stride)) in PATCHES.iter().enumerate() {
            let width = config.widths[i];
            let embed = Conv::load(
                weights,
                &format!("{prefix}patch_embeddings.{i}.proj"),
                None,
                ConvSpec {
                    has_bias: true,
                    ..ConvSpec::new(c_in, width, patch, stride)
                },
            )?;
            let embed_norm = LayerNorm::load(
                weights,
                &format!("{prefix}patch_embeddings.{i}.layer_norm"),
                width,
                LAYER_NORM_EPS,
            )?;
            let blocks = (0..config.depths[i])
                .map(|j| {
                    Block::load(
                        weights,
                        &format!("{prefix}block.{i}.{j}."),
                        width,
                        config.heads[i],
                        config.reductions[i],
                    )
                })
                .collect::<Result<_, _>>()?;
            let norm = LayerNorm::load(
                weights,
                &format!("{prefix}layer_norm.{i}"),
                width,
                LAYER_NORM_EPS,
            )?;
            stages.push(Stage {
                embed,
                embed_norm,
                blocks,
                norm,
            });
            c_in = width;
        }
        Ok(MixTransformer { stages })
    }

    /// `(n, h, w, 3)` normalised -> the four stages' outputs, NHWC at strides 4, 8, 16, 32.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut outputs = Vec::with_capacity(self.stages.len());
        let mut xs = xs.clone();
        for stage in &self.stages {
            xs = stage.embed_norm.forward(&stage.embed.forward(&xs)?)?;
            for block in &stage.blocks {
                xs = block.forward(&xs)?;
            }
            xs = stage.norm.forward(&xs)?;
            outputs.push(xs.clone());
        }
        Ok(outputs)
    }
}

/// Linear layers `(width, width)` on the same input stacked into one of `k * width` outputs.
fn stacked(weights: &Weights, prefixes: &[&str], width: usize) -> Result<Conv, ModelError> {
    let mut weight = Vec::with_capacity(prefixes.len() * width * width);
    let mut bias = Vec::with_capacity(prefixes.len() * width);
    for prefix in prefixes {
        let w = weights.get(&format!("{prefix}.weight"), &[width, width])?;
        weight.extend(w.flatten_all()?.to_vec1::<f32>()?);
        bias.extend(
            weights
                .get(&format!("{prefix}.bias"), &[width])?
                .to_vec1::<f32>()?,
        );
    }
    Ok(Conv::pointwise(&weight, bias, width, Activation::Identity))
}

impl Block {
    fn load(
        weights: &Weights,
        prefix: &str,
        width: usize,
        heads: usize,
        reduction: usize,
    ) -> Result<Self, ModelError> {
        let norm =
            |key: &str| LayerNorm::load(weights, &format!("{prefix}{key}"), width, LAYER_NORM_EPS);
        let linear = |key: &str, c_in: usize, c_out: usize| {
            Conv::load_linear(
                weights,
                &format!("{prefix}{key}"),
                (c_in, c_out),
                Activation::Identity,
            )
        };
        let reduce = if reduction > 1 {
            let conv = Conv::load(
                weights,
                &format!("{prefix}attention.self.sr"),
                None,
                ConvSpec {
                    has_bias: true,
                    ..ConvSpec::new(width, width, reduction, reduction).pad(Padding::symmetric(0))
                },
            )?;
            Some((conv, norm("attention.self.layer_norm")?))
        } else {
            None
        };
        let hidden = width * MLP_RATIO;
        Ok(Block {
            norm1: norm("layer_norm_1")?,
            query: linear("attention.self.query", width, width)?,
            key_value: stacked(
                weights,
                &[
                    &format!("{prefix}attention.self.key"),
                    &format!("{prefix}attention.self.value"),
                ],
                width,
            )?,
            reduce,
            heads,
            output: linear("attention.output.dense", width, width)?,
            norm2: norm("layer_norm_2")?,
            expand: linear("mlp.dense1", width, hidden)?,
            depthwise: Conv::load(
                weights,
                &format!("{prefix}mlp.dwconv.dwconv"),
                None,
                ConvSpec {
                    has_bias: true,
                    ..ConvSpec::new(hidden, hidden, 3, 1)
                        .depthwise()
                        .act(Activation::Gelu)
                },
            )?,
            project: linear("mlp.dense2", hidden, width)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let context = match &self.reduce {
            Some((conv, norm)) => norm.forward(&conv.forward(&normed)?)?,
            None => normed.clone(),
        };
        let width = normed.dim(3)?;
        let d = width / self.heads;
        let attended = attention_kv(
            &self.query.forward(&normed)?,
            &self.key_value.forward(&context)?,
            &Heads {
                heads: self.heads,
                q: HeadSplit::consecutive(0, d),
                k: HeadSplit::consecutive(0, d),
                v: HeadSplit::consecutive(width, d),
                scale: 1.0 / (d as f32).sqrt(),
            },
        )?;
        let xs = self.output.forward_add(&attended, xs)?;
        let hidden = self.expand.forward(&self.norm2.forward(&xs)?)?;
        let hidden = self.depthwise.forward(&hidden)?;
        self.project.forward_add(&hidden, &xs)
    }
}
