//! ConvNeXt classifiers: timm's `convnext_{atto, femto, pico, nano, tiny, small, base, large}`
//! (keys `stem.{0,1}`, `stages.N.downsample.{0,1}`, `stages.N.blocks.M.{conv_dw, norm,
//! mlp.fc1, mlp.fc2, gamma}`, `head.norm`, `head.fc`) and Hugging Face's
//! `ConvNextForImageClassification` (`convnext.embeddings.{patch_embeddings, layernorm}`,
//! `convnext.encoder.stages.N.downsampling_layer.{0,1}`,
//! `convnext.encoder.stages.N.layers.M.{dwconv, layernorm, pwconv1, pwconv2,
//! layer_scale_parameter}`, `convnext.layernorm`, `classifier`).
//!
//! A 4x4 stride-4 patch convolution and a layer norm make the stem; each stage after the first
//! starts with a layer norm and a 2x2 stride-2 convolution; each block is a 7x7 depthwise
//! convolution, a layer norm over the channels, a 4x expansion with exact (erf) GELU, the
//! projection back, a per-channel layer scale and the residual; the head averages the pixels,
//! normalises and classifies. Activations stay NHWC from the stem to the pooling, so the norms
//! run over the last axis and no block transposes.
//!
//! timm's small variants (atto ... nano, `conv_mlp=True`) store the MLP as 1x1 convolutions,
//! the others as linear layers: both are read (the checkpoint's rank tells which). The layer
//! scale is folded into the projection's weight and bias at load, so a block is four passes.
//! Any input size runs (non-square included); sides shrink as PyTorch's floor does.
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/convnext.py
// and transformers 5's models/convnext/modeling_convnext.py (read, not copied).

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde_json::{json, Value};

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::transformer::LayerNorm;
use crate::model::layers::{global_avg_pool, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

/// The Hugging Face class, also a wick architecture name (a Hugging Face folder maps to it).
pub(crate) const HF_NAME: &str = "ConvNextForImageClassification";

const NAMES: &[&str] = &[
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    HF_NAME,
];

/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Every norm of timm's ConvNeXt, and every one of Hugging Face's but the final one.
const EPS: f32 = 1e-6;
/// `ConvNextConfig.layer_norm_eps`'s default: Hugging Face's final norm only.
const HF_HEAD_EPS: f64 = 1e-12;
/// Depthwise window of every block.
const DW_KERNEL: usize = 7;
/// The MLP's expansion.
const MLP_RATIO: usize = 4;

/// Where a library keeps the network's tensors.
struct Keys {
    stem_conv: &'static str,
    stem_norm: &'static str,
    /// Stage `i` is under `{stages}.{i}`.
    stages: &'static str,
    /// `{stage}.{downsample}.0` is the norm, `.1` the convolution.
    downsample: &'static str,
    /// Block `j` of a stage is under `{stage}.{blocks}.{j}`.
    blocks: &'static str,
    conv_dw: &'static str,
    norm: &'static str,
    fc1: &'static str,
    fc2: &'static str,
    gamma: &'static str,
    head_norm: &'static str,
    head: &'static str,
}

const TIMM_KEYS: Keys = Keys {
    stem_conv: "stem.0",
    stem_norm: "stem.1",
    stages: "stages",
    downsample: "downsample",
    blocks: "blocks",
    conv_dw: "conv_dw",
    norm: "norm",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
    gamma: "gamma",
    head_norm: "head.norm",
    head: "head.fc",
};

const HF_KEYS: Keys = Keys {
    stem_conv: "convnext.embeddings.patch_embeddings",
    stem_norm: "convnext.embeddings.layernorm",
    stages: "convnext.encoder.stages",
    downsample: "downsampling_layer",
    blocks: "layers",
    conv_dw: "dwconv",
    norm: "layernorm",
    fc1: "pwconv1",
    fc2: "pwconv2",
    gamma: "layer_scale_parameter",
    head_norm: "convnext.layernorm",
    head: "classifier",
};

/// The sizes of one ConvNeXt.
#[derive(Debug, Clone, PartialEq)]
struct Dims {
    /// Blocks per stage.
    depths: Vec<usize>,
    /// Channels per stage.
    widths: Vec<usize>,
    /// Side of the stem's patches (and its stride).
    patch: usize,
    /// Whether blocks scale their output per channel (timm always; Hugging Face unless
    /// `layer_scale_init_value` is 0).
    layer_scale: bool,
    /// Epsilon of the norm before the classifier.
    head_eps: f32,
}

/// timm's depths and widths of `name`.
fn timm_dims(name: &str) -> Result<Dims, ModelError> {
    let (depths, widths) = match name.strip_prefix("convnext_") {
        Some("atto") => ([2, 2, 6, 2], [40, 80, 160, 320]),
        Some("femto") => ([2, 2, 6, 2], [48, 96, 192, 384]),
        Some("pico") => ([2, 2, 6, 2], [64, 128, 256, 512]),
        Some("nano") => ([2, 2, 8, 2], [80, 160, 320, 640]),
        Some("tiny") => ([3, 3, 9, 3], [96, 192, 384, 768]),
        Some("small") => ([3, 3, 27, 3], [96, 192, 384, 768]),
        Some("base") => ([3, 3, 27, 3], [128, 256, 512, 1024]),
        Some("large") => ([3, 3, 27, 3], [192, 384, 768, 1536]),
        _ => {
            return Err(ModelError::Unsupported(format!(
                "no ConvNeXt sizes known for `{name}`"
            )))
        }
    };
    Ok(Dims {
        depths: depths.to_vec(),
        widths: widths.to_vec(),
        patch: 4,
        layer_scale: true,
        head_eps: EPS,
    })
}

/// Sizes from a Hugging Face `ConvNextConfig` (its defaults, ConvNeXt-T's, where absent).
fn hf_dims(config: &BTreeMap<String, Value>) -> Result<Dims, ModelError> {
    let refuse = |key: &str, wanted: &str, given: &Value| {
        ModelError::Unsupported(format!(
            "config.json field `{key}`: wick's ConvNeXt supports {wanted} (given: {given})"
        ))
    };
    for (key, wanted) in [
        ("hidden_act", Value::from("gelu")),
        ("num_channels", Value::from(3)),
    ] {
        if let Some(given) = config.get(key).filter(|v| **v != wanted) {
            return Err(refuse(key, &wanted.to_string(), given));
        }
    }
    let sizes = |key: &str, default: &[usize]| -> Result<Vec<usize>, ModelError> {
        match config.get(key) {
            None => Ok(default.to_vec()),
            Some(v) => serde_json::from_value::<Vec<usize>>(v.clone())
                .ok()
                .filter(|s| !s.is_empty() && s.iter().all(|n| *n > 0))
                .ok_or_else(|| refuse(key, "a list of positive integers", v)),
        }
    };
    let depths = sizes("depths", &[3, 3, 9, 3])?;
    let widths = sizes("hidden_sizes", &[96, 192, 384, 768])?;
    if depths.len() != widths.len() {
        return Err(refuse(
            "depths",
            &format!("one depth per entry of hidden_sizes ({})", widths.len()),
            &json!(depths),
        ));
    }
    if let Some(v) = config.get("num_stages") {
        if v.as_u64() != Some(depths.len() as u64) {
            return Err(refuse(
                "num_stages",
                &format!("the length of depths ({})", depths.len()),
                v,
            ));
        }
    }
    let number = |key: &str, default: f64, positive: bool| -> Result<f64, ModelError> {
        match config.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| if positive { *x > 0.0 } else { *x >= 0.0 })
                .ok_or_else(|| refuse(key, "a non-negative number", v)),
        }
    };
    let patch = match config.get("patch_size") {
        None => 4,
        Some(v) => {
            v.as_u64()
                .filter(|p| *p > 0)
                .ok_or_else(|| refuse("patch_size", "a positive integer", v))? as usize
        }
    };
    Ok(Dims {
        depths,
        widths,
        patch,
        layer_scale: number("layer_scale_init_value", 1e-6, false)? > 0.0,
        head_eps: number("layer_norm_eps", HF_HEAD_EPS, true)? as f32,
    })
}

fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let (keys, dims) = if args.name == HF_NAME {
        (&HF_KEYS, hf_dims(args.config)?)
    } else {
        (&TIMM_KEYS, timm_dims(args.name)?)
    };
    let convnext = ConvNext::load(args.weights, keys, &dims)?;
    let features = *dims.widths.last().unwrap_or(&0);
    let classifier = Linear::load(args.weights, keys.head, (features, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(convnext),
        classifier,
        classifier_key: keys.head,
    })
}

/// A norm over the channels, then a 2x2 stride-2 convolution.
struct Downsample {
    norm: LayerNorm,
    conv: Conv,
}

struct Stage {
    downsample: Option<Downsample>,
    blocks: Vec<Block>,
}

struct ConvNext {
    stem: Conv,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
}

/// A convolution with its bias, no padding, stride equal to its window (patchify).
fn patchify(
    w: &Weights,
    key: &str,
    (c_in, c_out): (usize, usize),
    k: usize,
) -> Result<Conv, ModelError> {
    Conv::load(
        w,
        key,
        None,
        ConvSpec {
            has_bias: true,
            padding: Padding::symmetric(0),
            ..ConvSpec::new(c_in, c_out, k, k)
        },
    )
}

impl ConvNext {
    fn load(w: &Weights, keys: &Keys, dims: &Dims) -> Result<Self, ModelError> {
        let first = dims.widths[0];
        let stem = patchify(w, keys.stem_conv, (3, first), dims.patch)?;
        let mut stages = Vec::with_capacity(dims.depths.len());
        let mut c_in = first;
        for (i, (&depth, &width)) in dims.depths.iter().zip(&dims.widths).enumerate() {
            let stage = format!("{}.{i}", keys.stages);
            // Both libraries: the first stage keeps the stem's resolution and width.
            let downsample = (i > 0)
                .then(|| -> Result<Downsample, ModelError> {
                    let prefix = format!("{stage}.{}", keys.downsample);
                    Ok(Downsample {
                        norm: LayerNorm::load(w, &format!("{prefix}.0"), c_in, EPS)?,
                        conv: patchify(w, &format!("{prefix}.1"), (c_in, width), 2)?,
                    })
                })
                .transpose()?;
            let blocks = (0..depth)
                .map(|j| {
                    let prefix = format!("{stage}.{}.{j}", keys.blocks);
                    Block::load(w, &prefix, keys, width, dims.layer_scale)
                })
                .collect::<Result<Vec<_>, _>>()?;
            stages.push(Stage { downsample, blocks });
            c_in = width;
        }
        Ok(ConvNext {
            stem,
            stem_norm: LayerNorm::load(w, keys.stem_norm, first, EPS)?,
            stages,
            head_norm: LayerNorm::load(w, keys.head_norm, c_in, dims.head_eps)?,
        })
    }
}

