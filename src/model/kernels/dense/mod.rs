//! Dense convolutions as one register-tiled matrix product with weights packed once at load.
//!
//! Every dense convolution (1x1, kxk, strided, dilated, TF "same") is the product of its
//! input rows and a `(kh * kw * c_in) x c_out` weight matrix. The rows are never gathered into
//! an im2col buffer: for each tile of output pixels and each tap of the window the kernel holds
//! one pointer per pixel into the input (or into a row of zeros where the window leaves the
//! image) and broadcasts from there ("indirect convolution"). Only windows over fewer than 8
//! channels (RGB stems) are gathered, a tile at a time, so their reduction is not 9 or 49 taps
//! of three steps each. One output row has its own kernel ([`row`]). The weights are laid out
//! once, at load, in panels of `nv` vectors of columns, so the inner loop reads them
//! contiguously; the `gemm` crate re-packed them on every call. Bias, a residual and the
//! activation are applied to the accumulators before the single store, so outputs may start
//! uninitialised.
//!
//! The tile is `MR` pixels x `nv` vectors of output channels, kept in registers over the whole
//! reduction; the widths per instruction set are in [`Shape`]. Work is split over the
//! [`team`](super::team): by pixel rows when there are many, by column panels when a layer has
//! few pixels (7x7 maps). Measured in `docs/performance.md`.

// Index loops over the tile's constant dimensions are what LLVM unrolls into registers.
#![allow(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::too_many_arguments,
    clippy::needless_range_loop
)]

use super::conv::Resolved;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Simd};
use super::winograd::Filters;
use super::{team, Activation, ConvGeometry, Nhwc, SendPtr};
use std::sync::OnceLock;

/// 64 bytes of weights: packed panels start on a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// A `k x n` weight matrix in column panels of `nr = nv * lanes` values, each panel `k`
/// contiguous rows of `nr`, zero past column `n`.
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    shape: Shape,
    lines: Vec<Line>,
    /// How a 3x3 layer runs [`winograd`](super::winograd), decided on its first Winograd
    /// call: its transformed filters are 4x the size of these, and only layers with large
    /// maps use them.
    winograd: OnceLock<Filters>,
}

/// Register tile of one kernel instantiation: `mr` output pixels x `nv` vectors of channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    isa: Isa,
    lanes: usize,
    nv: usize,
    mr: usize,
}

impl Shape {
    /// The tile for `n` output channels: the panel width that wastes the fewest padded
    /// columns, preferring wider panels (fewer loads per multiply-add) on a tie.
    fn choose(isa: Isa, n: usize) -> Shape {
        let (lanes, widths): (usize, &[(usize, usize)]) = match isa {
            // (nv, mr): 24-28 accumulators of 32 registers; 16 lanes.
            Isa::Avx512 => (16, &[(4, 6), (3, 8), (2, 8), (1, 8)]),
            // 12 accumulators of 16 registers, one for the broadcast; 8 lanes.
            _ => (8, &[(3, 4), (2, 6), (1, 8)]),
        };
        let waste = |nv: usize| n.div_ceil(nv * lanes) * nv * lanes - n;
        let &(nv, mr) = widths
            .iter()
            .min_by_key(|(nv, _)| waste(*nv))
            .expect("at least one width");
        Shape { isa, lanes, nv, mr }
    }

    fn nr(&self) -> usize {
        self.nv * self.lanes
    }
}

impl PackedWeights {
    /// Packs a row-major `k x n` matrix for this CPU, or `None` where no vector kernel runs
    /// (the caller keeps its portable path).
    pub(crate) fn pack(k: usize, n: usize, weight: &[f32]) -> Option<Self> {
        let mut packed = Self::zeroed(k, n)?;
        assert_eq!(weight.len(), k * n, "weight is k x n");
        let nr = packed.shape.nr();
        let flat: &mut [f32] = bytemuck_lines(&mut packed.lines);
        for p in 0..n.div_ceil(nr) {
            let cols = (n - p * nr).min(nr);
            for row in 0..k {
                let dst = &mut flat[(p * k + row) * nr..][..cols];
                dst.copy_from_slice(&weight[row * n + p * nr..][..cols]);
            }
        }
        Some(packed)
    }

