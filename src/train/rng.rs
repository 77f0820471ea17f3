//! A small seeded random generator (SplitMix64) with independent streams, so that every
//! random choice of a job (the split, the head's initial weights, each epoch's order and
//! crops) depends only on the seed and what it is for. Resuming from a checkpoint therefore
//! needs no generator state, and the result never depends on a dependency's RNG algorithm.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, trivially seeded.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// Named streams, so two uses of the same seed never share numbers.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    /// The stratified train / validation split.
    Split = 1,
    /// The head's initial weights.
    Init = 2,
    /// The order of the training images in one epoch.
    Shuffle = 3,
    /// The random crops and flips of one epoch.
    Augment = 4,
}

impl Rng {
    /// The generator for `stream` of `seed`, further keyed by `keys` (an epoch, an image).
    pub fn for_stream(seed: u64, stream: Stream, keys: &[u64]) -> Self {
        let mut rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        let mut state = rng.next_u64() ^ (stream as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &k in keys {
            rng = Rng(state ^ k.wrapping_mul(0xd1b5_4a32_d192_ed03));
            state = rng.next_u64();
        }
        Rng(state)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in `0..n` (`n > 0`); the multiply-shift bias is below 2^-40 for any `n` here.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4)
            .map(|_| Rng::for_stream(7, Stream::Shuffle, &[3]).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let other_epoch = Rng::for_stream(7, Stream::Shuffle, &[4]).next_u64();
        let other_stream = Rng::for_stream(7, Stream::Augment, &[3]).next_u64();
        let other_seed = Rng::for_stream(8, Stream::Shuffle, &[3]).next_u64();
        assert!(![other_epoch, other_stream, other_seed].contains(&a[0]));
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_stays_in_range() {
        let mut rng = Rng::for_stream(1, Stream::Split, &[]);
        let mut items: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&rng.next_f64())));
    }
}
