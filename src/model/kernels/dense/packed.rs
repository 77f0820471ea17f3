//! Weights packed once, at load, into the column panels the dense kernels read contiguously.

use super::super::simd::Isa;
use super::super::winograd::Filters;
use std::sync::OnceLock;

/// 64 bytes of weights: packed panels start on a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(super) struct Line([f32; 16]);

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("shape", &self.shape)
            .field("bf16", &self.bf16.is_some())
            .finish_non_exhaustive()
    }
}

/// A `k x n` weight matrix in column panels of `nr = nv * lanes` values, each panel `k`
/// contiguous rows of `nr`, zero past column `n`.
pub(crate) struct PackedWeights {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) shape: Shape,
    pub(super) lines: Vec<Line>,
    /// How a 3x3 layer runs [`winograd`](super::winograd), decided on its first Winograd
    /// call: its transformed filters are 4x the size of these, and only layers with large
    /// maps use them.
    winograd: OnceLock<Filters>,
    /// The same matrix as bf16 pairs of rows ([`super::bf16::pack_pairs`]) when the model
    /// was loaded in bf16: the kernel multiplies these and keeps the f32 copy for one-row
    /// products and Winograd.
    pub(super) bf16: Option<Box<PackedWeights>>,
}

/// Register tile of one kernel instantiation: `mr` output pixels x `nv` vectors of channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) isa: Isa,
    pub(super) lanes: usize,
    pub(super) nv: usize,
    pub(super) mr: usize,
}

impl Shape {
    /// The tile for `n` output channels: the panel width that wastes the fewest padded
    /// columns, preferring wider panels (fewer loads per multiply-add) on a tie.
    pub(super) fn choose(isa: Isa, n: usize) -> Shape {
        let (lanes, widths): (usize, &[(usize, usize)]) = match isa {
            // (nv, mr): 24-28 accumulators of 32 registers; 16 lanes.
            Isa::Avx512 => (16, &[(4, 6), (3, 8), (2, 8), (1, 8)]),
            // 12 accumulators of 16 registers, one for the broadcast; 8 lanes.
            _ => (8, &[(3, 4), (2, 6), (1, 8)]),
        };
        let waste = |nv: usize| n.div_ceil(nv * lanes) * nv * lanes - n;
        let &(nv, mr) = widths
            .iter()
            .min_by_key(|(nv, _)| waste(*nv))
            .expect("at least one width");
        Shape { isa, lanes, nv, mr }
    }

    pub(super) fn nr(&self) -> usize {
        self.nv * self.lanes
    }
}

impl PackedWeights {
    /// Packs a row-major `k x n` matrix for this CPU, or `None` where no vector kernel runs
    /// (the caller keeps its portable path).
    pub(crate) fn pack(k: usize, n: usize, weight: &[f32]) -> Option<Self> {
        let mut packed = Self::zeroed(k, n)?;
        assert_eq!(weight.len(), k * n, "weight is k x n");
        let nr = packed.shape.nr();
        let flat: &mut [f32] = bytemuck_lines(&mut packed.lines);
        for p in 0..n.div_ceil(nr) {
            let cols = (n - p * nr).min(nr);
            for row in 0..k {
                let dst = &mut flat[(p * k + row) * nr..][..cols];
                dst.copy_from_slice(&weight[row * n + p * nr..][..cols]);
            }
        }
        Some(packed)
    }

    /// A `k x n` matrix of zeros packed for this CPU, to be filled through [`Self::as_mut_ptr`];
    /// `None` as [`Self::pack`].
    pub(crate) fn zeroed(k: usize, n: usize) -> Option<Self> {
        let isa = Isa::detect();
        if isa == Isa::Portable || k == 0 || n == 0 {
            return None;
        }
        let shape = Shape::choose(isa, n);
        let nr = shape.nr();
        let lines = vec![Line::default(); (n.div_ceil(nr) * k * nr).div_ceil(16)];
        Some(PackedWeights {
            k,
            n,
            shape,
            lines,
            winograd: OnceLock::new(),
            bf16: None,
        })
    }

    /// Columns per panel: from [`Self::offset`]`(row, col)` on, the values of row `row` run
    /// contiguously to the panel's end (zeros past column `n`).
    pub(crate) fn panel_width(&self) -> usize {
        self.shape.nr()
    }

