//! Dense convolutions as one register-tiled matrix product with weights packed once at load.
//!
//! Every dense convolution (1x1, kxk, strided, dilated, TF "same") is the product of its
//! input rows and a `(kh * kw * c_in) x c_out` weight matrix. The rows are never gathered into
//! an im2col buffer: for each tile of output pixels and each tap of the window the kernel holds
//! one pointer per pixel into the input (or into a row of zeros where the window leaves the
//! image) and broadcasts from there ("indirect convolution"). Only windows over fewer than 8
//! channels (RGB stems) are gathered, a tile at a time, so their reduction is not 9 or 49 taps
//! of three steps each. One output row has its own kernel ([`row`]). A layer loaded in bf16
//! runs the same tile on bf16 pairs ([`bf16`]), its windows always gathered and rounded. The
//! weights are laid out once, at load, in panels of `nv` vectors of columns, so the inner loop
//! reads them contiguously; the `gemm` crate re-packed them on every call. Bias, a residual
//! and the activation are applied to the accumulators before the single store, so outputs may
//! start uninitialised.
//!
//! The tile is `MR` pixels x `nv` vectors of output channels, kept in registers over the whole
//! reduction; the widths per instruction set are in [`packed::Shape`]. Work is split over the
//! [`team`](super::team): by pixel rows when there are many, by column panels when a layer has
//! few pixels (7x7 maps). Measured in `docs/performance.md`.

// Index loops over the tile's constant dimensions are what LLVM unrolls into registers.
#![allow(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::too_many_arguments,
    clippy::needless_range_loop
)]

#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Simd};
use super::{team, Activation, ConvGeometry, Nhwc, SendPtr};
pub(crate) use bf16::is_supported as bf16_supported;
pub(crate) use packed::PackedWeights;
pub(crate) use rows::{Part, Rows};

/// Where the product goes and what happens to it on the way.
pub(crate) struct Target<'a> {
    /// First output channel of the first row; rows are `row_stride` apart and may be
    /// uninitialised (every one of the first `c_out` values of each row is written).
    pub(crate) data: *mut f32,
    /// Distance between output rows.
    pub(crate) row_stride: usize,
    /// `c_out` values.
    pub(crate) bias: &'a [f32],
    /// Contiguous `rows x c_out`, added before the activation.
    pub(crate) residual: Option<&'a [f32]>,
    /// Applied last.
    pub(crate) activation: Activation,
}

// SAFETY: the raw pointers are only written through in disjoint tiles by `run`'s parts (see
// `Target::data`); the slices are shared reads.
unsafe impl Sync for Target<'_> {}

/// `target = activation(rows * weights + bias (+ residual))` for every output pixel of `rows`.
///
/// # Safety
/// `target.data` must be valid for writes of `rows.count()` rows of `weights.n` values
/// `row_stride` apart, not aliased by `rows.input` or the residual, which must hold
/// `rows.count() * weights.n` values; `weights.k` must be `taps * c_in` of `rows`.
pub(crate) unsafe fn run(rows: &Rows<'_>, weights: &PackedWeights, target: &Target<'_>) {
    assert_eq!(
        weights.k,
        rows.taps() * rows.shape.c,
        "weights match the window"
    );
    assert_eq!(target.bias.len(), weights.n, "one bias per output channel");
    if let Some(residual) = target.residual {
        assert!(
            residual.len() >= rows.count() * weights.n,
            "residual too short"
        );
    }
    let m = rows.count();
    if m == 1 && rows.is_pointwise() && rows.parts.is_empty() {
        row::run(rows.input, weights, target);
        return;
    }
    match weights.bf16.as_deref() {
        Some(pairs) if rows.shape.c.is_multiple_of(2) => split(rows, pairs, target, Kernel::Pairs),
        _ => split(rows, weights, target, Kernel::Values),
    }
}

