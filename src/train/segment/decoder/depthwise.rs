//! The trainable depthwise 3x3 convolution (stride 1, padding = dilation, as smp's
//! `SeparableConv2d`) on `(batch, h * w, channels)` maps: a sum of nine shifted copies of the
//! input, each scaled per channel by one tap. Candle's grouped `conv2d` runs one convolution per
//! channel, far too slow for 2048 channels, so this is a custom op with its own backward:
//! the input's gradient is the same sum with the taps mirrored, the weight's the per-channel
//! sum of input times output gradient over every shift.
//!
//! Every reduction runs over fixed row blocks summed in order, so results do not depend on
//! the thread count or on scheduling (a resumed job must end where an uninterrupted one ends).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::geometry::Geometry;

/// Output rows (image, y) whose weight-gradient partial sums one task computes.
const ROWS_PER_TASK: usize = 4;

/// `x` `(b, h * w, c)` convolved with `weight` `(c, 1, 3, 3)`, dilation `dilation`, zero
/// padding `dilation`: `(b, h * w, c)`.
pub(super) fn depthwise(
    x: &Tensor,
    (h, w): (usize, usize),
    weight: &Tensor,
    dilation: usize,
) -> candle_core::Result<Tensor> {
    let c = weight.dim(0)?;
    let taps = weight.reshape((c, 9))?.contiguous()?;
    x.contiguous()?.apply_op2(
        &taps,
        Depthwise {
            geometry: Geometry { h, w, dilation },
            mirrored: false,
        },
    )
}

/// The slice of a contiguous tensor.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("depthwise: operands must be contiguous"),
    }
}

/// `(c, 9)` -> `(9, c)`, optionally with the taps mirrored (tap `t` -> `8 - t`).
fn by_tap<T: WithDType>(weight: &[T], c: usize, mirrored: bool) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); 9 * c];
    for ch in 0..c {
        for t in 0..9 {
            let src = if mirrored { 8 - t } else { t };
            out[t * c + ch] = weight[ch * 9 + src];
        }
    }
    out
}

/// The forward sum over the nine shifted copies.
fn convolve<T: WithDType>(x: &[T], taps: &[T], g: Geometry, (b, c): (usize, usize)) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); b * g.h * g.w * c];
    if c == 0 || g.w == 0 {
        return out;
    }
    out.par_chunks_mut(g.w * c)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (image, y) = (row / g.h, row % g.h);
            for t in 0..9 {
                let (dy, dx) = g.offset(t);
                let iy = y as isize + dy;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let line = (image * g.h + iy as usize) * g.w;
                let tap = &taps[t * c..(t + 1) * c];
                for ox in g.columns(dx) {
                    let src = &x[(line + (ox as isize + dx) as usize) * c..][..c];
                    let acc = &mut out_row[ox * c..(ox + 1) * c];
                    for ((a, &v), &k) in acc.iter_mut().zip(src).zip(tap) {
                        *a += v * k;
                    }
                }
            }
        });
    out
}

/// `d loss / d weight` as `(c, 9)`: per channel and tap, the sum of the shifted input times
/// the output gradient.
fn weight_gradient<T: WithDType>(
    x: &[T],
    grad: &[T],
    g: Geometry,
    (b, c): (usize, usize),
) -> Vec<T> {
    let rows: Vec<usize> = (0..b * g.h).collect();
    let partials: Vec<Vec<T>> = rows
        .par_chunks(ROWS_PER_TASK)
        .map(|block| {
            let mut acc = vec![T::from_f64(0.0); 9 * c];
            for &row in block {
                let (image, y) = (row / g.h, row % g.h);
                for t in 0..9 {
                    let (dy, dx) = g.offset(t);
                    let iy = y as isize + dy;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let line = (image * g.h + iy as usize) * g.w;
                    let sum = &mut acc[t * c..(t + 1) * c];
                    for ox in g.columns(dx) {
                        let src = &x[(line + (ox as isize + dx) as usize) * c..][..c];
                        let gr = &grad[(row * g.w + ox) * c..][..c];
                        for ((s, &v), &e) in sum.iter_mut().zip(src).zip(gr) {
                            *s += v * e;
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![T::from_f64(0.0); 9 * c];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, &v)| *t += v);
    }
    // (9, c) -> (c, 9), the weight's layout.
    let mut out = vec![T::from_f64(0.0); 9 * c];
    for t in 0..9 {
        for ch in 0..c {
            out[ch * 9 + t] = total[t * c + ch];
        }
    }
    out
}

/// `x (b, h*w, c)`, `weight (c, 9)` -> `(b, h*w, c)`; `mirrored` runs the transposed
/// convolution (the input gradient's).
struct Depthwise {
    geometry: Geometry,
    mirrored: bool,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "wick-train-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c) = self.geometry.batch(l1)?;
        if l2.shape().dims() != [c, 9] {
            candle_core::bail!("depthwise: weight {:?} for {c} channels", l2.shape())
        }
        let shape = l1.shape().clone();
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(k)) => {
                let taps = by_tap(contiguous(k, l2)?, c, self.mirrored);
                CpuStorage::F32(convolve(contiguous(x, l1)?, &taps, self.geometry, (b, c)))
            }
            (CpuStorage::F64(x), CpuStorage::F64(k)) => {
                let taps = by_tap(contiguous(k, l2)?, c, self.mirrored);
                CpuStorage::F64(convolve(contiguous(x, l1)?, &taps, self.geometry, (b, c)))
            }
            _ => candle_core::bail!("depthwise: f32 or f64 operands of one dtype"),
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.mirrored {
            candle_core::bail!("depthwise: the transposed convolution has no backward")
        }
        let grad = grad.contiguous()?;
        // Cached encoder features need no gradient.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                weight,
                &Depthwise {
                    geometry: self.geometry,
                    mirrored: true,
                },
            )?)
        } else {
            None
        };
        let grad_w = x.apply_op2_no_bwd(&grad, &WeightGradient(self.geometry))?;
        Ok((grad_x, Some(grad_w)))
    }
}

