//! Multi-head scaled dot-product attention in one pass per (image, head, block of queries):
//! `softmax(q kᵀ * scale) v`, read straight from the token-major buffers the projections
//! wrote and written straight into the `(tokens, heads * head_dim)` rows the output
//! projection reads.
//!
//! Run as separate steps (Candle), attention copied `q`, `k` and `v` into head-major tensors,
//! transposed `k`, wrote the whole score matrix, read it back for the softmax and again for
//! the product with `v`, then transposed the result back: six passes over memory around two
//! small products. Here each part packs its head's `kᵀ` once into column panels (as the
//! dense kernel packs weights), then for `MR` queries at a time keeps the scores of those
//! rows in a scratch row that stays in L1/L2, applies the softmax with the scale folded into
//! the exponent, and accumulates `p v` in registers, dividing by the softmax's sum on the
//! way out. Parts are spread over the [`team`](super::team).

#![allow(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::needless_range_loop,
    clippy::too_many_arguments
)]

#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Simd};
use super::{team, SendPtr};

/// Where one of `q`, `k`, `v` lives: element `(image b, head h, token t, channel c)` is
/// `data[(b * tokens + t) * row_stride + offset + h * head_stride + c]`, `c < width`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) tokens: usize,
    pub(crate) row_stride: usize,
    pub(crate) offset: usize,
    pub(crate) head_stride: usize,
    pub(crate) width: usize,
}

impl Operand<'_> {
    /// Whether every element of `batch` images and `heads` heads lies inside `data`.
    fn fits(&self, batch: usize, heads: usize) -> bool {
        if batch == 0 || heads == 0 || self.tokens == 0 || self.width == 0 {
            return true;
        }
        let last_row = (batch * self.tokens - 1) * self.row_stride;
        let last = last_row + self.offset + (heads - 1) * self.head_stride + self.width;
        last <= self.data.len()
    }

    /// Start of row `t` of head `h` of image `b`.
    fn row(&self, b: usize, h: usize, t: usize) -> *const f32 {
        let at = (b * self.tokens + t) * self.row_stride + self.offset + h * self.head_stride;
        self.data[at..].as_ptr()
    }
}

/// One attention: `heads` heads over `batch` images. `q` and `k` have the same width;
/// `k` and `v` the same tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attention<'a> {
    pub(crate) q: Operand<'a>,
    pub(crate) k: Operand<'a>,
    pub(crate) v: Operand<'a>,
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    /// Multiplies the scores before the softmax (`1 / sqrt(width)` usually).
    pub(crate) scale: f32,
}

impl Attention<'_> {
    /// Why the operands do not describe one attention, if they do not.
    pub(crate) fn check(&self) -> Result<(), String> {
        let Attention { q, k, v, .. } = self;
        if q.width != k.width {
            return Err(format!(
                "queries are {} wide but keys {} wide",
                q.width, k.width
            ));
        }
        if k.tokens != v.tokens {
            return Err(format!("{} keys but {} values", k.tokens, v.tokens));
        }
        for (name, op) in [("queries", q), ("keys", k), ("values", v)] {
            if !op.fits(self.batch, self.heads) {
                return Err(format!(
                    "{name}: {} values cannot hold {} images x {} tokens of {} heads",
                    op.data.len(),
                    self.batch,
                    op.tokens,
                    self.heads
                ));
            }
        }
        Ok(())
    }

    /// Values in the output: `batch * q.tokens` rows of `heads * v.width`.
    pub(crate) fn output_len(&self) -> usize {
        self.batch * self.q.tokens * self.heads * self.v.width
    }
}

/// Writes `softmax(q kᵀ * scale) v` of every image and head into `out`, `(batch, q.tokens,
/// heads * v.width)` with head `h` at channels `h * v.width..`.
///
/// # Panics
/// If [`Attention::check`] fails or `out` is shorter than [`Attention::output_len`]: the
/// callers check both and return an error first.
pub(crate) fn attention(a: &Attention<'_>, out: &mut [f32]) {
    if let Err(why) = a.check() {
        panic!("attention operands: {why}");
    }
    assert!(out.len() >= a.output_len(), "attention output too short");
    if a.output_len() == 0 {
        return;
    }
    if a.k.tokens == 0 {
        // PyTorch's softmax over no keys is empty and its product with no values zero.
        out[..a.output_len()].fill(0.0);
        return;
    }
    let tq = a.q.tokens;
    let threads = team::threads();
    // Parts of at least 48 queries each amortise packing the head's keys (d * tk values)
    // against the part's 2 * 48 * d * tk multiply-adds; 3 parts per thread absorb a slow core.
    let heads = a.batch * a.heads;
    let wanted = (3 * threads).div_ceil(heads);
    let blocks = wanted.clamp(1, tq.div_ceil(48).max(1));
    let parts = heads * blocks;
    let out = SendPtr(out.as_mut_ptr());
    let run = |part: usize| {
        let (head, block) = (part / blocks, part % blocks);
        let rows = team::span(block, blocks, tq);
        // SAFETY: the operands were checked to hold every row; parts write disjoint rows x
        // head columns of `out`, which holds `output_len` values.
        unsafe { run_part(a, head / a.heads, head % a.heads, rows, out) };
    };
    if threads == 1 || parts == 1 {
        (0..parts).for_each(run);
    } else {
        team::parallel_for(parts, run);
    }
}