    /// A `k x n` matrix of zeros packed for this CPU, to be filled through [`Self::as_mut_ptr`];
    /// `None` as [`Self::pack`].
    pub(crate) fn zeroed(k: usize, n: usize) -> Option<Self> {
        let isa = Isa::detect();
        if isa == Isa::Portable || k == 0 || n == 0 {
            return None;
        }
        let shape = Shape::choose(isa, n);
        let nr = shape.nr();
        let lines = vec![Line::default(); (n.div_ceil(nr) * k * nr).div_ceil(16)];
        Some(PackedWeights {
            k,
            n,
            shape,
            lines,
            winograd: OnceLock::new(),
        })
    }

    /// Columns per panel: from [`Self::offset`]`(row, col)` on, the values of row `row` run
    /// contiguously to the panel's end (zeros past column `n`).
    pub(crate) fn panel_width(&self) -> usize {
        self.shape.nr()
    }

    /// Where value `(row, col)` lies, from [`Self::as_ptr`]. Row `row + r` of the same
    /// column lies `r * panel_width()` further.
    pub(crate) fn offset(&self, row: usize, col: usize) -> usize {
        assert!(
            row < self.k && col < self.n,
            "({row}, {col}) in a {}x{}",
            self.k,
            self.n
        );
        let nr = self.shape.nr();
        ((col / nr) * self.k + row) * nr + col % nr
    }

    /// The packed values (panels, each `k` rows of [`Self::panel_width`]).
    pub(crate) fn as_ptr(&self) -> *const f32 {
        bytemuck_lines_ref(&self.lines).as_ptr()
    }

    /// The packed values, to fill a [`Self::zeroed`] matrix.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        bytemuck_lines(&mut self.lines).as_mut_ptr()
    }

    /// A copy whose reduction row `r` is multiplied by `factors[r % factors.len()]`: with one
    /// factor per input channel, the weights of `conv(x * gate)` (row `r` of every tap reads
    /// channel `r % c_in`). Cheaper than gating the map when `k x n` is smaller than it.
    pub(crate) fn scale_rows(&self, factors: &[f32]) -> PackedWeights {
        assert!(
            !factors.is_empty() && self.k.is_multiple_of(factors.len()),
            "one factor per input channel"
        );
        let nr = self.shape.nr();
        let mut lines = self.lines.clone();
        let flat = bytemuck_lines(&mut lines);
        for p in 0..self.panels() {
            let panel = &mut flat[p * self.k * nr..][..self.k * nr];
            for (row, values) in panel.chunks_exact_mut(nr).enumerate() {
                let factor = factors[row % factors.len()];
                values.iter_mut().for_each(|v| *v *= factor);
            }
        }
        PackedWeights {
            k: self.k,
            n: self.n,
            shape: self.shape,
            lines,
            winograd: OnceLock::new(),
        }
    }

    /// The instruction set these weights were packed for.
    pub(crate) fn isa(&self) -> Isa {
        self.shape.isa
    }

    /// These weights as the 3x3 filters over `c_in` channels they are, for Winograd: kept in
    /// its transform domain or made per call (decided on the first call, see
    /// [`Filters::new`]); `None` when they are not a 3x3 layer's over `c_in` channels.
    pub(crate) fn winograd(&self, c_in: usize) -> Option<&Filters> {
        if self.k != 9 * c_in {
            return None;
        }
        Some(self.winograd.get_or_init(|| Filters::new(self, c_in)))
    }

    /// Reduction length and output channels: the matrix is `k x n`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The row-major `k x n` matrix these were packed from.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let nr = self.shape.nr();
        let flat = bytemuck_lines_ref(&self.lines);
        let mut weight = vec![0.0; self.k * self.n];
        for (row, values) in weight.chunks_exact_mut(self.n).enumerate() {
            for (col, value) in values.iter_mut().enumerate() {
                *value = flat[((col / nr) * self.k + row) * nr + col % nr];
            }
        }
        weight
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(self.shape.nr())
    }

    /// Start of panel `p` at reduction row `k0`.
    fn panel(&self, p: usize, k0: usize) -> *const f32 {
        let flat: &[f32] = bytemuck_lines_ref(&self.lines);
        flat[(p * self.k + k0) * self.shape.nr()..].as_ptr()
    }
}

