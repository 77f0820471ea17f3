//! ViT and DeiT classifiers: timm's `vit_*` / `deit_*` (keys `patch_embed.proj`, `cls_token`,
//! `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`,
//! `head`) and Hugging Face's `ViTForImageClassification` (`vit.embeddings.*`,
//! `vit.encoder.layer.N.*` as on the hub, or transformers 5's `vit.layers.N.*`, `vit.layernorm`,
//! `classifier`). The class token's final state is classified.
//!
//! DeiT's distilled variants (timm's `VisionTransformerDistilled`, `deit_*_distilled_*`) add a
//! `dist_token` after the class token (so `pos_embed` has two prefix tokens) and a second head
//! `head_dist` on it; at evaluation timm averages the two heads,
//! `(head(x[:, 0]) + head_dist(x[:, 1])) / 2`. Both heads being linear, wick runs that as one
//! linear layer over the two tokens side by side, `[W/2, W_dist/2]` with bias `(b + b_dist)/2`.
//!
//! timm's sizes come from the name (tiny / small / base / large, patch 16 or 32, trained at 224
//! or 384); a Hugging Face network's from its `config.json` (`hidden_size`,
//! `num_hidden_layers`, `num_attention_heads`, `intermediate_size`, `patch_size`,
//! `image_size`, `layer_norm_eps`). A timm network given another input size than its trained
//! one (the package's `pretrained_cfg.input_size`) resamples its position embeddings to the new
//! patch grid as timm does when a model is created at another `img_size` and loads the
//! checkpoint (`pos_embed.rs`), once per grid. A Hugging Face network refuses other sizes:
//! transformers interpolates only when called with `interpolate_pos_encoding=True`, which its
//! pipelines and the SageMaker toolkit do not pass.
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/vision_transformer.py
// and transformers 5's models/vit/modeling_vit.py (read, not copied).

use std::sync::Mutex;

use candle_core::Tensor;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use super::pos_embed;
use super::vit_dims::{hf_dims, timm_dims, VitDims};
use crate::model::error::ModelError;
use crate::model::kernels::Padding;
use crate::model::layers::transformer::{BlockKeys, EncoderBlock, LayerNorm};
use crate::model::layers::{Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

/// The Hugging Face class, also a wick architecture name (a Hugging Face folder maps to it).
pub(crate) const HF_NAME: &str = "ViTForImageClassification";

const NAMES: &[&str] = &[
    "vit_tiny_patch16_224",
    "vit_tiny_patch16_384",
    "vit_small_patch16_224",
    "vit_small_patch16_384",
    "vit_small_patch32_224",
    "vit_small_patch32_384",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
    "vit_base_patch32_224",
    "vit_base_patch32_384",
    "vit_large_patch16_224",
    "vit_large_patch16_384",
    "vit_large_patch32_384",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_base_patch16_384",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
    HF_NAME,
];

/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Where a library keeps the network's tensors.
struct Keys {
    patch_embed: &'static str,
    cls_token: &'static str,
    /// DeiT distilled: the distillation token, after the class token.
    dist_token: &'static str,
    pos_embed: &'static str,
    /// Block `i` is under `{blocks}.{i}`.
    blocks: &'static str,
    block: BlockKeys,
    norm: &'static str,
    head: &'static str,
    /// DeiT distilled: the distillation token's head.
    head_dist: &'static str,
}

const TIMM_KEYS: Keys = Keys {
    patch_embed: "patch_embed.proj",
    cls_token: "cls_token",
    dist_token: "dist_token",
    pos_embed: "pos_embed",
    blocks: "blocks",
    block: BlockKeys {
        norm1: "norm1",
        qkv: &["attn.qkv"],
        proj: "attn.proj",
        norm2: "norm2",
        fc1: "mlp.fc1",
        fc2: "mlp.fc2",
    },
    norm: "norm",
    head: "head",
    head_dist: "head_dist",
};

const HF_KEYS: Keys = Keys {
    patch_embed: "vit.embeddings.patch_embeddings.projection",
    cls_token: "vit.embeddings.cls_token",
    // ViTForImageClassification has no distillation token (transformers' DeiT is another class).
    dist_token: "",
    pos_embed: "vit.embeddings.position_embeddings",
    blocks: "vit.encoder.layer",
    block: BlockKeys {
        norm1: "layernorm_before",
        qkv: &[
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
        ],
        proj: "attention.output.dense",
        norm2: "layernorm_after",
        fc1: "intermediate.dense",
        fc2: "output.dense",
    },
    norm: "vit.layernorm",
    head: "classifier",
    head_dist: "",
};

/// transformers 5's own module names (`save_pretrained` of a model built in transformers 5);
/// hub checkpoints keep [`HF_KEYS`], which transformers 5 renames as it loads them.
const HF5_KEYS: Keys = Keys {
    blocks: "vit.layers",
    block: BlockKeys {
        norm1: "layernorm_before",
        qkv: &["attention.q_proj", "attention.k_proj", "attention.v_proj"],
        proj: "attention.o_proj",
        norm2: "layernorm_after",
        fc1: "mlp.fc1",
        fc2: "mlp.fc2",
    },
    ..HF_KEYS
};

struct Vit {
    patch_embed: Conv,
    /// `(1, prefix, dim)`: the class token, then DeiT's distillation token if any.
    prefix_tokens: Tensor,
    /// `(1, prefix + grid * grid, dim)`, as trained.
    pos_embed: Tensor,
    /// timm's networks resample `pos_embed` for another grid; Hugging Face's refuse one.
    resamples: bool,
    /// `pos_embed` resampled to the grids seen so far (one, the package's input size, in
    /// practice), computed on first use.
    resampled: Mutex<Vec<((usize, usize), Tensor)>>,
    blocks: Vec<EncoderBlock>,
    norm: LayerNorm,
    dims: VitDims,
}

fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let (keys, dims) = if args.name == HF_NAME {
        let transformers5 = args
            .weights
            .contains("vit.layers.0.layernorm_before.weight");
        let keys = if transformers5 { &HF5_KEYS } else { &HF_KEYS };
        (keys, hf_dims(args.config)?)
    } else {
        (&TIMM_KEYS, timm_dims(args.name)?)
    };
    let vit = Vit::load(args.weights, keys, dims, args.name != HF_NAME)?;
    let shape = (dims.block.dim, args.num_classes);
    let classifier = if dims.distilled {
        distilled_head(args.weights, keys, shape)?
    } else {
        Linear::load(args.weights, keys.head, shape)?
    };
    Ok(Network {
        backbone: Box::new(vit),
        classifier,
        classifier_key: keys.head,
    })
}

