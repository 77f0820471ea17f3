//! Letterboxing for detectors: scale the image to fit the network input keeping its aspect
//! ratio, centre it on a grey canvas, and map boxes found on the canvas back to the original
//! pixels. Follows ultralytics' `LetterBox(scaleup=True, center=True)` and `scale_boxes`, with
//! the canvas either the whole input (`auto=False`, [`Placement::new`]) or, as ultralytics'
//! predictor does, only the resized image padded up to the next stride multiple (`auto=True`,
//! [`Placement::minimal`]: 640x384 instead of 640x640 for a 16:9 photo, 40% less work).
//! Padding value 114, the same rounding of the resized size and of the padding, and the resize
//! itself is OpenCV's `INTER_LINEAR` on 8-bit pixels bit for bit (`cv_resize.rs`): the canvas
//! equals ultralytics' byte for byte (`tests/fixtures/pixels/letterbox.json`).

use image::RgbImage;

use super::cv_resize::resize_linear_rgb;

/// ultralytics' grey, 114 of 255.
pub const PAD_VALUE: f32 = 114.0 / 255.0;

/// Where the image landed on the canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Original size `(height, width)`.
    pub(crate) original: (usize, usize),
    /// Size of the resized image on the canvas `(height, width)`.
    pub(crate) resized: (usize, usize),
    /// Pixels of padding left of the image.
    pub(crate) pad_left: usize,
    /// Pixels of padding above the image.
    pub(crate) pad_top: usize,
    /// Size of the whole canvas `(height, width)`: the network's input.
    pub canvas: (usize, usize),
}

impl Placement {
    /// Computes the placement of an `original` image `(height, width)` on a `canvas`
    /// `(height, width)`.
    pub fn new(original: (usize, usize), canvas: (usize, usize)) -> Self {
        let original = (original.0.max(1), original.1.max(1));
        Self::centred(original, fit(original, canvas), canvas)
    }

    /// ultralytics' predictor placement (`LetterBox(auto=True)`): the image resized to fit
    /// `target` as in [`Self::new`], on a canvas padded only up to the next multiple of
    /// `stride` along each axis (never beyond `target`).
    pub fn minimal(original: (usize, usize), target: (usize, usize), stride: usize) -> Self {
        let original = (original.0.max(1), original.1.max(1));
        let resized = fit(original, target);
        let stride = stride.max(1);
        let grow = |total: usize, used: usize| used + (total - used) % stride;
        let canvas = (grow(target.0, resized.0), grow(target.1, resized.1));
        Self::centred(original, resized, canvas)
    }

    fn centred(original: (usize, usize), resized: (usize, usize), canvas: (usize, usize)) -> Self {
        let pad = |total: usize, used: usize| {
            let half = (total - used) as f64 / 2.0;
            (half - 0.1).round_ties_even().max(0.0) as usize
        };
        Placement {
            original,
            resized,
            pad_left: pad(canvas.1, resized.1),
            pad_top: pad(canvas.0, resized.0),
            canvas,
        }
    }

    /// Maps an `xyxy` box on the canvas to original pixels, clipped to the image.
    pub fn to_original(&self, [x1, y1, x2, y2]: [f32; 4]) -> [f32; 4] {
        let gain_x = self.resized.1 as f32 / self.original.1 as f32;
        let gain_y = self.resized.0 as f32 / self.original.0 as f32;
        let (w, h) = (self.original.1 as f32, self.original.0 as f32);
        let fx = |x: f32| ((x - self.pad_left as f32) / gain_x).clamp(0.0, w);
        let fy = |y: f32| ((y - self.pad_top as f32) / gain_y).clamp(0.0, h);
        [fx(x1), fy(y1), fx(x2), fy(y2)]
    }
}

/// The size of `original` `(height, width)` scaled to fit `target`, rounded as Python's
/// `round()` (half to even) so the sizes match ultralytics'.
fn fit((h, w): (usize, usize), target: (usize, usize)) -> (usize, usize) {
    let r = (target.0 as f64 / h as f64).min(target.1 as f64 / w as f64);
    let new_w = ((w as f64 * r).round_ties_even() as usize).clamp(1, target.1);
    let new_h = ((h as f64 * r).round_ties_even() as usize).clamp(1, target.0);
    (new_h, new_w)
}

/// The image drawn where `placement` puts it on its canvas, padded with `pad`, as planar RGB
/// in [0, 1] (`3 * h * w` values for a canvas `(h, w)`, channel-major, ready for an
/// `(1, 3, h, w)` tensor). The resized pixels are 8-bit, as in ultralytics, divided by 255.
pub fn draw(image: &RgbImage, placement: &Placement, pad: f32) -> Vec<f32> {
    canvas(&resize(image, placement), placement, pad)
}

/// The image resized to `placement.resized`, 8-bit interleaved RGB: what a detector keeps of a
/// request while it waits for the network (a 1920x1080 photo's 6.2 MB become 0.7 MB at 640).
pub fn resize(image: &RgbImage, placement: &Placement) -> Vec<u8> {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let (new_h, new_w) = placement.resized;
    if src_w == 0 || src_h == 0 {
        return Vec::new();
    }
    resize_linear_rgb(image.as_raw(), (src_w, src_h), (new_w, new_h))
}

