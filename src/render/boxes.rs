//! Detections drawn on the photo: a rectangle per box in its class's colour and, above it (or
//! inside when there is no room), a filled tag with the label and the score.

use image::{Rgb, RgbImage};

use super::canvas::{Canvas, Lettering, TextStyle};
use super::font::{ADVANCE, GLYPH_HEIGHT};
use super::palette::class_color;
use crate::model::output::Detection;

/// `image` with every detection drawn on it. Coordinates outside the image are clipped.
pub(crate) fn draw_detections(image: &RgbImage, detections: &[Detection]) -> RgbImage {
    let (width, height) = image.dimensions();
    let mut canvas = Canvas::new(image.clone());
    if width == 0 || height == 0 {
        return canvas.into_image();
    }
    // Lines and text grow with the photo so they stay visible on a 4K image.
    let line = (width.max(height) / 400).clamp(1, 8);
    let scale = (width.max(height) / 500).clamp(1, 6);
    for detection in detections {
        let color = Rgb(class_color(detection.class_id));
        let clamp_x = |v: f32| (v.max(0.0) as u32).min(width - 1);
        let clamp_y = |v: f32| (v.max(0.0) as u32).min(height - 1);
        let (x0, y0) = (clamp_x(detection.xmin), clamp_y(detection.ymin));
        let (x1, y1) = (clamp_x(detection.xmax), clamp_y(detection.ymax));
        if x1 < x0 || y1 < y0 {
            continue;
        }
        for t in 0..line {
            draw_rect_outline(
                &mut canvas,
                (x0 + t, y0 + t),
                (x1.saturating_sub(t), y1.saturating_sub(t)),
                color,
            );
        }
        let text = format!("{} {:.2}", detection.label, detection.score);
        draw_tag(&mut canvas, &text, (x0, y0), scale, color);
    }
    canvas.into_image()
}

/// The one-pixel outline of the box from `(x0, y0)` to `(x1, y1)`, both corners included.
fn draw_rect_outline(
    canvas: &mut Canvas,
    (x0, y0): (u32, u32),
    (x1, y1): (u32, u32),
    color: Rgb<u8>,
) {
    if x1 < x0 || y1 < y0 {
        return;
    }
    let (x0, y0, x1, y1) = (i64::from(x0), i64::from(y0), i64::from(x1), i64::from(y1));
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    canvas.rect((x0, y0), (w, 1), color);
    canvas.rect((x0, y1), (w, 1), color);
    canvas.rect((x0, y0), (1, h), color);
    canvas.rect((x1, y0), (1, h), color);
}

/// A filled tag with `text` in white (black on light colours), sitting on the box's top edge
/// at `(x, box_top)`.
fn draw_tag(canvas: &mut Canvas, text: &str, (x, box_top): (u32, u32), scale: u32, color: Rgb<u8>) {
    let width = canvas.width();
    let padding = scale;
    let tag_height = GLYPH_HEIGHT * scale + 2 * padding;
    let tag_width = (text.chars().count() as u32 * ADVANCE * scale + 2 * padding).min(width);
    let top = if box_top >= tag_height {
        box_top - tag_height
    } else {
        box_top
    };
    let left = x.min(width.saturating_sub(tag_width));
    let luminance =
        0.299 * f32::from(color[0]) + 0.587 * f32::from(color[1]) + 0.114 * f32::from(color[2]);
    let ink = if luminance > 150.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    canvas.rect(
        (i64::from(left), i64::from(top)),
        (i64::from(tag_width), i64::from(tag_height)),
        color,
    );
    canvas.text(
        (i64::from(left + padding), i64::from(top + padding)),
        text,
        &TextStyle {
            scale,
            color: ink,
            lettering: Lettering::Capitals,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(class_id: usize, xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> Detection {
        Detection {
            class_id,
            label: "cat".into(),
            score: 0.87,
            xmin,
            ymin,
            xmax,
            ymax,
        }
    }

    #[test]
    fn boxes_are_outlined_in_their_class_colour_with_a_tag() {
        let image = RgbImage::from_pixel(200, 120, Rgb([10, 10, 10]));
        let out = draw_detections(&image, &[detection(8, 40.0, 50.0, 150.0, 110.0)]);
        let color = Rgb(class_color(8));
        assert_eq!(*out.get_pixel(40, 80), color, "left edge");
        assert_eq!(*out.get_pixel(150, 80), color, "right edge");
        assert_eq!(*out.get_pixel(100, 110), color, "bottom edge");
        assert_eq!(
            *out.get_pixel(100, 80),
            Rgb([10, 10, 10]),
            "inside untouched"
        );
        // The tag sits above the box and holds white ink.
        let tag_has_ink =
            (41..120).any(|x| (38..50).any(|y| *out.get_pixel(x, y) == Rgb([255, 255, 255])));
        assert!(tag_has_ink);
    }

    #[test]
    fn boxes_outside_or_at_the_border_never_panic() {
        let image = RgbImage::new(30, 20);
        let out = draw_detections(
            &image,
            &[
                detection(0, -10.0, -10.0, 500.0, 500.0),
                detection(1, 29.0, 19.0, 29.0, 19.0),
                detection(2, 25.0, 5.0, 3.0, 2.0),
            ],
        );
        assert_eq!(out.dimensions(), (30, 20));
        // Row 9 is between the two label tags: the first box's left edge shows.
        assert_eq!(*out.get_pixel(0, 9), Rgb(class_color(0)));
    }
}
