//! The vector instructions the hand-written kernels are generic over: AVX-512 (16 lanes, 32
//! registers) and AVX2 + FMA (8 lanes, 16 registers), chosen once per process at run time.
//!
//! A kernel is written once against [`Simd`] and instantiated inside a function compiled with
//! the matching `#[target_feature]`, so the same binary runs at full width on an AVX-512
//! instance and correctly on an AVX2-only one. The exponential and the activations built on it
//! are written here, vectorised, because `f32::exp` is a scalar libm call the compiler cannot
//! vectorise: YOLOv8's SiLU after every convolution cost more than the convolutions' epilogues.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Activation;

/// One vector instruction set: lane count and the operations the kernels use. Every method is
/// `unsafe` because it must only run on a CPU with the instruction set (checked once by
/// [`Isa::detect`]); pointer arguments must be valid for the lanes they touch.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of `LANES` f32.
    type V: Copy;
    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// `LANES` values from `p` (any alignment).
    unsafe fn load(p: *const f32) -> Self::V;
    /// The first `n <= LANES` values from `p`, zeros after: reads nothing past `p + n`.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V;
    /// `LANES` values to `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// The first `n <= LANES` lanes to `p`: writes nothing past `p + n`.
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize);
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `x` where `x >= 0`, else `y`.
    unsafe fn select_non_negative(x: Self::V, y: Self::V) -> Self::V;
    /// `round(x)` to nearest even, as f32.
    unsafe fn round(x: Self::V) -> Self::V;
    /// `x * 2^n` for integral `n` in [-125, 128].
    unsafe fn ldexp(x: Self::V, n: Self::V) -> Self::V;

    /// `e^x`, within 2 ulp of the exact value for `x` in [-86, 88.7] (Cephes' polynomial on
    /// `x - n ln 2`); below that range it returns about `1e-38`, above it `+inf`.
    #[inline(always)]
    unsafe fn exp(x: Self::V) -> Self::V {
        let x = Self::min(x, Self::splat(88.722_83));
        let x = Self::max(x, Self::splat(-86.0));
        let n = Self::round(Self::mul(x, Self::splat(std::f32::consts::LOG2_E)));
        // x - n ln2 in two steps: the high part of ln2 has few bits, so n * hi is exact.
        let r = Self::fma(n, Self::splat(-0.693_359_4), x);
        let r = Self::fma(n, Self::splat(2.121_944_4e-4), r);
        let mut p = Self::splat(1.987_569_1e-4);
        p = Self::fma(p, r, Self::splat(1.398_199_9e-3));
        p = Self::fma(p, r, Self::splat(8.333_452e-3));
        p = Self::fma(p, r, Self::splat(4.166_579_6e-2));
        p = Self::fma(p, r, Self::splat(1.666_666_5e-1));
        p = Self::fma(p, r, Self::splat(0.5));
        p = Self::fma(p, Self::mul(r, r), r);
        Self::ldexp(Self::add(p, Self::splat(1.0)), n)
    }

    /// One activation on a vector, with the same definitions as [`Activation::apply_scalar`].
    #[inline(always)]
    unsafe fn activate(activation: Activation, x: Self::V) -> Self::V {
        let zero = Self::zero();
        let six = Self::splat(6.0);
        match activation {
            Activation::Identity => x,
            Activation::Relu => Self::max(x, zero),
            Activation::Relu6 => Self::min(Self::max(x, zero), six),
            Activation::Silu => {
                let e = Self::exp(Self::mul(x, Self::splat(-1.0)));
                Self::div(x, Self::add(Self::splat(1.0), e))
            }
            Activation::Sigmoid => {
                let e = Self::exp(Self::mul(x, Self::splat(-1.0)));
                Self::div(Self::splat(1.0), Self::add(Self::splat(1.0), e))
            }
            Activation::LeakyRelu(slope) => {
                Self::select_non_negative(x, Self::mul(x, Self::splat(slope)))
            }
            Activation::Hardswish => {
                let gate = Self::min(Self::max(Self::add(x, Self::splat(3.0)), zero), six);
                Self::div(Self::mul(x, gate), six)
            }
            Activation::Hardsigmoid => {
                let gate = Self::min(Self::max(Self::add(x, Self::splat(3.0)), zero), six);
                Self::div(gate, six)
            }
            Activation::Gelu => {
                // relu(x) - |x| erfc(|x| / sqrt 2) / 2, erfc as in `super::gelu_erfc`.
                let ax = Self::max(x, Self::mul(x, Self::splat(-1.0)));
                let z = Self::mul(ax, Self::splat(std::f32::consts::FRAC_1_SQRT_2));
                let one = Self::splat(1.0);
                let t = Self::div(one, Self::fma(z, Self::splat(super::ERFC_P), one));
                let mut poly = Self::splat(super::ERFC_A[4]);
                for a in super::ERFC_A[..4].iter().rev() {
                    poly = Self::fma(poly, t, Self::splat(*a));
                }
                let erfc = Self::mul(
                    Self::mul(poly, t),
                    Self::exp(Self::mul(Self::mul(z, z), Self::splat(-1.0))),
                );
                let half_tail = Self::mul(Self::mul(erfc, ax), Self::splat(0.5));
                Self::add(Self::max(x, zero), Self::mul(half_tail, Self::splat(-1.0)))
            }
        }
    }
}

