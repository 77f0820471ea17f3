//! Layer norm over the innermost axis of a row-major slice: every `dim` consecutive values (a
//! token of ViT, the channels of one NHWC pixel of ConvNeXt) normalised to zero mean and unit
//! variance, then scaled and shifted per position.
//!
//! Two passes over each row in f32, as PyTorch's CPU kernel does: the mean, then the mean
//! square deviation from it. The one-pass `E[x^2] - E[x]^2` loses the variance to
//! cancellation when a row's mean is large against its spread (a residual stream late in a
//! network). Rows are split over the thread team ([`super::team`]), so a norm inside a
//! per-image pool stays on its thread.

use super::{team, Fresh, SendPtr};

/// Lanes of the partial sums: independent chains LLVM keeps in vector registers.
const LANES: usize = 16;
/// Rows per team part: enough work to pay for claiming it.
const ROWS_PER_PART: usize = 64;

/// `(x - mean) / sqrt(var + eps) * weight + bias` for each row of `dim` values of `input`.
///
/// # Panics
/// If `weight` or `bias` is not `dim` long, or `input` is not a whole number of rows.
pub(crate) fn layer_norm_new(input: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    assert!(
        dim > 0 && bias.len() == dim,
        "one weight and bias per position"
    );
    assert_eq!(input.len() % dim, 0, "whole rows");
    let rows = input.len() / dim;
    let mut out = Fresh::new(input.len());
    let dst = SendPtr(out.as_mut_ptr());
    let dst = &dst; // the closure shares the wrapper, not its raw pointer field
    team::parallel_for(rows.div_ceil(ROWS_PER_PART), |part| {
        let first = part * ROWS_PER_PART;
        let last = (first + ROWS_PER_PART).min(rows);
        for row in first..last {
            let src = &input[row * dim..(row + 1) * dim];
            // SAFETY: each row is written by exactly one part, inside the `rows * dim` buffer.
            #[allow(unsafe_code)]
            let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row * dim), dim) };
            normalise_row(src, weight, bias, eps, out);
        }
    });
    // SAFETY: the loop above wrote every row.
    #[allow(unsafe_code)]
    unsafe {
        out.assume_init()
    }
}

fn normalise_row(src: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = src.len() as f32;
    let mean = lane_sum(src, |x| x) / n;
    let var = lane_sum(src, |x| (x - mean) * (x - mean)) / n;
    let inv_std = 1.0 / (var + eps).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(src).zip(weight).zip(bias) {
        *o = (x - mean) * inv_std * w + b;
    }
}

/// `sum(f(x))` in [`LANES`] interleaved partial sums.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += f(*x);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|x| f(*x)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::pseudo_random;

    /// Against the definition in f64, on rows whose mean is 1000 times their spread: the
    /// one-pass variance would lose most of its digits there.
    #[test]
    fn layer_norm_matches_the_definition_even_far_from_zero() {
        for dim in [3, 16, 40, 97] {
            let rows = 150;
            let input: Vec<f32> = pseudo_random(rows * dim, dim as u32)
                .iter()
                .map(|x| 1000.0 + x)
                .collect();
            let weight = pseudo_random(dim, 2);
            let bias = pseudo_random(dim, 3);
            let out = layer_norm_new(&input, &weight, &bias, 1e-6);
            for (row, got) in input.chunks_exact(dim).zip(out.chunks_exact(dim)) {
                let mean = row.iter().map(|x| f64::from(*x)).sum::<f64>() / dim as f64;
                let var = row
                    .iter()
                    .map(|x| (f64::from(*x) - mean).powi(2))
                    .sum::<f64>()
                    / dim as f64;
                for (i, g) in got.iter().enumerate() {
                    let want = (f64::from(row[i]) - mean) / (var + 1e-6).sqrt()
                        * f64::from(weight[i])
                        + f64::from(bias[i]);
                    assert!(
                        (f64::from(*g) - want).abs() < 2e-3,
                        "dim {dim}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
