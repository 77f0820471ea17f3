//! Multi-head scaled dot-product attention between two token maps kept as NHWC tensors
//! (SegFormer's keys and values come from a smaller map than its queries).
//!
//! A token map stays an `(n, h, w, c)` tensor, so the linear layers around this are 1x1
//! [`super::Conv`]s on the packed dense kernel (`Conv::load_linear`) and a depthwise
//! convolution between them (SegFormer's Mix-FFN) needs no reshape; the layer norm over the
//! channels is [`super::transformer::LayerNorm`]. The products are Candle's batched matmuls,
//! the softmax candle-nn's fused CPU op.

use candle_core::Tensor;

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
