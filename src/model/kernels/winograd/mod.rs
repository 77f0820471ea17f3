//! Winograd F(4x4, 3x3): 3x3 stride-1 dense convolutions (dilated ones included) with 36
//! multiplies per 16 outputs and channel pair instead of 144.
//!
//! A 6x6 patch `d` of the input (4x4 outputs plus the window's reach) and the 3x3 filter `g`
//! are taken to the transform domain (`V = Bᵀ d B` per input channel, `U = G g Gᵀ` per channel
//! pair), where the convolution is 36 independent matrix products `M[ξ] = V[ξ] U[ξ]` over the
//! channels, and `Y = Aᵀ M A` brings each 6x6 back to 4x4 outputs (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016; the interpolation points 0, ±1, ±2).
//! The 36 products run on the packed dense kernel ([`super::dense`]), so they get its register
//! tiling and cache blocking.
//!
//! A dilated 3x3 (DeepLab's atrous layers) is the same algorithm on each sub-lattice of
//! outputs that share a residue modulo the dilation: a tile's 4x4 outputs and its 6x6 patch
//! are `dilation` pixels apart.
//!
//! `U` is 4x the layer's weights. Two ways to hold it:
//! - [`cached`]: built once per layer on first use and kept, for layers whose `U` is small
//!   (few channels, large maps: ResNet's first stages). Chunks of tiles go through all three
//!   steps on one thread while their transformed data stays in its cache.
//! - [`streamed`]: `U` made per call, a block of output channels at a time on the thread that
//!   multiplies with it, from the packed 3x3 weights the direct kernel holds anyway; the
//!   transformed input is shared by the blocks. Slower than reading kept filters, so only
//!   layers past a per-process budget of kept filters take it ([`Filters::new`]): the last,
//!   widest layers of a network whose filters would not fit (DeepLabV3+ ResNet-34's layer4).
//!
//! ONNX Runtime's CPU kernels (MLAS) have no Winograd path for f32.
//!
//! Rounding: the transforms add a few ulp per value (the largest constants are 5 and 8); the
//! unit tests bound the difference from the direct convolution.

#![allow(unsafe_code, unsafe_op_in_unsafe_fn)]

mod cached;
mod streamed;
#[cfg(test)]
mod tests;
mod transform;

pub(crate) use cached::{run, WinogradWeights};
pub(crate) use streamed::run as run_streamed;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::conv::Resolved;
use super::dense::{PackedWeights, Target};
use super::{team, Nhwc};

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

/// The tiles of one layer call.
struct Plan<'a> {
    input: &'a [f32],
    shape: Nhwc,
    res: Resolved,
    ys: Axis,
    xs: Axis,
    c_out: usize,
    /// `c_in` zeros: patch pixels outside the image read these.
    zeros: Vec<f32>,
}