impl Backbone for ConvNext {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.stem_norm.forward(&self.stem.forward(xs)?)?;
        for stage in &self.stages {
            if let Some(down) = &stage.downsample {
                xs = down.conv.forward(&down.norm.forward(&xs)?)?;
            }
            for block in &stage.blocks {
                xs = block.forward(&xs)?;
            }
        }
        self.head_norm.forward(&global_avg_pool(&xs)?)
    }
}

/// One ConvNeXt block, its layer scale folded into `fc2`.
struct Block {
    conv_dw: Conv,
    norm: LayerNorm,
    fc1: Conv,
    fc2: Conv,
}

impl Block {
    fn load(
        w: &Weights,
        prefix: &str,
        keys: &Keys,
        dim: usize,
        layer_scale: bool,
    ) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let hidden = MLP_RATIO * dim;
        let conv_dw = Conv::load(
            w,
            &key(keys.conv_dw),
            None,
            ConvSpec {
                has_bias: true,
                ..ConvSpec::new(dim, dim, DW_KERNEL, 1).depthwise()
            },
        )?;
        let (fc1_weight, fc1_bias) = pointwise(w, &key(keys.fc1), (dim, hidden))?;
        let (mut fc2_weight, mut fc2_bias) = pointwise(w, &key(keys.fc2), (hidden, dim))?;
        if layer_scale {
            let gamma = w.get(&key(keys.gamma), &[dim])?.to_vec1::<f32>()?;
            // gamma * (W h + b) = (gamma W) h + gamma b: one multiply per weight, once.
            for ((row, b), g) in fc2_weight
                .chunks_exact_mut(hidden)
                .zip(&mut fc2_bias)
                .zip(&gamma)
            {
                row.iter_mut().for_each(|v| *v *= g);
                *b *= g;
            }
        }
        Ok(Block {
            conv_dw,
            norm: LayerNorm::load(w, &key(keys.norm), dim, EPS)?,
            fc1: Conv::pointwise(&fc1_weight, fc1_bias, dim, Activation::Gelu),
            fc2: Conv::pointwise(&fc2_weight, fc2_bias, hidden, Activation::Identity),
        })
    }

    /// `(n, h, w, dim)` -> `(n, h, w, dim)`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self
            .fc1
            .forward(&self.norm.forward(&self.conv_dw.forward(xs)?)?)?;
        self.fc2.forward_add(&hidden, xs)
    }
}