/// Queries `rows.0..rows.1` of head `h` of image `b`.
unsafe fn run_part(a: &Attention<'_>, b: usize, h: usize, rows: (usize, usize), out: SendPtr) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => part_avx512(a, b, h, rows, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => part_avx2(a, b, h, rows, out),
        _ => part_portable(a, b, h, rows, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn part_avx512(a: &Attention<'_>, b: usize, h: usize, rows: (usize, usize), out: SendPtr) {
    part::<Avx512, 6, 4>(a, b, h, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn part_avx2(a: &Attention<'_>, b: usize, h: usize, rows: (usize, usize), out: SendPtr) {
    part::<Avx2, 4, 3>(a, b, h, rows, out)
}

/// The definition, one query at a time, where no vector unit runs.
unsafe fn part_portable(a: &Attention<'_>, b: usize, h: usize, rows: (usize, usize), out: SendPtr) {
    let (tk, d, dv) = (a.k.tokens, a.q.width, a.v.width);
    let out_stride = a.heads * dv;
    let mut p = vec![0.0f32; tk];
    for i in rows.0..rows.1 {
        let q = std::slice::from_raw_parts(a.q.row(b, h, i), d);
        for (j, pj) in p.iter_mut().enumerate() {
            let k = std::slice::from_raw_parts(a.k.row(b, h, j), d);
            *pj = q.iter().zip(k).map(|(x, y)| x * y).sum::<f32>() * a.scale;
        }
        let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        p.iter_mut().for_each(|x| *x = (*x - max).exp());
        let inv = 1.0 / p.iter().sum::<f32>();
        let dst = out.0.add((b * a.q.tokens + i) * out_stride + h * dv);
        for c in 0..dv {
            let mut acc = 0.0;
            for (j, pj) in p.iter().enumerate() {
                acc += pj * *a.v.row(b, h, j).add(c);
            }
            *dst.add(c) = acc * inv;
        }
    }
}

#[inline(always)]
unsafe fn part<S: Simd, const MR: usize, const NV: usize>(
    a: &Attention<'_>,
    b: usize,
    h: usize,
    rows: (usize, usize),
    out: SendPtr,
) {
    let (tk, d, dv) = (a.k.tokens, a.q.width, a.v.width);
    let nr = NV * S::LANES;
    let panels = tk.div_ceil(nr);
    let tkp = panels * nr;
    // kᵀ in panels of `nr` keys: panel p is d rows of nr, zero past the last key.
    let mut kt = vec![0.0f32; panels * d * nr];
    for j in 0..tk {
        let k = a.k.row(b, h, j);
        let (p, jj) = (j / nr, j % nr);
        for c in 0..d {
            kt[(p * d + c) * nr + jj] = *k.add(c);
        }
    }
    let mut probs = vec![0.0f32; MR * tkp];
    let out_stride = a.heads * dv;
    let mut i0 = rows.0;
    while i0 < rows.1 {
        let valid = (rows.1 - i0).min(MR);
        // Rows past the part repeat its first: computed, never stored.
        let q: [*const f32; MR] =
            std::array::from_fn(|r| a.q.row(b, h, if r < valid { i0 + r } else { rows.0 }));
        scores::<S, MR, NV>(&q, d, kt.as_ptr(), panels, probs.as_mut_ptr(), tkp);
        let mut inv = [0.0f32; MR];
        for r in 0..MR {
            inv[r] = softmax_row::<S>(probs.as_mut_ptr().add(r * tkp), tk, a.scale);
        }
        let dst: [*mut f32; MR] = std::array::from_fn(|r| {
            let i = if r < valid { i0 + r } else { rows.0 };
            out.0.add((b * a.q.tokens + i) * out_stride + h * dv)
        });
        let v0 = a.v.row(b, h, 0);
        let mut c0 = 0;
        while c0 < dv {
            let vectors = (dv - c0).div_ceil(S::LANES).min(NV);
            let values = Values {
                rows: v0.add(c0),
                stride: a.v.row_stride,
                tokens: tk,
                width: (dv - c0).min(vectors * S::LANES),
            };
            let target = (&dst, c0, valid, &inv);
            match vectors {
                1 => weighted::<S, MR, 1>(probs.as_ptr(), tkp, &values, target),
                2 => weighted::<S, MR, 2>(probs.as_ptr(), tkp, &values, target),
                3 => weighted::<S, MR, 3>(probs.as_ptr(), tkp, &values, target),
                _ => weighted::<S, MR, NV>(probs.as_ptr(), tkp, &values, target),
            }
            c0 += vectors * S::LANES;
        }
        i0 += valid;
    }
}

/// `probs[r][j] = q[r] · k[j]` for every key, `MR` queries x one panel of keys at a time, the
/// sums in registers over the head's `d` channels.
#[inline(always)]
unsafe fn scores<S: Simd, const MR: usize, const NV: usize>(
    q: &[*const f32; MR],
    d: usize,
    kt: *const f32,
    panels: usize,
    probs: *mut f32,
    tkp: usize,
) {
    let nr = NV * S::LANES;
    for p in 0..panels {
        let mut acc = [[S::zero(); NV]; MR];
        let mut k = kt.add(p * d * nr);
        for c in 0..d {
            let mut kv = [S::zero(); NV];
            for v in 0..NV {
                kv[v] = S::load(k.add(v * S::LANES));
            }
            for r in 0..MR {
                let x = S::splat(*q[r].add(c));
                for v in 0..NV {
                    acc[r][v] = S::fma(x, kv[v], acc[r][v]);
                }
            }
            k = k.add(nr);
        }
        for r in 0..MR {
            for v in 0..NV {
                S::store(probs.add(r * tkp + p * nr + v * S::LANES), acc[r][v]);
            }
        }
    }
}

/// Turns the first `tk` scores of a row into `exp(scale * (s - max))` in place and returns
/// one over their sum (the normalisation is applied to the output instead).
#[inline(always)]
unsafe fn softmax_row<S: Simd>(row: *mut f32, tk: usize, scale: f32) -> f32 {
    let lanes = S::LANES;
    let full = tk / lanes * lanes;
    let mut m = S::splat(f32::NEG_INFINITY);
    let mut j = 0;
    while j < full {
        m = S::max(m, S::load(row.add(j)));
        j += lanes;
    }
    let mut max = horizontal::<S>(m)
        .into_iter()
        .take(lanes)
        .fold(f32::NEG_INFINITY, f32::max);
    for j in full..tk {
        max = max.max(*row.add(j));
    }
    let (scale_v, shift) = (S::splat(scale), S::splat(-max * scale));
    let mut sum = S::zero();
    let mut j = 0;
    while j < tk {
        let n = (tk - j).min(lanes);
        let x = S::load_partial(row.add(j), n);
        let e = S::exp(S::fma(x, scale_v, shift));
        S::store_partial(row.add(j), e, n);
        // Lanes past the row hold exp(shift): the tail is summed from its stored lanes.
        sum = S::add(
            sum,
            if n == lanes {
                e
            } else {
                S::load_partial(row.add(j), n)
            },
        );
        j += lanes;
    }
    1.0 / horizontal::<S>(sum).into_iter().take(lanes).sum::<f32>()
}

/// A vector's lanes (the first `S::LANES` of the array).
#[inline(always)]
unsafe fn horizontal<S: Simd>(x: S::V) -> [f32; 16] {
    let mut lanes = [0.0f32; 16];
    S::store_partial(lanes.as_mut_ptr(), x, S::LANES);
    lanes
}

/// `width` channels of each of `tokens` value rows, `stride` apart from `rows`.
struct Values {
    rows: *const f32,
    stride: usize,
    tokens: usize,
    width: usize,
}

/// `out[r][c0..c0 + width] = inv[r] * sum_j probs[r][j] v[j]` for the first `valid` rows.
#[inline(always)]
unsafe fn weighted<S: Simd, const MR: usize, const NV: usize>(
    probs: *const f32,
    tkp: usize,
    values: &Values,
    (dst, c0, valid, inv): (&[*mut f32; MR], usize, usize, &[f32; MR]),
) {
    let mut lanes = [0usize; NV];
    for v in 0..NV {
        lanes[v] = values.width.saturating_sub(v * S::LANES).min(S::LANES);
    }
    let mut acc = [[S::zero(); NV]; MR];
    let mut row = values.rows;
    for j in 0..values.tokens {
        let mut vv = [S::zero(); NV];
        for v in 0..NV {
            vv[v] = S::load_partial(row.add(v * S::LANES), lanes[v]);
        }
        for r in 0..MR {
            let p = S::splat(*probs.add(r * tkp + j));
            for v in 0..NV {
                acc[r][v] = S::fma(p, vv[v], acc[r][v]);
            }
        }
        row = row.add(values.stride);
    }
    for r in 0..valid.min(MR) {
        let scale = S::splat(inv[r]);
        for v in 0..NV {
            let x = S::mul(acc[r][v], scale);
            S::store_partial(dst[r].add(c0 + v * S::LANES), x, lanes[v]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::pseudo_random;

    /// The definition in f64: scores, softmax, weighted sum.
    fn reference(a: &Attention<'_>) -> Vec<f32> {
        let (tq, tk, d, dv) = (a.q.tokens, a.k.tokens, a.q.width, a.v.width);
        let at = |op: &Operand<'_>, b: usize, h: usize, t: usize, c: usize| {
            f64::from(
                op.data[(b * op.tokens + t) * op.row_stride + op.offset + h * op.head_stride + c],
            )
        };
        let mut out = vec![0.0f32; a.output_len()];
        for b in 0..a.batch {
            for h in 0..a.heads {
                for i in 0..tq {
                    let s: Vec<f64> = (0..tk)
                        .map(|j| {
                            (0..d)
                                .map(|c| at(&a.q, b, h, i, c) * at(&a.k, b, h, j, c))
                                .sum::<f64>()
                                * f64::from(a.scale)
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..dv {
                        let y: f64 = (0..tk).map(|j| e[j] * at(&a.v, b, h, j, c)).sum();
                        out[(b * tq + i) * a.heads * dv + h * dv + c] = (y / sum) as f32;
                    }
                }
            }
        }
        out
    }

    fn check(a: &Attention<'_>) {
        let want = reference(a);
        let mut got = vec![f32::NAN; a.output_len()];
        attention(a, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "value {i}: {g} vs {w} ({:?} tokens, {} heads)",
                (a.q.tokens, a.k.tokens),
                a.heads
            );
        }
    }

    #[test]
    fn fused_qkv_rows_match_the_definition_over_tile_edges() {
        // ViT's layout: one row of [q heads | k heads | v heads] per token.
        for (batch, tokens, heads, d) in
            [(1, 1, 1, 4), (2, 197, 3, 16), (1, 70, 2, 33), (3, 13, 4, 8)]
        {
            let dim = heads * d;
            let qkv = pseudo_random(batch * tokens * 3 * dim, 3);
            let op = |offset| Operand {
                data: &qkv,
                tokens,
                row_stride: 3 * dim,
                offset,
                head_stride: d,
                width: d,
            };
            check(&Attention {
                q: op(0),
                k: op(dim),
                v: op(2 * dim),
                batch,
                heads,
                scale: 1.0 / (d as f32).sqrt(),
            });
        }
    }

    #[test]
    fn fewer_keys_than_queries_and_narrow_keys_match_the_definition() {
        // SegFormer's reduced keys, and YOLO11's keys half as wide as its values.
        let (batch, tq, tk, heads) = (2, 50, 9, 2);
        let (kd, dv) = (5, 40);
        let group = 2 * kd + dv;
        let q = pseudo_random(batch * tq * heads * group, 4);
        let kv = pseudo_random(batch * tk * heads * group, 5);
        let op = |data, tokens, offset, width| Operand {
            data,
            tokens,
            row_stride: heads * group,
            offset,
            head_stride: group,
            width,
        };
        check(&Attention {
            q: op(&q, tq, 0, kd),
            k: op(&kv, tk, kd, kd),
            v: op(&kv, tk, 2 * kd, dv),
            batch,
            heads,
            scale: 3.0,
        });
    }

    #[test]
    fn operands_too_short_are_reported_not_read() {
        let data = vec![0.0f32; 10];
        let op = Operand {
            data: &data,
            tokens: 4,
            row_stride: 3,
            offset: 0,
            head_stride: 3,
            width: 3,
        };
        let a = Attention {
            q: op,
            k: op,
            v: op,
            batch: 1,
            heads: 1,
            scale: 1.0,
        };
        let err = a.check().expect_err("4 rows of 3 need 12 values");
        assert!(err.contains("10") && err.contains("4 tokens"), "{err}");
    }
}
