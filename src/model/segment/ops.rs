//! The few tensor operations segmentation heads need beyond convolutions, on contiguous NHWC
//! f32 tensors: bilinear resizing, and broadcasting a pooled vector back over the pixels
//! (ASPP's image pooling), group normalisation (smp's FPN). Channel gating is
//! `crate::model::layers::scale_channels`.

use candle_core::{Shape, Tensor};

use crate::model::error::ModelError;
use crate::model::kernels::resize_bilinear_new;
use crate::model::layers::map_nhwc;
use crate::model::weights::Weights;

/// `(n, h, w, c)` -> `(n, out_h, out_w, c)`, PyTorch's bilinear `F.interpolate`.
pub(crate) fn resize(
    xs: &Tensor,
    (out_h, out_w): (usize, usize),
    align_corners: bool,
) -> candle_core::Result<Tensor> {
    let (_, h, w, _) = xs.dims4()?;
    if (h, w) == (out_h, out_w) {
        // Both modes are the identity at equal sizes.
        return Ok(xs.clone());
    }
    map_nhwc(xs, "wick-resize-bilinear", |input, shape| {
        let out = resize_bilinear_new(input, shape, (out_h, out_w), align_corners);
        Ok((out, Shape::from((shape.n, out_h, out_w, shape.c))))
    })
}

/// `(n, 1, 1, c)` -> `(n, h, w, c)`: every pixel gets the image's vector (what bilinear
/// upsampling of a 1x1 map gives in either `align_corners` mode).
pub(crate) fn broadcast_pixels(xs: &Tensor, (h, w): (usize, usize)) -> candle_core::Result<Tensor> {
    let (n, _, _, c) = xs.dims4()?;
    xs.broadcast_as((n, h, w, c))?.contiguous()
}

/// `nn.GroupNorm(groups, channels)` (eps 1e-5, affine) followed by ReLU, as smp's FPN
/// `Conv3x3GNReLU` applies them.
pub(crate) struct GroupNormRelu {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
}

/// PyTorch's default `nn.GroupNorm` epsilon.
const GROUP_NORM_EPS: f64 = 1e-5;

impl GroupNormRelu {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, `channels` each.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Self, ModelError> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(ModelError::Unsupported(format!(
                "`{prefix}`: {channels} channels do not split into {groups} groups"
            )));
        }
        let vector = |leaf: &str| -> Result<Vec<f32>, ModelError> {
            Ok(w.get(&format!("{prefix}.{leaf}"), &[channels])?
                .to_vec1::<f32>()?)
        };
        Ok(GroupNormRelu {
            gamma: vector("weight")?,
            beta: vector("bias")?,
            groups,
        })
    }

    /// `(n, h, w, c)` -> the same shape, normalised per image and group of channels.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        map_nhwc(xs, "wick-group-norm-relu", |input, shape| {
            if shape.c != self.gamma.len() {
                candle_core::bail!(
                    "group norm of {} channels given {} channels",
                    self.gamma.len(),
                    shape.c
                )
            }
            let mut out = vec![0.0f32; input.len()];
            let plane = shape.h * shape.w * shape.c;
            for (image, dst) in input.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
                let (scale, shift) = self.affine(image, shape.c);
                for (px, dst_px) in image
                    .chunks_exact(shape.c)
                    .zip(dst.chunks_exact_mut(shape.c))
                {
                    for (k, (x, y)) in px.iter().zip(dst_px.iter_mut()).enumerate() {
                        *y = x.mul_add(scale[k], shift[k]).max(0.0);
                    }
                }
            }
            Ok((out, Shape::from((shape.n, shape.h, shape.w, shape.c))))
        })
    }

    /// One image's per-channel `(scale, shift)`: the group statistics folded with gamma and
    /// beta. Sums in f64 so the one-pass variance keeps its digits over a million pixels.
    fn affine(&self, image: &[f32], channels: usize) -> (Vec<f32>, Vec<f32>) {
        let mut sum = vec![0.0f64; channels];
        let mut sum_sq = vec![0.0f64; channels];
        for px in image.chunks_exact(channels) {
            for (k, &x) in px.iter().enumerate() {
                let x = f64::from(x);
                sum[k] += x;
                sum_sq[k] += x * x;
            }
        }
        let per_group = channels / self.groups;
        let count = (image.len() / channels * per_group) as f64;
        let mut scale = vec![0.0f32; channels];
        let mut shift = vec![0.0f32; channels];
        for g in 0..self.groups {
            let range = g * per_group..(g + 1) * per_group;
            let mean = sum[range.clone()].iter().sum::<f64>() / count;
            let var = (sum_sq[range.clone()].iter().sum::<f64>() / count - mean * mean).max(0.0);
            let inv_std = 1.0 / (var + GROUP_NORM_EPS).sqrt();
            for k in range {
                let s = f64::from(self.gamma[k]) * inv_std;
                scale[k] = s as f32;
                shift[k] = (f64::from(self.beta[k]) - mean * s) as f32;
            }
        }
        (scale, shift)
    }
}
