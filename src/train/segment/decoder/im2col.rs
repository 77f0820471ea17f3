//! The trainable dense 3x3 convolution (stride 1, padding = dilation) on `(batch, h * w,
//! channels)` maps, as im2col + one matrix product: a custom op gathers every pixel's nine
//! shifted neighbours into one row of `9 * c` values (tap-major, as the weight is reshaped),
//! and its backward scatters the rows' gradient back, written as a gather per input pixel so
//! that it needs no atomic adds and sums in a fixed order. The product and its gradients are
//! Candle's. Measured against Candle's own `conv2d` (whose input gradient is a
//! `conv_transpose2d`) in `docs/performance.md`, "Segmentation training".

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::geometry::Geometry;

use super::pixels::matmul_pixels;

/// `x` `(b, h * w, c_in)` convolved with `weight` `(c_out, c_in, 3, 3)`: `(b, h * w, c_out)`.
pub(super) fn conv3x3(
    x: &Tensor,
    (h, w): (usize, usize),
    weight: &Tensor,
    dilation: usize,
) -> candle_core::Result<Tensor> {
    let (c_out, c_in, _, _) = weight.dims4()?;
    let cols = x
        .contiguous()?
        .apply_op1(Im2col(Geometry { h, w, dilation }))?;
    // (c_out, c_in, ky, kx) -> rows ordered (ky, kx, c_in), as im2col lays out its columns.
    let matrix = weight.permute((2, 3, 1, 0))?.reshape((9 * c_in, c_out))?;
    matmul_pixels(&cols, &matrix)
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("im2col: the operand must be contiguous"),
    }
}

/// Rows of `9 * c` per pixel: `out[p][t * c + ch] = x[p + offset(t)][ch]`, zero outside.
fn gather<T: WithDType>(x: &[T], g: Geometry, (b, c): (usize, usize)) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); b * g.h * g.w * 9 * c];
    if c == 0 {
        return out;
    }
    out.par_chunks_mut(9 * c).enumerate().for_each(|(p, row)| {
        let (image, rem) = (p / (g.h * g.w), p % (g.h * g.w));
        for t in 0..9 {
            if let Some(src) = g.pixel(image, (rem / g.w, rem % g.w), g.offset(t)) {
                row[t * c..(t + 1) * c].copy_from_slice(&x[src * c..(src + 1) * c]);
            }
        }
    });
    out
}

/// The transpose of [`gather`]: `out[q][ch] = sum_t cols[q - offset(t)][t * c + ch]`.
fn scatter<T: WithDType>(cols: &[T], g: Geometry, (b, c): (usize, usize)) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); b * g.h * g.w * c];
    if c == 0 {
        return out;
    }
    out.par_chunks_mut(c).enumerate().for_each(|(q, acc)| {
        let (image, rem) = (q / (g.h * g.w), q % (g.h * g.w));
        for t in 0..9 {
            let (dy, dx) = g.offset(t);
            if let Some(p) = g.pixel(image, (rem / g.w, rem % g.w), (-dy, -dx)) {
                let src = &cols[p * 9 * c + t * c..][..c];
                acc.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
        }
    });
    out
}

/// `(b, h*w, c)` -> `(b, h*w, 9c)`.
struct Im2col(Geometry);

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "wick-train-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, p, c) = l.shape().dims3()?;
        if p != self.0.h * self.0.w {
            candle_core::bail!("im2col: {p} pixels for a {}x{} map", self.0.h, self.0.w)
        }
        let storage = match s {
            CpuStorage::F32(x) => CpuStorage::F32(gather(contiguous(x, l)?, self.0, (b, c))),
            CpuStorage::F64(x) => CpuStorage::F64(gather(contiguous(x, l)?, self.0, (b, c))),
            _ => candle_core::bail!("im2col: f32 or f64 only"),
        };
        Ok((storage, Shape::from((b, p, 9 * c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2im(self.0))?))
    }
}