    /// Where value `(row, col)` lies, from [`Self::as_ptr`]. Row `row + r` of the same
    /// column lies `r * panel_width()` further.
    pub(crate) fn offset(&self, row: usize, col: usize) -> usize {
        assert!(
            row < self.k && col < self.n,
            "({row}, {col}) in a {}x{}",
            self.k,
            self.n
        );
        let nr = self.shape.nr();
        ((col / nr) * self.k + row) * nr + col % nr
    }

    /// The packed values (panels, each `k` rows of [`Self::panel_width`]).
    pub(crate) fn as_ptr(&self) -> *const f32 {
        bytemuck_lines_ref(&self.lines).as_ptr()
    }

    /// The packed values, to fill a [`Self::zeroed`] matrix.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        bytemuck_lines(&mut self.lines).as_mut_ptr()
    }

    /// A copy whose reduction row `r` is multiplied by `factors[r % factors.len()]`: with one
    /// factor per input channel, the weights of `conv(x * gate)` (row `r` of every tap reads
    /// channel `r % c_in`). Cheaper than gating the map when `k x n` is smaller than it.
    pub(crate) fn scale_rows(&self, factors: &[f32]) -> PackedWeights {
        assert!(
            !factors.is_empty() && self.k.is_multiple_of(factors.len()),
            "one factor per input channel"
        );
        let nr = self.shape.nr();
        let mut lines = self.lines.clone();
        let flat = bytemuck_lines(&mut lines);
        for p in 0..self.panels() {
            let panel = &mut flat[p * self.k * nr..][..self.k * nr];
            for (row, values) in panel.chunks_exact_mut(nr).enumerate() {
                let factor = factors[row % factors.len()];
                values.iter_mut().for_each(|v| *v *= factor);
            }
        }
        PackedWeights {
            k: self.k,
            n: self.n,
            shape: self.shape,
            lines,
            winograd: OnceLock::new(),
            bf16: None,
        }
    }

    /// Adds the bf16 copy of `weight` (the row-major matrix these were packed from, a window
    /// over `c_in` channels), for products with more than one output row; unchanged where
    /// `c_in` is odd (a pair of rows would straddle two taps, and the kernel would never read
    /// the copy) or this CPU has no bf16 kernel.
    pub(crate) fn with_bf16(mut self, weight: &[f32], c_in: usize) -> Self {
        if c_in.is_multiple_of(2) {
            self.bf16 = super::bf16::pack_pairs(self.k, self.n, weight).map(Box::new);
        }
        self
    }

    /// Whether the products run in bf16 ([`Self::with_bf16`]).
    #[cfg(test)]
    pub(crate) fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// The instruction set these weights were packed for.
    pub(crate) fn isa(&self) -> Isa {
        self.shape.isa
    }

    /// These weights as the 3x3 filters over `c_in` channels they are, for Winograd: kept in
    /// its transform domain or made per call (decided on the first call, see
    /// [`Filters::new`]); `None` when they are not a 3x3 layer's over `c_in` channels.
    pub(crate) fn winograd(&self, c_in: usize) -> Option<&Filters> {
        if self.k != 9 * c_in {
            return None;
        }
        Some(self.winograd.get_or_init(|| Filters::new(self, c_in)))
    }

    /// Reduction length and output channels: the matrix is `k x n`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The row-major `k x n` matrix these were packed from.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let nr = self.shape.nr();
        let flat = bytemuck_lines_ref(&self.lines);
        let mut weight = vec![0.0; self.k * self.n];
        for (row, values) in weight.chunks_exact_mut(self.n).enumerate() {
            for (col, value) in values.iter_mut().enumerate() {
                *value = flat[((col / nr) * self.k + row) * nr + col % nr];
            }
        }
        weight
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(self.shape.nr())
    }

    /// Start of panel `p` at reduction row `k0`.
    pub(super) fn panel(&self, p: usize, k0: usize) -> *const f32 {
        let flat: &[f32] = bytemuck_lines_ref(&self.lines);
        flat[(p * self.k + k0) * self.shape.nr()..].as_ptr()
    }
}

fn bytemuck_lines(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: `Line` is `repr(C)` of 16 f32 with no padding (64 bytes, align 64).
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), lines.len() * 16) }
}

fn bytemuck_lines_ref(lines: &[Line]) -> &[f32] {
    // SAFETY: as in `bytemuck_lines`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * 16) }
}
