//! wick's one canvas: an RGB picture with the few drawing operations its pictures need (pixels
//! and filled rectangles clipped to the picture, 2-pixel lines, text in the font of `font.rs`
//! at an integer scale). Drawn boxes and training curves both draw through it, so neither
//! needs a drawing or font dependency.

use image::{Rgb, RgbImage};

use super::font::{is_ink, is_ink_as_written, ADVANCE, GLYPH_HEIGHT, GLYPH_WIDTH};

/// How letters are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lettering {
    /// Every letter a capital (box labels, legible on any photo).
    Capitals,
    /// Lower-case letters in lower case where the font has their shape (plots).
    AsWritten,
}

/// Text settings: each font pixel is a `scale x scale` square of `color`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextStyle {
    /// Picture pixels per font pixel.
    pub(crate) scale: u32,
    /// The ink.
    pub(crate) color: Rgb<u8>,
    /// Capitals or as written.
    pub(crate) lettering: Lettering,
}

/// A picture being drawn. Coordinates are signed: whatever falls outside is clipped.
pub(crate) struct Canvas(RgbImage);

impl Canvas {
    /// Draws on `image`.
    pub(crate) fn new(image: RgbImage) -> Self {
        Canvas(image)
    }

    /// The finished picture.
    pub(crate) fn into_image(self) -> RgbImage {
        self.0
    }

    /// Width in pixels.
    pub(crate) fn width(&self) -> u32 {
        self.0.width()
    }

    /// One pixel, if it is inside the picture.
    pub(crate) fn put(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        let (width, height) = self.0.dimensions();
        if (0..i64::from(width)).contains(&x) && (0..i64::from(height)).contains(&y) {
            self.0.put_pixel(x as u32, y as u32, color);
        }
    }

    /// A filled `w x h` rectangle with its top-left corner at `(x, y)`.
    pub(crate) fn rect(&mut self, (x, y): (i64, i64), (w, h): (i64, i64), color: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, color);
            }
        }
    }

    /// A 2-pixel-wide line (Bresenham).
    pub(crate) fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect((x, y), (2, 2), color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// `text` with its top-left corner at `(x, y)`.
    pub(crate) fn text(&mut self, (x, y): (i64, i64), text: &str, style: &TextStyle) {
        let ink = match style.lettering {
            Lettering::Capitals => is_ink,
            Lettering::AsWritten => is_ink_as_written,
        };
        let scale = i64::from(style.scale);
        for (i, c) in text.chars().enumerate() {
            let left = x + i as i64 * i64::from(ADVANCE) * scale;
            for row in 0..GLYPH_HEIGHT {
                for col in 0..GLYPH_WIDTH {
                    if ink(c, col, row) {
                        let at = (left + i64::from(col) * scale, y + i64::from(row) * scale);
                        self.rect(at, (scale, scale), style.color);
                    }
                }
            }
        }
    }

    /// The width of `text` at `scale`, without the spacing after its last character.
    pub(crate) fn text_width(text: &str, scale: u32) -> i64 {
        (text.chars().count() as i64 * i64::from(ADVANCE) - 1) * i64::from(scale)
    }
}
