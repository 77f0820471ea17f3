//! CPU compute kernels on raw NHWC `f32` slices: the fast paths behind the layers.
//!
//! Candle's own grouped convolution runs one convolution per channel and its 1x1 convolution
//! goes through a generic im2col; both cost EfficientNet-Lite0 more than a second per image
//! (`docs/performance.md`). Everything here works channels-last (NHWC), so a 1x1 convolution is
//! one matrix product over all pixels of the whole batch, a depthwise convolution vectorises
//! across channels, and bias, activation and residual additions are fused into the pass that
//! produces the output while it is still in cache.
//!
//! The kernels know nothing of tensors or checkpoints; [`crate::model::layers`] owns the weights
//! and wraps these functions as Candle custom ops.

pub(crate) mod attention;
mod concat;
mod conv;
mod dense;
mod depthwise;
mod expand_depthwise;
mod gated;
mod layer_norm;
mod layout;
mod pool;
mod resize;
mod simd;
pub(crate) mod team;
mod upsample;
mod winograd;

pub(crate) use concat::dense_conv_concat_new;
pub(crate) use conv::dense_conv_new;
pub use conv::{
    dense_conv, scale_shift_act, ChannelAffine, ConvGeometry, ConvOutput, DenseParams, Padding,
};
pub(crate) use dense::Part;
pub(crate) use dense::{bf16_supported, PackedWeights};
pub(crate) use depthwise::depthwise_conv_new;
pub use depthwise::{depthwise_conv, DepthwiseParams};
pub(crate) use expand_depthwise::{expand_depthwise_new, Projection};
pub(crate) use gated::{dense_conv_gated_new, gate_channels};
pub(crate) use layer_norm::{layer_norm, Norm};
pub use layout::nchw_to_nhwc;
pub use pool::{avg_pool_2x2, global_avg_pool, max_pool};
pub(crate) use resize::resize_bilinear_new;
pub use resize::{resize_bilinear, ResizeAxis};
pub(crate) use simd::exp_slice;
pub use upsample::upsample_nearest;

/// A new kernel output that the kernel overwrites completely, so it is never zero-filled.
pub(crate) struct Fresh(Vec<std::mem::MaybeUninit<f32>>);

impl Fresh {
    /// `len` uninitialised values.
    pub(crate) fn new(len: usize) -> Self {
        let mut values = Vec::with_capacity(len);
        // SAFETY: `MaybeUninit` values need no initialisation; the capacity is `len`.
        #[allow(unsafe_code)]
        unsafe {
            values.set_len(len)
        };
        Fresh(values)
    }

    /// Where the kernel writes.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.0.as_mut_ptr().cast()
    }

    /// The values to write, for kernels that write through slices.
    pub(crate) fn as_uninit_mut(&mut self) -> &mut [std::mem::MaybeUninit<f32>] {
        &mut self.0
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The values, once a kernel has written every one.
    ///
    /// # Safety
    /// Every value must have been written.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn assume_init(self) -> Vec<f32> {
        let mut values = std::mem::ManuallyDrop::new(self.0);
        // SAFETY: same allocation, length and capacity; `MaybeUninit<f32>` has the layout of
        // `f32`, and the caller vouches that every value is initialised.
        Vec::from_raw_parts(values.as_mut_ptr().cast(), values.len(), values.capacity())
    }
}

/// An output pointer handed to the team's parts, each of which writes its own disjoint
/// rows, columns or channel blocks of one buffer the caller owns mutably.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only written through in disjoint regions (each kernel says which),
// while the caller that owns the buffer waits for every part.
#[allow(unsafe_code)]
unsafe impl Send for SendPtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for SendPtr {}

/// The shape of an NHWC activation: batch, height, width, channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nhwc {
    /// Batch size.
    pub n: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// Channels (the innermost, contiguous dimension).
    pub c: usize,
}

