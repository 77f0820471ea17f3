//! One output row: a batch-1 classifier head (1280 x 1000 for MobileNetV2 and EfficientNet)
//! and the squeeze-excitation layers on pooled vectors.
//!
//! The register tile of [`super::block`] is `MR` rows deep, so a single row leaves `MR - 1`
//! of its multiply-adds on zeros: eight broadcasts and eight FMAs per weight vector for one
//! useful product. Here one row runs over several panels at once, one accumulator set per
//! panel, so each weight vector loaded feeds one FMA and the product runs at the speed the
//! weights stream from cache.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::super::simd::{Avx2, Avx512};
use super::super::simd::{Isa, Simd};
use super::super::{team, SendPtr};
use super::{Epilogue, Finish, PackedWeights, Target};

/// `target = activation(x * weights + bias (+ residual))` for the one row `x` (`k` values).
///
/// # Safety
/// As [`super::run`] for one output row: `target.data` valid for `weights.n` values, not
/// aliased by `x` or the residual.
pub(super) unsafe fn run(x: &[f32], weights: &PackedWeights, target: &Target<'_>) {
    assert!(x.len() >= weights.k, "the row holds k values");
    let panels = weights.panels();
    let flops = 2 * weights.k * weights.n;
    let out = SendPtr(target.data);
    // Below ~0.3 MFLOP a layer is faster on one core than with a hand-over (as `super::run`).
    let parts = if team::threads() == 1 || flops < 300_000 {
        1
    } else {
        panels.min(2 * team::threads())
    };
    team::parallel_for(parts, |part| {
        let span = team::span(part, parts, panels);
        run_panels(x, weights, target, out, span);
    });
}

fn run_panels(
    x: &[f32],
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    panels: (usize, usize),
) {
    let s = weights.shape;
    // SAFETY (all arms): the weights were packed for the ISA `Isa::detect` saw on this CPU;
    // the caller of `run` vouched for the buffers.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (s.isa, s.nv) {
            (Isa::Avx512, 4) => row_avx512::<4, 2>(x, weights, target, out, panels),
            (Isa::Avx512, 3) => row_avx512::<3, 3>(x, weights, target, out, panels),
            (Isa::Avx512, 2) => row_avx512::<2, 4>(x, weights, target, out, panels),
            (Isa::Avx512, 1) => row_avx512::<1, 8>(x, weights, target, out, panels),
            (Isa::Avx2, 3) => row_avx2::<3, 3>(x, weights, target, out, panels),
            (Isa::Avx2, 2) => row_avx2::<2, 4>(x, weights, target, out, panels),
            (Isa::Avx2, 1) => row_avx2::<1, 8>(x, weights, target, out, panels),
            other => unreachable!("no kernel for panels {other:?}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, target, out, panels, s);
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512<const NV: usize, const G: usize>(
    x: &[f32],
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    panels: (usize, usize),
) {
    row::<Avx512, NV, G>(x, weights, target, out, panels, super::finish_rows_avx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<const NV: usize, const G: usize>(
    x: &[f32],
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    panels: (usize, usize),
) {
    row::<Avx2, NV, G>(x, weights, target, out, panels, super::finish_rows_avx2)
}

/// Panels `panels.0..panels.1`, `G` at a time: `G * NV` accumulators (8-9), enough
/// independent FMA chains to cover their latency.
#[inline(always)]
unsafe fn row<S: Simd, const NV: usize, const G: usize>(
    x: &[f32],
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    panels: (usize, usize),
    finish: Finish,
) {
    let (k, n, nr) = (weights.k, weights.n, NV * S::LANES);
    let mut p0 = panels.0;
    while p0 < panels.1 {
        let group = (panels.1 - p0).min(G);
        // A short last group repeats its last panel; those sums are not stored.
        let mut b = [std::ptr::null::<f32>(); G];
        let mut valid = [[0usize; NV]; G];
        let mut acc = [[S::zero(); NV]; G];
        for g in 0..G {
            let p = p0 + g.min(group - 1);
            b[g] = weights.panel(p, 0);
            let cols = n - p * nr;
            for v in 0..NV {
                valid[g][v] = cols.saturating_sub(v * S::LANES).min(S::LANES);
                let bias = target.bias.as_ptr().wrapping_add(p * nr + v * S::LANES);
                acc[g][v] = S::load_partial(bias, valid[g][v]);
            }
        }
        for (i, &value) in x[..k].iter().enumerate() {
            let xv = S::splat(value);
            for g in 0..G {
                for v in 0..NV {
                    let w = S::load(b[g].add(i * nr + v * S::LANES));
                    acc[g][v] = S::fma(xv, w, acc[g][v]);
                }
            }
        }
        for g in 0..group {
            let col0 = (p0 + g) * nr;
            let e = Epilogue {
                out: out.0.add(col0),
                row_stride: target.row_stride,
                rows: 1,
                cols: (n - col0).min(nr),
                bias: target.bias[col0..].as_ptr(),
                residual: target.residual.map(|r| r[col0..].as_ptr()),
                residual_stride: n,
                activation: target.activation,
            };
            store::<S, NV>(&acc[g], &valid[g], &e, finish);
        }
        p0 += group;
    }
}

/// One panel's sums to the row: clamping activations in registers, the others (and a
/// residual) out of line as the tile does.
#[inline(always)]
unsafe fn store<S: Simd, const NV: usize>(
    acc: &[S::V; NV],
    valid: &[usize; NV],
    e: &Epilogue,
    finish: Finish,
) {
    let (lo, hi, in_registers) = e.clamp();
    let (lo, hi) = (S::splat(lo), S::splat(hi));
    for v in 0..NV {
        let x = S::min(S::max(acc[v], lo), hi);
        S::store_partial(e.out.wrapping_add(v * S::LANES), x, valid[v]);
    }
    if !in_registers {
        finish(e, 1);
    }
}
