//! ViT and DeiT classifiers: timm's `vit_*` / `deit_*` (keys `patch_embed.proj`, `cls_token`,
//! `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`,
//! `head`) and Hugging Face's `ViTForImageClassification` (`vit.embeddings.*`,
//! `vit.encoder.layer.N.*` as on the hub, or transformers 5's `vit.layers.N.*`, `vit.layernorm`,
//! `classifier`). The class token's final state is classified.
//!
//! timm's sizes come from the name (tiny / small / base / large, patch 16 or 32, trained at 224
//! or 384); a Hugging Face network's from its `config.json` (`hidden_size`,
//! `num_hidden_layers`, `num_attention_heads`, `intermediate_size`, `patch_size`,
//! `image_size`, `layer_norm_eps`). An input of another size than the trained one is refused:
//! wick does not interpolate position embeddings (timm's `dynamic_img_size`), and both
//! libraries' evaluation transforms produce the trained size.
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/vision_transformer.py
// and transformers 5's models/vit/modeling_vit.py (read, not copied).

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde_json::Value;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use crate::model::error::ModelError;
use crate::model::kernels::Padding;
use crate::model::layers::transformer::{BlockDims, BlockKeys, EncoderBlock, LayerNorm};
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
    HF_NAME,
];

/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// timm's `LayerNorm(eps=1e-6)` in every ViT and DeiT.
const TIMM_EPS: f32 = 1e-6;
/// `ViTConfig.layer_norm_eps`'s default.
const HF_EPS: f64 = 1e-12;

/// Where a library keeps the network's tensors.
struct Keys {
    patch_embed: &'static str,
    cls_token: &'static str,
    pos_embed: &'static str,
    /// Block `i` is under `{blocks}.{i}`.
    blocks: &'static str,
    block: BlockKeys,
    norm: &'static str,
    head: &'static str,
}

const TIMM_KEYS: Keys = Keys {
    patch_embed: "patch_embed.proj",
    cls_token: "cls_token",
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
};

const HF_KEYS: Keys = Keys {
    patch_embed: "vit.embeddings.patch_embeddings.projection",
    cls_token: "vit.embeddings.cls_token",
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

/// The sizes of one ViT.
#[derive(Debug, Clone, Copy)]
struct VitDims {
    block: BlockDims,
    depth: usize,
    patch: usize,
    /// Side of the (square) trained input, in pixels.
    image: usize,
}

/// Sizes of a timm name such as `vit_small_patch16_384` or `deit_tiny_patch16_224`.
fn timm_dims(name: &str) -> Result<VitDims, ModelError> {
    let unknown = || ModelError::Unsupported(format!("no ViT sizes known for `{name}`"));
    let mut parts = name.split('_').skip(1);
    let (size, patch, image) = (parts.next(), parts.next(), parts.next());
    // (width, depth, heads) of timm's `vit_{tiny,small,base,large}` and `deit_*`.
    let (dim, depth, heads) = match size {
        Some("tiny") => (192, 12, 3),
        Some("small") => (384, 12, 6),
        Some("base") => (768, 12, 12),
        Some("large") => (1024, 24, 16),
        _ => return Err(unknown()),
    };
    let patch = patch
        .and_then(|p| p.strip_prefix("patch"))
        .and_then(|p| p.parse().ok())
        .ok_or_else(unknown)?;
    let image = image.and_then(|s| s.parse().ok()).ok_or_else(unknown)?;
    Ok(VitDims {
        block: BlockDims {
            dim,
            heads,
            mlp_hidden: 4 * dim,
            eps: TIMM_EPS,
        },
        depth,
        patch,
        image,
    })
}

/// Sizes from a Hugging Face `ViTConfig` (its defaults where a field is absent).
fn hf_dims(config: &BTreeMap<String, Value>) -> Result<VitDims, ModelError> {
    let field = |key: &str, default: u64| -> Result<usize, ModelError> {
        match config.get(key) {
            None => Ok(default as usize),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ModelError::Unsupported(format!(
                        "config.json field `{key}` must be a positive integer (given: {v})"
                    ))
                }),
        }
    };
    let refuse = |key: &str, wanted: &str, given: &Value| {
        ModelError::Unsupported(format!(
            "config.json field `{key}`: wick's ViT supports {wanted} (given: {given})"
        ))
    };
    for (key, wanted) in [
        ("hidden_act", Value::from("gelu")),
        ("qkv_bias", Value::from(true)),
        ("num_channels", Value::from(3)),
    ] {
        if let Some(given) = config.get(key).filter(|v| **v != wanted) {
            return Err(refuse(key, &wanted.to_string(), given));
        }
    }
    let eps = match config.get("layer_norm_eps") {
        None => HF_EPS,
        Some(v) => v
            .as_f64()
            .filter(|e| *e > 0.0)
            .ok_or_else(|| refuse("layer_norm_eps", "a positive number", v))?,
    };
    Ok(VitDims {
        block: BlockDims {
            dim: field("hidden_size", 768)?,
            heads: field("num_attention_heads", 12)?,
            mlp_hidden: field("intermediate_size", 3072)?,
            eps: eps as f32,
        },
        depth: field("num_hidden_layers", 12)?,
        patch: field("patch_size", 16)?,
        image: field("image_size", 224)?,
    })
}

