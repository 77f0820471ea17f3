//! The pre-norm transformer encoder block of ViT and DeiT (timm's `Block`, Hugging Face's
//! `ViTLayer`): `x + proj(attention(norm1(x)))`, then `x + fc2(gelu(fc1(norm2(x))))`.
//!
//! Tokens are contiguous `(n, tokens, channels)` tensors. Every linear layer is a 1x1
//! convolution over a `(n, 1, tokens, channels)` view, so it runs through the packed dense
//! kernel (`kernels/dense/`) with the residual add fused into its output pass; attention
//! reads its heads straight from the fused `qkv` rows (`super::attention`), and the layer norm
//! is wick's vectorised kernel on the team (`kernels/layer_norm.rs`).
// Based on https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/vision_transformer.py
// and transformers' models/vit/modeling_vit.py (read, not copied).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::attention::{self_attention, HeadSplit, Heads};
use super::Conv;
use crate::model::error::ModelError;
use crate::model::kernels::{layer_norm, Activation, Fresh, Norm};
use crate::model::weights::Weights;

/// `LayerNorm` over the last axis (`kernels/layer_norm.rs`).
pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `(dim)`.
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        dim: usize,
        eps: f32,
    ) -> Result<Self, ModelError> {
        let get = |leaf: &str| -> Result<Vec<f32>, ModelError> {
            Ok(weights
                .get(&format!("{prefix}.{leaf}"), &[dim])?
                .to_vec1::<f32>()?)
        };
        Ok(LayerNorm {
            weight: get("weight")?,
            bias: get("bias")?,
            eps,
        })
    }

    /// `(.., dim)` -> normalised `(.., dim)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "wick-layer-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("the layer norm takes f32 tensors")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the layer norm takes contiguous tensors")
        };
        let width = layout.shape().dims().last().copied().unwrap_or(0);
        if width != self.weight.len() {
            candle_core::bail!(
                "a layer norm over {} channels given {:?}",
                self.weight.len(),
                layout.shape().dims()
            )
        }
        let xs = &data[start..end];
        let mut out = Fresh::new(xs.len());
        let norm = Norm {
            weight: &self.weight,
            bias: &self.bias,
            eps: self.eps,
        };
        // SAFETY: `Fresh` hands out `len` writable values and the kernel writes every one (each
        // row of `width`) before `assume_init`.
        #[allow(unsafe_code)]
        let out = unsafe {
            layer_norm(
                xs,
                &norm,
                std::slice::from_raw_parts_mut(out.as_mut_ptr(), out.len()),
            );
            out.assume_init()
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// A linear layer applied to every token, through the packed dense kernel.
pub(crate) struct TokenLinear(Conv);

impl TokenLinear {
    /// Loads `{prefix}.weight` `(c_out, c_in)` and `{prefix}.bias` `(c_out)`.
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        (c_in, c_out): (usize, usize),
    ) -> Result<Self, ModelError> {
        Self::load_stacked(weights, &[prefix], (c_in, c_out))
    }

    /// The same, with `activation` applied in the product's output pass (the MLP's GELU:
    /// no separate pass over the widest tensor of the block).
    pub(crate) fn load_activated(
        weights: &Weights,
        prefix: &str,
        (c_in, c_out): (usize, usize),
        activation: Activation,
    ) -> Result<Self, ModelError> {
        Ok(TokenLinear(Conv::load_linear(
            weights,
            prefix,
            (c_in, c_out),
            activation,
        )?))
    }

    /// Several `(c_out, c_in)` layers with the same input stacked into one of `k * c_out`
    /// outputs: Hugging Face's separate query, key and value become timm's fused `qkv`.
    pub(crate) fn load_stacked(
        weights: &Weights,
        prefixes: &[&str],
        (c_in, c_out): (usize, usize),
    ) -> Result<Self, ModelError> {
        let mut weight = Vec::with_capacity(prefixes.len() * c_out * c_in);
        let mut bias = Vec::with_capacity(prefixes.len() * c_out);
        for prefix in prefixes {
            let w = weights.get(&format!("{prefix}.weight"), &[c_out, c_in])?;
            weight.extend(w.flatten_all()?.to_vec1::<f32>()?);
            let b = weights.get(&format!("{prefix}.bias"), &[c_out])?;
            bias.extend(b.to_vec1::<f32>()?);
        }
        Ok(TokenLinear(Conv::pointwise(
            &weight,
            bias,
            c_in,
            Activation::Identity,
        )))
    }

    /// `(n, tokens, c_in)` -> `(n, tokens, c_out)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, tokens, _) = xs.dims3()?;
        let ys = self.0.forward(&xs.reshape((n, 1, tokens, ()))?)?;
        ys.reshape((n, tokens, ()))
    }

    /// `forward(xs) + residual`, the add fused into the product's output pass.
    pub(crate) fn forward_add(
        &self,
        xs: &Tensor,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (n, tokens, _) = xs.dims3()?;
        let ys = self.0.forward_add(
            &xs.reshape((n, 1, tokens, ()))?,
            &residual.reshape((n, 1, tokens, ()))?,
        )?;
        ys.reshape((n, tokens, ()))
    }
}

