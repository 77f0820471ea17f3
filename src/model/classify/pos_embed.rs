//! A ViT's position embeddings on another patch grid than the one it was trained on: timm's
//! `resample_abs_pos_embed` (what its `checkpoint_filter_fn` runs when a model is created at
//! another `img_size` than its checkpoint's), i.e. the prefix tokens (class, distillation) kept
//! aside and the grid resized with PyTorch's `F.interpolate(mode="bicubic", antialias=True,
//! align_corners=False)`.
//!
//! PyTorch's antialiased bicubic is Pillow's filter, not the plain bicubic: Keys' cubic with
//! A = -0.5 (the non-antialiased mode uses -0.75), its support widened by the scale when
//! shrinking, taps cut at the border and renormalised (not clamped), width resized before
//! height. Weights and sums are f32 in the same order, as PyTorch's CPU kernel computes them for
//! a float tensor.
// Based on PyTorch's aten/src/ATen/native/cpu/UpSampleKernel.cpp
// (`HelperInterpBase::_compute_indices_min_size_weights_aa`, `HelperInterpCubic::aa_filter`)
// and timm 1.0.31's timm/layers/pos_embed.py (read, not copied).

use candle_core::{Device, Tensor};

/// timm 1.0.31's `checkpoint_filter_fn` resamples whenever the grid differs from the
/// checkpoint's (which it reads from `pretrained_cfg.input_size` and the patch kernel), even one
/// with as many tokens (7x28 for 14x14); older timm compared token counts only.
pub(crate) fn needs_resampling(trained: (usize, usize), wanted: (usize, usize)) -> bool {
    trained != wanted
}

/// `(1, prefix + th * tw, dim)` embeddings of a `(th, tw)` grid -> `(1, prefix + gh * gw, dim)`
/// for a `(gh, gw)` grid; the first `prefix` tokens are kept as they are.
pub(crate) fn resample(
    pos_embed: &Tensor,
    prefix: usize,
    (th, tw): (usize, usize),
    (gh, gw): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (_, tokens, dim) = pos_embed.dims3()?;
    if tokens != prefix + th * tw {
        candle_core::bail!(
            "pos_embed has {tokens} tokens; a {th}x{tw} grid with {prefix} prefix tokens needs {}",
            prefix + th * tw
        )
    }
    let values = pos_embed.flatten_all()?.to_vec1::<f32>()?;
    let (head, grid) = values.split_at(prefix * dim);
    // Width first, then height, as PyTorch's separable kernel does (a side already at its
    // size is skipped).
    let wide = if tw == gw {
        grid.to_vec()
    } else {
        resize_axis(grid, th, tw, dim, gw, Axis::Width)
    };
    let resized = if th == gh {
        wide
    } else {
        resize_axis(&wide, th, gw, dim, gh, Axis::Height)
    };
    let mut out = head.to_vec();
    out.extend_from_slice(&resized);
    Tensor::from_vec(out, (1, prefix + gh * gw, dim), &Device::Cpu)
}

#[derive(Clone, Copy)]
enum Axis {
    Height,
    Width,
}

/// Resizes one axis of an `(h, w, dim)` map (channel last) to `to` samples.
fn resize_axis(src: &[f32], h: usize, w: usize, dim: usize, to: usize, axis: Axis) -> Vec<f32> {
    let (from, out_h, out_w) = match axis {
        Axis::Height => (h, to, w),
        Axis::Width => (w, h, to),
    };
    let taps = taps(from, to);
    let mut out = vec![0.0f32; out_h * out_w * dim];
    for y in 0..out_h {
        for x in 0..out_w {
            let (tap, fixed) = match axis {
                Axis::Height => (&taps[y], x),
                Axis::Width => (&taps[x], y),
            };
            let at = |k: usize| match axis {
                Axis::Height => (k * w + fixed) * dim,
                Axis::Width => (fixed * w + k) * dim,
            };
            let dst = &mut out[(y * out_w + x) * dim..][..dim];
            for (j, weight) in tap.weights.iter().enumerate() {
                let row = &src[at(tap.start + j)..][..dim];
                if j == 0 {
                    dst.iter_mut().zip(row).for_each(|(d, s)| *d = s * weight);
                } else {
                    dst.iter_mut().zip(row).for_each(|(d, s)| *d += s * weight);
                }
            }
        }
    }
    out
}

