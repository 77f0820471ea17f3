//! Depthwise convolution (groups = channels) on NHWC slices, one parallel task per output row.
//!
//! Inside the image, a tile of output pixels keeps its accumulators in vector registers across
//! every tap of the window: the per-pixel loop it replaces loaded and stored each accumulator
//! once per tap and ran at 16-25 GFLOP/s on EfficientNet-Lite0's wide early layers
//! (`docs/performance.md`). Taps that fall into the padding are skipped, which is what zero
//! padding computes without materialising it; channels past the last 8-lane vector take a
//! scalar loop.
//!
//! The same code is compiled twice: for the crate's baseline (AVX2 + FMA) and, chosen at run time,
//! for AVX-512. Both accumulate in the same order with fused multiply-adds, so they give the same
//! bits.

use rayon::prelude::*;

use super::conv::Resolved;
use super::{Activation, ConvGeometry, Nhwc};

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

/// Output pixels per register tile: 4 accumulators of 16 lanes fit AVX2's 16 registers with
/// room for the weights, and AVX-512's 32 with room to spare.
const TILE_PIXELS: usize = 4;

/// Depthwise convolution over an NHWC input into a contiguous `(n, out_h, out_w, c)` output.
pub fn depthwise_conv(input: &[f32], shape: Nhwc, params: &DepthwiseParams<'_>, out: &mut [f32]) {
    let Some(res) = params.geometry.resolve(shape.h, shape.w) else {
        return;
    };
    let row_len = res.out_w * shape.c;
    if row_len == 0 {
        return;
    }
    let plan = RowPlan::new(input, shape, params, res);
    let compute_row = select_row_kernel();
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(row, out_row)| {
            compute_row(&plan, row, out_row);
            params.activation.apply(out_row);
        });
}

type RowKernel = fn(&RowPlan<'_>, usize, &mut [f32]);

/// The widest instruction set this CPU has for [`compute_row`].
fn select_row_kernel() -> RowKernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked on the line above.
        #[allow(unsafe_code)]
        return |plan, row, out_row| unsafe { compute_row_avx512(plan, row, out_row) };
    }
    compute_row
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn compute_row_avx512(plan: &RowPlan<'_>, row: usize, out_row: &mut [f32]) {
    compute_row(plan, row, out_row);
}

/// Everything a row task needs, resolved once per call.
struct RowPlan<'a> {
    input: &'a [f32],
    shape: Nhwc,
    weight: &'a [f32],
    bias: &'a [f32],
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    res: Resolved,
    /// Output columns `interior.0..interior.1` see no horizontal padding.
    interior: (usize, usize),
}

impl<'a> RowPlan<'a> {
    fn new(input: &'a [f32], shape: Nhwc, params: &DepthwiseParams<'a>, res: Resolved) -> Self {
        let geometry = params.geometry;
        let (sw, dw, kw) = (
            geometry.stride.1.max(1),
            geometry.dilation.1,
            geometry.kernel.1,
        );
        // First column whose window starts inside the image, and one past the last whose window
        // ends inside it.
        let first = res.pad_left.div_ceil(sw);
        let span = (kw.max(1) - 1) * dw;
        let end = match (shape.w + res.pad_left).checked_sub(span + 1) {
            Some(last_start) => last_start / sw + 1,
            None => 0,
        };
        let end = end.min(res.out_w);
        RowPlan {
            input,
            shape,
            weight: params.weight,
            bias: params.bias,
            kernel: geometry.kernel,
            stride: geometry.stride,
            dilation: geometry.dilation,
            res,
            interior: (first.min(end), end),
        }
    }

    /// Input row index of tap row `ky` for output row `oy`, if it lies inside the image.
    #[inline(always)]
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride.0 + ky * self.dilation.0).checked_sub(self.res.pad_top)?;
        (iy < self.shape.h).then_some(iy)
    }

    /// Input column of tap column `kx` for output column `ox`, if it lies inside the image.
    #[inline(always)]
    fn input_col(&self, ox: usize, kx: usize) -> Option<usize> {
        let ix = (ox * self.stride.1 + kx * self.dilation.1).checked_sub(self.res.pad_left)?;
        (ix < self.shape.w).then_some(ix)
    }
}

/// One output row: register tiles of `TILE_PIXELS` across the interior, single-pixel tiles
/// with clipped windows at the borders, a bounds-checked loop for channels past the last vector.
#[inline(always)]
fn compute_row(plan: &RowPlan<'_>, row: usize, out_row: &mut [f32]) {
    let (n, oy) = (row / plan.res.out_h, row % plan.res.out_h);
    let c = plan.shape.c;
    let (first, end) = plan.interior;
    let wide = c / 16 * 16;
    let narrow = c / 8 * 8;
    let mut ox = 0;
    while ox < plan.res.out_w {
        let pixels = if ox < first || ox >= end {
            compute_tiles::<1, true>(plan, n, oy, ox, wide, narrow, out_row);
            1
        } else if end - ox >= TILE_PIXELS {
            compute_tiles::<TILE_PIXELS, false>(plan, n, oy, ox, wide, narrow, out_row);
            TILE_PIXELS
        } else {
            compute_tiles::<1, false>(plan, n, oy, ox, wide, narrow, out_row);
            1
        };
        if narrow < c {
            for x in ox..ox + pixels {
                compute_pixel(
                    plan,
                    n,
                    oy,
                    x,
                    narrow,
                    &mut out_row[x * c + narrow..][..c - narrow],
                );
            }
        }
        ox += pixels;
    }
}

