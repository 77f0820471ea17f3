//! Depthwise convolution (groups = channels) on NHWC slices.
//!
//! Work is cut into blocks of one vector of channels (16 lanes on AVX-512, 8 on AVX2) over a
//! range of output rows. A block's input columns are first copied into a small zero-padded
//! scratch (`rows x cols x lanes`, in L1 or L2), so the compute loop has no bounds checks and
//! no border cases: at 14x14 a 5x5 window crosses the border for half of the pixels, and the
//! previous kernel's clipped single-pixel path there ran at 6 GB/s. The window's weights stay
//! in registers for the whole block (25 vectors for 5x5), and four output pixels are computed
//! at once for independent multiply-add chains. Measured in `docs/performance.md`.
//!
//! The kernel is written once against [`Simd`]; every instruction set, the portable loop
//! included, adds the taps in the same order with fused multiply-adds, so all give the same
//! bits (a test checks it).

// Index loops over the window and pixel counts are constants LLVM unrolls into registers.
#![allow(unsafe_code, unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]

use std::cell::RefCell;

use super::conv::Resolved;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Simd};
use super::{team, Activation, ConvGeometry, Fresh, Nhwc, SendPtr};

/// Weights of a depthwise convolution (groups = channels) with batch norm folded in.
pub struct DepthwiseParams<'a> {
    /// Window geometry.
    pub geometry: &'a ConvGeometry,
    /// `[kh * kw, c]`: for each tap, one weight per channel.
    pub weight: &'a [f32],
    /// `[c]`.
    pub bias: &'a [f32],
    /// Activation applied after the bias.
    pub activation: Activation,
}

/// Output pixels computed together: four independent accumulator chains hide the
/// multiply-add latency, and 4 + 25 weight vectors fit AVX-512's 32 registers.
const PIXELS: usize = 4;

/// Depthwise convolution over an NHWC input into a contiguous `(n, out_h, out_w, c)` output.
pub fn depthwise_conv(input: &[f32], shape: Nhwc, params: &DepthwiseParams<'_>, out: &mut [f32]) {
    run_with(Isa::detect(), input, shape, params, out);
}

/// The same into a new buffer, which every output value is written into (no zero fill
/// first: at batch 1 that fill was a tenth of EfficientNet-Lite0's time, on one core).
pub(crate) fn depthwise_conv_new(
    input: &[f32],
    shape: Nhwc,
    params: &DepthwiseParams<'_>,
) -> Vec<f32> {
    let Some(res) = params.geometry.resolve(shape.h, shape.w) else {
        return Vec::new();
    };
    let mut out = Fresh::new(shape.n * res.out_h * res.out_w * shape.c);
    // SAFETY: `run_raw` writes every value of an output of this size (each channel block of
    // each output pixel, `fill`-free), so the buffer is initialised afterwards.
    unsafe {
        run_raw(
            Isa::detect(),
            input,
            shape,
            params,
            out.as_mut_ptr(),
            out.len(),
        );
        out.assume_init()
    }
}

fn run_with(isa: Isa, input: &[f32], shape: Nhwc, params: &DepthwiseParams<'_>, out: &mut [f32]) {
    // SAFETY: `out` is a live, exclusively borrowed buffer of `out.len()` values.
    unsafe { run_raw(isa, input, shape, params, out.as_mut_ptr(), out.len()) }
}