/// The input samples one output sample reads and their normalised weights.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// Pillow's bicubic kernel (Keys, A = -0.5), as PyTorch's antialiased mode evaluates it.
fn cubic(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Taps of each of `output` samples resized from `input` (align_corners False, no explicit
/// scale factor: the scale is `input / output`). The mixed f32 / f64 steps are PyTorch's.
fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f32 / output as f32;
    // Bicubic reads 4 samples; shrinking widens the window by the scale.
    let support: f32 = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv_scale: f32 = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let max_taps = support.ceil() as i64 * 2 + 1;
    (0..output)
        .map(|i| {
            let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
            let start = ((f64::from(center - support) + 0.5) as i64).max(0);
            let end = ((f64::from(center + support) + 0.5) as i64).min(input as i64);
            let count = (end - start).clamp(0, max_taps);
            let mut weights: Vec<f32> = (0..count)
                .map(|j| {
                    let offset = (j + start) as f32 - center;
                    cubic(((f64::from(offset) + 0.5) * f64::from(inv_scale)) as f32)
                })
                .collect();
            let total: f32 = weights.iter().fold(0.0, |sum, w| sum + w);
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps {
                start: start as usize,
                weights,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_size_is_the_identity_and_weights_sum_to_one() -> candle_core::Result<()> {
        for (input, output) in [(14, 24), (24, 14), (12, 7), (7, 9), (5, 5)] {
            for tap in taps(input, output) {
                let sum: f32 = tap.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "{input}->{output}: {sum}");
                assert!(tap.start + tap.weights.len() <= input);
            }
        }
        let pos = Tensor::arange(0f32, (2 + 9) as f32 * 4.0, &Device::Cpu)?.reshape((1, 11, 4))?;
        let same = resample(&pos, 2, (3, 3), (3, 3))?;
        assert_eq!(same.to_vec3::<f32>()?, pos.to_vec3::<f32>()?);
        let bigger = resample(&pos, 2, (3, 3), (5, 4))?;
        assert_eq!(bigger.dims(), &[1, 2 + 20, 4]);
        // The prefix tokens are kept aside untouched.
        assert_eq!(
            bigger.narrow(1, 0, 2)?.to_vec3::<f32>()?,
            pos.narrow(1, 0, 2)?.to_vec3::<f32>()?
        );
        Ok(())
    }

    /// `F.interpolate(x, size, mode="bicubic", antialias=True, align_corners=False)` of this
    /// 3x4 map in torch 2.15, up (5x7) and down (2x3).
    #[test]
    fn the_grid_resizes_as_pytorch_does() -> candle_core::Result<()> {
        let grid = [
            0.1, -0.4, 0.9, 0.3, 0.7, -0.2, 0.5, 0.0, -0.6, 0.8, -0.9, 0.25f32,
        ];
        let pos = Tensor::from_slice(&grid, (1, 12, 1), &Device::Cpu)?;
        let torch_up = [
            0.09198576,
            -0.13855523,
            -0.43515787,
            0.2661556,
            0.9440177,
            0.557517,
            0.2744466,
            0.42761928,
            0.09844229,
            -0.37775683,
            0.21735074,
            0.8302472,
            0.4222384,
            0.13290754,
            0.77139443,
            0.4014253,
            -0.18076715,
            0.125,
            0.49887294,
            0.17775312,
            -0.03966349,
            -0.1628071,
            0.09042206,
            0.45935607,
            0.01564832,
            -0.42799592,
            -0.05881826,
            0.19455288,
            -0.8229411,
            -0.15098323,
            0.8620357,
            -0.04640327,
            -1.0057609,
            -0.18793046,
            0.3699724,
        ];
        let torch_down = [
            0.11327819,
            0.21947685,
            0.40886065,
            0.07268694,
            0.01605868,
            -0.04261776,
        ];
        for (size, want) in [((5, 7), &torch_up[..]), ((2, 3), &torch_down[..])] {
            let got = resample(&pos, 0, (3, 4), size)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{size:?}: {got:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_token_count_other_than_the_grid_is_refused() {
        let pos = Tensor::zeros((1, 10, 4), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        let err = resample(&pos, 2, (3, 3), (4, 4)).expect_err("10 != 11");
        assert!(err.to_string().contains("10 tokens"), "{err}");
        assert!(needs_resampling((14, 14), (7, 28)));
        assert!(!needs_resampling((14, 14), (14, 14)));
        assert!(needs_resampling((14, 14), (24, 24)));
    }
}