/// AVX-512F: 16 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn select_non_negative(x: __m512, y: __m512) -> __m512 {
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        _mm512_mask_blend_ps(negative, x, y)
    }
    #[inline(always)]
    unsafe fn round(x: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
    }
    #[inline(always)]
    unsafe fn ldexp(x: __m512, n: __m512) -> __m512 {
        _mm512_scalef_ps(x, n)
    }
}

/// AVX2 with FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2;

/// `_mm256_maskload_ps` masks with the first `n` lanes set: a sliding window over this table.
#[cfg(target_arch = "x86_64")]
static PARTIAL_MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn partial_mask(n: usize) -> __m256i {
    _mm256_loadu_si256(PARTIAL_MASKS.as_ptr().add(8 - n) as *const __m256i)
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    // A full vector takes the plain load or store: AMD's Zen microcode-sequences VMASKMOVPS
    // to memory (one store per ~12 cycles against one per cycle), and the dense kernel's tile
    // stores went through it on every tile.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        if n == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, partial_mask(n))
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m256, n: usize) {
        match n {
            8 => _mm256_storeu_ps(p, v),
            0 => {}
            _ => _mm256_maskstore_ps(p, partial_mask(n), v),
        }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn select_non_negative(x: __m256, y: __m256) -> __m256 {
        let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
        _mm256_blendv_ps(x, y, negative)
    }
    #[inline(always)]
    unsafe fn round(x: __m256) -> __m256 {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x)
    }
    #[inline(always)]
    unsafe fn ldexp(x: __m256, n: __m256) -> __m256 {
        // Adds n to the exponent field: exact while the result stays a normal number, which
        // the callers' ranges guarantee.
        let bits = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(x), bits))
    }
}

/// The instruction set the kernels run with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
    /// Neither: the portable fallbacks.
    Portable,
}

impl Isa {
    /// The widest instruction set this CPU supports, detected once. `WICK_ISA=avx2` (or
    /// `portable`) caps it, to test the narrower paths on a wider machine.
    pub(crate) fn detect() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var("WICK_ISA").unwrap_or_default();
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma");
                let avx512 = std::arch::is_x86_feature_detected!("avx512f");
                match cap.as_str() {
                    "portable" => Isa::Portable,
                    "avx2" if avx2 => Isa::Avx2,
                    _ if avx512 => Isa::Avx512,
                    _ if avx2 => Isa::Avx2,
                    _ => Isa::Portable,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = cap;
                Isa::Portable
            }
        })
    }
}