/// Channels `0..narrow` of output pixels `ox..ox + P`: 16-lane blocks up to `wide`, then one
/// 8-lane block if `narrow > wide`. `CLIPPED` windows may cross the left or right border.
#[inline(always)]
fn compute_tiles<const P: usize, const CLIPPED: bool>(
    plan: &RowPlan<'_>,
    n: usize,
    oy: usize,
    ox: usize,
    wide: usize,
    narrow: usize,
    out_row: &mut [f32],
) {
    for c0 in (0..wide).step_by(16) {
        compute_tile::<P, 16, CLIPPED>(plan, n, oy, ox, c0, out_row);
    }
    if narrow > wide {
        compute_tile::<P, 8, CLIPPED>(plan, n, oy, ox, wide, out_row);
    }
}

/// Channels `c0..c0 + L` of output pixels `ox..ox + P`, with the `P x L` accumulators held in
/// registers over the whole window. Unless `CLIPPED`, every window lies inside the image
/// horizontally (the plan's interior columns).
#[inline(always)]
fn compute_tile<const P: usize, const L: usize, const CLIPPED: bool>(
    plan: &RowPlan<'_>,
    n: usize,
    oy: usize,
    ox: usize,
    c0: usize,
    out_row: &mut [f32],
) {
    let c = plan.shape.c;
    let (kh, kw) = plan.kernel;
    let (sw, dw) = (plan.stride.1, plan.dilation.1);
    let bias: &[f32; L] = lanes(plan.bias, c0);
    let mut acc = [*bias; P];
    for ky in 0..kh {
        let Some(iy) = plan.input_row(oy, ky) else {
            continue;
        };
        let line = (n * plan.shape.h + iy) * plan.shape.w;
        let input_row = &plan.input[line * c..][..plan.shape.w * c];
        let weight_row = &plan.weight[ky * kw * c..][..kw * c];
        if CLIPPED {
            for kx in 0..kw {
                let w: &[f32; L] = lanes(weight_row, kx * c + c0);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let Some(ix) = plan.input_col(ox + p, kx) else {
                        continue;
                    };
                    let x: &[f32; L] = lanes(input_row, ix * c + c0);
                    for l in 0..L {
                        acc[l] = x[l].mul_add(w[l], acc[l]);
                    }
                }
            }
        } else {
            // Interior columns: every window of the tile lies inside the row.
            let first = (ox * sw - plan.res.pad_left) * c + c0;
            for kx in 0..kw {
                let w: &[f32; L] = lanes(weight_row, kx * c + c0);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let x: &[f32; L] = lanes(input_row, first + (p * sw + kx * dw) * c);
                    for l in 0..L {
                        acc[l] = x[l].mul_add(w[l], acc[l]);
                    }
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        out_row[(ox + p) * c + c0..][..L].copy_from_slice(acc);
    }
}

/// `L` consecutive values of `xs` from `start`, as an array the compiler keeps in registers.
#[inline(always)]
fn lanes<const L: usize>(xs: &[f32], start: usize) -> &[f32; L] {
    xs[start..start + L]
        .try_into()
        .expect("slice of exactly L values")
}

/// Channels `c0..` of one output pixel with every tap bounds-checked: the channels past the
/// last 8-lane block.
#[inline(always)]
fn compute_pixel(plan: &RowPlan<'_>, n: usize, oy: usize, ox: usize, c0: usize, acc: &mut [f32]) {
    let c = plan.shape.c;
    let (kh, kw) = plan.kernel;
    acc.copy_from_slice(&plan.bias[c0..]);
    for ky in 0..kh {
        let Some(iy) = plan.input_row(oy, ky) else {
            continue;
        };
        let line = (n * plan.shape.h + iy) * plan.shape.w;
        for kx in 0..kw {
            let Some(ix) = plan.input_col(ox, kx) else {
                continue;
            };
            let x = &plan.input[(line + ix) * c + c0..(line + ix + 1) * c];
            let w = &plan.weight[(ky * kw + kx) * c + c0..(ky * kw + kx + 1) * c];
            for ((a, &x), &w) in acc.iter_mut().zip(x).zip(w) {
                *a = x.mul_add(w, *a);
            }
        }
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

    /// The AVX-512 build of the row kernel gives the same bits as the baseline build.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_instruction_sets_give_identical_rows() {
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
        let geometry = ConvGeometry::square(5, 1, 2);
        let weight = pseudo_random(25 * shape.c, 6);
        let bias = pseudo_random(shape.c, 8);
        let params = DepthwiseParams {
            geometry: &geometry,
            weight: &weight,
            bias: &bias,
            activation: Activation::Identity,
        };
        let res = geometry.resolve(shape.h, shape.w).expect("valid geometry");
        let plan = RowPlan::new(&input, shape, &params, res);
        let row_len = res.out_w * shape.c;
        for row in 0..res.out_h {
            let mut baseline = vec![f32::NAN; row_len];
            let mut wide = vec![f32::NAN; row_len];
            compute_row(&plan, row, &mut baseline);
            select_row_kernel()(&plan, row, &mut wide);
            assert_eq!(baseline, wide, "row {row}");
        }
    }
}