/// # Safety
/// `out` must be valid for writes of `out_len` values and not overlap `input`.
unsafe fn run_raw(
    isa: Isa,
    input: &[f32],
    shape: Nhwc,
    params: &DepthwiseParams<'_>,
    out: *mut f32,
    out_len: usize,
) {
    let Some(res) = params.geometry.resolve(shape.h, shape.w) else {
        return;
    };
    let (kh, kw) = params.geometry.kernel;
    assert!(input.len() >= shape.len(), "depthwise input too short");
    assert_eq!(
        params.weight.len(),
        kh * kw * shape.c,
        "one weight per tap and channel"
    );
    assert_eq!(params.bias.len(), shape.c, "one bias per channel");
    assert!(
        out_len >= shape.n * res.out_h * res.out_w * shape.c,
        "depthwise output too short"
    );
    if shape.is_empty() || res.out_h * res.out_w == 0 {
        return;
    }
    let lanes = lanes(isa);
    let plan = Plan {
        isa,
        input,
        shape,
        params,
        res,
        lanes,
        out: SendPtr(out),
        first_row: 0,
        first_out_row: 0,
    };
    // Parts are row ranges of one image, every channel block in each: a range's input rows
    // are the rows the layer before wrote on the same core (the team hands ranges out in
    // order, see `team`), where channel blocks over the whole map read half of it from the
    // other core. About three ranges per thread, so a core the hypervisor slows down takes
    // fewer, but at least four rows each: a range also reads its window's halo rows.
    let splits = (3 * team::threads())
        .div_ceil(shape.n)
        .min(res.out_h.div_ceil(4))
        .max(1);
    let blocks = shape.c.div_ceil(lanes);
    team::parallel_for(shape.n * splits, |part| {
        let (n, split) = (part / splits, part % splits);
        let rows = team::span(split, splits, res.out_h);
        for block in 0..blocks {
            let block = Block {
                n,
                c0: block * lanes,
                rows,
            };
            // SAFETY: `Isa::detect` (or the test) saw the instruction set; parts write
            // disjoint rows of `out`, whose size is checked above.
            unsafe { run_part(&plan, &block) }
        }
    });
}

/// Vector lanes of a channel block on `isa` (the portable loop mirrors AVX2's 8).
fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 | Isa::Portable => 8,
    }
}

/// One block with the plan's instruction set.
///
/// # Safety
/// The CPU must have `plan.isa`; the block's part of `plan.out` must be writable by it alone.
unsafe fn run_part(plan: &Plan<'_>, block: &Block) {
    match plan.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => block_avx512(plan, block),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => block_avx2(plan, block),
        _ => run_block::<Portable>(plan, block),
    }
}

/// Output rows `rows.0..rows.1` of one image, every channel, on this thread: the depthwise
/// step of [`super::expand_depthwise`], which holds only a band of the input and the output.
///
/// # Safety
/// `image.n` must be 1; `input` must hold rows `first_row..` of the image, through the last
/// row the window of output row `rows.1 - 1` reads (rows past the image are padding and not
/// read); `out` must be valid for writes of output rows `first_out_row..rows.1` and overlap
/// nothing else.
pub(crate) unsafe fn depthwise_band(
    input: &[f32],
    image: Nhwc,
    first_row: usize,
    params: &DepthwiseParams<'_>,
    out: *mut f32,
    first_out_row: usize,
    rows: (usize, usize),
) {
    let Some(res) = params.geometry.resolve(image.h, image.w) else {
        return;
    };
    debug_assert_eq!(image.n, 1);
    debug_assert!(rows.0 >= first_out_row && rows.1 <= res.out_h);
    let isa = Isa::detect();
    let lanes = lanes(isa);
    let plan = Plan {
        isa,
        input,
        shape: image,
        params,
        res,
        lanes,
        out: SendPtr(out),
        first_row,
        first_out_row,
    };
    for c0 in (0..image.c).step_by(lanes) {
        run_part(&plan, &Block { n: 0, c0, rows });
    }
}

/// Everything a part needs, shared by all parts of one call.
struct Plan<'a> {
    /// The instruction set every part runs with.
    isa: Isa,
    input: &'a [f32],
    shape: Nhwc,
    params: &'a DepthwiseParams<'a>,
    res: Resolved,
    lanes: usize,
    out: SendPtr,
    /// The image row `input`'s first row holds (a band of one image; 0 for whole maps).
    first_row: usize,
    /// The output row `out`'s first row holds.
    first_out_row: usize,
}

/// One part: image `n`, channels `c0..c0 + lanes`, output rows `rows.0..rows.1`.
struct Block {
    n: usize,
    c0: usize,
    rows: (usize, usize),
}

