//! Multi-head scaled dot-product attention as one Candle op over token-major tensors: ViT's
//! fused `qkv` rows, SegFormer's separate query and (spatially reduced) key / value maps kept
//! as NHWC tensors, YOLO11's per-head `[q, k, v]` channel groups.
//!
//! A token map stays an `(n, .., c)` tensor whose middle axes are the tokens, so the linear
//! layers around this are 1x1 [`super::Conv`]s on the packed dense kernel and a depthwise
//! convolution between them (SegFormer's Mix-FFN) needs no reshape. The heads are read where
//! the projections wrote them and the result is written as `(n, .., heads * head_dim)` rows,
//! the layout the output projection reads: no transpose or copy on either side
//! (`kernels/attention.rs`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::model::kernels::attention::{self as kernel, Operand};
use crate::model::kernels::Fresh;

/// Where one operand's heads sit inside a token's row: head `h` is `width` channels from
/// `offset + h * head_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadSplit {
    pub(crate) offset: usize,
    pub(crate) head_stride: usize,
    pub(crate) width: usize,
}

impl HeadSplit {
    /// `heads` consecutive heads of `width` channels from `offset`: `[h0 | h1 | ..]`.
    pub(crate) fn consecutive(offset: usize, width: usize) -> Self {
        HeadSplit {
            offset,
            head_stride: width,
            width,
        }
    }
}

/// One attention: how `q`, `k` and `v` split into heads, and the score scale.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) heads: usize,
    pub(crate) q: HeadSplit,
    pub(crate) k: HeadSplit,
    pub(crate) v: HeadSplit,
    pub(crate) scale: f32,
}

/// Attention whose keys and values share the rows of `kv` (`(n, .., row)`, one projection
/// of the same map), the queries `q`'s: the result is `q`'s shape with `heads * v.width`
/// channels.
pub(crate) fn attention_kv(q: &Tensor, kv: &Tensor, heads: &Heads) -> candle_core::Result<Tensor> {
    q.apply_op2_no_bwd(kv, heads)
}

/// Self-attention whose queries, keys and values are all in the rows of `qkv` (`(n, ..,
/// row)`, the middle axes the tokens): the result is `(n, .., heads * v.width)`.
pub(crate) fn self_attention(qkv: &Tensor, heads: &Heads) -> candle_core::Result<Tensor> {
    qkv.apply_op1_no_bwd(heads)
}

/// A contiguous f32 tensor of rank >= 2 as `(data, images, tokens, row)`.
fn token_rows<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [f32], usize, usize, usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("attention takes f32 {what}")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("attention takes contiguous {what}")
    };
    let dims = layout.shape().dims();
    if dims.len() < 2 {
        candle_core::bail!("attention {what} need (n, tokens.., channels), given {dims:?}")
    }
    let tokens = dims[1..dims.len() - 1].iter().product();
    Ok((&data[start..end], dims[0], tokens, dims[dims.len() - 1]))
}

impl Heads {
    fn operand<'a>(
        &self,
        (data, _, tokens, row): (&'a [f32], usize, usize, usize),
        split: HeadSplit,
    ) -> Operand<'a> {
        Operand {
            data,
            tokens,
            row_stride: row,
            offset: split.offset,
            head_stride: split.head_stride,
            width: split.width,
        }
    }

    /// Runs the kernel; the output has `q_shape`'s dims but its last, `heads * v.width`.
    fn run(
        &self,
        q: Operand<'_>,
        k: Operand<'_>,
        v: Operand<'_>,
        batch: usize,
        q_shape: &Shape,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        for (name, split, op) in [
            ("queries", self.q, q),
            ("keys", self.k, k),
            ("values", self.v, v),
        ] {
            let end = split.offset + (self.heads.max(1) - 1) * split.head_stride + split.width;
            if self.heads == 0 || end > op.row_stride {
                candle_core::bail!(
                    "{} attention heads of {name} end at channel {end}, past the {} of a row",
                    self.heads,
                    op.row_stride
                )
            }
        }
        let a = kernel::Attention {
            q,
            k,
            v,
            batch,
            heads: self.heads,
            scale: self.scale,
        };
        a.check().map_err(candle_core::Error::msg)?;
        let mut out = Fresh::new(a.output_len());
        // SAFETY: `Fresh` hands out `len` writable values; the kernel writes every one of them
        // (each query row x head x value channel) before `assume_init`.
        #[allow(unsafe_code)]
        let out = unsafe {
            kernel::attention(
                &a,
                std::slice::from_raw_parts_mut(out.as_mut_ptr(), out.len()),
            );
            out.assume_init()
        };
        let mut dims = q_shape.dims().to_vec();
        *dims.last_mut().expect("rank >= 2") = self.heads * self.v.width;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "wick-self-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let rows = token_rows(storage, layout, "qkv rows")?;
        self.run(
            self.operand(rows, self.q),
            self.operand(rows, self.k),
            self.operand(rows, self.v),
            rows.1,
            layout.shape(),
        )
    }
}

