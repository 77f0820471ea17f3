//! Letterboxing for detectors: scale the image to fit the network input keeping its aspect
//! ratio, centre it on a grey canvas, and map boxes found on the canvas back to the original
//! pixels. Follows ultralytics' `LetterBox(auto=False, scaleup=True, center=True)` and
//! `scale_boxes`: padding value 114, the same rounding of the resized size and of the padding,
//! bilinear resampling with OpenCV's `INTER_LINEAR` geometry (half-pixel centres, no
//! antialiasing when shrinking). Pixel values differ from OpenCV's fixed-point arithmetic by at
//! most one level (measured in the detection parity test).

use image::RgbImage;

/// ultralytics' grey, 114 of 255.
pub const PAD_VALUE: f32 = 114.0 / 255.0;

/// Where the image landed on the canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Original size `(height, width)`.
    pub original: (usize, usize),
    /// Size of the resized image on the canvas `(height, width)`.
    pub resized: (usize, usize),
    /// Pixels of padding left of the image.
    pub pad_left: usize,
    /// Pixels of padding above the image.
    pub pad_top: usize,
}

impl Placement {
    /// Computes the placement of an `original` image on a `canvas` `(height, width)`.
    pub fn new(original: (usize, usize), canvas: (usize, usize)) -> Self {
        let (h, w) = (original.0.max(1), original.1.max(1));
        let r = (canvas.0 as f64 / h as f64).min(canvas.1 as f64 / w as f64);
        // Python's round() is half-to-even; `round_ties_even` keeps the same sizes.
        let new_w = ((w as f64 * r).round_ties_even() as usize).clamp(1, canvas.1);
        let new_h = ((h as f64 * r).round_ties_even() as usize).clamp(1, canvas.0);
        let pad = |total: usize, used: usize| {
            let half = (total - used) as f64 / 2.0;
            (half - 0.1).round_ties_even().max(0.0) as usize
        };
        Placement {
            original: (h, w),
            resized: (new_h, new_w),
            pad_left: pad(canvas.1, new_w),
            pad_top: pad(canvas.0, new_h),
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

/// The letterboxed canvas of `canvas` `(height, width)`, padded with `pad`, as planar RGB in [0, 1] (`3 * h * w`
/// values, channel-major, ready for an `(1, 3, h, w)` tensor), and where the image went.
pub fn letterbox(image: &RgbImage, canvas: (usize, usize), pad: f32) -> (Vec<f32>, Placement) {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let placement = Placement::new((src_h, src_w), canvas);
    let (new_h, new_w) = placement.resized;
    let (ch, cw) = canvas;
    let mut out = vec![pad; 3 * ch * cw];
    if src_w == 0 || src_h == 0 {
        return (out, placement);
    }
    let xs = taps(src_w, new_w);
    let ys = taps(src_h, new_h);
    let src = image.as_raw();
    let row_len = src_w * 3;
    let mut row = vec![0.0f32; new_w * 3];
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (
            &src[y0 * row_len..][..row_len],
            &src[y1 * row_len..][..row_len],
        );
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = f32::from(r0[x0 * 3 + c]) * (1.0 - fx) + f32::from(r0[x1 * 3 + c]) * fx;
                let bottom =
                    f32::from(r1[x0 * 3 + c]) * (1.0 - fx) + f32::from(r1[x1 * 3 + c]) * fx;
                row[ox * 3 + c] = top * (1.0 - fy) + bottom * fy;
            }
        }
        let y = oy + placement.pad_top;
        for (ox, pixel) in row.chunks_exact(3).enumerate() {
            let x = ox + placement.pad_left;
            for (c, v) in pixel.iter().enumerate() {
                // The resized image is u8 in ultralytics: round like OpenCV does.
                out[(c * ch + y) * cw + x] = v.round().clamp(0.0, 255.0) / 255.0;
            }
        }
    }
    (out, placement)
}

/// OpenCV `INTER_LINEAR` source taps for each output index: `(lower, upper, weight of upper)`.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let lower = f.floor();
            let frac = (f - lower) as f32;
            if lower < 0.0 {
                (0, 0, 0.0)
            } else if lower as usize >= src - 1 {
                (src - 1, src - 1, 0.0)
            } else {
                (lower as usize, lower as usize + 1, frac)
            }
        })
        .collect()
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