/// [`resize`]'s pixels on the canvas, as [`draw`] gives them. An empty `resized` (an image
/// with no pixels) leaves the canvas all padding.
pub fn canvas(resized: &[u8], placement: &Placement, pad: f32) -> Vec<f32> {
    let (new_h, new_w) = placement.resized;
    let (ch, cw) = placement.canvas;
    let mut out = vec![pad; 3 * ch * cw];
    if resized.len() != 3 * new_h * new_w {
        return out;
    }
    let plane = ch * cw;
    for (y, row) in resized.chunks_exact(new_w * 3).enumerate() {
        let start = (y + placement.pad_top) * cw + placement.pad_left;
        for (c, channel) in out.chunks_exact_mut(plane).enumerate() {
            let dst = &mut channel[start..start + new_w];
            for (d, pixel) in dst.iter_mut().zip(row.chunks_exact(3)) {
                *d = f32::from(pixel[c]) / 255.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_matches_ultralytics_rounding() {
        // chelsea.jpg: 451x300 into 640x640 -> 640x426, 107 px above, 107 below.
        let p = Placement::new((300, 451), (640, 640));
        assert_eq!(p.resized, (426, 640));
        assert_eq!((p.pad_left, p.pad_top), (0, 107));
        // Box corners on the canvas map back to the image corners.
        let [x1, y1, x2, y2] = p.to_original([0.0, 107.0, 640.0, 533.0]);
        assert!((x1, y1) == (0.0, 0.0) && (x2 - 451.0).abs() < 1e-3 && (y2 - 300.0).abs() < 1e-3);
        // Outside the image: clipped.
        assert_eq!(
            p.to_original([-50.0, 0.0, 900.0, 700.0]),
            [0.0, 0.0, 451.0, 300.0]
        );
    }

    #[test]
    fn minimal_canvas_matches_ultralytics_auto_letterbox() {
        // 1920x1080 into 640: resized 640x360, canvas 640x384 (280 % 32 = 24 rows of padding,
        // 12 above), as ultralytics' predictor feeds a 16:9 photo.
        let p = Placement::minimal((1080, 1920), (640, 640), 32);
        assert_eq!((p.resized, p.canvas), ((360, 640), (384, 640)));
        assert_eq!((p.pad_left, p.pad_top), (0, 12));
        // chelsea.jpg: 640x426 on 640x448 (214 % 32 = 22), 11 above.
        let p = Placement::minimal((300, 451), (640, 640), 32);
        assert_eq!(
            (p.resized, p.canvas, p.pad_top),
            ((426, 640), (448, 640), 11)
        );
        // A portrait image pads its width; a square one needs no padding at all.
        let p = Placement::minimal((640, 480), (640, 640), 32);
        assert_eq!((p.canvas, p.pad_left), ((640, 480), 0));
        assert_eq!(
            Placement::minimal((50, 50), (640, 640), 32).canvas,
            (640, 640)
        );
        // Boxes map back the same way as on the full canvas.
        let full = Placement::new((1080, 1920), (640, 640));
        let [_, y1, _, y2] = p_box(&Placement::minimal((1080, 1920), (640, 640), 32), 12.0);
        let [_, fy1, _, fy2] = p_box(&full, full.pad_top as f32);
        assert!((y1 - fy1).abs() < 1e-3 && (y2 - fy2).abs() < 1e-3);
    }

    /// The image letterboxed onto the whole `canvas` `(height, width)` ([`Placement::new`]),
    /// padded with `pad`: see [`draw`].
    fn letterbox(image: &RgbImage, canvas: (usize, usize), pad: f32) -> (Vec<f32>, Placement) {
        let placement = Placement::new((image.height() as usize, image.width() as usize), canvas);
        (draw(image, &placement, pad), placement)
    }

    /// A box over the resized image's rows, starting `top` pixels down the canvas.
    fn p_box(p: &Placement, top: f32) -> [f32; 4] {
        p.to_original([10.0, top + 20.0, 200.0, top + 300.0])
    }

    #[test]
    fn a_uniform_image_keeps_its_colour_and_the_padding_is_grey() {
        let img = RgbImage::from_pixel(40, 20, image::Rgb([10, 200, 30]));
        let (data, p) = letterbox(&img, (64, 64), PAD_VALUE);
        assert_eq!((p.resized, p.pad_top), ((32, 64), 16));
        let at = |c: usize, y: usize, x: usize| (data[(c * 64 + y) * 64 + x] * 255.0).round();
        assert_eq!(
            (at(0, 30, 5), at(1, 30, 5), at(2, 30, 5)),
            (10.0, 200.0, 30.0)
        );
        assert_eq!(at(1, 3, 5), 114.0);
        assert_eq!(at(1, 60, 5), 114.0);
    }
}
