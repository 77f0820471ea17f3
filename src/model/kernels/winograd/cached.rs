//! The cached path: a layer's transformed filters built on first use and kept, and chunks of
//! tiles taken through the three steps on one thread each.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]

use std::cell::RefCell;

use super::super::conv::Resolved;
use super::super::dense::{self, PackedWeights, Target};
#[cfg(target_arch = "x86_64")]
use super::super::simd::Isa;
use super::super::simd::Simd;
#[cfg(target_arch = "x86_64")]
use super::super::simd::{Avx2, Avx512};
use super::super::{team, Nhwc, SendPtr};
use super::transform::{transform_input, transform_output};
use super::{Layout, Plan, G, PATCH, POINTS};

/// A 3x3 layer's filters in the transform domain: one packed `c_in x c_out` matrix per point.
pub(crate) struct WinogradWeights {
    c_in: usize,
    c_out: usize,
    points: Vec<PackedWeights>,
    /// `c_out` zeros: the products' bias (the layer's bias is added after `Aᵀ M A`).
    zeros: Vec<f32>,
}

impl WinogradWeights {
    /// Transforms `weight` (`[9 * c_in, c_out]`, rows in (ky, kx, c_in) order) or returns
    /// `None` where the dense kernel has no vector path.
    pub(crate) fn new(weight: &[f32], c_in: usize, c_out: usize) -> Option<Self> {
        assert_eq!(weight.len(), 9 * c_in * c_out, "a 3x3 weight");
        let mut points = Vec::with_capacity(POINTS);
        let mut u = vec![0.0f32; c_in * c_out];
        for a in 0..PATCH {
            for b in 0..PATCH {
                for (row, values) in u.chunks_exact_mut(c_out).enumerate() {
                    for (o, value) in values.iter_mut().enumerate() {
                        let mut sum = 0.0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let g = weight[((ky * 3 + kx) * c_in + row) * c_out + o];
                                sum += G[a][ky] * f64::from(g) * G[b][kx];
                            }
                        }
                        *value = sum as f32;
                    }
                }
                points.push(PackedWeights::pack(c_in, c_out, &u)?);
            }
        }
        Some(WinogradWeights {
            c_in,
            c_out,
            points,
            zeros: vec![0.0; c_out],
        })
    }

    /// What these filters were claimed as against the kept-filter budget.
    pub(crate) fn bytes(&self) -> usize {
        POINTS * self.c_in * self.c_out * size_of::<f32>()
    }
}

thread_local! {
    /// The transformed input and products of one chunk, reused across chunks and layers.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `target = activation(conv3x3(input) + bias (+ residual))` for a 3x3 stride-1 layer
/// resolved as `res`, dilated by `dilation`.
///
/// # Safety
/// As [`dense::run`]: `target.data` valid for writes of every output row, aliasing nothing
/// read; the residual (if any) holds every output row.
pub(crate) unsafe fn run(
    input: &[f32],
    shape: Nhwc,
    res: Resolved,
    dilation: (usize, usize),
    weights: &WinogradWeights,
    target: &Target<'_>,
) {
    assert_eq!(shape.c, weights.c_in, "weights match the input");
    assert_eq!(
        target.bias.len(),
        weights.c_out,
        "one bias per output channel"
    );
    let plan = Plan::new(input, shape, res, dilation, target);
    let tiles = plan.tiles();
    let chunk = chunk_tiles(weights.c_in, weights.c_out, tiles);
    let chunks = tiles.div_ceil(chunk);
    let out = SendPtr(target.data);
    let work = |part: usize| {
        let span = (part * chunk, ((part + 1) * chunk).min(tiles));
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let len = POINTS * chunk * (weights.c_in + weights.c_out);
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            run_chunk(&plan, weights, (target, out), span, &mut scratch[..len]);
        });
    };
    if chunks == 1 {
        work(0);
    } else {
        team::parallel_for(chunks, work);
    }
}

/// Tiles per chunk: the chunk's transformed input and products about 1 MB (most of them are
/// read back from L2 or L3 at once), at least one tile row of the packed kernel, and enough
/// chunks for every thread.
fn chunk_tiles(c_in: usize, c_out: usize, tiles: usize) -> usize {
    const CHUNK_BYTES: usize = 1 << 20;
    let bytes_per_tile = POINTS * (c_in + c_out) * 4;
    let by_size = (CHUNK_BYTES / bytes_per_tile).clamp(24, 96);
    let per_thread = tiles.div_ceil(team::threads()).max(1);
    by_size.min(per_thread)
}

/// The three steps for tiles `span.0..span.1`, on this thread, with the instruction set the
/// weights were packed for.
unsafe fn run_chunk(
    plan: &Plan<'_>,
    weights: &WinogradWeights,
    target: (&Target<'_>, SendPtr),
    span: (usize, usize),
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match weights.points[0].isa() {
        Isa::Avx512 => chunk_avx512(plan, weights, target, span, scratch),
        Isa::Avx2 => chunk_avx2(plan, weights, target, span, scratch),
        Isa::Portable => unreachable!("packed weights exist only with a vector unit"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, weights, target, span, scratch);
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(
    plan: &Plan<'_>,
    weights: &WinogradWeights,
    target: (&Target<'_>, SendPtr),
    span: (usize, usize),
    scratch: &mut [f32],
) {
    chunk::<Avx512>(plan, weights, target, span, scratch);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(
    plan: &Plan<'_>,
    weights: &WinogradWeights,
    target: (&Target<'_>, SendPtr),
    span: (usize, usize),
    scratch: &mut [f32],
) {
    chunk::<Avx2>(plan, weights, target, span, scratch);
}

/// Input transform, the 36 products, output transform.
#[inline(always)]
unsafe fn chunk<S: Simd>(
    plan: &Plan<'_>,
    w: &WinogradWeights,
    (target, out): (&Target<'_>, SendPtr),
    span: (usize, usize),
    scratch: &mut [f32],
) {
    let count = span.1 - span.0;
    let (transformed, products) = scratch.split_at_mut(POINTS * count * w.c_in);
    let input_layout = Layout {
        point_stride: count * w.c_in,
        first_tile: span.0,
        width: w.c_in,
    };
    transform_input::<S>(plan, span, transformed.as_mut_ptr(), input_layout);
    for (xi, packed) in w.points.iter().enumerate() {
        let a = &transformed[xi * count * w.c_in..][..count * w.c_in];
        let m = products[xi * count * w.c_out..][..count * w.c_out].as_mut_ptr();
        dense::multiply_here(a, count, packed, m, &w.zeros);
    }
    let output_layout = Layout {
        point_stride: count * w.c_out,
        first_tile: span.0,
        width: w.c_out,
    };
    let products = (products.as_ptr(), output_layout);
    transform_output::<S>(plan, target, out, span, products, 0);
}
