//! Training curves (`training_curves.png`): two panels side by side, a loss-like series on the
//! left and a score-like one on the right, each with its training and validation curve per
//! epoch. Drawn on the one canvas with the one font (`canvas.rs`, `font.rs`), so no plotting or
//! font-rendering dependency enters the binary. What the panels show is the trainer's choice.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

use super::canvas::{Canvas, Lettering, TextStyle};
use super::encode::RenderError;

/// Width of the picture in pixels.
pub(crate) const WIDTH: u32 = 960;
/// Height of the picture in pixels.
pub(crate) const HEIGHT: u32 = 400;
const PANEL_WIDTH: i64 = WIDTH as i64 / 2;
/// Plot area margins inside a panel: left, right, top, bottom.
const MARGIN: (i64, i64, i64, i64) = (64, 20, 36, 48);
/// Font pixels are drawn as `SCALE x SCALE` squares.
const SCALE: u32 = 2;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// Colour of the training curves.
pub(crate) const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
/// Colour of the validation curves.
pub(crate) const VALIDATION: Rgb<u8> = Rgb([255, 127, 14]);

/// One panel's data: a title, the training and validation `(epoch, value)` points, and a
/// fixed y range (`None`: from 0 to a round value above the largest point).
pub(crate) struct PanelData<'a> {
    /// Shown above the panel.
    pub(crate) title: &'a str,
    /// Training points.
    pub(crate) train: Vec<(f64, f64)>,
    /// Validation points.
    pub(crate) val: Vec<(f64, f64)>,
    /// The y range, e.g. `(0, 1)` for accuracies.
    pub(crate) y_range: Option<(f64, f64)>,
}

/// The PNG bytes of two panels side by side (loss-like on the left, score-like on the right).
pub(crate) fn curves(panels: &[PanelData<'_>; 2]) -> Result<Vec<u8>, RenderError> {
    let mut canvas = Canvas::new(RgbImage::from_pixel(WIDTH, HEIGHT, WHITE));
    let finite = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
        points
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let x_max = panels
        .iter()
        .flat_map(|p| p.train.iter().chain(&p.val))
        .map(|&(e, _)| e)
        .fold(1.0f64, f64::max);
    for (i, p) in panels.iter().enumerate() {
        let (train, val) = (finite(&p.train), finite(&p.val));
        let y_range = p.y_range.unwrap_or_else(|| {
            let top = train
                .iter()
                .chain(&val)
                .map(|&(_, v)| v)
                .fold(0.0f64, f64::max);
            (0.0, nice_step(top.max(1e-3) / 4.0) * 4.0)
        });
        draw_panel(
            &mut canvas,
            &Panel {
                left: i as i64 * PANEL_WIDTH,
                title: p.title,
                // Loss falls and scores rise: each legend goes where its curves are not.
                legend_at_top: i == 0,
                y_range,
                x_max,
                lines: [(train, TRAIN), (val, VALIDATION)],
            },
        );
    }
    let mut png = Vec::new();
    canvas
        .into_image()
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| RenderError {
            format: "PNG",
            reason: e.to_string(),
        })?;
    Ok(png)
}

/// `(epoch, value)` points and their colour.
type Series = (Vec<(f64, f64)>, Rgb<u8>);

/// The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `x`, so the grid
/// lines fall on round values.
fn nice_step(x: f64) -> f64 {
    let power = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

struct Panel<'a> {
    left: i64,
    title: &'a str,
    /// Loss falls and accuracy rises: each legend goes where its curves are not.
    legend_at_top: bool,
    y_range: (f64, f64),
    x_max: f64,
    /// Training then validation.
    lines: [Series; 2],
}

/// Ink text at the plot's scale, lower case as written.
const LABEL: TextStyle = TextStyle {
    scale: SCALE,
    color: INK,
    lettering: Lettering::AsWritten,
};

fn text_width(text: &str) -> i64 {
    Canvas::text_width(text, SCALE)
}

fn draw_panel(canvas: &mut Canvas, p: &Panel<'_>) {
    let (ml, mr, mt, mb) = MARGIN;
    let (x0, x1) = (p.left + ml, p.left + PANEL_WIDTH - mr);
    let (y0, y1) = (mt, i64::from(HEIGHT) - mb);
    let x_max = p.x_max.max(2.0);
    let to_px = |(e, v): (f64, f64)| -> (i64, i64) {
        let fx = (e - 1.0) / (x_max - 1.0);
        let fy = (v - p.y_range.0) / (p.y_range.1 - p.y_range.0);
        let x = x0 as f64 + fx * (x1 - x0) as f64;
        let y = y1 as f64 - fy.clamp(0.0, 1.0) * (y1 - y0) as f64;
        (x.round() as i64, y.round() as i64)
    };
    // Horizontal grid lines with their values.
    for i in 0..=4 {
        let v = p.y_range.0 + (p.y_range.1 - p.y_range.0) * f64::from(i) / 4.0;
        let (_, y) = to_px((1.0, v));
        canvas.rect((x0, y), (x1 - x0, 1), GRID);
        let label = format!("{v:.2}");
        canvas.text((x0 - 8 - text_width(&label), y - 7), &label, &LABEL);
    }
    // Integer epoch ticks, about six of them.
    let step = ((x_max - 1.0) / 6.0).ceil().max(1.0) as usize;
    for e in (1..=x_max as usize).step_by(step) {
        let (x, _) = to_px((e as f64, p.y_range.0));
        canvas.rect((x, y1), (1, 6), INK);
        let label = e.to_string();
        canvas.text((x - text_width(&label) / 2, y1 + 10), &label, &LABEL);
    }
    canvas.rect((x0, y0), (1, y1 - y0 + 1), INK);
    canvas.rect((x0, y1), (x1 - x0 + 1, 1), INK);
    let title_x = (x0 + x1 - text_width(p.title)) / 2;
    canvas.text((title_x, 10), p.title, &LABEL);
    let xlabel_x = (x0 + x1 - text_width("epoch")) / 2;
    canvas.text((xlabel_x, y1 + 30), "epoch", &LABEL);

    for (points, color) in &p.lines {
        let pixels: Vec<(i64, i64)> = points.iter().map(|&pt| to_px(pt)).collect();
        for pair in pixels.windows(2) {
            canvas.line(pair[0], pair[1], *color);
        }
        if pixels.len() <= 40 {
            for &(x, y) in &pixels {
                canvas.rect((x - 2, y - 2), (5, 5), *color);
            }
        }
    }
    // Legend at the right, on a white box so it stays legible over a curve.
    let legend_x = x1 - 8 - text_width("validation") - 28;
    let legend_y = if p.legend_at_top { y0 + 8 } else { y1 - 48 };
    canvas.rect((legend_x - 6, legend_y - 6), (x1 - legend_x, 46), WHITE);
    for (row, (name, color)) in [("train", TRAIN), ("validation", VALIDATION)]
        .into_iter()
        .enumerate()
    {
        let y = legend_y + row as i64 * 20;
        let x = legend_x;
        canvas.rect((x, y + 6), (20, 3), color);
        canvas.text((x + 28, y), name, &LABEL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_steps_fall_on_round_values() {
        assert_eq!(nice_step(0.42), 0.5);
        assert_eq!(nice_step(0.2), 0.2);
        assert_eq!(nice_step(3.1), 5.0);
    }
}