/// DeiT's two heads as one linear layer over `[class token, distillation token]`: timm's
/// `(head(x0) + head_dist(x1)) / 2` is `[W, W_dist] / 2 . [x0, x1] + (b + b_dist) / 2`.
fn distilled_head(
    w: &Weights,
    keys: &Keys,
    (dim, classes): (usize, usize),
) -> Result<Linear, ModelError> {
    let part = |key: &str| -> Result<(Tensor, Tensor), ModelError> {
        Ok((
            w.get(&format!("{key}.weight"), &[classes, dim])?,
            w.get(&format!("{key}.bias"), &[classes])?,
        ))
    };
    let (weight, bias) = part(keys.head)?;
    let (weight_dist, bias_dist) = part(keys.head_dist)?;
    let weight = (Tensor::cat(&[&weight, &weight_dist], 1)? * 0.5)?;
    let bias = ((bias + bias_dist)? * 0.5)?;
    Ok(Linear::from_tensors(&weight, &bias)?)
}

impl Vit {
    fn load(w: &Weights, keys: &Keys, dims: VitDims, resamples: bool) -> Result<Self, ModelError> {
        let VitDims {
            block,
            depth,
            patch,
            image,
            distilled,
        } = dims;
        if image % patch != 0 {
            return Err(ModelError::Unsupported(format!(
                "ViT image size {image} is not a multiple of its patch size {patch}"
            )));
        }
        let dim = block.dim;
        let grid = image / patch;
        let patch_embed = Conv::load(
            w,
            keys.patch_embed,
            None,
            ConvSpec {
                has_bias: true,
                padding: Padding::symmetric(0),
                ..ConvSpec::new(3, dim, patch, patch)
            },
        )?;
        let blocks = (0..depth)
            .map(|i| EncoderBlock::load(w, &format!("{}.{i}", keys.blocks), &keys.block, block))
            .collect::<Result<Vec<_>, _>>()?;
        let cls_token = w.get(keys.cls_token, &[1, 1, dim])?;
        let prefix_tokens = if distilled {
            Tensor::cat(&[&cls_token, &w.get(keys.dist_token, &[1, 1, dim])?], 1)?
        } else {
            cls_token
        };
        let prefix = prefix_tokens.dim(1)?;
        Ok(Vit {
            patch_embed,
            prefix_tokens,
            pos_embed: w.get(keys.pos_embed, &[1, prefix + grid * grid, dim])?,
            resamples,
            resampled: Mutex::new(Vec::new()),
            blocks,
            norm: LayerNorm::load(w, keys.norm, dim, block.eps)?,
            dims,
        })
    }

