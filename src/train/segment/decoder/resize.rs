//! Bilinear resizing of `(batch, h * w, channels)` maps as products with interpolation
//! matrices built from the model core's own sampling plan ([`ResizeAxis`]): exact, linear, and
//! so differentiable with Candle's matrix product.

use candle_core::{DType, Device, Tensor};

use crate::model::kernels::ResizeAxis;

/// `(output, input)` matrix of a 1-D bilinear resize, PyTorch's sampling.
pub(crate) fn resize_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; output * input];
    for (o, axis) in ResizeAxis::plan(input, output, align_corners)
        .iter()
        .enumerate()
    {
        m[o * input + axis.i0] += axis.w0;
        m[o * input + axis.i1] += axis.w1;
    }
    Tensor::from_vec(m, (output, input), &Device::Cpu)?.to_dtype(dtype)
}

/// `(out_h * out_w, in_h * in_w)` matrix of a 2-D bilinear resize of row-major pixels: for
/// small maps with many channels (LR-ASPP's deep features), one product.
pub(super) fn kron_resize(
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    align_corners: bool,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let rows = ResizeAxis::plan(in_h, out_h, align_corners);
    let cols = ResizeAxis::plan(in_w, out_w, align_corners);
    let (n_in, n_out) = (in_h * in_w, out_h * out_w);
    let mut m = vec![0f32; n_out * n_in];
    for (oy, ry) in rows.iter().enumerate() {
        for (ox, rx) in cols.iter().enumerate() {
            let row = &mut m[(oy * out_w + ox) * n_in..][..n_in];
            for (iy, wy) in [(ry.i0, ry.w0), (ry.i1, ry.w1)] {
                for (ix, wx) in [(rx.i0, rx.w0), (rx.i1, rx.w1)] {
                    row[iy * in_w + ix] += wy * wx;
                }
            }
        }
    }
    Tensor::from_vec(m, (n_out, n_in), &Device::Cpu)?.to_dtype(dtype)
}

/// `(b, h * w, c)` -> `(b, out_h * out_w, c)`, rows then columns: two products of
/// `out_h * h * w * c` and `out_h * out_w * w * c` multiply-adds, where the 2-D matrix of
/// [`kron_resize`] would cost `out_h * out_w * h * w * c` (16x more at DeepLabV3+'s x4).
pub(super) fn resize_maps(
    x: &Tensor,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    align_corners: bool,
) -> candle_core::Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    let dtype = x.dtype();
    let rows = resize_matrix(h, out_h, align_corners, dtype)?;
    let y = rows.broadcast_matmul(&x.reshape((b, h, w * c))?)?;
    let cols = resize_matrix(w, out_w, align_corners, dtype)?;
    let y = cols.broadcast_matmul(&y.reshape((b * out_h, w, c))?)?;
    y.reshape((b, out_h * out_w, c))
}

/// Logits `(b, h * w, k)` -> `(b, k, out_h, out_w)`, the layout the loss reads: planes
/// resized by a product on each side.
pub(super) fn upsample_logits(
    small: &Tensor,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    align_corners: bool,
) -> candle_core::Result<Tensor> {
    let (b, _, k) = small.dims3()?;
    let dtype = small.dtype();
    let planes = small.transpose(1, 2)?.reshape((b * k, h, w))?;
    let rows = resize_matrix(h, out_h, align_corners, dtype)?;
    let cols = resize_matrix(w, out_w, align_corners, dtype)?.t()?;
    let up = rows.broadcast_matmul(&planes.broadcast_matmul(&cols)?)?;
    up.reshape((b, k, out_h, out_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_matrices_match_the_model_core_kernel() -> candle_core::Result<()> {
        use crate::model::segment::ops::resize;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 5.0, &Device::Cpu)?.reshape((1, 3, 5, 2))?;
        for align in [false, true] {
            let kernel = resize(&x, (7, 4), align)?; // (1, 7, 4, 2) NHWC
            let planes = x.permute((0, 3, 1, 2))?.reshape((2, 3, 5))?;
            let m = resize_matrix(3, 7, align, DType::F32)?.broadcast_matmul(
                &planes.broadcast_matmul(&resize_matrix(5, 4, align, DType::F32)?.t()?)?,
            )?;
            let want = kernel.permute((0, 3, 1, 2))?.reshape((2, 7, 4))?;
            let diff = (m - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "align_corners={align}: {diff}");
            let flat = x.reshape((1, 15, 2))?;
            let want = kernel.reshape((1, 28, 2))?;
            let kron = kron_resize((3, 5), (7, 4), align, DType::F32)?.broadcast_matmul(&flat)?;
            let diff = (kron - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "kron align_corners={align}: {diff}");
            let separable = resize_maps(&flat, (3, 5), (7, 4), align)?;
            let diff = (separable - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "separable align_corners={align}: {diff}");
        }
        Ok(())
    }
}