/// Which operands [`run_block`] multiplies: `weights` as f32, or as the bf16 pairs of
/// [`bf16::pack_pairs`] (the input rounded as it is gathered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Values,
    Pairs,
}

/// Splits the product over the team by rows or by column panels and runs each part.
fn split(rows: &Rows<'_>, weights: &PackedWeights, target: &Target<'_>, kernel: Kernel) {
    let s = weights.shape;
    let m = rows.count();
    let tiles = m.div_ceil(s.mr);
    let panels = weights.panels();
    let threads = team::threads();
    let flops = 2 * m * weights.k * weights.n;
    let out = SendPtr(target.data);
    // Below ~0.3 MFLOP a layer is faster on one core than with a hand-over.
    if threads == 1 || flops < 300_000 {
        run_block(rows, weights, target, out, (0, tiles), (0, panels), kernel);
    } else if tiles >= 4 * threads {
        // By rows: 3 parts per thread lets a slowed core fall behind by a third of its share.
        let parts = (3 * threads).min(tiles);
        team::parallel_for(parts, |part| {
            let span = team::span(part, parts, tiles);
            run_block(rows, weights, target, out, span, (0, panels), kernel);
        });
    } else {
        let parts = panels.min(2 * threads);
        if parts <= 1 {
            let parts = tiles.min(threads);
            team::parallel_for(parts, |part| {
                let span = team::span(part, parts, tiles);
                run_block(rows, weights, target, out, span, (0, panels), kernel);
            });
        } else {
            team::parallel_for(parts, |part| {
                let span = team::span(part, parts, panels);
                run_block(rows, weights, target, out, (0, tiles), span, kernel);
            });
        }
    }
}

/// `out = a * weights` for a contiguous `m x k` matrix `a`, on the calling thread, `out`'s
/// rows `n` apart: the Winograd products, inside a chunk of tiles a thread already owns.
/// Always f32: rounding the transformed input and filters to bf16 put F(4x4, 3x3)'s output 7%
/// of its range off the definition (its transforms amplify rounding ~100x; f32 holds 1e-5).
///
/// # Safety
/// `out` must be valid for writes of `m * weights.n` values and alias nothing read;
/// `zero_bias` holds `weights.n` zeros.
pub(crate) unsafe fn multiply_here(
    a: &[f32],
    m: usize,
    weights: &PackedWeights,
    out: *mut f32,
    zero_bias: &[f32],
) {
    let shape = Nhwc {
        n: 1,
        h: 1,
        w: m,
        c: weights.k,
    };
    let geometry = ConvGeometry::square(1, 1, 0);
    let res = geometry.resolve(1, m).expect("a 1x1 window fits any map");
    let rows = Rows::new(a, shape, geometry, res);
    let target = Target {
        data: out,
        row_stride: weights.n,
        bias: zero_bias,
        residual: None,
        activation: Activation::Identity,
    };
    let tiles = (0, m.div_ceil(weights.shape.mr));
    run_block(
        &rows,
        weights,
        &target,
        SendPtr(out),
        tiles,
        (0, weights.panels()),
        Kernel::Values,
    );
}