/// Where one block's tensors are, relative to its prefix.
pub(crate) struct BlockKeys {
    /// The first norm (timm `norm1`, Hugging Face `layernorm_before`).
    pub(crate) norm1: &'static str,
    /// The query, key and value projections: one fused layer (timm `attn.qkv`) or three.
    pub(crate) qkv: &'static [&'static str],
    /// The attention's output projection.
    pub(crate) proj: &'static str,
    /// The second norm.
    pub(crate) norm2: &'static str,
    /// The MLP's expansion.
    pub(crate) fc1: &'static str,
    /// The MLP's projection back.
    pub(crate) fc2: &'static str,
}

/// The sizes of one block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockDims {
    /// Token width.
    pub(crate) dim: usize,
    /// Attention heads; `dim` is a multiple of it.
    pub(crate) heads: usize,
    /// Width of the MLP's hidden layer.
    pub(crate) mlp_hidden: usize,
    /// Epsilon of both norms (timm 1e-6, Hugging Face 1e-12).
    pub(crate) eps: f32,
}

/// One pre-norm encoder block.
pub(crate) struct EncoderBlock {
    norm1: LayerNorm,
    qkv: TokenLinear,
    proj: TokenLinear,
    norm2: LayerNorm,
    fc1: TokenLinear,
    fc2: TokenLinear,
    heads: usize,
}

impl EncoderBlock {
    /// Loads the block under `prefix` (e.g. `blocks.3`).
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        keys: &BlockKeys,
        dims: BlockDims,
    ) -> Result<Self, ModelError> {
        let BlockDims {
            dim,
            heads,
            mlp_hidden,
            eps,
        } = dims;
        if heads == 0 || dim % heads != 0 {
            return Err(ModelError::Unsupported(format!(
                "a transformer block of width {dim} cannot split into {heads} attention heads"
            )));
        }
        let key = |k: &str| format!("{prefix}.{k}");
        let qkv = match keys.qkv {
            [fused] => TokenLinear::load(weights, &key(fused), (dim, 3 * dim))?,
            split => {
                let names: Vec<String> = split.iter().map(|k| key(k)).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                TokenLinear::load_stacked(weights, &names, (dim, dim))?
            }
        };
        Ok(EncoderBlock {
            norm1: LayerNorm::load(weights, &key(keys.norm1), dim, eps)?,
            qkv,
            proj: TokenLinear::load(weights, &key(keys.proj), (dim, dim))?,
            norm2: LayerNorm::load(weights, &key(keys.norm2), dim, eps)?,
            fc1: TokenLinear::load_activated(
                weights,
                &key(keys.fc1),
                (dim, mlp_hidden),
                Activation::Gelu,
            )?,
            fc2: TokenLinear::load(weights, &key(keys.fc2), (mlp_hidden, dim))?,
            heads,
        })
    }

    /// `(n, tokens, dim)` -> `(n, tokens, dim)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self
            .proj
            .forward_add(&self.attention(&self.norm1.forward(xs)?)?, xs)?;
        let hidden = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        self.fc2.forward_add(&hidden, &xs)
    }

    /// Multi-head self-attention before the output projection: `(n, t, dim)` -> `(n, t, dim)`.
    fn attention(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dim = xs.dim(2)?;
        let head_dim = dim / self.heads;
        // Each token's qkv row is [q heads | k heads | v heads], timm's `reshape(B, N, 3,
        // heads, head_dim)`.
        let heads = Heads {
            heads: self.heads,
            q: HeadSplit::consecutive(0, head_dim),
            k: HeadSplit::consecutive(dim, head_dim),
            v: HeadSplit::consecutive(2 * dim, head_dim),
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        self_attention(&self.qkv.forward(xs)?, &heads)
    }
}
