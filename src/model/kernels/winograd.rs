//! Winograd F(4x4, 3x3): 3x3 stride-1 dense convolutions (dilated ones included) with 36
//! multiplies per 16 outputs and channel pair instead of 144.
//!
//! A 6x6 patch `d` of the input (4x4 outputs plus the window's reach) and the 3x3 filter `g`
//! are taken to the transform domain (`V = Bᵀ d B` per input channel, `U = G g Gᵀ` per channel
//! pair, once per layer), where the convolution is 36 independent matrix products
//! `M[ξ] = V[ξ] U[ξ]` over the channels, and `Y = Aᵀ M A` brings each 6x6 back to 4x4 outputs
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016; the
//! interpolation points 0, ±1, ±2). The 36 products run on the packed dense kernel
//! ([`super::dense`]), so they get its register tiling and cache blocking.
//!
//! A dilated 3x3 (DeepLab's atrous layers) is the same algorithm on each sub-lattice of
//! outputs that share a residue modulo the dilation: a tile's 4x4 outputs and its 6x6 patch
//! are `dilation` pixels apart.
//!
//! The work is split into chunks of tiles; a thread takes a chunk through all three steps
//! while the chunk's transformed data stays in its cache. ONNX Runtime's CPU kernels (MLAS)
//! have no Winograd path for f32; the packed weights are 4x the layer's, so they are built on
//! first use, only for layers whose maps are large enough to run here.
//!
//! Rounding: the transforms add a few ulp per value (the largest constants are 5 and 8); the
//! unit tests bound the difference from the direct convolution.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]

use std::cell::RefCell;

use super::conv::Resolved;
use super::dense::{self, PackedWeights, Target};
#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use super::simd::Simd;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::{team, Nhwc, SendPtr};

/// Outputs per tile side.
const TILE: usize = 4;
/// Input patch side: `TILE + 3 - 1`.
const PATCH: usize = 6;
/// Points of the transform domain.
const POINTS: usize = PATCH * PATCH;

/// `G`, the filter transform (6x3).
const G: [[f64; 3]; PATCH] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

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
}

/// Tiles along one axis: where each starts and the output step inside it.
struct Axis {
    /// First output coordinate of each tile.
    starts: Vec<usize>,
    /// Distance between a tile's outputs (the dilation).
    step: usize,
    /// Outputs along the axis.
    len: usize,
}

impl Axis {
    fn new(len: usize, dilation: usize) -> Self {
        let mut starts = Vec::new();
        for residue in 0..dilation.min(len) {
            let count = (len - residue).div_ceil(dilation);
            starts.extend((0..count.div_ceil(TILE)).map(|q| residue + q * TILE * dilation));
        }
        Axis {
            starts,
            step: dilation,
            len,
        }
    }
}

/// The tiles of one layer call and how they are split.
struct Plan<'a> {
    input: &'a [f32],
    shape: Nhwc,
    res: Resolved,
    ys: Axis,
    xs: Axis,
    weights: &'a WinogradWeights,
    /// `c_in` zeros: patch pixels outside the image read these.
    zeros: Vec<f32>,
}

impl Plan<'_> {
    fn tiles(&self) -> usize {
        self.shape.n * self.ys.starts.len() * self.xs.starts.len()
    }

    /// `(image, first output row, first output column)` of tile `t`.
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.ys.starts.len() * self.xs.starts.len();
        let (n, rest) = (t / per_image, t % per_image);
        let (ty, tx) = (rest / self.xs.starts.len(), rest % self.xs.starts.len());
        (n, self.ys.starts[ty], self.xs.starts[tx])
    }

    /// Where each of the tile's 36 patch pixels starts (`c_in` channels).
    fn patch(&self, t: usize) -> [*const f32; POINTS] {
        let (n, oy, ox) = self.tile(t);
        let c = self.shape.c;
        let mut out = [self.zeros.as_ptr(); POINTS];
        for i in 0..PATCH {
            let iy = (oy + i * self.ys.step).checked_sub(self.res.pad_top);
            for j in 0..PATCH {
                let ix = (ox + j * self.xs.step).checked_sub(self.res.pad_left);
                if let (Some(iy), Some(ix)) = (iy, ix) {
                    if iy < self.shape.h && ix < self.shape.w {
                        let pixel = (n * self.shape.h + iy) * self.shape.w + ix;
                        out[i * PATCH + j] = self.input[pixel * c..].as_ptr();
                    }
                }
            }
        }
        out
    }
}

