//! Layer normalisation over the last axis, vectorised and spread over the team.
//!
//! Candle's CPU op summed each row with scalar adds, took the variance as `E[x²] - mean²` and
//! split the rows over rayon, whose threads then competed with the team's spinning worker
//! right after every product. Here each row is read three times while it sits in L1 (mean,
//! then the centred variance as PyTorch computes it, then the affine output), with the widest
//! vectors the CPU has, in parts on the [`team`](super::team).

#![allow(unsafe_code, unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Simd};
use super::{team, SendPtr};

/// The per-channel affine of a layer norm and its epsilon.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub(crate) weight: &'a [f32],
    pub(crate) bias: &'a [f32],
    pub(crate) eps: f32,
}

/// `out[r] = (x[r] - mean) / sqrt(var + eps) * weight + bias` for every row of
/// `weight.len()` values of `xs`.
///
/// # Panics
/// If `xs` is not whole rows, `out` is shorter than `xs` or `bias` differs from `weight` in
/// length: the layer checks shapes first.
pub(crate) fn layer_norm(xs: &[f32], norm: &Norm<'_>, out: &mut [f32]) {
    let width = norm.weight.len();
    assert!(width > 0 && norm.bias.len() == width, "layer norm affine");
    assert!(
        xs.len().is_multiple_of(width) && out.len() >= xs.len(),
        "layer norm rows"
    );
    let rows = xs.len() / width;
    let threads = team::threads();
    // Below ~64K values a hand-over costs more than the pass.
    let parts = if threads == 1 || xs.len() < 65_536 {
        1
    } else {
        (3 * threads).min(rows)
    };
    let out = SendPtr(out.as_mut_ptr());
    let run = |part: usize| {
        let span = team::span(part, parts, rows);
        // SAFETY: parts write disjoint rows of `out`, which holds `xs.len()` values.
        unsafe { rows_on_this_thread(xs, norm, span, out) };
    };
    if parts == 1 {
        run(0);
    } else {
        team::parallel_for(parts, run);
    }
}

unsafe fn rows_on_this_thread(xs: &[f32], norm: &Norm<'_>, span: (usize, usize), out: SendPtr) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512(xs, norm, span, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2(xs, norm, span, out),
        _ => rows_portable(xs, norm, span, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(xs: &[f32], norm: &Norm<'_>, span: (usize, usize), out: SendPtr) {
    rows::<Avx512>(xs, norm, span, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(xs: &[f32], norm: &Norm<'_>, span: (usize, usize), out: SendPtr) {
    rows::<Avx2>(xs, norm, span, out)
}

unsafe fn rows_portable(xs: &[f32], norm: &Norm<'_>, span: (usize, usize), out: SendPtr) {
    let width = norm.weight.len();
    for r in span.0..span.1 {
        let x = &xs[r * width..][..width];
        let mean = x.iter().sum::<f32>() / width as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + norm.eps).sqrt();
        let dst = std::slice::from_raw_parts_mut(out.0.add(r * width), width);
        for (c, d) in dst.iter_mut().enumerate() {
            *d = (x[c] - mean) * inv * norm.weight[c] + norm.bias[c];
        }
    }
}

#[inline(always)]
unsafe fn rows<S: Simd>(xs: &[f32], norm: &Norm<'_>, span: (usize, usize), out: SendPtr) {
    let width = norm.weight.len();
    let lanes = S::LANES;
    let chunk = |c: usize| (width - c).min(lanes);
    for r in span.0..span.1 {
        let x = xs[r * width..][..width].as_ptr();
        let mut sum = S::zero();
        let mut c = 0;
        while c < width {
            sum = S::add(sum, S::load_partial(x.add(c), chunk(c)));
            c += lanes;
        }
        let mean = horizontal_sum::<S>(sum) / width as f32;
        let full = width / lanes * lanes;
        let mut squares = S::zero();
        let mut c = 0;
        while c < full {
            let centred = S::add(S::load(x.add(c)), S::splat(-mean));
            squares = S::fma(centred, centred, squares);
            c += lanes;
        }
        // The tail in scalars: lanes past the row, centred, would add mean² each.
        let tail: f32 = (full..width).map(|c| (*x.add(c) - mean).powi(2)).sum();
        let var = (horizontal_sum::<S>(squares) + tail) / width as f32;
        let inv = S::splat(1.0 / (var + norm.eps).sqrt());
        let dst = out.0.add(r * width);
        let mut c = 0;
        while c < width {
            let n = chunk(c);
            let centred = S::mul(S::add(S::load_partial(x.add(c), n), S::splat(-mean)), inv);
            let w = S::load_partial(norm.weight.as_ptr().add(c), n);
            let b = S::load_partial(norm.bias.as_ptr().add(c), n);
            S::store_partial(dst.add(c), S::fma(centred, w, b), n);
            c += lanes;
        }
    }
}

#[inline(always)]
unsafe fn horizontal_sum<S: Simd>(x: S::V) -> f32 {
    let mut lanes = [0.0f32; 16];
    S::store_partial(lanes.as_mut_ptr(), x, S::LANES);
    lanes[..S::LANES].iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::pseudo_random;

    #[test]
    fn rows_of_every_width_match_the_definition_in_f64() {
        for (rows, width) in [(1, 1), (3, 7), (197, 768), (40, 17), (5000, 32)] {
            let xs: Vec<f32> = pseudo_random(rows * width, 1)
                .iter()
                .map(|x| 3.0 * x + 5.0)
                .collect();
            let weight = pseudo_random(width, 2);
            let bias = pseudo_random(width, 3);
            let norm = Norm {
                weight: &weight,
                bias: &bias,
                eps: 1e-6,
            };
            let mut out = vec![f32::NAN; xs.len()];
            layer_norm(&xs, &norm, &mut out);
            for r in 0..rows {
                let x: Vec<f64> = xs[r * width..][..width]
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect();
                let mean = x.iter().sum::<f64>() / width as f64;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                for c in 0..width {
                    let want = (x[c] - mean) / (var + 1e-6).sqrt() * f64::from(weight[c])
                        + f64::from(bias[c]);
                    let got = f64::from(out[r * width + c]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{rows}x{width} row {r} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