impl CustomOp2 for Heads {
    fn name(&self) -> &'static str {
        "wick-attention-kv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = token_rows(s1, l1, "queries")?;
        let kv = token_rows(s2, l2, "keys and values")?;
        if q.1 != kv.1 {
            candle_core::bail!(
                "attention over {} images of queries and {} of keys and values",
                q.1,
                kv.1
            )
        }
        self.run(
            self.operand(q, self.q),
            self.operand(kv, self.k),
            self.operand(kv, self.v),
            q.1,
            l1.shape(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The definition with Candle's own ops, as this layer ran before the fused kernel.
    fn unfused(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let (n, tq, c) = q.dims3()?;
        let d = c / heads;
        let split = |xs: &Tensor| -> candle_core::Result<Tensor> {
            let t = xs.dim(1)?;
            xs.reshape((n, t, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((n, tq, c))
    }

    #[test]
    fn separate_maps_and_fused_rows_match_candles_unfused_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, tq, tk, heads, d) = (2, 30, 7, 3, 8);
        let q = Tensor::randn(0f32, 1.0, (n, tq, heads * d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (n, tk, heads * d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (n, tk, heads * d), &dev)?;
        let want = unfused(&q, &k, &v, heads)?;
        let c = heads * d;
        let got = attention_kv(
            &q,
            &Tensor::cat(&[&k, &v], 2)?,
            &Heads {
                heads,
                q: HeadSplit::consecutive(0, d),
                k: HeadSplit::consecutive(0, d),
                v: HeadSplit::consecutive(c, d),
                scale: 1.0 / (d as f32).sqrt(),
            },
        )?;
        let diff = (got - &want)?
            .abs()?
            .max(D::Minus1)?
            .max(D::Minus1)?
            .max(0)?;
        assert!(diff.to_scalar::<f32>()? < 1e-5);
        // The same with tq == tk, from one fused row per token.
        let k = Tensor::randn(0f32, 1.0, (n, tq, heads * d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (n, tq, heads * d), &dev)?;
        let want = unfused(&q, &k, &v, heads)?;
        let qkv = Tensor::cat(&[&q, &k, &v], 2)?;
        let got = self_attention(
            &qkv,
            &Heads {
                heads,
                q: HeadSplit::consecutive(0, d),
                k: HeadSplit::consecutive(c, d),
                v: HeadSplit::consecutive(2 * c, d),
                scale: 1.0 / (d as f32).sqrt(),
            },
        )?;
        let diff = (got - want)?
            .abs()?
            .max(D::Minus1)?
            .max(D::Minus1)?
            .max(0)?;
        assert!(diff.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }

    #[test]
    fn heads_past_the_row_are_an_error_naming_both() {
        let qkv = Tensor::zeros((1, 4, 12), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        let err = self_attention(
            &qkv,
            &Heads {
                heads: 2,
                q: HeadSplit::consecutive(0, 4),
                k: HeadSplit::consecutive(4, 4),
                v: HeadSplit::consecutive(8, 4),
                scale: 1.0,
            },
        )
        .expect_err("v heads end at 16")
        .to_string();
        assert!(err.contains("16") && err.contains("12"), "{err}");
    }
}
