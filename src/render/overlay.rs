//! Masks drawn over or beside the photo: the served overlay (every non-background pixel takes
//! half its class's VOC colour, background pixels stay as they were: the building service's
//! overlay), and the training report's side-by-side picture (photo | ground truth |
//! prediction, classes in the VOC palette).

use image::{imageops, Rgb, RgbImage};

use super::encode::RenderError;
use super::palette::voc_palette;
use crate::model::output::LabelMap;

/// Weight of the class colour in a blended pixel.
const MASK_OPACITY: f32 = 0.5;

/// `image` with `map` blended in. A binary model's foreground is drawn in red.
pub(crate) fn overlay_mask(
    image: &RgbImage,
    map: &LabelMap,
    is_binary: bool,
) -> Result<RgbImage, RenderError> {
    if (image.width(), image.height()) != (map.width, map.height) {
        return Err(RenderError {
            format: "overlay",
            reason: format!(
                "the label map is {}x{} but the image is {}x{}",
                map.width,
                map.height,
                image.width(),
                image.height()
            ),
        });
    }
    let palette = voc_palette();
    let mut out = image.clone();
    for (pixel, &class) in out.pixels_mut().zip(&map.classes) {
        if class == 0 {
            continue;
        }
        let color = if is_binary {
            [255, 0, 0]
        } else {
            palette[usize::from(class)]
        };
        for (value, target) in pixel.0.iter_mut().zip(color) {
            let blended =
                f32::from(*value) * (1.0 - MASK_OPACITY) + f32::from(target) * MASK_OPACITY;
            *value = blended.round() as u8;
        }
    }
    Ok(out)
}

/// `image` resized to `size` `(height, width)` | `truth` | `predicted`, side by side: the class
/// maps (`height * width` class indices each) in the VOC palette, `ignored` pixels in VOC's
/// near-white "void" colour.
pub(crate) fn training_overlay(
    image: &RgbImage,
    (truth, predicted): (&[u8], &[u8]),
    size: (usize, usize),
    ignored: u8,
) -> RgbImage {
    let (h, w) = size;
    let colour = |classes: &[u8]| {
        let palette = voc_palette();
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let c = classes[y as usize * w + x as usize];
            Rgb(palette[usize::from(if c == ignored { 255 } else { c })])
        })
    };
    let resized = imageops::resize(image, w as u32, h as u32, imageops::FilterType::Triangle);
    let mut canvas = RgbImage::new(3 * w as u32, h as u32);
    imageops::replace(&mut canvas, &resized, 0, 0);
    imageops::replace(&mut canvas, &colour(truth), w as i64, 0);
    imageops::replace(&mut canvas, &colour(predicted), 2 * w as i64, 0);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blends_foreground_and_leaves_background_alone() {
        let image = RgbImage::from_pixel(2, 1, image::Rgb([100, 100, 100]));
        let map = LabelMap {
            width: 2,
            height: 1,
            classes: vec![0, 1],
        };
        let out = overlay_mask(&image, &map, true).expect("same size");
        assert_eq!(out.get_pixel(0, 0).0, [100, 100, 100]);
        assert_eq!(out.get_pixel(1, 0).0, [178, 50, 50]);
        let wrong = LabelMap { width: 1, ..map };
        assert!(overlay_mask(&image, &wrong, true).is_err());
    }
}