/// Applies `activation` to a slice in place with the widest vectors this CPU has.
pub(crate) fn activate_slice(activation: Activation, xs: &mut [f32]) {
    if activation == Activation::Identity {
        return;
    }
    match Isa::detect() {
        // SAFETY: `Isa::detect` saw the instruction set on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { activate_avx512(activation, xs) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { activate_avx2(activation, xs) },
        _ => xs.iter_mut().for_each(|x| *x = activation.apply_scalar(*x)),
    }
}

/// `e^x` in place for every value, with the widest vectors this CPU has (within 2 ulp; see
/// [`Simd::exp`]).
pub(crate) fn exp_slice(xs: &mut [f32]) {
    match Isa::detect() {
        // SAFETY: `Isa::detect` saw the instruction set on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { exp_with_avx512(xs) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { exp_with_avx2(xs) },
        _ => xs.iter_mut().for_each(|x| *x = x.exp()),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_with_avx512(xs: &mut [f32]) {
    map_with::<Avx512>(xs, |v| Avx512::exp(v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_with_avx2(xs: &mut [f32]) {
    map_with::<Avx2>(xs, |v| Avx2::exp(v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn activate_avx512(activation: Activation, xs: &mut [f32]) {
    activate_with::<Avx512>(activation, xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(activation: Activation, xs: &mut [f32]) {
    activate_with::<Avx2>(activation, xs)
}

#[inline(always)]
unsafe fn activate_with<S: Simd>(activation: Activation, xs: &mut [f32]) {
    map_with::<S>(xs, |v| S::activate(activation, v))
}

/// `f` over the slice a vector at a time, the tail with a partial vector.
#[inline(always)]
unsafe fn map_with<S: Simd>(xs: &mut [f32], f: impl Fn(S::V) -> S::V) {
    let mut chunks = xs.chunks_exact_mut(S::LANES);
    for chunk in &mut chunks {
        let p = chunk.as_mut_ptr();
        S::store(p, f(S::load(p)));
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let p = tail.as_mut_ptr();
        S::store_partial(p, f(S::load_partial(p, tail.len())), tail.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_exp<S: Simd>() {
        let xs: Vec<f32> = (-860..=887).map(|i| i as f32 * 0.1).collect();
        for chunk in xs.chunks(S::LANES) {
            let mut out = vec![0.0f32; chunk.len()];
            // SAFETY: the caller checked the instruction set; the slices hold `len` values.
            unsafe {
                let v = S::exp(S::load_partial(
                    chunk.as_ptr(),
                    chunk.len().min(S::LANES - 1),
                ));
                S::store_partial(out.as_mut_ptr(), v, chunk.len().min(S::LANES - 1));
            }
            for (x, y) in chunk.iter().zip(&out).take(S::LANES - 1) {
                let exact = f64::from(*x).exp();
                let rel = ((f64::from(*y) - exact) / exact).abs();
                assert!(
                    rel < 3e-7,
                    "exp({x}) = {y}, exact {exact}, relative error {rel}"
                );
            }
        }
    }

    #[test]
    fn vector_exp_is_within_two_ulp_on_every_instruction_set() {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                check_exp::<Avx512>();
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                check_exp::<Avx2>();
            }
        }
    }

    #[test]
    fn slices_of_every_length_match_the_scalar_definitions() {
        let activations = [
            Activation::Relu,
            Activation::Relu6,
            Activation::Silu,
            Activation::Sigmoid,
            Activation::LeakyRelu(0.1),
            Activation::Hardswish,
            Activation::Hardsigmoid,
            Activation::Gelu,
        ];
        for len in [1, 7, 8, 15, 16, 17, 33] {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 - 12.0) * 0.7).collect();
            for activation in activations {
                let mut vectorised = xs.clone();
                activate_slice(activation, &mut vectorised);
                for (x, y) in xs.iter().zip(&vectorised) {
                    let expected = activation.apply_scalar(*x);
                    assert!(
                        (y - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                        "{activation:?}({x}) = {y}, expected {expected}"
                    );
                }
            }
        }
    }
}