/// `(b, h*w, 9c)` -> `(b, h*w, c)`.
struct Col2im(Geometry);

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "wick-train-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, p, c9) = l.shape().dims3()?;
        if p != self.0.h * self.0.w || c9 % 9 != 0 {
            candle_core::bail!(
                "col2im: {:?} for a {}x{} map",
                l.shape(),
                self.0.h,
                self.0.w
            )
        }
        let c = c9 / 9;
        let storage = match s {
            CpuStorage::F32(x) => CpuStorage::F32(scatter(contiguous(x, l)?, self.0, (b, c))),
            CpuStorage::F64(x) => CpuStorage::F64(scatter(contiguous(x, l)?, self.0, (b, c))),
            _ => candle_core::bail!("col2im: f32 or f64 only"),
        };
        Ok((storage, Shape::from((b, p, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::segment::decoder::gradcheck::{check_gradients, random};
    use candle_core::{DType, Var};

    /// Against candle's `conv2d` (NCHW), values and both gradients.
    #[test]
    fn matches_candle_conv2d() -> candle_core::Result<()> {
        let (b, h, w, c, o) = (2, 5, 4, 3, 4);
        for dilation in [1, 2] {
            let x = Var::from_tensor(&random(&[b, h * w, c], 1, DType::F64)?)?;
            let k = Var::from_tensor(&random(&[o, c, 3, 3], 2, DType::F64)?)?;
            let probe = random(&[b, h * w, o], 3, DType::F64)?;
            let ours = conv3x3(&x, (h, w), &k, dilation)?;
            let nchw = x.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
            let theirs = nchw
                .contiguous()?
                .conv2d(&k, dilation, 1, dilation, 1)?
                .permute((0, 2, 3, 1))?
                .reshape((b, h * w, o))?;
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "dilation {dilation}: {diff}");
            let a = (ours * &probe)?.sum_all()?.backward()?;
            let z = (theirs * &probe)?.sum_all()?.backward()?;
            for v in [&x, &k] {
                let (ga, gz) = (a.get(v), z.get(v));
                let (Some(ga), Some(gz)) = (ga, gz) else {
                    candle_core::bail!("missing gradient")
                };
                let diff = (ga - gz)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(diff < 1e-10, "dilation {dilation}: gradient {diff}");
            }
        }
        Ok(())
    }

    /// Forward and backward of DeepLabV3's `classifier.1` (256 -> 256, 3x3) on a batch of 8
    /// ResNet maps at 320x320 (stride 8: 40x40), im2col against Candle's `conv2d`, for
    /// `docs/performance.md`: `cargo test --lib dense_conv_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn dense_conv_speed_im2col_against_candle_conv2d() -> candle_core::Result<()> {
        use std::time::Instant;
        let (b, h, w, c) = (8, 40, 40, 256);
        let x = Var::from_tensor(&random(&[b, h * w, c], 1, DType::F32)?)?;
        let k = Var::from_tensor(&(random(&[c, c, 3, 3], 2, DType::F32)? * 0.02)?)?;
        let probe = random(&[b, h * w, c], 3, DType::F32)?;
        let ours = || (conv3x3(&x, (h, w), &k, 1)? * &probe)?.sum_all();
        let theirs = || {
            let nchw = x
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            let y = nchw.conv2d(&k, 1, 1, 1, 1)?.permute((0, 2, 3, 1))?;
            (y.reshape((b, h * w, c))? * &probe)?.sum_all()
        };
        let mut grads = Vec::new();
        for (name, f) in [
            (
                "im2col + matmul",
                &ours as &dyn Fn() -> candle_core::Result<Tensor>,
            ),
            ("candle conv2d", &theirs),
        ] {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let started = Instant::now();
                let g = f()?.backward()?;
                best = best.min(started.elapsed().as_secs_f64());
                grads.push(g.get(&k).cloned());
            }
            eprintln!("{name}: {best:.3} s forward + backward");
        }
        let (Some(Some(a)), Some(Some(z))) = (grads.first(), grads.last()) else {
            candle_core::bail!("missing gradient")
        };
        let diff = (a - z)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = z.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-3 * scale, "{diff} of {scale}");
        Ok(())
    }

    #[test]
    fn dense_gradients_match_finite_differences() -> candle_core::Result<()> {
        let (b, h, w, c, o) = (2, 3, 4, 3, 2);
        let x = Var::from_tensor(&random(&[b, h * w, c], 4, DType::F64)?)?;
        let k = Var::from_tensor(&random(&[o, c, 3, 3], 5, DType::F64)?)?;
        let probe = random(&[b, h * w, o], 6, DType::F64)?;
        let f = || (conv3x3(&x, (h, w), &k, 1)? * &probe)?.sum_all();
        check_gradients(&f, &[("x", &x), ("weight", &k)])
    }
}
