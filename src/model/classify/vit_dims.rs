//! A ViT's sizes ([`VitDims`]): from a timm name (`vit_small_patch16_384`,
//! `deit_base_distilled_patch16_384`) or a Hugging Face `ViTConfig` (`config.json`), which also
//! refuses the variants wick's ViT does not compute (`hidden_act` other than `gelu`, ...).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::error::ModelError;
use crate::model::layers::transformer::BlockDims;

/// timm's `LayerNorm(eps=1e-6)` in every ViT and DeiT.
pub(super) const TIMM_EPS: f32 = 1e-6;
/// `ViTConfig.layer_norm_eps`'s default.
const HF_EPS: f64 = 1e-12;

/// The sizes of one ViT.
#[derive(Debug, Clone, Copy)]
pub(super) struct VitDims {
    pub(super) block: BlockDims,
    pub(super) depth: usize,
    pub(super) patch: usize,
    /// Side of the (square) trained input, in pixels.
    pub(super) image: usize,
    /// DeiT's distilled variant: a distillation token and head.
    pub(super) distilled: bool,
}

/// Sizes of a timm name such as `vit_small_patch16_384`, `deit_tiny_patch16_224` or
/// `deit_base_distilled_patch16_384`.
pub(super) fn timm_dims(name: &str) -> Result<VitDims, ModelError> {
    let unknown = || ModelError::Unsupported(format!("no ViT sizes known for `{name}`"));
    let mut parts = name.split('_').skip(1).peekable();
    let size = parts.next();
    let distilled = parts.next_if_eq(&"distilled").is_some();
    let (patch, image) = (parts.next(), parts.next());
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
        distilled,
    })
}

/// Sizes from a Hugging Face `ViTConfig` (its defaults where a field is absent).
pub(super) fn hf_dims(config: &BTreeMap<String, Value>) -> Result<VitDims, ModelError> {
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
        distilled: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