fn bytemuck_lines(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: `Line` is `repr(C)` of 16 f32 with no padding (64 bytes, align 64).
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), lines.len() * 16) }
}

fn bytemuck_lines_ref(lines: &[Line]) -> &[f32] {
    // SAFETY: as in `bytemuck_lines`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * 16) }
}

/// The input of a convolution seen as the rows of the product: for output pixel `m` and tap
/// `t` of the window, where its `c` channels start.
pub(crate) struct Rows<'a> {
    input: &'a [f32],
    shape: Nhwc,
    geometry: ConvGeometry,
    res: Resolved,
    /// `c` zeros: padding taps and pixels past the end read these.
    zeros: Vec<f32>,
    /// A 1x1 convolution over the channel concatenation of these maps, read where they lie:
    /// "tap" `t` is part `t`, whose pixel `m` starts at `data[m * stride]` (`c` channels).
    parts: Vec<Part<'a>>,
}

/// One map of a gathered 1x1 convolution's input (see [`Rows::gather`]).
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    /// Pixel 0's first channel.
    pub(crate) data: &'a [f32],
    /// Distance between consecutive pixels (at least the part's channels).
    pub(crate) stride: usize,
}

impl<'a> Rows<'a> {
    /// `input` must hold `shape.len()` values and `res` be `geometry` resolved for it.
    pub(crate) fn new(
        input: &'a [f32],
        shape: Nhwc,
        geometry: ConvGeometry,
        res: Resolved,
    ) -> Self {
        assert!(input.len() >= shape.len(), "input holds the whole shape");
        Rows {
            input,
            shape,
            geometry,
            res,
            zeros: vec![0.0; shape.c],
            parts: Vec::new(),
        }
    }

    /// The rows of a 1x1 convolution whose input is the concatenation of `parts` along the
    /// channels, without writing it: each part holds `shape.c` channels of `shape`'s pixels
    /// (the weight rows are part-major, as for the concatenated map).
    pub(crate) fn gather(parts: Vec<Part<'a>>, shape: Nhwc) -> Self {
        let pixels = shape.n * shape.h * shape.w;
        for part in &parts {
            assert!(part.stride >= shape.c, "parts' pixels do not overlap");
            assert!(
                pixels == 0 || part.data.len() >= (pixels - 1) * part.stride + shape.c,
                "part holds every pixel"
            );
        }
        let geometry = ConvGeometry::square(1, 1, 0);
        let res = geometry
            .resolve(shape.h, shape.w)
            .expect("a 1x1 window fits any map");
        Rows {
            input: &[],
            shape,
            geometry,
            res,
            zeros: vec![0.0; shape.c],
            parts,
        }
    }

    fn taps(&self) -> usize {
        if self.parts.is_empty() {
            self.geometry.kernel.0 * self.geometry.kernel.1
        } else {
            self.parts.len()
        }
    }

    fn count(&self) -> usize {
        self.shape.n * self.res.out_h * self.res.out_w
    }

    fn is_pointwise(&self) -> bool {
        self.geometry.kernel == (1, 1)
            && self.geometry.stride == (1, 1)
            && self.res.pad_top == 0
            && self.res.pad_left == 0
            && self.res.out_h == self.shape.h
            && self.res.out_w == self.shape.w
    }