/// A pointwise layer's row-major `(c_out, c_in)` weight and its bias, from a linear layer
/// (`(c_out, c_in)`) or a 1x1 convolution (`(c_out, c_in, 1, 1)`, timm's `conv_mlp`).
fn pointwise(
    w: &Weights,
    prefix: &str,
    (c_in, c_out): (usize, usize),
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let name = format!("{prefix}.weight");
    let conv = w.shape(&name).is_some_and(|s| s.len() == 4);
    let shape: &[usize] = if conv {
        &[c_out, c_in, 1, 1]
    } else {
        &[c_out, c_in]
    };
    let weight = w.get(&name, shape)?.flatten_all()?.to_vec1::<f32>()?;
    let bias = w
        .get(&format!("{prefix}.bias"), &[c_out])?
        .to_vec1::<f32>()?;
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_names_give_their_sizes() -> Result<(), ModelError> {
        let tiny = timm_dims("convnext_tiny")?;
        assert_eq!(
            (tiny.depths, tiny.widths),
            (vec![3, 3, 9, 3], vec![96, 192, 384, 768])
        );
        assert_eq!(timm_dims("convnext_atto")?.widths[0], 40);
        for name in NAMES.iter().filter(|n| **n != HF_NAME) {
            timm_dims(name)?;
        }
        assert!(timm_dims("convnext_xxlarge").is_err());
        Ok(())
    }

    #[test]
    fn a_hugging_face_config_gives_its_sizes_and_refusals_name_the_field() -> Result<(), ModelError>
    {
        let config =
            |text: &str| -> BTreeMap<String, Value> { serde_json::from_str(text).expect("json") };
        let defaults = hf_dims(&config("{}"))?;
        assert_eq!(defaults.depths, vec![3, 3, 9, 3]);
        assert_eq!((defaults.head_eps, defaults.layer_scale), (1e-12, true));
        let small = hf_dims(&config(
            r#"{"hidden_sizes": [8, 16], "depths": [1, 2], "num_stages": 2,
                "layer_scale_init_value": 0.0, "layer_norm_eps": 1e-6}"#,
        ))?;
        assert_eq!((small.widths, small.layer_scale), (vec![8, 16], false));
        for (text, field) in [
            (r#"{"hidden_act": "relu"}"#, "hidden_act"),
            (r#"{"depths": [3, 3]}"#, "depths"),
            // The default depths (four) against three widths: the message names depths.
            (r#"{"hidden_sizes": [8, 16, 32]}"#, "depths"),
            (r#"{"num_stages": 3}"#, "num_stages"),
            (r#"{"hidden_sizes": [96, -1, 384, 768]}"#, "hidden_sizes"),
            (r#"{"layer_norm_eps": 0}"#, "layer_norm_eps"),
        ] {
            let err = hf_dims(&config(text)).expect_err(text).to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        Ok(())
    }

    /// The layer scale folded into the projection gives what scaling its output gives.
    #[test]
    fn the_folded_layer_scale_equals_scaling_the_output() -> Result<(), ModelError> {
        let weights = Weights::synthetic();
        let scaled = Block::load(&weights, "b", &TIMM_KEYS, 16, true)?;
        let plain = Block::load(&weights, "b", &TIMM_KEYS, 16, false)?;
        let xs = crate::model::weights::synthesize("input", &[1, 9, 7, 16]);
        let gamma = crate::model::weights::synthesize("b.gamma", &[16]);
        let got = (scaled.forward(&xs)? - &xs)?;
        let want = (plain.forward(&xs)? - &xs)?.broadcast_mul(&gamma)?;
        let deviation = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(deviation < 1e-5, "{deviation}");
        Ok(())
    }
}