    /// The position embeddings for a `(gh, gw)` patch grid of an `h x w` input.
    fn pos_embed_for(
        &self,
        (h, w): (usize, usize),
        grid: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let side = self.dims.image;
        let trained = (side / self.dims.patch, side / self.dims.patch);
        if !self.resamples && (h, w) != (side, side) {
            candle_core::bail!(
                "this ViT was trained on {side}x{side} images and takes no other size (given: \
                 {h}x{w}); transformers interpolates its position embeddings only when called \
                 with interpolate_pos_encoding=True, so wick does not either: set the \
                 preprocessor's size (pretrained_cfg.input_size) to [3, {side}, {side}]"
            )
        }
        if !pos_embed::needs_resampling(trained, grid) {
            return Ok(self.pos_embed.clone());
        }
        let mut cache = self
            .resampled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, found)) = cache.iter().find(|(g, _)| *g == grid) {
            return Ok(found.clone());
        }
        let prefix = self.prefix_tokens.dim(1)?;
        let resampled = pos_embed::resample(&self.pos_embed, prefix, trained, grid)?;
        tracing::debug!(?trained, ?grid, "ViT position embeddings resampled");
        cache.push((grid, resampled.clone()));
        Ok(resampled)
    }
}

impl Backbone for Vit {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, _) = xs.dims4()?;
        let patch = self.dims.patch;
        if h < patch || w < patch {
            candle_core::bail!("a ViT with {patch}-pixel patches needs an input of at least {patch}x{patch} (given: {h}x{w})")
        }
        let patches = self.patch_embed.forward(xs)?;
        let (_, gh, gw, dim) = patches.dims4()?;
        let pos_embed = self.pos_embed_for((h, w), (gh, gw))?;
        let tokens = patches.reshape((n, gh * gw, dim))?;
        let prefix = self.prefix_tokens.dim(1)?;
        let head = self.prefix_tokens.broadcast_as((n, prefix, dim))?;
        let mut xs = Tensor::cat(&[&head, &tokens], 1)?.broadcast_add(&pos_embed)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        // The norm is per token and only the prefix tokens are classified (DeiT distilled:
        // both, side by side, for the merged head).
        let head = xs.narrow(1, 0, prefix)?.contiguous()?;
        self.norm.forward(&head)?.reshape((n, prefix * dim))
    }

    fn checkpoint_head(
        &self,
        key: &str,
        weight: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Vec<(String, Tensor)>> {
        if !self.dims.distilled {
            return Ok(vec![
                (format!("{key}.weight"), weight.clone()),
                (format!("{key}.bias"), bias.clone()),
            ]);
        }
        // The inverse of `distilled_head`: each head gets twice its half of the weights and the
        // whole bias, so timm's average of the two computes the trained layer.
        let dim = self.dims.block.dim;
        let half = |start| (weight.narrow(1, start, dim)? * 2.0)?.contiguous();
        Ok(vec![
            (format!("{key}.weight"), half(0)?),
            (format!("{key}.bias"), bias.clone()),
            (format!("{}.weight", TIMM_KEYS.head_dist), half(dim)?),
            (format!("{}.bias", TIMM_KEYS.head_dist), bias.clone()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::{Device, Module};
    use serde_json::Value;

    use super::*;
    use crate::model::classify::vit_dims::TIMM_EPS;
    use crate::model::layers::transformer::BlockDims;
    use crate::model::weights::synthesize;

    #[test]
    fn timm_names_give_their_sizes() -> Result<(), ModelError> {
        let dims = timm_dims("vit_small_patch32_384")?;
        assert_eq!(
            (
                dims.block.dim,
                dims.block.heads,
                dims.depth,
                dims.patch,
                dims.image
            ),
            (384, 6, 12, 32, 384)
        );
        let dims = timm_dims("deit_base_patch16_224")?;
        assert_eq!((dims.block.dim, dims.block.mlp_hidden), (768, 3072));
        assert!(!dims.distilled);
        let dims = timm_dims("deit_small_distilled_patch16_224")?;
        assert_eq!((dims.block.dim, dims.patch, dims.image), (384, 16, 224));
        assert!(dims.distilled);
        for name in NAMES.iter().filter(|n| **n != HF_NAME) {
            timm_dims(name)?;
        }
        Ok(())
    }

    #[test]
    fn another_input_size_is_refused_with_the_trained_one() -> Result<(), ModelError> {
        let weights = Weights::synthetic();
        let config: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                "intermediate_size": 64, "patch_size": 8, "image_size": 16}"#,
        )
        .expect("json");
        let network = build(&BuildArgs {
            name: HF_NAME,
            weights: &weights,
            num_classes: 5,
            config: &config,
        })?;
        let ok = Tensor::zeros(
            (2, 3, 16, 16),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        assert_eq!(network.forward(&ok)?.dims(), &[2, 5]);
        let wrong = Tensor::zeros(
            (1, 3, 16, 24),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let err = network.forward(&wrong).expect_err("16x24").to_string();
        assert!(err.contains("16x16") && err.contains("16x24"), "{err}");
        Ok(())
    }

    fn small_timm(distilled: bool) -> Result<Vit, ModelError> {
        let dims = VitDims {
            block: BlockDims {
                dim: 32,
                heads: 2,
                mlp_hidden: 64,
                eps: TIMM_EPS,
            },
            depth: 1,
            patch: 8,
            image: 16,
            distilled,
        };
        Vit::load(&Weights::synthetic(), &TIMM_KEYS, dims, true)
    }

    #[test]
    fn a_timm_vit_takes_another_size_with_its_embeddings_resampled_once() -> Result<(), ModelError>
    {
        let vit = small_timm(true)?;
        let input = |h, w| Tensor::zeros((1, h, w, 3), candle_core::DType::F32, &Device::Cpu);
        // Two prefix tokens side by side.
        assert_eq!(vit.forward_features(&input(16, 16)?)?.dims(), &[1, 64]);
        assert_eq!(vit.forward_features(&input(24, 40)?)?.dims(), &[1, 64]);
        assert_eq!(vit.forward_features(&input(24, 40)?)?.dims(), &[1, 64]);
        // 1x4 patches: as many tokens as 2x2, resampled all the same (timm 1.0.31).
        assert_eq!(vit.forward_features(&input(8, 32)?)?.dims(), &[1, 64]);
        let cached: Vec<_> = vit
            .resampled
            .lock()
            .expect("lock")
            .iter()
            .map(|(g, _)| *g)
            .collect();
        assert_eq!(cached, vec![(3, 5), (1, 4)]);
        let err = vit
            .forward_features(&input(4, 16)?)
            .expect_err("too small")
            .to_string();
        assert!(err.contains("4x16"), "{err}");
        Ok(())
    }

    /// `wick train` writes a distilled network's new head as timm's two heads; loaded back,
    /// they compute the trained layer.
    #[test]
    fn a_trained_head_splits_into_deits_two_heads_and_merges_back() -> Result<(), ModelError> {
        let vit = small_timm(true)?;
        let (weight, bias) = (
            synthesize("new.weight", &[3, 64]),
            synthesize("new.bias", &[3]),
        );
        let tensors = vit.checkpoint_head("head", &weight, &bias)?;
        let names: Vec<_> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "head.weight",
                "head.bias",
                "head_dist.weight",
                "head_dist.bias"
            ]
        );
        let reloaded = distilled_head(
            &Weights::from_tensors(tensors.into_iter().collect()),
            &TIMM_KEYS,
            (32, 3),
        )?;
        let features = synthesize("features", &[2, 64]);
        let trained = Linear::from_tensors(&weight, &bias)?.forward(&features)?;
        let difference = (reloaded.forward(&features)? - trained)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(difference < 1e-6, "{difference}");
        let plain = small_timm(false)?.checkpoint_head("head", &weight, &synthesize("b", &[3]))?;
        assert_eq!(plain.len(), 2);
        Ok(())
    }
}