thread_local! {
    /// The padded input of one block, reused across calls on the same thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(plan: &Plan<'_>, block: &Block) {
    run_block::<Avx512>(plan, block)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(plan: &Plan<'_>, block: &Block) {
    run_block::<Avx2>(plan, block)
}

/// Copies the block's input into the padded scratch, then runs the window over it.
#[inline(always)]
unsafe fn run_block<S: Simd>(plan: &Plan<'_>, block: &Block) {
    let geometry = plan.params.geometry;
    let (kh, kw) = geometry.kernel;
    let (sh, sw) = geometry.stride;
    let (dh, dw) = geometry.dilation;
    let res = plan.res;
    let out_rows = block.rows.1 - block.rows.0;
    if out_rows == 0 {
        return;
    }
    // Padded extent the block reads: rows from the first output row's window top.
    let rows = (out_rows - 1) * sh + (kh - 1) * dh + 1;
    let cols = (res.out_w - 1) * sw + (kw - 1) * dw + 1;
    let lanes = plan.lanes;
    debug_assert_eq!(lanes, S::LANES);
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if scratch.len() < rows * cols * lanes {
        scratch.resize(rows * cols * lanes, 0.0);
    }
    fill_scratch::<S>(plan, block, rows, cols, scratch.as_mut_ptr());
    let view = Scratch {
        data: scratch.as_ptr(),
        cols,
        lanes,
    };
    match (kh, kw) {
        (3, 3) => rows_const::<S, 3, 3>(plan, block, &view),
        (5, 5) => rows_const::<S, 5, 5>(plan, block, &view),
        // ConvNeXt's window: 49 weight vectors spill from the registers, but each is reloaded
        // once per four pixels from L1, against the general loop's one dependent chain.
        (7, 7) => rows_const::<S, 7, 7>(plan, block, &view),
        _ => rows_any::<S>(plan, block, &view),
    }
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
}

/// The padded input: `cols` pixels of `lanes` channels per row.
struct Scratch {
    data: *const f32,
    cols: usize,
    lanes: usize,
}

impl Scratch {
    #[inline(always)]
    unsafe fn at(&self, y: usize, x: usize) -> *const f32 {
        self.data.add((y * self.cols + x) * self.lanes)
    }
}

/// Zero padding around the image, zeros past the last channel, the input in between: every
/// value of the `rows x cols x lanes` scratch is written.
#[inline(always)]
unsafe fn fill_scratch<S: Simd>(
    plan: &Plan<'_>,
    block: &Block,
    rows: usize,
    cols: usize,
    scratch: *mut f32,
) {
    let shape = plan.shape;
    let sh = plan.params.geometry.stride.0;
    let width = (shape.c - block.c0).min(S::LANES);
    let top = (block.rows.0 * sh) as isize - plan.res.pad_top as isize;
    let left = plan.res.pad_left.min(cols);
    let inside = shape.w.min(cols - left);
    let zero = S::zero();
    for y in 0..rows {
        let dst = scratch.add(y * cols * S::LANES);
        let iy = top + y as isize;
        if iy < 0 || iy as usize >= shape.h {
            for x in 0..cols {
                S::store(dst.add(x * S::LANES), zero);
            }
            continue;
        }
        for x in 0..left {
            S::store(dst.add(x * S::LANES), zero);
        }
        let line = (block.n * shape.h + iy as usize - plan.first_row) * shape.w;
        let src = plan.input.as_ptr().add(line * shape.c + block.c0);
        if width == S::LANES {
            for x in 0..inside {
                S::store(
                    dst.add((left + x) * S::LANES),
                    S::load(src.add(x * shape.c)),
                );
            }
        } else {
            for x in 0..inside {
                let v = S::load_partial(src.add(x * shape.c), width);
                S::store(dst.add((left + x) * S::LANES), v);
            }
        }
        for x in left + inside..cols {
            S::store(dst.add(x * S::LANES), zero);
        }
    }
}

/// Where one output row's pixels go, and what happens on the way.
struct RowOut {
    /// Output pixel 0 of the row at channel `c0`.
    dst: *mut f32,
    /// Channels between output pixels.
    stride: usize,
    /// Valid lanes of the block.
    width: usize,
}

impl RowOut {
    unsafe fn new(plan: &Plan<'_>, block: &Block, oy: usize) -> Self {
        let c = plan.shape.c;
        let pixel = (block.n * plan.res.out_h + oy - plan.first_out_row) * plan.res.out_w;
        RowOut {
            dst: plan.out.0.add(pixel * c + block.c0),
            stride: c,
            width: (c - block.c0).min(plan.lanes),
        }
    }

    #[inline(always)]
    unsafe fn store<S: Simd>(&self, ox: usize, x: S::V) {
        let p = self.dst.add(ox * self.stride);
        if self.width == S::LANES {
            S::store(p, x);
        } else {
            S::store_partial(p, x, self.width);
        }
    }

    /// The activations that need the exponential, applied to the stored row with this
    /// block's vectors rather than a dispatched call per pixel.
    #[inline(always)]
    unsafe fn finish<S: Simd>(&self, out_w: usize, activation: Activation) {
        for ox in 0..out_w {
            let p = self.dst.add(ox * self.stride);
            if self.width == S::LANES {
                S::store(p, S::activate(activation, S::load(p)));
            } else {
                let v = S::activate(activation, S::load_partial(p, self.width));
                S::store_partial(p, v, self.width);
            }
        }
    }
}

/// The activation's cheap part, a clamp to [lo, hi], and whether anything is left for
/// [`RowOut::finish`]: keeping the exponential's constants out of the loop keeps the weights
/// in registers.
fn clamp_of(activation: Activation) -> (f32, f32, bool) {
    match activation {
        Activation::Identity => (f32::NEG_INFINITY, f32::INFINITY, false),
        Activation::Relu => (0.0, f32::INFINITY, false),
        Activation::Relu6 => (0.0, 6.0, false),
        _ => (f32::NEG_INFINITY, f32::INFINITY, true),
    }
}

/// Square 3x3, 5x5 and 7x7 windows, the weights unrolled (into registers up to 5x5).
#[inline(always)]
unsafe fn rows_const<S: Simd, const KH: usize, const KW: usize>(
    plan: &Plan<'_>,
    block: &Block,
    scratch: &Scratch,
) {
    let geometry = plan.params.geometry;
    let (sh, sw) = geometry.stride;
    let (dh, dw) = geometry.dilation;
    let c = plan.shape.c;
    let width = (c - block.c0).min(S::LANES);
    let mut w = [[S::zero(); KW]; KH];
    for (ky, row) in w.iter_mut().enumerate() {
        for (kx, slot) in row.iter_mut().enumerate() {
            *slot = S::load_partial(
                plan.params.weight[(ky * KW + kx) * c + block.c0..].as_ptr(),
                width,
            );
        }
    }
    let bias = S::load_partial(plan.params.bias[block.c0..].as_ptr(), width);
    let (lo, hi, finish) = clamp_of(plan.params.activation);
    let (lo, hi) = (S::splat(lo), S::splat(hi));
    let out_w = plan.res.out_w;
    for oy in block.rows.0..block.rows.1 {
        let y0 = (oy - block.rows.0) * sh;
        let out = RowOut::new(plan, block, oy);
        let mut ox = 0;
        while ox + PIXELS <= out_w {
            let mut acc = [bias; PIXELS];
            for ky in 0..KH {
                for kx in 0..KW {
                    let wv = w[ky][kx];
                    for p in 0..PIXELS {
                        let x = S::load(scratch.at(y0 + ky * dh, (ox + p) * sw + kx * dw));
                        acc[p] = S::fma(x, wv, acc[p]);
                    }
                }
            }
            for p in 0..PIXELS {
                out.store::<S>(ox + p, S::min(S::max(acc[p], lo), hi));
            }
            ox += PIXELS;
        }
        while ox < out_w {
            let mut acc = bias;
            for ky in 0..KH {
                for kx in 0..KW {
                    let x = S::load(scratch.at(y0 + ky * dh, ox * sw + kx * dw));
                    acc = S::fma(x, w[ky][kx], acc);
                }
            }
            out.store::<S>(ox, S::min(S::max(acc, lo), hi));
            ox += 1;
        }
        if finish {
            out.finish::<S>(out_w, plan.params.activation);
        }
    }
}

/// Any other window: the same order of operations, weights read from memory.
#[inline(always)]
unsafe fn rows_any<S: Simd>(plan: &Plan<'_>, block: &Block, scratch: &Scratch) {
    let geometry = plan.params.geometry;
    let (kh, kw) = geometry.kernel;
    let (sh, sw) = geometry.stride;
    let (dh, dw) = geometry.dilation;
    let c = plan.shape.c;
    let width = (c - block.c0).min(S::LANES);
    let weights: Vec<S::V> = (0..kh * kw)
        .map(|t| S::load_partial(plan.params.weight[t * c + block.c0..].as_ptr(), width))
        .collect();
    let bias = S::load_partial(plan.params.bias[block.c0..].as_ptr(), width);
    let (lo, hi, finish) = clamp_of(plan.params.activation);
    let (lo, hi) = (S::splat(lo), S::splat(hi));
    for oy in block.rows.0..block.rows.1 {
        let y0 = (oy - block.rows.0) * sh;
        let out = RowOut::new(plan, block, oy);
        for ox in 0..plan.res.out_w {
            let mut acc = bias;
            for ky in 0..kh {
                for kx in 0..kw {
                    let x = S::load(scratch.at(y0 + ky * dh, ox * sw + kx * dw));
                    acc = S::fma(x, weights[ky * kw + kx], acc);
                }
            }
            out.store::<S>(ox, S::min(S::max(acc, lo), hi));
        }
        if finish {
            out.finish::<S>(plan.res.out_w, plan.params.activation);
        }
    }
}

/// Eight scalar lanes for CPUs without AVX2: the same operations, one lane at a time.
#[derive(Debug, Clone, Copy)]
struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    type V = [f32; 8];

    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    unsafe fn load(p: *const f32) -> [f32; 8] {
        std::ptr::read_unaligned(p.cast::<[f32; 8]>())
    }
    unsafe fn load_partial(p: *const f32, n: usize) -> [f32; 8] {
        let mut v = [0.0; 8];
        std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n.min(8));
        v
    }
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        std::ptr::write_unaligned(p.cast::<[f32; 8]>(), v)
    }
    unsafe fn store_partial(p: *mut f32, v: [f32; 8], n: usize) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), p, n.min(8));
    }
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    unsafe fn sub(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    unsafe fn div(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] / b[i])
    }
    unsafe fn max(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    unsafe fn min(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].min(b[i]))
    }
    unsafe fn select_non_negative(x: [f32; 8], y: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| if x[i] >= 0.0 { x[i] } else { y[i] })
    }
    unsafe fn round(x: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| x[i].round_ties_even())
    }
    unsafe fn ldexp(x: [f32; 8], n: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| x[i] * 2f32.powi(n[i] as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::Padding;
    use crate::model::kernels::{pseudo_random, reference_conv};

    fn geometries() -> Vec<ConvGeometry> {
        let tf_same = |k, s| ConvGeometry {
            kernel: (k, k),
            stride: (s, s),
            dilation: (1, 1),
            padding: Padding::TfSame,
        };
        vec![
            ConvGeometry::square(3, 1, 1),
            ConvGeometry::square(3, 2, 1),
            ConvGeometry::square(5, 1, 2),
            ConvGeometry::square(5, 2, 2),
            ConvGeometry::square(3, 1, 0),
            tf_same(5, 2),
            tf_same(3, 1),
            ConvGeometry {
                kernel: (3, 3),
                stride: (1, 1),
                dilation: (2, 2),
                padding: Padding::symmetric(2),
            },
            // A window wider than the padded image leaves no interior column.
            ConvGeometry::square(7, 1, 3),
        ]
    }

    /// Channel counts that exercise 16-lane blocks, the 8-lane block and the scalar tail, and
    /// widths that leave full tiles, a partial tile and border pixels.
    #[test]
    fn depthwise_conv_matches_the_definition_on_every_path() {
        for (c, w) in [(6, 11), (16, 9), (24, 13), (37, 23), (48, 6)] {
            let shape = Nhwc { n: 2, h: 7, w, c };
            let input = pseudo_random(shape.len(), c as u32);
            for geometry in geometries() {
                let taps = geometry.kernel.0 * geometry.kernel.1;
                let w_oihw = pseudo_random(c * taps, 7);
                let (expected, res) = reference_conv(&input, shape, &geometry, &w_oihw, (c, c));
                // (c, 1, ky, kx) -> ((ky, kx), c), the layout the kernel takes.
                let mut weight = vec![0.0; w_oihw.len()];
                for ch in 0..c {
                    for t in 0..taps {
                        weight[t * c + ch] = w_oihw[ch * taps + t];
                    }
                }
                let bias = pseudo_random(c, 9);
                let params = DepthwiseParams {
                    geometry: &geometry,
                    weight: &weight,
                    bias: &bias,
                    activation: Activation::Identity,
                };
                let mut out = vec![f32::NAN; shape.n * res.out_h * res.out_w * c];
                depthwise_conv(&input, shape, &params, &mut out);
                for (i, (x, y)) in out.iter().zip(&expected).enumerate() {
                    let y = y + bias[i % c];
                    assert!(
                        (x - y).abs() < 1e-4,
                        "c {c}, w {w}, {geometry:?}: element {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn depthwise_conv_applies_the_activation_after_the_bias() {
        let shape = Nhwc {
            n: 1,
            h: 1,
            w: 5,
            c: 16,
        };
        let geometry = ConvGeometry::square(1, 1, 0);
        let input = vec![2.0; shape.len()];
        let weight = vec![3.0; 16];
        let bias: Vec<f32> = (0..16).map(|i| i as f32 - 10.0).collect();
        let params = DepthwiseParams {
            geometry: &geometry,
            weight: &weight,
            bias: &bias,
            activation: Activation::Relu6,
        };
        let mut out = vec![f32::NAN; shape.len()];
        depthwise_conv(&input, shape, &params, &mut out);
        let expected: Vec<f32> = (0..16).map(|i| (i as f32 - 4.0).clamp(0.0, 6.0)).collect();
        for pixel in out.chunks_exact(16) {
            assert_eq!(pixel, expected.as_slice());
        }
    }

    /// The AVX-512 and AVX2 builds give the same bits (same multiply-add order per lane).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_instruction_sets_give_identical_outputs() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let shape = Nhwc {
            n: 1,
            h: 9,
            w: 19,
            c: 40,
        };
        let input = pseudo_random(shape.len(), 5);
        for geometry in geometries() {
            let taps = geometry.kernel.0 * geometry.kernel.1;
            let weight = pseudo_random(taps * shape.c, 6);
            let bias = pseudo_random(shape.c, 8);
            let params = DepthwiseParams {
                geometry: &geometry,
                weight: &weight,
                bias: &bias,
                activation: Activation::Relu6,
            };
            let res = geometry.resolve(shape.h, shape.w).expect("valid geometry");
            let len = res.out_h * res.out_w * shape.c;
            let mut wide = vec![f32::NAN; len];
            let mut narrow = vec![f32::NAN; len];
            let mut portable = vec![f32::NAN; len];
            run_with(Isa::Avx512, &input, shape, &params, &mut wide);
            run_with(Isa::Avx2, &input, shape, &params, &mut narrow);
            run_with(Isa::Portable, &input, shape, &params, &mut portable);
            assert_eq!(wide, narrow, "{geometry:?}");
            assert_eq!(wide, portable, "{geometry:?}");
        }
    }
}