/// `x (b, h*w, c)`, output gradient `(b, h*w, c)` -> weight gradient `(c, 9)`.
struct WeightGradient(Geometry);

impl CustomOp2 for WeightGradient {
    fn name(&self) -> &'static str {
        "wick-train-depthwise-weight-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c) = self.0.batch(l1)?;
        if l2.shape() != l1.shape() {
            candle_core::bail!("depthwise: gradient {:?} for {:?}", l2.shape(), l1.shape())
        }
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(weight_gradient(
                contiguous(x, l1)?,
                contiguous(g, l2)?,
                self.0,
                (b, c),
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(weight_gradient(
                contiguous(x, l1)?,
                contiguous(g, l2)?,
                self.0,
                (b, c),
            )),
            _ => candle_core::bail!("depthwise: f32 or f64 operands of one dtype"),
        };
        Ok((storage, Shape::from((c, 9))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::segment::decoder::gradcheck::{check_gradients, random};
    use candle_core::{DType, Var};

    /// Against candle's grouped `conv2d` (NCHW), at a dilation larger than the map too.
    #[test]
    fn matches_candle_grouped_convolution() -> candle_core::Result<()> {
        let (b, h, w, c) = (2, 5, 7, 3);
        for dilation in [1, 2, 6] {
            let x = random(&[b, h * w, c], 1, DType::F64)?;
            let k = random(&[c, 1, 3, 3], 2, DType::F64)?;
            let ours = depthwise(&x, (h, w), &k, dilation)?;
            let nchw = x
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            let theirs = nchw
                .conv2d(&k, dilation, 1, dilation, c)?
                .permute((0, 2, 3, 1))?
                .reshape((b, h * w, c))?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "dilation {dilation}: {diff}");
        }
        Ok(())
    }

    /// Input and weight gradients of a dilated depthwise convolution followed by a pointwise
    /// one (smp's separable convolution), against finite differences.
    #[test]
    fn separable_dilated_gradients_match_finite_differences() -> candle_core::Result<()> {
        let (b, h, w, c, o) = (2, 4, 5, 3, 2);
        let x = Var::from_tensor(&random(&[b, h * w, c], 3, DType::F64)?)?;
        let k = Var::from_tensor(&random(&[c, 1, 3, 3], 4, DType::F64)?)?;
        let p = Var::from_tensor(&random(&[c, o], 5, DType::F64)?)?;
        let probe = random(&[b, h * w, o], 6, DType::F64)?;
        for dilation in [1, 2] {
            let f = || -> candle_core::Result<Tensor> {
                let y = depthwise(&x, (h, w), &k, dilation)?;
                let y = super::super::pixels::matmul_pixels(&y, &p)?;
                (y * &probe)?.sum_all()
            };
            check_gradients(&f, &[("x", &x), ("depthwise", &k), ("pointwise", &p)])?;
        }
        Ok(())
    }

    #[test]
    fn f32_and_f64_agree_and_the_result_does_not_depend_on_threads() -> candle_core::Result<()> {
        let (b, h, w, c) = (3, 9, 6, 5);
        let x = random(&[b, h * w, c], 7, DType::F32)?;
        let k = Var::from_tensor(&random(&[c, 1, 3, 3], 8, DType::F32)?)?;
        let grad = |x: &Tensor| -> candle_core::Result<Vec<f32>> {
            let g = depthwise(x, (h, w), &k, 2)?.sqr()?.sum_all()?.backward()?;
            g.get(&k)
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let many = grad(&x)?;
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(candle_core::Error::wrap)?
            .install(|| grad(&x))?;
        assert_eq!(many, one);
        let wide = depthwise(
            &x.to_dtype(DType::F64)?,
            (h, w),
            &k.to_dtype(DType::F64)?,
            2,
        )?;
        let narrow = depthwise(&x, (h, w), &k, 2)?.to_dtype(DType::F64)?;
        let diff = (wide - narrow)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
