//! The few tensor operations segmentation heads need beyond convolutions, on contiguous NHWC
//! f32 tensors: bilinear resizing, and broadcasting a pooled vector back over the pixels
//! (ASPP's image pooling). Channel gating is `crate::model::layers::scale_channels`.

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

/// `(n, 1, 1, c)` -> `(n, h, w, c)`: every pixel gets the image's vector (what bilinear
/// upsampling of a 1x1 map gives in either `align_corners` mode).
pub(crate) fn broadcast_pixels(xs: &Tensor, (h, w): (usize, usize)) -> candle_core::Result<Tensor> {
    let (n, _, _, c) = xs.dims4()?;
    xs.broadcast_as((n, h, w, c))?.contiguous()
}
