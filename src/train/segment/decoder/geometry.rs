//! The geometry the training-side 3x3 convolutions share (`depthwise.rs`, `im2col.rs`): a map's
//! size and dilation, where each tap reads, and which pixels fall inside the map.

use candle_core::Layout;

/// The map size and dilation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) dilation: usize,
}

impl Geometry {
    /// `(row offset, column offset)` of tap `t` (`ky * 3 + kx`).
    pub(super) fn offset(&self, t: usize) -> (isize, isize) {
        let d = self.dilation as isize;
        ((t / 3) as isize * d - d, (t % 3) as isize * d - d)
    }

    /// Output columns `x` whose input column `x + dx` is inside the map.
    pub(super) fn columns(&self, dx: isize) -> std::ops::Range<usize> {
        let lo = (-dx).max(0) as usize;
        let hi = (self.w as isize - dx.max(0)).max(0) as usize;
        lo.min(hi)..hi
    }

    /// Checks a `(b, h * w, c)` layout and returns `(b, c)`.
    pub(super) fn batch(&self, layout: &Layout) -> candle_core::Result<(usize, usize)> {
        let (b, p, c) = layout.shape().dims3()?;
        if p != self.h * self.w {
            candle_core::bail!("depthwise: {p} pixels for a {}x{} map", self.h, self.w)
        }
        Ok((b, c))
    }

    /// The pixel at `(y + dy, x + dx)` of image `image`, if inside the map.
    pub(super) fn pixel(
        &self,
        image: usize,
        (y, x): (usize, usize),
        (dy, dx): (isize, isize),
    ) -> Option<usize> {
        let (iy, ix) = (y as isize + dy, x as isize + dx);
        (iy >= 0 && ix >= 0 && iy < self.h as isize && ix < self.w as isize)
            .then(|| (image * self.h + iy as usize) * self.w + ix as usize)
    }
}