/// Row tiles `tiles.0..tiles.1` x column panels `panels.0..panels.1`, on this thread.
fn run_block(
    rows: &Rows<'_>,
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    tiles: (usize, usize),
    panels: (usize, usize),
    kernel: Kernel,
) {
    let s = weights.shape;
    // SAFETY (all arms): `PackedWeights::pack` chose the shape for the ISA `Isa::detect` saw
    // on this CPU, and `bf16::pack_pairs` packs only where `bf16::is_supported`; the caller
    // of `run` vouched for the buffers.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if kernel == Kernel::Pairs {
            match (s.nv, s.mr) {
                (4, 6) => block_bf16::<6, 4>(rows, weights, target, out, tiles, panels),
                (3, 8) => block_bf16::<8, 3>(rows, weights, target, out, tiles, panels),
                (2, 8) => block_bf16::<8, 2>(rows, weights, target, out, tiles, panels),
                (1, 8) => block_bf16::<8, 1>(rows, weights, target, out, tiles, panels),
                other => unreachable!("no bf16 kernel for tile {other:?}"),
            }
            return;
        }
        match (s.isa, s.nv, s.mr) {
            (Isa::Avx512, 4, 6) => block_avx512::<6, 4>(rows, weights, target, out, tiles, panels),
            (Isa::Avx512, 3, 8) => block_avx512::<8, 3>(rows, weights, target, out, tiles, panels),
            (Isa::Avx512, 2, 8) => block_avx512::<8, 2>(rows, weights, target, out, tiles, panels),
            (Isa::Avx512, 1, 8) => block_avx512::<8, 1>(rows, weights, target, out, tiles, panels),
            (Isa::Avx2, 3, 4) => block_avx2::<4, 3>(rows, weights, target, out, tiles, panels),
            (Isa::Avx2, 2, 6) => block_avx2::<6, 2>(rows, weights, target, out, tiles, panels),
            (Isa::Avx2, 1, 8) => block_avx2::<8, 1>(rows, weights, target, out, tiles, panels),
            other => unreachable!("no kernel for tile {other:?}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, target, out, tiles, panels, s, kernel);
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<const MR: usize, const NV: usize>(
    rows: &Rows<'_>,
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    tiles: (usize, usize),
    panels: (usize, usize),
) {
    block::<Avx512, Values, MR, NV>(
        rows,
        weights,
        target,
        out,
        tiles,
        panels,
        finish_rows_avx512,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block_bf16<const MR: usize, const NV: usize>(
    rows: &Rows<'_>,
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    tiles: (usize, usize),
    panels: (usize, usize),
) {
    block::<Avx512, bf16::Pairs, MR, NV>(
        rows,
        weights,
        target,
        out,
        tiles,
        panels,
        finish_rows_avx512,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const MR: usize, const NV: usize>(
    rows: &Rows<'_>,
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    tiles: (usize, usize),
    panels: (usize, usize),
) {
    block::<Avx2, Values, MR, NV>(rows, weights, target, out, tiles, panels, finish_rows_avx2)
}

/// Pixel tiles per group whose input rows for one reduction block (`k` values each) stay in
/// L2 while every panel's slice passes over them from L1. Sizing by the block, not the whole
/// reduction, is what keeps big layers (3x3 over 512 channels) from re-reading their weights
/// from memory every couple of tiles.
fn tiles_per_group(k: usize, mr: usize) -> usize {
    const L2_SHARE_BYTES: usize = 256 * 1024;
    (L2_SHARE_BYTES / (mr * k * 4).max(1)).max(1)
}

#[inline(always)]
unsafe fn block<S: Simd, P: Operands<S>, const MR: usize, const NV: usize>(
    rows: &Rows<'_>,
    weights: &PackedWeights,
    target: &Target<'_>,
    out: SendPtr,
    tiles: (usize, usize),
    panels: (usize, usize),
    finish: Finish,
) {
    let m = rows.count();
    let n = weights.n;
    let nr = NV * S::LANES;
    // A window over few channels (the RGB stem) is gathered into one row of `taps * c`
    // values per pixel: the reduction then runs as one tap, not `taps` loops of three steps
    // each behind their own pointer loads (the weight rows are in the same tap-major order).
    // bf16 pairs are always gathered: rounding happens there, a tile at a time.
    let gather = P::PAIRS
        || (rows.taps() > 1 && rows.shape.c < GATHER_BELOW_CHANNELS && rows.parts.is_empty());
    let (taps, c) = if P::PAIRS {
        (1, rows.taps() * rows.shape.c / 2)
    } else if gather {
        (1, rows.taps() * rows.shape.c)
    } else {
        (rows.taps(), rows.shape.c)
    };
    let blocks = reduction_blocks(taps, c, nr);
    let block_k = blocks
        .iter()
        .map(|b| (b.taps.1 - b.taps.0) * (b.channels.1 - b.channels.0))
        .max()
        .unwrap_or(1);
    let group = tiles_per_group(block_k, MR);
    let mut pointers = vec![std::ptr::null::<f32>(); group * taps * MR];
    let mut patches = Vec::new();
    if gather {
        patches = PATCHES.with(|p| std::mem::take(&mut *p.borrow_mut()));
        // A vector of slack: the copies store whole vectors past a window's end.
        patches.resize(patches.len().max(group * MR * c + S::LANES), 0.0);
    }
    let mut first = tiles.0;
    while first < tiles.1 {
        let last = (first + group).min(tiles.1);
        for tile in first..last {
            let slot = &mut pointers[(tile - first) * taps * MR..][..taps * MR];
            if gather {
                let at = patches[(tile - first) * MR * c..].as_mut_ptr();
                rows.gather_windows::<S, P>(tile * MR, slot, at);
            } else {
                rows.fill(tile * MR, MR, slot);
            }
        }
        for (bi, block) in blocks.iter().enumerate() {
            let pass = Pass {
                channels: block.channels,
                first: bi == 0,
                last: bi + 1 == blocks.len(),
            };
            for p in panels.0..panels.1 {
                let col0 = p * nr;
                let cols = (n - col0).min(nr);
                let b = weights.panel(p, block.taps.0 * c + block.channels.0);
                for t in first..last {
                    let m0 = t * MR;
                    let tap_rows = &pointers[(t - first) * taps * MR..][..taps * MR];
                    let tap_rows = &tap_rows[block.taps.0 * MR..block.taps.1 * MR];
                    let epilogue = Epilogue {
                        out: out.0.add(m0 * target.row_stride + col0),
                        row_stride: target.row_stride,
                        rows: (m - m0).min(MR),
                        cols,
                        bias: target.bias[col0..].as_ptr(),
                        residual: target.residual.map(|r| r[m0 * n + col0..].as_ptr()),
                        residual_stride: n,
                        activation: target.activation,
                    };
                    tile::<S, P, MR, NV>(tap_rows, b, &pass, &epilogue, finish);
                }
            }
        }
        first = last;
    }
    if gather {
        PATCHES.with(|p| *p.borrow_mut() = patches);
    }
}

/// Convolutions over fewer input channels than this gather their windows (see [`block`]).
const GATHER_BELOW_CHANNELS: usize = 8;

/// What the tile multiplies: f32 values ([`Values`]) or bf16 pairs ([`bf16::Pairs`]), and how
/// gathered windows are written for it.
pub(super) trait Operands<S: Simd> {
    /// Each 32-bit lane holds two bf16 values of consecutive reduction rows: the input is
    /// always gathered (and rounded) per tile, and the words are half the values.
    const PAIRS: bool;
    /// `acc + x * b`, lane by lane (for pairs, both products of the lane added).
    unsafe fn madd(x: S::V, b: S::V, acc: S::V) -> S::V;
    /// Writes `len` values from `src` to `dst` as this kernel reads them, a vector at a time:
    /// whole vectors are stored, so up to `S::LANES - 1` words past the end are overwritten;
    /// reads stop at `src + len`.
    unsafe fn copy_over(src: *const f32, dst: *mut f32, len: usize);
    /// Writes `len` zero values, overwriting past the end as [`Self::copy_over`].
    unsafe fn zero_over(dst: *mut f32, len: usize);
}

/// f32 values, one per lane: the default kernel.
#[derive(Clone, Copy)]
pub(super) struct Values;

impl<S: Simd> Operands<S> for Values {
    const PAIRS: bool = false;

    #[inline(always)]
    unsafe fn madd(x: S::V, b: S::V, acc: S::V) -> S::V {
        S::fma(x, b, acc)
    }

    #[inline(always)]
    unsafe fn copy_over(src: *const f32, dst: *mut f32, len: usize) {
        let mut i = 0;
        while i < len {
            S::store(
                dst.add(i),
                S::load_partial(src.add(i), (len - i).min(S::LANES)),
            );
            i += S::LANES;
        }
    }

    #[inline(always)]
    unsafe fn zero_over(dst: *mut f32, len: usize) {
        let mut i = 0;
        while i < len {
            S::store(dst.add(i), S::zero());
            i += S::LANES;
        }
    }
}

thread_local! {
    /// The gathered windows of one group of tiles, kept between calls.
    static PATCHES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A part of the reduction: taps `taps.0..taps.1`, channels `channels.0..channels.1` of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    taps: (usize, usize),
    channels: (usize, usize),
}

/// Splits a reduction of `taps x c` into blocks whose slice of a weight panel (`nr` wide)
/// stays in L1 while every tile of a group passes over it. A short reduction is one block:
/// splitting costs a store and a reload of the tile per block.
fn reduction_blocks(taps: usize, c: usize, nr: usize) -> Vec<Block> {
    let k = taps * c;
    let k_max = (REDUCTION_BLOCK_BYTES / (nr * 4)).max(8);
    if k <= 2 * k_max {
        return vec![Block {
            taps: (0, taps),
            channels: (0, c),
        }];
    }
    let mut blocks = Vec::new();
    if c >= k_max {
        let parts = c.div_ceil(k_max);
        for t in 0..taps {
            for i in 0..parts {
                blocks.push(Block {
                    taps: (t, t + 1),
                    channels: team::span(i, parts, c),
                });
            }
        }
    } else {
        let per_block = k_max / c;
        let parts = taps.div_ceil(per_block);
        for i in 0..parts {
            blocks.push(Block {
                taps: team::span(i, parts, taps),
                channels: (0, c),
            });
        }
    }
    blocks
}

/// Bytes of a weight panel one reduction block reads. More than L1 holds, yet measured best
/// (32, 64, 128 KB swept with the group's L2 share at 128-2048 KB on 3x3 and 1x1 layers of
/// 256-2048 channels): each weight vector feeds `MR` multiply-adds, so streaming it from L2
/// costs less than storing and reloading the tile's sums twice as often.
const REDUCTION_BLOCK_BYTES: usize = 64 * 1024;

/// What one call of [`tile`] reduces and where its sums start and end.
struct Pass {
    channels: (usize, usize),
    /// Start from the bias (else from the partial sums already stored).
    first: bool,
    /// Finish: activation and residual (else store the partial sums).
    last: bool,
}

/// One tile: the sums of `MR` pixels x `NV` vectors of channels over every tap and channel,
/// kept in registers, then the epilogue and the store.
#[inline(always)]
unsafe fn tile<S: Simd, P: Operands<S>, const MR: usize, const NV: usize>(
    tap_rows: &[*const f32],
    mut b: *const f32,
    pass: &Pass,
    e: &Epilogue,
    finish: Finish,
) {
    // SAFETY: `[*const f32; MR]` has the layout of MR consecutive pointers.
    let taps = std::slice::from_raw_parts(
        tap_rows.as_ptr().cast::<[*const f32; MR]>(),
        tap_rows.len() / MR,
    );
    // The sums start from the bias, so the epilogue only stores: anything live across the
    // reduction beyond the accumulators and the weight vectors pushes accumulators to memory
    // (measured: stores in the hot loop, half the speed).
    let mut valid = [0usize; NV];
    let mut bias = [S::zero(); NV];
    for v in 0..NV {
        valid[v] = e.cols.saturating_sub(v * S::LANES).min(S::LANES);
        bias[v] = S::load_partial(e.bias.add(v * S::LANES), valid[v]);
    }
    let mut acc = [bias; MR];
    if !pass.first {
        for r in 0..MR {
            let src = e.out.wrapping_add(r * e.row_stride);
            for v in 0..NV {
                let n = if r < e.rows { valid[v] } else { 0 };
                acc[r][v] = S::load_partial(src.wrapping_add(v * S::LANES), n);
            }
        }
    }
    let (c0, c1) = pass.channels;
    for tap in taps {
        let a = *tap;
        let mut k = c0;
        while k < c1 {
            let mut bv = [S::zero(); NV];
            for v in 0..NV {
                bv[v] = S::load(b.add(v * S::LANES));
            }
            for r in 0..MR {
                let x = S::splat(*a[r].add(k));
                for v in 0..NV {
                    acc[r][v] = P::madd(x, bv[v], acc[r][v]);
                }
            }
            b = b.add(NV * S::LANES);
            k += 1;
        }
    }
    // Straight-line over constant indices with a small body, for the same reason: if LLVM
    // does not unroll this loop fully, the accumulators are indexed at run time and live in
    // memory. The cheap activations are one clamp: [lo, hi].
    let (lo, hi, in_registers) = if pass.last {
        e.clamp()
    } else {
        (f32::NEG_INFINITY, f32::INFINITY, true)
    };
    let (lo, hi) = (S::splat(lo), S::splat(hi));
    for r in 0..MR {
        let dst = e.out.wrapping_add(r * e.row_stride);
        for v in 0..NV {
            let n = if r < e.rows { valid[v] } else { 0 };
            let x = S::min(S::max(acc[r][v], lo), hi);
            S::store_partial(dst.wrapping_add(v * S::LANES), x, n);
        }
    }
    if !in_registers {
        finish(e, MR);
    }
}

/// The out-of-line epilogue of [`tile`], compiled for the tile's instruction set: a plain
/// function would be built for the baseline x86-64 (SSE2) and dispatch per row.
type Finish = unsafe fn(&Epilogue, usize);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn finish_rows_avx512(e: &Epilogue, mr: usize) {
    finish_rows::<Avx512>(e, mr)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn finish_rows_avx2(e: &Epilogue, mr: usize) {
    finish_rows::<Avx2>(e, mr)
}

/// Adds the residual and applies the activation over a stored tile (still in L1), out of
/// line (see [`tile`]): fused into the tile's registers instead, the extra live values push
/// the accumulators to memory and the whole product runs at half speed (measured, AVX2).
#[inline(always)]
unsafe fn finish_rows<S: Simd>(e: &Epilogue, mr: usize) {
    for r in 0..e.rows.min(mr) {
        let row = e.out.add(r * e.row_stride);
        let residual = e.residual.map(|p| p.add(r * e.residual_stride));
        let mut c = 0;
        while c < e.cols {
            let n = (e.cols - c).min(S::LANES);
            let mut x = S::load_partial(row.add(c), n);
            if let Some(residual) = residual {
                x = S::add(x, S::load_partial(residual.add(c), n));
            }
            S::store_partial(row.add(c), S::activate(e.activation, x), n);
            c += S::LANES;
        }
    }
}

/// What happens to a tile's sums on the way out.
struct Epilogue {
    out: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
    bias: *const f32,
    residual: Option<*const f32>,
    residual_stride: usize,
    activation: Activation,
}

impl Epilogue {
    /// The clamp `[lo, hi]` applied to the sums in registers, and whether that is the whole
    /// epilogue (else the residual and activation follow out of line, [`finish_rows`]).
    #[inline(always)]
    fn clamp(&self) -> (f32, f32, bool) {
        match (self.residual, self.activation) {
            (None, Activation::Identity) => (f32::NEG_INFINITY, f32::INFINITY, true),
            (None, Activation::Relu) => (0.0, f32::INFINITY, true),
            (None, Activation::Relu6) => (0.0, 6.0, true),
            _ => (f32::NEG_INFINITY, f32::INFINITY, false),
        }
    }
}

mod bf16;
mod packed;
mod row;
mod rows;
#[cfg(test)]
mod tests;
