//! The three transforms of Winograd F(4x4, 3x3), a vector of channels at a time: input
//! patches to the transform domain (`Bᵀ d B`), products back to outputs (`Aᵀ M A`, with the
//! layer's epilogue), and filters to the transform domain (`G g Gᵀ`) for the streamed path.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn, clippy::needless_range_loop)]

use super::super::dense::{PackedWeights, Target};
use super::super::simd::Simd;
use super::super::SendPtr;
use super::{Layout, Plan, PATCH, POINTS, TILE};

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

/// `G g` for three vectors (the rows of [`super::G`]: the points 0, ±1, ±2 and infinity).
#[inline(always)]
unsafe fn filter_1d<S: Simd>(g: [S::V; 3]) -> [S::V; PATCH] {
    let outer = S::add(g[0], g[2]);
    let minus_sixth = S::splat(-1.0 / 6.0);
    let q = S::fma(
        S::splat(1.0 / 24.0),
        g[0],
        S::mul(S::splat(1.0 / 6.0), g[2]),
    );
    let r = S::mul(S::splat(1.0 / 12.0), g[1]);
    [
        S::mul(S::splat(0.25), g[0]),
        S::mul(minus_sixth, S::add(outer, g[1])),
        S::mul(minus_sixth, S::sub(outer, g[1])),
        S::add(q, r),
        S::sub(q, r),
        g[2],
    ]
}

/// `V[ξ][t][c] = (Bᵀ d B)[ξ]` for every tile `t` of the span and input channel `c`, written
/// at `dst` as `layout` says.
#[inline(always)]
pub(super) unsafe fn transform_input<S: Simd>(
    plan: &Plan<'_>,
    span: (usize, usize),
    dst: *mut f32,
    layout: Layout,
) {
    let c = plan.shape.c;
    for t in span.0..span.1 {
        let patch = plan.patch(t);
        let row0 = (t - layout.first_tile) * layout.width;
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
                    let at = (i * PATCH + j) * layout.point_stride + row0 + c0;
                    store::<S>(dst.add(at), column[i], lanes);
                }
            }
            c0 += S::LANES;
        }
    }
}

/// `Y = Aᵀ M A` per tile of the span for output channels `first_channel..` (`layout.width`
/// of them), plus bias (and residual), activation, stored where the outputs lie.
#[inline(always)]
pub(super) unsafe fn transform_output<S: Simd>(
    plan: &Plan<'_>,
    target: &Target<'_>,
    out: SendPtr,
    span: (usize, usize),
    (products, layout): (*const f32, Layout),
    first_channel: usize,
) {
    let c_out = plan.c_out;
    let (out_h, out_w) = (plan.ys.len, plan.xs.len);
    for t in span.0..span.1 {
        let (n, oy, ox) = plan.tile(t);
        let row0 = (t - layout.first_tile) * layout.width;
        let mut c0 = 0;
        while c0 < layout.width {
            let lanes = (layout.width - c0).min(S::LANES);
            let channel = first_channel + c0;
            let mut rows = [[S::zero(); TILE]; PATCH];
            for i in 0..PATCH {
                let mut m = [S::zero(); PATCH];
                for j in 0..PATCH {
                    let at = (i * PATCH + j) * layout.point_stride + row0 + c0;
                    m[j] = load::<S>(products.add(at), lanes);
                }
                rows[i] = output_1d::<S>(m);
            }
            let bias = load::<S>(target.bias.as_ptr().add(channel), lanes);
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
                        let r = load::<S>(residual.as_ptr().add(pixel * c_out + channel), lanes);
                        v = S::add(v, r);
                    }
                    v = S::activate(target.activation, v);
                    store::<S>(out.0.add(pixel * target.row_stride + channel), v, lanes);
                }
            }
            c0 += S::LANES;
        }
    }
}

/// `U = G g Gᵀ` for output channels `first_channel..` of `filters` (the layer's `9 c_in x
/// c_out` matrix, rows in (ky, kx, c_in) order), one `c_in x width` matrix per point in
/// `points`. `first_channel` starts a panel of `filters`, and every panel width is a multiple
/// of the vector, so each load and store stays inside one panel (zeros past `c_out`).
/// Addresses are computed once per vector of channels and shared by the 9 taps and by the
/// 36 points (the same shape).
#[inline(always)]
pub(super) unsafe fn transform_filters<S: Simd>(
    filters: &PackedWeights,
    first_channel: usize,
    points: &mut [PackedWeights],
) {
    let (k, _) = filters.dims();
    let c_in = k / 9;
    let (_, width) = points[0].dims();
    // Tap `t` of a channel pair lies `t * c_in` rows after tap 0.
    let tap_stride = c_in * filters.panel_width();
    let source = filters.as_ptr();
    let mut outputs = [std::ptr::null_mut(); POINTS];
    for (out, point) in outputs.iter_mut().zip(points.iter_mut()) {
        *out = point.as_mut_ptr();
    }
    for ci in 0..c_in {
        let mut c0 = 0;
        while c0 < width {
            let from = source.add(filters.offset(ci, first_channel + c0));
            let to = points[0].offset(ci, c0);
            let tap = |t: usize| S::load(from.add(t * tap_stride));
            let mut columns = [[S::zero(); PATCH]; 3];
            for kx in 0..3 {
                columns[kx] = filter_1d::<S>([tap(kx), tap(3 + kx), tap(6 + kx)]);
            }
            for a in 0..PATCH {
                let row = filter_1d::<S>([columns[0][a], columns[1][a], columns[2][a]]);
                for b in 0..PATCH {
                    S::store(outputs[a * PATCH + b].add(to), row[b]);
                }
            }
            c0 += S::LANES;
        }
    }
}
