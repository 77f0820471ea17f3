//! The input of a dense convolution seen as the rows of its product: a pointer per output pixel
//! and tap (indirect convolution), or, for windows over few channels, the windows gathered.

use super::super::conv::Resolved;
use super::super::simd::Simd;
use super::super::{ConvGeometry, Nhwc};
use super::Operands;

/// The input of a convolution seen as the rows of the product: for output pixel `m` and tap
/// `t` of the window, where its `c` channels start.
pub(crate) struct Rows<'a> {
    pub(super) input: &'a [f32],
    pub(super) shape: Nhwc,
    pub(super) geometry: ConvGeometry,
    pub(super) res: Resolved,
    /// `c` zeros: padding taps and pixels past the end read these.
    pub(super) zeros: Vec<f32>,
    /// A 1x1 convolution over the channel concatenation of these maps, read where they lie:
    /// "tap" `t` is part `t`, whose pixel `m` starts at `data[m * stride]` (`c` channels).
    pub(super) parts: Vec<Part<'a>>,
}

/// One map of a gathered 1x1 convolution's input (see [`Rows::gather`]).
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    /// Pixel 0's first channel.
    pub(crate) data: &'a [f32],
    /// Distance between consecutive pixels (at least the part's channels).
    pub(crate) stride: usize,
}

impl<'a> Rows<'a> {
    /// `input` must hold `shape.len()` values and `res` be `geometry` resolved for it.
    pub(crate) fn new(
        input: &'a [f32],
        shape: Nhwc,
        geometry: ConvGeometry,
        res: Resolved,
    ) -> Self {
        assert!(input.len() >= shape.len(), "input holds the whole shape");
        Rows {
            input,
            shape,
            geometry,
            res,
            zeros: vec![0.0; shape.c],
            parts: Vec::new(),
        }
    }

    /// The rows of a 1x1 convolution whose input is the concatenation of `parts` along the
    /// channels, without writing it: each part holds `shape.c` channels of `shape`'s pixels
    /// (the weight rows are part-major, as for the concatenated map).
    pub(crate) fn gather(parts: Vec<Part<'a>>, shape: Nhwc) -> Self {
        let pixels = shape.n * shape.h * shape.w;
        for part in &parts {
            assert!(part.stride >= shape.c, "parts' pixels do not overlap");
            assert!(
                pixels == 0 || part.data.len() >= (pixels - 1) * part.stride + shape.c,
                "part holds every pixel"
            );
        }
        let geometry = ConvGeometry::square(1, 1, 0);
        let res = geometry
            .resolve(shape.h, shape.w)
            .expect("a 1x1 window fits any map");
        Rows {
            input: &[],
            shape,
            geometry,
            res,
            zeros: vec![0.0; shape.c],
            parts,
        }
    }

    pub(super) fn taps(&self) -> usize {
        if self.parts.is_empty() {
            self.geometry.kernel.0 * self.geometry.kernel.1
        } else {
            self.parts.len()
        }
    }

    pub(super) fn count(&self) -> usize {
        self.shape.n * self.res.out_h * self.res.out_w
    }

    pub(super) fn is_pointwise(&self) -> bool {
        self.geometry.kernel == (1, 1)
            && self.geometry.stride == (1, 1)
            && self.res.pad_top == 0
            && self.res.pad_left == 0
            && self.res.out_h == self.shape.h
            && self.res.out_w == self.shape.w
    }

    /// Fills `out[t * mr + i]` with the start of tap `t` for output row `m0 + i`.
    pub(super) fn fill(&self, m0: usize, mr: usize, out: &mut [*const f32]) {
        let count = self.count();
        let c = self.shape.c;
        if !self.parts.is_empty() {
            for (part, slots) in self.parts.iter().zip(out.chunks_exact_mut(mr)) {
                for (i, p) in slots.iter_mut().enumerate() {
                    let m = m0 + i;
                    *p = if m < count {
                        part.data[m * part.stride..].as_ptr()
                    } else {
                        self.zeros.as_ptr()
                    };
                }
            }
            return;
        }
        if self.is_pointwise() {
            for (i, p) in out[..mr].iter_mut().enumerate() {
                let m = m0 + i;
                *p = if m < count {
                    self.input[m * c..].as_ptr()
                } else {
                    self.zeros.as_ptr()
                };
            }
            return;
        }
        let (kh, kw) = self.geometry.kernel;
        let (sh, sw) = self.geometry.stride;
        let (dh, dw) = self.geometry.dilation;
        let plane = self.res.out_h * self.res.out_w;
        for i in 0..mr {
            let m = m0 + i;
            let (n, rem) = (m / plane, m % plane);
            let (oy, ox) = (rem / self.res.out_w, rem % self.res.out_w);
            for ky in 0..kh {
                let iy = (oy * sh + ky * dh).checked_sub(self.res.pad_top);
                for kx in 0..kw {
                    let ix = (ox * sw + kx * dw).checked_sub(self.res.pad_left);
                    let slot = &mut out[(ky * kw + kx) * mr + i];
                    *slot = match (iy, ix) {
                        (Some(iy), Some(ix))
                            if m < count && iy < self.shape.h && ix < self.shape.w =>
                        {
                            self.input[((n * self.shape.h + iy) * self.shape.w + ix) * c..].as_ptr()
                        }
                        _ => self.zeros.as_ptr(),
                    };
                }
            }
        }
    }
}

