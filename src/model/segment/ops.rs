//! The few tensor operations segmentation heads need beyond convolutions, on contiguous NHWC
//! f32 tensors: bilinear resizing, per-channel gating (squeeze-excitation, LR-ASPP's scale
//! branch) and broadcasting a pooled vector back over the pixels (ASPP's image pooling).

use candle_core::{Shape, Tensor};

use crate::model::kernels::{resize_bilinear, Nhwc};
use crate::model::layers::map_nhwc;

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
        let out_shape = Nhwc {
            h: out_h,
            w: out_w,
            ..shape
        };
        let mut out = vec![0.0f32; out_shape.len()];
        resize_bilinear(input, shape, (out_h, out_w), align_corners, &mut out);
        Ok((out, Shape::from((shape.n, out_h, out_w, shape.c))))
    })
}

/// `xs * gate`, where `gate` is `(n, 1, 1, c)`: one factor per image and channel.
pub(crate) fn scale_channels(xs: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    let (n, _, _, c) = xs.dims4()?;
    let gate = gate.flatten_all()?.to_vec1::<f32>()?;
    if gate.len() != n * c {
        candle_core::bail!(
            "channel gate has {} values for {n} images of {c} channels",
            gate.len()
        )
    }
    map_nhwc(xs, "wick-scale-channels", |input, shape| {
        let plane = shape.h * shape.w * shape.c;
        let mut out = input.to_vec();
        for (image, factors) in out.chunks_exact_mut(plane).zip(gate.chunks_exact(c)) {
            for px in image.chunks_exact_mut(c) {
                px.iter_mut().zip(factors).for_each(|(x, f)| *x *= f);
            }
        }
        Ok((out, Shape::from((shape.n, shape.h, shape.w, shape.c))))
    })
}

/// `(n, 1, 1, c)` -> `(n, h, w, c)`: every pixel gets the image's vector (what bilinear
/// upsampling of a 1x1 map gives in either `align_corners` mode).
pub(crate) fn broadcast_pixels(xs: &Tensor, (h, w): (usize, usize)) -> candle_core::Result<Tensor> {
    let (n, _, _, c) = xs.dims4()?;
    xs.broadcast_as((n, h, w, c))?.contiguous()
}