/// Whether `run` is worth it for `n` images of `out_h x out_w` outputs dilated by `dilation`:
/// enough tiles per thread that each chunk reuses the (4x larger) transformed weights, and
/// tiles at least 60% full (a dilation near the map's size leaves most of each tile's outputs
/// outside it: DeepLabV3's ASPP at 12 and 36 on a 64x64 map fills 44% and 20%).
pub(crate) fn pays_off(
    n: usize,
    (out_h, out_w): (usize, usize),
    dilation: (usize, usize),
    (c_in, c_out): (usize, usize),
) -> bool {
    let (ys, xs) = (Axis::new(out_h, dilation.0), Axis::new(out_w, dilation.1));
    let tiles = n * ys.starts.len() * xs.starts.len();
    let outputs = n * out_h * out_w;
    c_in.min(c_out) >= MIN_CHANNELS
        && tiles >= MIN_TILES_PER_THREAD * team::threads()
        && 10 * outputs >= 6 * TILE * TILE * tiles
}

/// Below this many channels in or out, the transforms cost about what the products save
/// (YOLOv8n's 16-channel layers at 160x160: 1.1x the direct kernel's time; 32 channels at
/// 80x80: 0.9x).
const MIN_CHANNELS: usize = 32;

/// `WICK_WINOGRAD=0` turns the path off (to time the direct kernel in the same build).
pub(crate) fn is_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("WICK_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Below this many tiles per thread, reading the transformed weights costs more than the
/// multiplies saved. Timed with each layer's weights cold (six layers in turn), 2 threads: a
/// 7x7 map of 512 channels takes 1.1-1.5x the direct kernel's time at batch 1 (4 tiles),
/// 0.9-1.0x at batch 2 and 0.8x at batch 4 (16 tiles); 14x14 of 256 at batch 1 (16) 0.5x.
const MIN_TILES_PER_THREAD: usize = 8;

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
    assert!(input.len() >= shape.len(), "input holds the whole shape");
    assert_eq!(shape.c, weights.c_in, "weights match the input");
    assert_eq!(
        target.bias.len(),
        weights.c_out,
        "one bias per output channel"
    );
    let rows = shape.n * res.out_h * res.out_w;
    if let Some(residual) = target.residual {
        assert!(residual.len() >= rows * weights.c_out, "residual too short");
    }
    let plan = Plan {
        input,
        shape,
        res,
        ys: Axis::new(res.out_h, dilation.0),
        xs: Axis::new(res.out_w, dilation.1),
        weights,
        zeros: vec![0.0; shape.c],
    };
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
            run_chunk(&plan, target, out, span, &mut scratch[..len]);
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
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match plan.weights.points[0].isa() {
        Isa::Avx512 => chunk_avx512(plan, target, out, span, scratch),
        Isa::Avx2 => chunk_avx2(plan, target, out, span, scratch),
        Isa::Portable => unreachable!("packed weights exist only with a vector unit"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, target, out, span, scratch);
        unreachable!("packed weights exist only on x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(
    plan: &Plan<'_>,
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    scratch: &mut [f32],
) {
    chunk::<Avx512>(plan, target, out, span, scratch);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(
    plan: &Plan<'_>,
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    scratch: &mut [f32],
) {
    chunk::<Avx2>(plan, target, out, span, scratch);
}

/// Input transform, the 36 products, output transform.
#[inline(always)]
unsafe fn chunk<S: Simd>(
    plan: &Plan<'_>,
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    scratch: &mut [f32],
) {
    let w = plan.weights;
    let count = span.1 - span.0;
    let (transformed, products) = scratch.split_at_mut(POINTS * count * w.c_in);
    transform_input::<S>(plan, span, transformed);
    for (xi, packed) in w.points.iter().enumerate() {
        let a = &transformed[xi * count * w.c_in..][..count * w.c_in];
        let m = products[xi * count * w.c_out..][..count * w.c_out].as_mut_ptr();
        dense::multiply_here(a, count, packed, m, &w.zeros);
    }
    transform_output::<S>(plan, target, out, span, products);
}

/// `lanes` values from `p`: a plain load for a whole vector (masked ones are slower).
#[inline(always)]
unsafe fn load<S: Simd>(p: *const f32, lanes: usize) -> S::V {
    if lanes == S::LANES {
        S::load(p)
    } else {
        S::load_partial(p, lanes)
    }
}

/// `lanes` values to `p`, as [`load`].
#[inline(always)]
unsafe fn store<S: Simd>(p: *mut f32, v: S::V, lanes: usize) {
    if lanes == S::LANES {
        S::store(p, v)
    } else {
        S::store_partial(p, v, lanes)
    }
}

/// `Bᵀ x` for six vectors.
#[inline(always)]
unsafe fn input_1d<S: Simd>(x: [S::V; PATCH]) -> [S::V; PATCH] {
    let (two, four, five) = (S::splat(2.0), S::splat(4.0), S::splat(5.0));
    let a = S::sub(x[4], S::mul(four, x[2]));
    let b = S::sub(x[3], S::mul(four, x[1]));
    let c = S::sub(x[4], x[2]);
    let e = S::mul(two, S::sub(x[3], x[1]));
    [
        S::add(S::sub(S::mul(four, x[0]), S::mul(five, x[2])), x[4]),
        S::add(a, b),
        S::sub(a, b),
        S::add(c, e),
        S::sub(c, e),
        S::add(S::sub(S::mul(four, x[1]), S::mul(five, x[3])), x[5]),
    ]
}

/// `Aᵀ m` for six vectors.
#[inline(always)]
unsafe fn output_1d<S: Simd>(m: [S::V; PATCH]) -> [S::V; TILE] {
    let s12 = S::add(m[1], m[2]);
    let d12 = S::sub(m[1], m[2]);
    let s34 = S::add(m[3], m[4]);
    let d34 = S::sub(m[3], m[4]);
    [
        S::add(S::add(m[0], s12), s34),
        S::fma(S::splat(2.0), d34, d12),
        S::fma(S::splat(4.0), s34, s12),
        S::add(S::fma(S::splat(8.0), d34, d12), m[5]),
    ]
}

/// `V[ξ][t][c] = (Bᵀ d B)[ξ]` for every tile `t` of the span and channel `c`.
#[inline(always)]
unsafe fn transform_input<S: Simd>(plan: &Plan<'_>, span: (usize, usize), dst: &mut [f32]) {
    let c = plan.shape.c;
    let count = span.1 - span.0;
    let point_stride = count * c;
    for t in span.0..span.1 {
        let patch = plan.patch(t);
        let row0 = (t - span.0) * c;
        let mut c0 = 0;
        while c0 < c {
            let lanes = (c - c0).min(S::LANES);
            let mut rows = [[S::zero(); PATCH]; PATCH];
            for i in 0..PATCH {
                let mut x = [S::zero(); PATCH];
                for j in 0..PATCH {
                    x[j] = load::<S>(patch[i * PATCH + j].add(c0), lanes);
                }
                rows[i] = input_1d::<S>(x);
            }
            for j in 0..PATCH {
                let column = input_1d::<S>([
                    rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j],
                ]);
                for i in 0..PATCH {
                    let at = (i * PATCH + j) * point_stride + row0 + c0;
                    store::<S>(dst.as_mut_ptr().add(at), column[i], lanes);
                }
            }
            c0 += S::LANES;
        }
    }
}

/// `Y = Aᵀ M A` per tile, plus bias (and residual), activation, stored where the outputs lie.
#[inline(always)]
unsafe fn transform_output<S: Simd>(
    plan: &Plan<'_>,
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    products: &[f32],
) {
    let c_out = plan.weights.c_out;
    let count = span.1 - span.0;
    let point_stride = count * c_out;
    let (out_h, out_w) = (plan.ys.len, plan.xs.len);
    for t in span.0..span.1 {
        let (n, oy, ox) = plan.tile(t);
        let row0 = (t - span.0) * c_out;
        let mut c0 = 0;
        while c0 < c_out {
            let lanes = (c_out - c0).min(S::LANES);
            let mut rows = [[S::zero(); TILE]; PATCH];
            for i in 0..PATCH {
                let mut m = [S::zero(); PATCH];
                for j in 0..PATCH {
                    let at = (i * PATCH + j) * point_stride + row0 + c0;
                    m[j] = load::<S>(products.as_ptr().add(at), lanes);
                }
                rows[i] = output_1d::<S>(m);
            }
            let bias = load::<S>(target.bias.as_ptr().add(c0), lanes);
            for j in 0..TILE {
                let x = ox + j * plan.xs.step;
                if x >= out_w {
                    break;
                }
                let column = output_1d::<S>([
                    rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j],
                ]);
                for i in 0..TILE {
                    let y = oy + i * plan.ys.step;
                    if y >= out_h {
                        break;
                    }
                    let pixel = (n * out_h + y) * out_w + x;
                    let mut v = S::add(column[i], bias);
                    if let Some(residual) = target.residual {
                        let r = load::<S>(residual.as_ptr().add(pixel * c_out + c0), lanes);
                        v = S::add(v, r);
                    }
                    v = S::activate(target.activation, v);
                    store::<S>(out.0.add(pixel * target.row_stride + c0), v, lanes);
                }
            }
            c0 += S::LANES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{reference_layer, Activation, ConvGeometry, Padding};

    /// Winograd against the direct definition for one layer: within 1e-5 of the output's
    /// largest magnitude (the transforms' rounding), bias, residual and activation included.
    fn check(shape: Nhwc, geometry: ConvGeometry, c_out: usize, residual: bool, act: Activation) {
        let layer = reference_layer(shape, &geometry, c_out, (residual, act), 3);
        let Some(weights) = WinogradWeights::new(&layer.weight, shape.c, c_out) else {
            return; // no vector unit: the direct path runs instead
        };
        let (rows, expected) = (layer.rows, &layer.expected);
        // A row stride wider than c_out: the gap must stay untouched.
        let stride = c_out + 5;
        let mut out = vec![f32::NAN; rows * stride];
        let target = Target {
            data: out.as_mut_ptr(),
            row_stride: stride,
            bias: &layer.bias,
            residual: residual.then_some(&layer.residual[..]),
            activation: act,
        };
        // SAFETY: `out` holds every row at `stride`; nothing aliases it.
        unsafe {
            run(
                &layer.input,
                shape,
                layer.res,
                geometry.dilation,
                &weights,
                &target,
            )
        };
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for r in 0..rows {
            for o in 0..c_out {
                let (got, want) = (out[r * stride + o], expected[r * c_out + o]);
                assert!(
                    (got - want).abs() <= 1e-5 * scale,
                    "{shape:?} {geometry:?} row {r} channel {o}: {got} vs {want}"
                );
            }
            assert!(out[r * stride + c_out..][..5].iter().all(|x| x.is_nan()));
        }
    }

    fn three_by_three(padding: usize, dilation: usize) -> ConvGeometry {
        ConvGeometry {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (dilation, dilation),
            padding: Padding::symmetric(padding * dilation),
        }
    }

    #[test]
    fn matches_the_direct_convolution_on_whole_and_ragged_tiles() {
        let shape = |n, h, w, c| Nhwc { n, h, w, c };
        check(
            shape(1, 8, 8, 16),
            three_by_three(1, 1),
            16,
            false,
            Activation::Identity,
        );
        check(
            shape(2, 13, 7, 19),
            three_by_three(1, 1),
            21,
            true,
            Activation::Relu,
        );
        check(
            shape(1, 9, 11, 8),
            three_by_three(0, 1),
            40,
            false,
            Activation::Silu,
        );
        check(
            shape(1, 30, 30, 64),
            three_by_three(1, 1),
            64,
            true,
            Activation::Relu,
        );
    }

    #[test]
    fn is_chosen_only_where_tiles_are_many_and_mostly_full() {
        assert!(pays_off(1, (56, 56), (1, 1), (64, 64)));
        assert!(!pays_off(1, (56, 56), (1, 1), (16, 64)), "too few channels");
        assert!(!pays_off(1, (4, 4), (1, 1), (64, 64)), "one tile");
        // DeepLabV3 ResNet-50 at 512: its dilated layer3 / layer4 (2, 4) fill every tile on the
        // 64x64 map, its ASPP's 12 fills 44% of them and 36 a fifth.
        assert!(pays_off(1, (64, 64), (2, 2), (256, 256)));
        assert!(pays_off(1, (64, 64), (4, 4), (512, 512)));
        assert!(!pays_off(1, (64, 64), (12, 12), (2048, 256)));
        assert!(!pays_off(1, (64, 64), (36, 36), (2048, 256)));
    }

    #[test]
    fn matches_the_direct_convolution_when_dilated() {
        let shape = |n, h, w, c| Nhwc { n, h, w, c };
        check(
            shape(1, 17, 15, 24),
            three_by_three(1, 2),
            24,
            false,
            Activation::Relu,
        );
        check(
            shape(1, 20, 21, 8),
            three_by_three(1, 4),
            17,
            true,
            Activation::Identity,
        );
        check(
            shape(1, 5, 6, 8),
            three_by_three(1, 3),
            8,
            false,
            Activation::Identity,
        );
    }
}