impl Rows<'_> {
    /// Writes the windows of output rows `m0..m0 + slots.len()` to `dst`, each as one row of
    /// `taps * c` values (tap-major, as the weight rows; with bf16 [`Operands::PAIRS`], half as
    /// many words), and points `slots` at those rows. Rows past the end are zeros.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `slots.len() * taps * c + S::LANES` values; each
    /// window's copies spill up to a vector past its end, into the next window's space. With
    /// pairs, `c` is even.
    #[inline(always)]
    pub(super) unsafe fn gather_windows<S: Simd, P: Operands<S>>(
        &self,
        m0: usize,
        slots: &mut [*const f32],
        dst: *mut f32,
    ) {
        // Values to words: a pair of bf16 values is one word (`c` is even then).
        let words = |values: usize| if P::PAIRS { values / 2 } else { values };
        if !self.parts.is_empty() {
            self.gather_parts::<S, P>(m0, slots, dst, words(self.taps() * self.shape.c));
            return;
        }
        let (kh, kw) = self.geometry.kernel;
        let (sh, sw) = self.geometry.stride;
        let (dh, dw) = self.geometry.dilation;
        let Nhwc { h, w, c, .. } = self.shape;
        let (out_w, plane) = (self.res.out_w, self.res.out_h * self.res.out_w);
        let width = kh * kw * c;
        let count = self.count();
        let (mut n, rem) = (m0 / plane, m0 % plane);
        let (mut oy, mut ox) = (rem / out_w, rem % out_w);
        for (i, slot) in slots.iter_mut().enumerate() {
            let row = dst.add(i * words(width));
            *slot = row;
            if m0 + i >= count {
                P::zero_over(row, width);
                continue;
            }
            let x0 = (ox * sw) as isize - self.res.pad_left as isize;
            for ky in 0..kh {
                let out = row.add(words(ky * kw * c));
                let iy = (oy * sh + ky * dh).wrapping_sub(self.res.pad_top);
                if iy >= h {
                    P::zero_over(out, kw * c);
                    continue;
                }
                let line = self.input.as_ptr().add((n * h + iy) * w * c);
                if dw == 1 && x0 >= 0 && x0 as usize + kw <= w {
                    P::copy_over(line.add(x0 as usize * c), out, kw * c);
                    continue;
                }
                for kx in 0..kw {
                    let ix = x0 + (kx * dw) as isize;
                    if (0..w as isize).contains(&ix) {
                        P::copy_over(line.add(ix as usize * c), out.add(words(kx * c)), c);
                    } else {
                        P::zero_over(out.add(words(kx * c)), c);
                    }
                }
            }
            ox += 1;
            if ox == out_w {
                (ox, oy) = (0, oy + 1);
                if oy == self.res.out_h {
                    (oy, n) = (0, n + 1);
                }
            }
        }
    }
}

impl Rows<'_> {
    /// [`Self::gather_windows`] for the rows of a 1x1 convolution over concatenated parts:
    /// pixel `m`'s row is every part's `c` channels in turn, `row_words` words in all.
    #[inline(always)]
    unsafe fn gather_parts<S: Simd, P: Operands<S>>(
        &self,
        m0: usize,
        slots: &mut [*const f32],
        dst: *mut f32,
        row_words: usize,
    ) {
        let (c, count) = (self.shape.c, self.count());
        let part_words = row_words / self.parts.len();
        for (i, slot) in slots.iter_mut().enumerate() {
            let row = dst.add(i * row_words);
            *slot = row;
            let m = m0 + i;
            for (t, part) in self.parts.iter().enumerate() {
                let out = row.add(t * part_words);
                if m < count {
                    P::copy_over(part.data.as_ptr().add(m * part.stride), out, c);
                } else {
                    P::zero_over(out, c);
                }
            }
        }
    }
}