struct Vit {
    patch_embed: Conv,
    /// `(1, 1, dim)`.
    cls_token: Tensor,
    /// `(1, 1 + grid * grid, dim)`.
    pos_embed: Tensor,
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
    let vit = Vit::load(args.weights, keys, dims)?;
    let classifier = Linear::load(args.weights, keys.head, (dims.block.dim, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(vit),
        classifier,
        classifier_key: keys.head,
    })
}

impl Vit {
    fn load(w: &Weights, keys: &Keys, dims: VitDims) -> Result<Self, ModelError> {
        let VitDims {
            block,
            depth,
            patch,
            image,
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
        Ok(Vit {
            patch_embed,
            cls_token: w.get(keys.cls_token, &[1, 1, dim])?,
            pos_embed: w.get(keys.pos_embed, &[1, 1 + grid * grid, dim])?,
            blocks,
            norm: LayerNorm::load(w, keys.norm, dim, block.eps)?,
            dims,
        })
    }
}

impl Backbone for Vit {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, _) = xs.dims4()?;
        let side = self.dims.image;
        if (h, w) != (side, side) {
            candle_core::bail!(
                "this ViT was trained on {side}x{side} images and takes no other size (given: \
                 {h}x{w}); wick does not interpolate its position embeddings, so set \
                 pretrained_cfg.input_size to [3, {side}, {side}]"
            )
        }
        let patches = self.patch_embed.forward(xs)?;
        let (_, gh, gw, dim) = patches.dims4()?;
        let tokens = patches.reshape((n, gh * gw, dim))?;
        let cls = self.cls_token.broadcast_as((n, 1, dim))?;
        let mut xs = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        // The norm is per token and only the class token is classified.
        let cls = xs.narrow(1, 0, 1)?.contiguous()?;
        self.norm.forward(&cls)?.squeeze(D::Minus2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for name in NAMES.iter().filter(|n| **n != HF_NAME) {
            timm_dims(name)?;
        }
        Ok(())
    }

    #[test]
    fn a_hugging_face_config_gives_its_sizes_and_refusals_name_the_field() -> Result<(), ModelError>
    {
        let config: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                "intermediate_size": 128, "patch_size": 8, "image_size": 32}"#,
        )
        .expect("json");
        let dims = hf_dims(&config)?;
        assert_eq!((dims.block.dim, dims.block.heads, dims.depth), (64, 4, 2));
        assert_eq!(dims.block.eps, 1e-12);
        let mut gelu_new = config.clone();
        gelu_new.insert("hidden_act".into(), Value::from("gelu_new"));
        let err = hf_dims(&gelu_new).expect_err("tanh gelu").to_string();
        assert!(
            err.contains("hidden_act") && err.contains("gelu_new"),
            "{err}"
        );
        let mut bad = config;
        bad.insert("hidden_size".into(), Value::from(-3));
        let err = hf_dims(&bad).expect_err("negative").to_string();
        assert!(err.contains("hidden_size") && err.contains("-3"), "{err}");
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
}
