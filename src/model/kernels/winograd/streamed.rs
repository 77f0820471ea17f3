//! The streamed path: a layer's transformed filters made per call, a block of output
//! channels at a time on the thread that multiplies with them, so a layer never holds more
//! than a block's (`36 x c_in x width`, 4.7 MB for 512 channels in and 64 out) per thread.
//!
//! One call: the input transform of a group of tiles (all tiles of a batch-1 ResNet layer 3
//! or 4 at 512 pixels: 4.7 MB for 512 channels) shared by every block, then per block the
//! filter transform, the 36 products over the group's tiles and the output transform of the
//! block's channels. Blocks go to threads whole; their count is a multiple of the threads
//! where the panels allow.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;

use super::super::conv::Resolved;
use super::super::dense::{self, PackedWeights, Target};
#[cfg(target_arch = "x86_64")]
use super::super::simd::Isa;
use super::super::simd::Simd;
#[cfg(target_arch = "x86_64")]
use super::super::simd::{Avx2, Avx512};
use super::super::{team, Nhwc, SendPtr};
use super::transform::{transform_filters, transform_input, transform_output};
use super::{Layout, Plan, POINTS};

/// Transformed input a group of tiles may take; more tiles (a batch) make more groups, each
/// transforming the filters again.
const MAX_GROUP_BYTES: usize = 8 << 20;

/// Output channels a block aims at: its filters (`36 x c_in x` these) stay in L3 while its
/// 36 products read them, and the shared transformed input is read once per block.
const BLOCK_COLUMNS: usize = 64;

thread_local! {
    /// The transformed input of the group being run, on the calling thread.
    static INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A block's transformed filters and products, on the thread running the block.
    static BLOCK: RefCell<Scratch> = const { RefCell::new(Scratch { points: Vec::new(), products: Vec::new(), zeros: Vec::new() }) };
}

/// A thread's buffers for one block, kept across blocks and calls of the same shape.
struct Scratch {
    /// One `c_in x width` matrix per point.
    points: Vec<PackedWeights>,
    products: Vec<f32>,
    /// `width` zeros: the products' bias.
    zeros: Vec<f32>,
}

impl Scratch {
    /// Sizes the buffers for `c_in x width` filters and `tiles` tiles.
    fn prepare(&mut self, c_in: usize, width: usize, tiles: usize) {
        if self.points.first().map(PackedWeights::dims) != Some((c_in, width)) {
            self.points = (0..POINTS)
                .map(|_| {
                    PackedWeights::zeroed(c_in, width).expect("a vector unit packed the filters")
                })
                .collect();
            self.zeros = vec![0.0; width];
        }
        let len = POINTS * tiles * width;
        if self.products.len() < len {
            self.products.resize(len, 0.0);
        }
    }
}

/// The output channels of each block: `per_block` panels of `panel` columns.
struct Blocks {
    panel: usize,
    per_block: usize,
    count: usize,
    c_out: usize,
}

impl Blocks {
    fn new(panel: usize, c_out: usize, threads: usize) -> Self {
        let panels = c_out.div_ceil(panel);
        let ideal = (BLOCK_COLUMNS / panel).max(1);
        let per_block = (1..=ideal)
            .rev()
            .find(|&p| panels.div_ceil(p).is_multiple_of(threads))
            .unwrap_or(ideal);
        Blocks {
            panel,
            per_block,
            count: panels.div_ceil(per_block),
            c_out,
        }
    }

    /// First channel and width of block `b`.
    fn range(&self, b: usize) -> (usize, usize) {
        let first = b * self.per_block * self.panel;
        (first, (self.per_block * self.panel).min(self.c_out - first))
    }
}

/// `target = activation(conv3x3(input) + bias (+ residual))` for a 3x3 stride-1 layer
/// resolved as `res`, dilated by `dilation`, whose filters are `filters` (`9 c_in x c_out`,
/// rows in (ky, kx, c_in) order, as the direct kernel packs them).
///
/// # Safety
/// As [`dense::run`]: `target.data` valid for writes of every output row, aliasing nothing
/// read; the residual (if any) holds every output row.
pub(crate) unsafe fn run(
    input: &[f32],
    shape: Nhwc,
    res: Resolved,
    dilation: (usize, usize),
    filters: &PackedWeights,
    target: &Target<'_>,
) {
    run_grouped(
        input,
        shape,
        res,
        dilation,
        filters,
        target,
        MAX_GROUP_BYTES,
    );
}