    /// Fills `out[t * mr + i]` with the start of tap `t` for output row `m0 + i`.
    fn fill(&self, m0: usize, mr: usize, out: &mut [*const f32]) {
        let count = self.count();
        let c = self.shape.c;
        if !self.parts.is_empty() {
            for (part, slots) in self.parts.iter().zip(out.chunks_exact_mut(mr)) {
                for (i, p) in slots.iter_mut().enumerate() {
                    let m = m0 + i;
                    *p = if m < count {
                        part.data[m * part.stride..].as_ptr()
                    } else {
                        self.zeros.as_ptr()
                    };
                }
            }
            return;
        }
        if self.is_pointwise() {
            for (i, p) in out[..mr].iter_mut().enumerate() {
                let m = m0 + i;
                *p = if m < count {
                    self.input[m * c..].as_ptr()
                } else {
                    self.zeros.as_ptr()
                };
            }
            return;
        }
        let (kh, kw) = self.geometry.kernel;
        let (sh, sw) = self.geometry.stride;
        let (dh, dw) = self.geometry.dilation;
        let plane = self.res.out_h * self.res.out_w;
        for i in 0..mr {
            let m = m0 + i;
            let (n, rem) = (m / plane, m % plane);
            let (oy, ox) = (rem / self.res.out_w, rem % self.res.out_w);
            for ky in 0..kh {
                let iy = (oy * sh + ky * dh).checked_sub(self.res.pad_top);
                for kx in 0..kw {
                    let ix = (ox * sw + kx * dw).checked_sub(self.res.pad_left);
                    let slot = &mut out[(ky * kw + kx) * mr + i];
                    *slot = match (iy, ix) {
                        (Some(iy), Some(ix))
                            if m < count && iy < self.shape.h && ix < self.shape.w =>
                        {
                            self.input[((n * self.shape.h + iy) * self.shape.w + ix) * c..].as_ptr()
                        }
                        _ => self.zeros.as_ptr(),
                    };
                }
            }
        }
    }
}

impl Rows<'_> {
    /// Writes the windows of output rows `m0..m0 + slots.len()` to `dst`, each as one row of
    /// `taps * c` values (tap-major, as the weight rows), and points `slots` at those rows.
    /// Rows past the end are zeros.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `slots.len() * taps * c + S::LANES` values; each
    /// window's copies spill up to a vector past its end, into the next window's space.
    #[inline(always)]
    unsafe fn gather_windows<S: Simd>(&self, m0: usize, slots: &mut [*const f32], dst: *mut f32) {
        let (kh, kw) = self.geometry.kernel;
        let (sh, sw) = self.geometry.stride;
        let (dh, dw) = self.geometry.dilation;
        let Nhwc { h, w, c, .. } = self.shape;
        let (out_w, plane) = (self.res.out_w, self.res.out_h * self.res.out_w);
        let width = kh * kw * c;
        let count = self.count();
        let (mut n, rem) = (m0 / plane, m0 % plane);
        let (mut oy, mut ox) = (rem / out_w, rem % out_w);
        for (i, slot) in slots.iter_mut().enumerate() {
            let row = dst.add(i * width);
            *slot = row;
            if m0 + i >= count {
                zero_over::<S>(row, width);
                continue;
            }
            let x0 = (ox * sw) as isize - self.res.pad_left as isize;
            for ky in 0..kh {
                let out = row.add(ky * kw * c);
                let iy = (oy * sh + ky * dh).wrapping_sub(self.res.pad_top);
                if iy >= h {
                    zero_over::<S>(out, kw * c);
                    continue;
                }
                let line = self.input.as_ptr().add((n * h + iy) * w * c);
                if dw == 1 && x0 >= 0 && x0 as usize + kw <= w {
                    copy_over::<S>(line.add(x0 as usize * c), out, kw * c);
                    continue;
                }
                for kx in 0..kw {
                    let ix = x0 + (kx * dw) as isize;
                    if (0..w as isize).contains(&ix) {
                        copy_over::<S>(line.add(ix as usize * c), out.add(kx * c), c);
                    } else {
                        zero_over::<S>(out.add(kx * c), c);
                    }
                }
            }
            ox += 1;
            if ox == out_w {
                (ox, oy) = (0, oy + 1);
                if oy == self.res.out_h {
                    (oy, n) = (0, n + 1);
                }
            }
        }
    }
}

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
    let s = weights.shape;
    let m = rows.count();
    if m == 1 && rows.is_pointwise() && rows.parts.is_empty() {
        row::run(rows.input, weights, target);
        return;
    }
    let tiles = m.div_ceil(s.mr);
    let panels = weights.panels();
    let threads = team::threads();
    let flops = 2 * m * weights.k * weights.n;
    let out = SendPtr(target.data);
    // Below ~0.3 MFLOP a layer is faster on one core than with a hand-over.
    if threads == 1 || flops < 300_000 {
        run_block(rows, weights, target, out, (0, tiles), (0, panels));
    } else if tiles >= 4 * threads {
        // By rows: 3 parts per thread lets a slowed core fall behind by a third of its share.
        let parts = (3 * threads).min(tiles);
        team::parallel_for(parts, |part| {
            let span = team::span(part, parts, tiles);
            run_block(rows, weights, target, out, span, (0, panels));
        });
    } else {
        let parts = panels.min(2 * threads);
        if parts <= 1 {
            let parts = tiles.min(threads);
            team::parallel_for(parts, |part| {
                let span = team::span(part, parts, tiles);
                run_block(rows, weights, target, out, span, (0, panels));
            });
        } else {
            team::parallel_for(parts, |part| {
                let span = team::span(part, parts, panels);
                run_block(rows, weights, target, out, (0, tiles), span);
            });
        }
    }
}

