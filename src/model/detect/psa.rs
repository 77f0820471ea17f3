//! YOLO11's position-sensitive attention (`C2PSA`: a CSP split around `PSABlock`s, each a
//! multi-head self-attention over all pixels and a 1x1 feed-forward, both residual).
//!
//! The attention is the fused kernel (`layers/attention.rs`) reading each head's `q`, `k`, `v`
//! straight from the qkv convolution's rows: `softmax((q * scale)^T k)` applied to `v`, plus a
//! positional 3x3 depthwise convolution of `v`, then a 1x1 projection. Channels of the qkv convolution are grouped per head as
//! `[q (key_dim), k (key_dim), v (head_dim)]`, as ultralytics' `view(B, heads, -1, N)` reads them.
// Based on ultralytics 8.4 nn/modules/block.py `C2PSA`, `PSABlock`, `Attention` (read, not copied).

use candle_core::{Tensor, D};

use super::ultralytics::{conv, conv_spec};
use crate::model::error::ModelError;
use crate::model::layers::attention::{self_attention, HeadSplit, Heads};
use crate::model::layers::{Conv, ConvSpec};
use crate::model::weights::Weights;

/// ultralytics' `PSABlock(attn_ratio=0.5)`: keys are half a head wide.
const ATTENTION_RATIO: f64 = 0.5;
/// Channels per attention head (`num_heads = max(c // 64, 1)`).
const CHANNELS_PER_HEAD: usize = 64;

/// Multi-head self-attention over every pixel with a depthwise positional term.
struct Attention {
    qkv: Conv,
    proj: Conv,
    pe: Conv,
    heads: usize,
    key_dim: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, dim: usize) -> Result<Self, ModelError> {
        let heads = (dim / CHANNELS_PER_HEAD).max(1);
        let head_dim = dim / heads;
        let key_dim = (head_dim as f64 * ATTENTION_RATIO) as usize;
        let qkv_channels = dim + 2 * key_dim * heads;
        let p = |leaf: &str| format!("{prefix}.{leaf}");
        Ok(Attention {
            qkv: conv(w, &p("qkv"), (dim, qkv_channels, 1, 1), false)?,
            proj: conv(w, &p("proj"), (dim, dim, 1, 1), false)?,
            pe: conv_spec(
                w,
                &p("pe"),
                ConvSpec::new(dim, dim, 3, 1).depthwise(),
                false,
            )?,
            heads,
            key_dim,
            head_dim,
            scale: (key_dim as f64).powf(-0.5),
        })
    }

    /// `x + attention(x)`, NHWC.
    fn forward_residual(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = xs.dims4()?;
        let (kd, hd) = (self.key_dim, self.head_dim);
        let group = 2 * kd + hd;
        let qkv = self.qkv.forward(xs)?;
        let split = |offset: usize, width: usize| HeadSplit {
            offset,
            head_stride: group,
            width,
        };
        // The result's channels are (head, channel): ultralytics' `view(B, C, H, W)` order.
        let attended = self_attention(
            &qkv,
            &Heads {
                heads: self.heads,
                q: split(0, kd),
                k: split(kd, kd),
                v: split(2 * kd, hd),
                scale: self.scale as f32,
            },
        )?;
        let v = qkv
            .reshape((n, h * w, self.heads, group))?
            .narrow(3, 2 * kd, hd)?
            .contiguous()?
            .reshape((n, h, w, c))?;
        let positional = self.pe.forward(&v)?;
        // proj has no activation, so the block's residual fuses into its kernel.
        self.proj.forward_add(&(attended + positional)?, xs)
    }
}

/// Attention then a 1x1 feed-forward (2x wide, SiLU), each added to its input.
struct PsaBlock {
    attn: Attention,
    ffn: [Conv; 2],
}

impl PsaBlock {
    fn load(w: &Weights, prefix: &str, c: usize) -> Result<Self, ModelError> {
        Ok(PsaBlock {
            attn: Attention::load(w, &format!("{prefix}.attn"), c)?,
            ffn: [
                conv(w, &format!("{prefix}.ffn.0"), (c, 2 * c, 1, 1), true)?,
                conv(w, &format!("{prefix}.ffn.1"), (2 * c, c, 1, 1), false)?,
            ],
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.attn.forward_residual(xs)?;
        self.ffn[1].forward_add(&self.ffn[0].forward(&x)?, &x)
    }
}

/// `cv1` splits `c` channels into two halves, the second goes through the PSA blocks, `cv2`
/// fuses both back to `c`.
pub(crate) struct C2Psa {
    cv1: Conv,
    cv2: Conv,
    hidden: usize,
    blocks: Vec<PsaBlock>,
}

impl C2Psa {
    /// The module under `prefix` on `c` channels with `n` PSA blocks.
    pub(crate) fn load(w: &Weights, prefix: &str, c: usize, n: usize) -> Result<Self, ModelError> {
        let hidden = c / 2;
        let blocks = (0..n)
            .map(|i| PsaBlock::load(w, &format!("{prefix}.m.{i}"), hidden))
            .collect::<Result<_, _>>()?;
        Ok(C2Psa {
            cv1: conv(w, &format!("{prefix}.cv1"), (c, 2 * hidden, 1, 1), true)?,
            cv2: conv(w, &format!("{prefix}.cv2"), (2 * hidden, c, 1, 1), true)?,
            hidden,
            blocks,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv1.forward(xs)?;
        let a = y.narrow(D::Minus1, 0, self.hidden)?;
        let mut b = y
            .narrow(D::Minus1, self.hidden, self.hidden)?
            .contiguous()?;
        for block in &self.blocks {
            b = block.forward(&b)?;
        }
        self.cv2.forward(&Tensor::cat(&[&a, &b], 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_follow_the_ultralytics_rule() {
        let w = Weights::synthetic();
        // yolo11n: C2PSA on 256 channels -> 128 hidden, two heads of 64, keys 32 wide.
        let a = Attention::load(&w, "a", 128).expect("attention");
        assert_eq!((a.heads, a.head_dim, a.key_dim), (2, 64, 32));
        // Narrower than one head's 64 channels: a single head.
        let tiny = Attention::load(&w, "a", 8).expect("attention");
        assert_eq!((tiny.heads, tiny.head_dim, tiny.key_dim), (1, 8, 4));
    }
}