/// [`run`] with groups of tiles whose transformed input takes at most `max_group_bytes` (a
/// parameter so that tests can make several groups of a small map).
///
/// # Safety
/// As [`run`].
pub(super) unsafe fn run_grouped(
    input: &[f32],
    shape: Nhwc,
    res: Resolved,
    dilation: (usize, usize),
    filters: &PackedWeights,
    target: &Target<'_>,
    max_group_bytes: usize,
) {
    let (k, c_out) = filters.dims();
    let c_in = shape.c;
    assert_eq!(k, 9 * c_in, "3x3 filters over the input's channels");
    assert_eq!(target.bias.len(), c_out, "one bias per output channel");
    let plan = Plan::new(input, shape, res, dilation, target);
    let tiles = plan.tiles();
    let groups = (POINTS * tiles * c_in * size_of::<f32>()).div_ceil(max_group_bytes);
    let blocks = Blocks::new(filters.panel_width(), c_out, team::threads());
    let out = SendPtr(target.data);
    INPUT.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        for group in 0..groups.max(1) {
            let span = team::span(group, groups.max(1), tiles);
            let count = span.1 - span.0;
            let len = POINTS * count * c_in;
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            let layout = Layout {
                point_stride: count * c_in,
                first_tile: span.0,
                width: c_in,
            };
            let dst = SendPtr(buffer.as_mut_ptr());
            let parts = team::threads().min(count);
            team::parallel_for(parts, |part| {
                let (first, end) = team::span(part, parts, count);
                let tiles = (span.0 + first, span.0 + end);
                input_part(filters, &plan, tiles, dst, layout);
            });
            let transformed = &buffer[..len];
            team::parallel_for(blocks.count, |b| {
                let step = Step {
                    plan: &plan,
                    filters,
                    target: (target, out),
                    span,
                    transformed,
                    channels: blocks.range(b),
                };
                run_block(&step);
            });
        }
    });
}

/// One block of one group.
struct Step<'a> {
    plan: &'a Plan<'a>,
    filters: &'a PackedWeights,
    target: (&'a Target<'a>, SendPtr),
    span: (usize, usize),
    transformed: &'a [f32],
    /// First output channel and width.
    channels: (usize, usize),
}

/// The input transform of tiles `tiles` into `dst`, with the filters' instruction set.
unsafe fn input_part(
    filters: &PackedWeights,
    plan: &Plan<'_>,
    tiles: (usize, usize),
    dst: SendPtr,
    layout: Layout,
) {
    #[cfg(target_arch = "x86_64")]
    match filters.isa() {
        Isa::Avx512 => input_avx512(plan, tiles, dst, layout),
        Isa::Avx2 => input_avx2(plan, tiles, dst, layout),
        Isa::Portable => unreachable!("packed weights exist only with a vector unit"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (filters, plan, tiles, dst, layout);
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_avx512(plan: &Plan<'_>, tiles: (usize, usize), dst: SendPtr, layout: Layout) {
    transform_input::<Avx512>(plan, tiles, dst.0, layout);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_avx2(plan: &Plan<'_>, tiles: (usize, usize), dst: SendPtr, layout: Layout) {
    transform_input::<Avx2>(plan, tiles, dst.0, layout);
}

/// A block on this thread, with the filters' instruction set.
unsafe fn run_block(step: &Step<'_>) {
    #[cfg(target_arch = "x86_64")]
    match step.filters.isa() {
        Isa::Avx512 => block_avx512(step),
        Isa::Avx2 => block_avx2(step),
        Isa::Portable => unreachable!("packed weights exist only with a vector unit"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = step;
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(step: &Step<'_>) {
    block::<Avx512>(step);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(step: &Step<'_>) {
    block::<Avx2>(step);
}

/// Filter transform, the 36 products, output transform, for one block's channels.
#[inline(always)]
unsafe fn block<S: Simd>(step: &Step<'_>) {
    let c_in = step.plan.shape.c;
    let (first_channel, width) = step.channels;
    let count = step.span.1 - step.span.0;
    BLOCK.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.prepare(c_in, width, count);
        let Scratch {
            points,
            products,
            zeros,
        } = &mut *scratch;
        transform_filters::<S>(step.filters, first_channel, points);
        for (xi, packed) in points.iter().enumerate() {
            let a = &step.transformed[xi * count * c_in..][..count * c_in];
            let m = products[xi * count * width..][..count * width].as_mut_ptr();
            dense::multiply_here(a, count, packed, m, zeros);
        }
        let layout = Layout {
            point_stride: count * width,
            first_tile: step.span.0,
            width,
        };
        let (target, out) = step.target;
        let products = (products.as_ptr(), layout);
        transform_output::<S>(step.plan, target, out, step.span, products, first_channel);
    });
}
