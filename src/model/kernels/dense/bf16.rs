//! The dense kernel in bf16 (opt-in, `model::precision`): products of bf16 pairs summed in f32
//! with AVX512-BF16's `vdpbf16ps`, which does 32 multiply-adds where `vfmadd231ps` does 16.
//!
//! The tile, its blocking and its epilogue are [`block`](super::block)'s; only the operands
//! change. Weights are packed once, at load, as pairs of consecutive reduction rows (one
//! 32-bit word holds rows `2j` and `2j + 1` of a column, see [`pack_pairs`]), so a weight panel
//! has the f32 panel's shape with half its rows. The input is rounded to bf16 while each tile's
//! windows are gathered (as the RGB stem's are in f32): a pixel's channels `2j, 2j + 1` become
//! one word, and the word is broadcast as the f32 kernel broadcasts a value. Rounding while
//! gathering reads the map once per tile, in cache, and costs a few instructions per 32 values
//! against the tile's `MR x NV` multiply-adds per word; a separate pass would write and read a
//! bf16 copy of every map once more. Layers whose input has an odd number of channels (a pair
//! would straddle two taps) keep the f32 kernel, and so do the 3x3 layers Winograd takes.

#[cfg(target_arch = "x86_64")]
use super::super::simd::{Avx512, Simd};
use super::packed::PackedWeights;
use super::Operands;

/// Whether this CPU runs the bf16 kernel: AVX-512 tiles and AVX512-BF16.
pub(crate) fn is_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::super::simd::Isa::detect() == super::super::simd::Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// bf16 rounding to nearest even, as `vcvtne2ps2bf16` rounds (NaN stays NaN).
fn to_bf16_bits(x: f32) -> u32 {
    u32::from(half::bf16::from_f32(x).to_bits())
}

/// The `k x n` row-major weights as `k / 2` rows of words, word `(j, col)` holding rows `2j`
/// (low half) and `2j + 1` (high half) of column `col` in bf16, packed as f32 weights are;
/// `None` when `k` is odd or this CPU has no bf16 kernel.
pub(crate) fn pack_pairs(k: usize, n: usize, weight: &[f32]) -> Option<PackedWeights> {
    if !is_supported() || !k.is_multiple_of(2) {
        return None;
    }
    assert_eq!(weight.len(), k * n, "weight is k x n");
    let mut words = vec![0.0f32; k / 2 * n];
    for (j, row) in words.chunks_exact_mut(n).enumerate() {
        let (even, odd) = (&weight[2 * j * n..][..n], &weight[(2 * j + 1) * n..][..n]);
        for ((word, &lo), &hi) in row.iter_mut().zip(even).zip(odd) {
            *word = f32::from_bits(to_bf16_bits(lo) | (to_bf16_bits(hi) << 16));
        }
    }
    PackedWeights::pack(k / 2, n, &words)
}

/// bf16 pairs in 32-bit lanes: the operands of [`block`](super::block) for the bf16 kernel.
#[derive(Clone, Copy)]
pub(super) struct Pairs;

#[cfg(target_arch = "x86_64")]
impl Operands<Avx512> for Pairs {
    const PAIRS: bool = true;

    #[inline(always)]
    unsafe fn madd(
        x: <Avx512 as Simd>::V,
        b: <Avx512 as Simd>::V,
        acc: <Avx512 as Simd>::V,
    ) -> <Avx512 as Simd>::V {
        use std::arch::x86_64::{__m512bh, _mm512_dpbf16_ps};
        // SAFETY: both are 64 bytes of plain lanes; the words hold bf16 pairs.
        let (x, b) = (
            std::mem::transmute::<std::arch::x86_64::__m512, __m512bh>(x),
            std::mem::transmute::<std::arch::x86_64::__m512, __m512bh>(b),
        );
        _mm512_dpbf16_ps(acc, x, b)
    }

    /// Rounds `len` (even) values at `src` to `len / 2` words at `dst`, 32 values per
    /// conversion; stores whole vectors, so up to 15 words past `dst + len / 2` are written.
    #[inline(always)]
    unsafe fn copy_over(src: *const f32, dst: *mut f32, len: usize) {
        use std::arch::x86_64::{__m512, __m512bh, _mm512_cvtne2ps_pbh};
        let mut i = 0;
        while i < len {
            let lo = Avx512::load_partial(src.add(i), (len - i).min(16));
            let hi =
                Avx512::load_partial(src.wrapping_add(i + 16), len.saturating_sub(i + 16).min(16));
            let words = std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo));
            Avx512::store(dst.add(i / 2), words);
            i += 32;
        }
    }

    #[inline(always)]
    unsafe fn zero_over(dst: *mut f32, len: usize) {
        let mut i = 0;
        while i < len / 2 {
            Avx512::store(dst.add(i), Avx512::zero());
            i += 16;
        }
    }
}
