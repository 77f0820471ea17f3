//! The transformer pieces on NHWC maps: a layer norm over the channels of every pixel (token)
//! and multi-head scaled dot-product attention between two token maps.
//!
//! A token map stays an `(n, h, w, c)` tensor, so the linear layers around these are 1x1
//! [`super::Conv`]s on the packed dense kernel (`Conv::load_linear`) and a depthwise
//! convolution between them (SegFormer's Mix-FFN) needs no reshape. The attention products
//! are Candle's batched matmuls; softmax and the layer norm are candle-nn's fused CPU ops.

use candle_core::{DType, Tensor};

use crate::model::error::ModelError;
use crate::model::weights::Weights;

/// `nn.LayerNorm(c)` over the last dimension.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `(channels)`.
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        channels: usize,
        eps: f64,
    ) -> Result<Self, ModelError> {
        Ok(LayerNorm {
            gamma: weights
                .get(&format!("{prefix}.weight"), &[channels])?
                .to_dtype(DType::F32)?,
            beta: weights
                .get(&format!("{prefix}.bias"), &[channels])?
                .to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    /// Normalises every token (last dimension) of a contiguous tensor.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&xs.contiguous()?, &self.gamma, &self.beta, self.eps)
    }
}

/// `softmax(q k^T / sqrt(d)) v` per head: `q` is `(n, hq, wq, c)`, `k` and `v` are
/// `(n, hk, wk, c)`, with `c = heads * d`; the result has `q`'s shape.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = q.dims4()?;
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("{c} channels cannot be split into {heads} attention heads")
    }
    let d = c / heads;
    let split = |xs: &Tensor| -> candle_core::Result<Tensor> {
        let tokens = xs.dim(1)? * xs.dim(2)?;
        xs.reshape((n, tokens, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((n, h, w, c))?
        .contiguous()
}