impl Nhwc {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    /// Whether the shape holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of pixels over the whole batch (rows of the channels-last matrix).
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// An element-wise activation fused into the kernel that produces its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No activation.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`, the MobileNet / EfficientNet-Lite activation.
    Relu6,
    /// `x * sigmoid(x)`.
    Silu,
    /// `x` if positive, else `slope * x`.
    LeakyRelu(f32),
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x * relu6(x + 3) / 6`, MobileNetV3's activation.
    Hardswish,
    /// `relu6(x + 3) / 6`, MobileNetV3's squeeze-excitation gate.
    Hardsigmoid,
    /// `x * Phi(x)` with the exact (erf) normal CDF, PyTorch's `nn.GELU()` default (transformers'
    /// `"gelu"`), within 1e-7 * |x| of it.
    Gelu,
}

/// `erfc(z) ~= t * (a1 + a2 t + ... + a5 t^4) * exp(-z^2)`, `t = 1 / (1 + p z)`, for z >= 0:
/// Abramowitz & Stegun 7.1.26, absolute error under 1.5e-7. The vector kernels use the same
/// constants, so both paths agree.
pub(crate) const ERFC_P: f32 = 0.327_591_1;
/// The polynomial's coefficients `a1 ... a5`.
pub(crate) const ERFC_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152,
    1.061_405_4,
];

/// The GELU of one value, as [`Activation::Gelu`]: `relu(x) - |x| erfc(|x| / sqrt 2) / 2`
/// (which is `x * (1 + erf(x / sqrt 2)) / 2` on both sides of zero).
fn gelu(x: f32) -> f32 {
    let ax = x.abs();
    let z = ax * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / z.mul_add(ERFC_P, 1.0);
    let poly = ERFC_A[..4]
        .iter()
        .rev()
        .fold(ERFC_A[4], |acc, a| acc.mul_add(t, *a));
    let erfc = poly * t * (-(z * z)).exp();
    x.max(0.0) - erfc * ax * 0.5
}

impl Activation {
    /// Applies the activation in place, with the widest vectors this CPU has.
    pub fn apply(self, xs: &mut [f32]) {
        simd::activate_slice(self, xs);
    }

    /// The activation of one value: the definition the vector code is tested against.
    pub fn apply_scalar(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::LeakyRelu(slope) => {
                if x >= 0.0 {
                    x
                } else {
                    x * slope
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            // PyTorch divides by 6 rather than multiplying by 1/6; so do we, to stay bit-close.
            Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Gelu => gelu(x),
        }
    }
}

/// A row-major matrix product `lhs (m x k) * rhs (k x n)`, accumulated into a destination.
/// `lhs` rows are `lhs_row_stride` apart (im2col buffers and plain activations alike), `rhs` is
/// dense `k x n` (weights laid out at load time).
pub(crate) struct MatMul<'a> {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) lhs: &'a [f32],
    pub(crate) lhs_row_stride: usize,
    pub(crate) rhs: &'a [f32],
}

impl MatMul<'_> {
    /// `dst[i, j] += (lhs * rhs)[i, j]` with `dst` rows `dst_row_stride` apart, so a product
    /// can land in a channel slice of a wider buffer (DenseNet's concatenation).
    ///
    /// # Panics
    /// If a slice is too short for the dimensions: a bug in the caller, never input data.
    pub(crate) fn accumulate_into(&self, dst: &mut [f32], dst_row_stride: usize, parallel: bool) {
        let MatMul {
            m,
            n,
            k,
            lhs,
            lhs_row_stride,
            rhs,
        } = *self;
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        assert!(lhs_row_stride >= k && dst_row_stride >= n, "matmul strides");
        assert!(
            lhs.len() >= (m - 1) * lhs_row_stride + k,
            "matmul lhs too short"
        );
        assert!(rhs.len() >= k * n, "matmul rhs too short");
        assert!(
            dst.len() >= (m - 1) * dst_row_stride + n,
            "matmul dst too short"
        );
        let parallelism = if parallel && rayon::current_num_threads() > 1 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the asserts above guarantee that every element gemm reads or writes
        // (row r < m at r * stride + column c < n or k) lies inside the borrowed slices, and the
        // mutable borrow of `dst` excludes aliasing with `lhs` and `rhs`.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                dst_row_stride as isize,
                true,
                lhs.as_ptr(),
                1,
                lhs_row_stride as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// How many output rows one parallel task takes: enough tasks for load balance on every core,
/// few enough that packing the weights per task stays cheap next to the product itself.
pub(crate) fn rows_per_task(rows: usize, flops_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // Below ~2 MFLOP in total, splitting costs more than it saves.
    if threads == 1 || rows.saturating_mul(flops_per_row) < 2_000_000 {
        return rows.max(1);
    }
    let per_task = rows.div_ceil(threads * 4);
    per_task.clamp(32, 512).min(rows)
}

/// Deterministic values in [-1, 1) for kernel tests (xorshift, no dependency).
#[cfg(test)]
pub(crate) fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// A PyTorch `(c_out, c_in, kh, kw)` weight laid out as the dense kernels take it:
/// `(ky, kx, c_in) x c_out`.
#[cfg(test)]
pub(crate) fn oihw_to_rows(w_oihw: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<f32> {
    let mut weight = vec![0.0; w_oihw.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for t in 0..taps {
                weight[(t * c_in + ci) * c_out + co] = w_oihw[(co * c_in + ci) * taps + t];
            }
        }
    }
    weight
}

/// One dense layer for checking a kernel: its input, weights (`[taps * c_in, c_out]` rows), bias,
/// residual and the output the definition gives, bias, residual (when asked) and activation
/// applied.
#[cfg(test)]
pub(crate) struct ReferenceLayer {
    pub(crate) input: Vec<f32>,
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) residual: Vec<f32>,
    pub(crate) expected: Vec<f32>,
    pub(crate) res: conv::Resolved,
    /// Output pixels.
    pub(crate) rows: usize,
}

/// A [`ReferenceLayer`] of pseudo-random values from `seed` on.
#[cfg(test)]
pub(crate) fn reference_layer(
    shape: Nhwc,
    geometry: &ConvGeometry,
    c_out: usize,
    (residual, activation): (bool, Activation),
    seed: u32,
) -> ReferenceLayer {
    let input = pseudo_random(shape.len(), seed);
    let taps = geometry.kernel.0 * geometry.kernel.1;
    let w_oihw = pseudo_random(c_out * shape.c * taps, seed + 1);
    let (plain, res) = reference_conv(&input, shape, geometry, &w_oihw, (c_out, 1));
    let bias = pseudo_random(c_out, seed + 2);
    let rows = shape.n * res.out_h * res.out_w;
    let extra = pseudo_random(rows * c_out, seed + 3);
    let expected = plain
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let r = if residual { extra[i] } else { 0.0 };
            activation.apply_scalar(x + bias[i % c_out] + r)
        })
        .collect();
    ReferenceLayer {
        input,
        weight: oihw_to_rows(&w_oihw, c_out, shape.c, taps),
        bias,
        residual: extra,
        expected,
        res,
        rows,
    }
}

/// Direct definition of a grouped 2-D convolution on NHWC data, for checking the kernels.
#[cfg(test)]
pub(crate) fn reference_conv(
    input: &[f32],
    shape: Nhwc,
    geometry: &ConvGeometry,
    weight_oihw: &[f32],
    (c_out, groups): (usize, usize),
) -> (Vec<f32>, conv::Resolved) {
    let res = geometry.resolve(shape.h, shape.w).expect("valid geometry");
    let (kh, kw) = geometry.kernel;
    let c_in_g = shape.c / groups;
    let c_out_g = c_out / groups;
    let mut out = vec![0.0; shape.n * res.out_h * res.out_w * c_out];
    for n in 0..shape.n {
        for oy in 0..res.out_h {
            for ox in 0..res.out_w {
                for co in 0..c_out {
                    let g = co / c_out_g;
                    let mut acc = 0.0f64;
                    for ci in 0..c_in_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * geometry.stride.0 + ky * geometry.dilation.0)
                                    as isize
                                    - res.pad_top as isize;
                                let ix = (ox * geometry.stride.1 + kx * geometry.dilation.1)
                                    as isize
                                    - res.pad_left as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy as usize >= shape.h
                                    || ix as usize >= shape.w
                                {
                                    continue;
                                }
                                let x = input[((n * shape.h + iy as usize) * shape.w
                                    + ix as usize)
                                    * shape.c
                                    + g * c_in_g
                                    + ci];
                                let w = weight_oihw[((co * c_in_g + ci) * kh + ky) * kw + kx];
                                acc += f64::from(x) * f64::from(w);
                            }
                        }
                    }
                    out[((n * res.out_h + oy) * res.out_w + ox) * c_out + co] = acc as f32;
                }
            }
        }
    }
    (out, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        let mut xs = vec![-7.0, -1.0, 0.0, 0.5, 6.5];
        Activation::Relu6.apply(&mut xs);
        assert_eq!(xs, vec![0.0, 0.0, 0.0, 0.5, 6.0]);
        let mut xs = vec![-2.0, 3.0];
        Activation::LeakyRelu(0.1).apply(&mut xs);
        assert_eq!(xs, vec![-0.2, 3.0]);
        let mut xs = vec![0.0, 2.0];
        Activation::Silu.apply(&mut xs);
        assert!((xs[1] - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6 && xs[0] == 0.0);
        let mut xs = vec![-4.0, -1.5, 0.0, 1.5, 4.0];
        Activation::Hardswish.apply(&mut xs);
        assert_eq!(xs, vec![0.0, -0.375, 0.0, 1.125, 4.0]);
        let mut xs = vec![-4.0, 0.0, 1.5, 4.0];
        Activation::Hardsigmoid.apply(&mut xs);
        assert_eq!(xs, vec![0.0, 0.5, 0.75, 1.0]);
        let mut xs = vec![0.0];
        Activation::Sigmoid.apply(&mut xs);
        assert_eq!(xs, vec![0.5]);
    }

    /// PyTorch's `nn.GELU()` is `x * (1 + erf(x / sqrt 2)) / 2`; Candle's `gelu_erf` computes it
    /// with a full-precision erf, so it is the reference here.
    #[test]
    fn gelu_matches_the_exact_erf_definition() -> candle_core::Result<()> {
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 * 0.01).collect();
        let exact = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)?
            .gelu_erf()?
            .to_vec1::<f32>()?;
        let mut vectorised = xs.clone();
        Activation::Gelu.apply(&mut vectorised);
        for ((x, want), got) in xs.iter().zip(&exact).zip(&vectorised) {
            let scalar = Activation::Gelu.apply_scalar(*x);
            for (path, value) in [("vector", *got), ("scalar", scalar)] {
                assert!(
                    (value - want).abs() <= 3e-7 * x.abs().max(1.0),
                    "{path} gelu({x}) = {value}, exact {want}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn matmul_accumulates_into_a_strided_destination() {
        // lhs 2x3 (row stride 4), rhs 3x2, dst rows 5 apart starting with existing values.
        let lhs = [1.0, 2.0, 3.0, 99.0, 4.0, 5.0, 6.0];
        let rhs = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut dst = vec![10.0; 7];
        let product = MatMul {
            m: 2,
            n: 2,
            k: 3,
            lhs: &lhs,
            lhs_row_stride: 4,
            rhs: &rhs,
        };
        product.accumulate_into(&mut dst, 5, false);
        assert_eq!(&dst[0..2], &[14.0, 15.0]);
        assert_eq!(&dst[5..7], &[20.0, 21.0]);
        assert_eq!(
            &dst[2..5],
            &[10.0, 10.0, 10.0],
            "columns outside n untouched"
        );
    }
}