impl<'a> Plan<'a> {
    /// The tiles writing `target` (its bias gives the output channels), after checking that
    /// the input and the residual hold every value the layer reads.
    fn new(
        input: &'a [f32],
        shape: Nhwc,
        res: Resolved,
        dilation: (usize, usize),
        target: &Target<'_>,
    ) -> Self {
        assert!(input.len() >= shape.len(), "input holds the whole shape");
        let c_out = target.bias.len();
        if let Some(residual) = target.residual {
            let rows = shape.n * res.out_h * res.out_w;
            assert!(residual.len() >= rows * c_out, "residual too short");
        }
        Plan {
            input,
            shape,
            res,
            ys: Axis::new(res.out_h, dilation.0),
            xs: Axis::new(res.out_w, dilation.1),
            c_out,
            zeros: vec![0.0; shape.c],
        }
    }

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

/// Where transform-domain values of a run of tiles lie: channel `c` of tile `t` at point `ξ`
/// is at `ξ * point_stride + (t - first_tile) * width + c`.
#[derive(Clone, Copy)]
struct Layout {
    point_stride: usize,
    first_tile: usize,
    width: usize,
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

/// How a 3x3 layer runs Winograd, decided on its first Winograd call.
pub(crate) enum Filters {
    /// Its transformed filters, kept.
    Kept(Box<WinogradWeights>),
    /// Made per call from the packed 3x3 weights ([`run_streamed`]).
    Streamed,
}

impl Filters {
    /// Keeps the layer's transformed filters while the process's kept filters stay within
    /// [`KEPT_BYTES`] (in the order layers first take this path: a network's first layers
    /// keep theirs, its last and widest stream), every layer's with `WICK_WINOGRAD=cached`,
    /// none with `WICK_WINOGRAD=streamed`.
    pub(crate) fn new(filters: &PackedWeights, c_in: usize) -> Self {
        let (_, c_out) = filters.dims();
        let bytes = POINTS * c_in * c_out * size_of::<f32>();
        let kept = match mode() {
            Mode::Cached => KEPT.claim(bytes, usize::MAX),
            Mode::Streamed => false,
            Mode::Auto | Mode::Off => KEPT.claim(bytes, KEPT_BYTES),
        };
        if !kept {
            return Filters::Streamed;
        }
        match WinogradWeights::new(&filters.unpack(), c_in, c_out) {
            Some(weights) => Filters::Kept(Box::new(weights)),
            None => {
                KEPT.release(bytes);
                Filters::Streamed
            }
        }
    }
}

/// A dropped model's kept filters go back to the budget (a test process or `wick bench`
/// loads many models; each is decided as if it were alone).
impl Drop for Filters {
    fn drop(&mut self) {
        if let Filters::Kept(weights) = self {
            KEPT.release(weights.bytes());
        }
    }
}

/// Transformed filters a process keeps. Kept filters are read from memory on every call;
/// made per call they cost 17-22 ns per channel pair (most of it writing 36 values per pair
/// out to L3), and at the 64 tiles of a 512-channel layer at 512x512 that is slower: in one
/// sitting (19:08 UTC) DeepLabV3+ ResNet-50 took 0.97x ONNX Runtime's time with every filter
/// kept and 1.15x with its 512-channel layers' made per call, ResNet-34 0.67x and 0.80x. But
/// kept, ResNet-34's are 345 MB (its server's peak RSS 1.27x ONNX Runtime's). 176 MB keeps
/// all of DeepLabV3+ ResNet-50's at 512 (169 MB), all but one layer of DeepLabV3 ResNet-50's,
/// and ResNet-34's up to its layer4's first convolution (143 MB; the five after it stream).
const KEPT_BYTES: usize = 176 << 20;

static KEPT: Budget = Budget(AtomicUsize::new(0));

/// Bytes handed out against a limit.
struct Budget(AtomicUsize);

impl Budget {
    /// Takes `bytes` if the total stays within `limit`; a refusal takes nothing.
    fn claim(&self, bytes: usize, limit: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` claimed before.
    fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Below this many channels in or out, the transforms cost about what the products save
/// (YOLOv8n's 16-channel layers at 160x160: 1.1x the direct kernel's time; 32 channels at
/// 80x80: 0.9x).
const MIN_CHANNELS: usize = 32;

/// `WICK_WINOGRAD`: `0` turns the path off, `cached` keeps every layer's transformed filters
/// and `streamed` none (to time the direct kernel, or either way of holding filters, in the
/// same build).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Cached,
    Streamed,
    Auto,
}

fn mode() -> Mode {
    static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("WICK_WINOGRAD").as_deref() {
        Ok("0") => Mode::Off,
        Ok("cached") => Mode::Cached,
        Ok("streamed") => Mode::Streamed,
        _ => Mode::Auto,
    })
}

/// Whether 3x3 layers may take this path at all (see [`Mode`]).
pub(crate) fn is_enabled() -> bool {
    mode() != Mode::Off
}

/// Below this many tiles per thread, reading the transformed weights costs more than the
/// multiplies saved. Timed with each layer's weights cold (six layers in turn), 2 threads: a
/// 7x7 map of 512 channels takes 1.1-1.5x the direct kernel's time at batch 1 (4 tiles),
/// 0.9-1.0x at batch 2 and 0.8x at batch 4 (16 tiles); 14x14 of 256 at batch 1 (16) 0.5x.
const MIN_TILES_PER_THREAD: usize = 8;