/// `out = a * weights` for a contiguous `m x k` matrix `a`, on the calling thread, `out`'s
/// rows `n` apart: the Winograd products, inside a chunk of tiles a thread already owns.
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
) {
    let s = weights.shape;
    // SAFETY (all arms): `PackedWeights::pack` chose the shape for the ISA `Isa::detect` saw
    // on this CPU; the caller of `run` vouched for the buffers.
    #[cfg(target_arch = "x86_64")]
    unsafe {
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
        let _ = (rows, target, out, tiles, panels, s);
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
    block::<Avx512, MR, NV>(
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
    block::<Avx2, MR, NV>(rows, weights, target, out, tiles, panels, finish_rows_avx2)
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
unsafe fn block<S: Simd, const MR: usize, const NV: usize>(
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
    let gather = rows.taps() > 1 && rows.shape.c < GATHER_BELOW_CHANNELS && rows.parts.is_empty();
    let (taps, c) = if gather {
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
                rows.gather_windows::<S>(tile * MR, slot, at);
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
                    tile::<S, MR, NV>(tap_rows, b, &pass, &epilogue, finish);
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

/// Copies `len` values from `src` to `dst` a vector at a time. Stores whole vectors, so up to
/// `S::LANES - 1` values past `dst + len` are overwritten; the reads stop at `src + len`.
#[inline(always)]
unsafe fn copy_over<S: Simd>(src: *const f32, dst: *mut f32, len: usize) {
    let mut i = 0;
    while i < len {
        S::store(
            dst.add(i),
            S::load_partial(src.add(i), (len - i).min(S::LANES)),
        );
        i += S::LANES;
    }
}

/// Zeros `len` values at `dst`, overwriting up to `S::LANES - 1` more as [`copy_over`].
#[inline(always)]
unsafe fn zero_over<S: Simd>(dst: *mut f32, len: usize) {
    let mut i = 0;
    while i < len {
        S::store(dst.add(i), S::zero());
        i += S::LANES;
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
unsafe fn tile<S: Simd, const MR: usize, const NV: usize>(
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
                    acc[r][v] = S::fma(x, bv[v], acc[r][v]);
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

mod row;
#[cfg(test)]
mod tests;
