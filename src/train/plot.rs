//! `training_curves.png`: loss and accuracy per epoch, training and validation, side by side.
//! Drawn directly into an RGB buffer with a 5x7 bitmap font (the labels only need digits and a
//! few lower-case words), so no plotting or font-rendering dependency enters the binary.

use std::io::Cursor;

use anyhow::Result;
use image::{ImageFormat, Rgb, RgbImage};

use super::trainer::EpochMetrics;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 400;
const PANEL_WIDTH: i64 = WIDTH as i64 / 2;
/// Plot area margins inside a panel: left, right, top, bottom.
const MARGIN: (i64, i64, i64, i64) = (64, 20, 36, 48);
/// Font pixels are drawn as `SCALE x SCALE` squares.
const SCALE: i64 = 2;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VALIDATION: Rgb<u8> = Rgb([255, 127, 14]);

/// One panel's data: a title, the training and validation `(epoch, value)` points, and a
/// fixed y range (`None`: from 0 to a round value above the largest point).
pub struct PanelData<'a> {
    /// Shown above the panel.
    pub title: &'a str,
    /// Training points.
    pub train: Vec<(f64, f64)>,
    /// Validation points.
    pub val: Vec<(f64, f64)>,
    /// The y range, e.g. `(0, 1)` for accuracies.
    pub y_range: Option<(f64, f64)>,
}

/// The PNG bytes of the curves of `history` (an empty history gives empty axes).
pub fn training_curves(history: &[EpochMetrics]) -> Result<Vec<u8>> {
    let series = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
            .collect()
    };
    curves(&[
        PanelData {
            title: "loss",
            train: series(|m| Some(m.train_loss)),
            val: series(|m| m.val_loss),
            y_range: None,
        },
        PanelData {
            title: "accuracy",
            train: series(|m| Some(m.train_accuracy)),
            val: series(|m| m.val_accuracy),
            y_range: Some((0.0, 1.0)),
        },
    ])
}

/// The PNG bytes of two panels side by side (loss-like on the left, score-like on the right).
pub fn curves(panels: &[PanelData<'_>; 2]) -> Result<Vec<u8>> {
    let mut canvas = Canvas(RgbImage::from_pixel(WIDTH, HEIGHT, WHITE));
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
        canvas.panel(&Panel {
            left: i as i64 * PANEL_WIDTH,
            title: p.title,
            // Loss falls and scores rise: each legend goes where its curves are not.
            legend_at_top: i == 0,
            y_range,
            x_max,
            lines: [(train, TRAIN), (val, VALIDATION)],
        });
    }
    let mut png = Vec::new();
    canvas
        .0
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)?;
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

struct Canvas(RgbImage);

impl Canvas {
    fn put(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        if (0..i64::from(WIDTH)).contains(&x) && (0..i64::from(HEIGHT)).contains(&y) {
            self.0.put_pixel(x as u32, y as u32, color);
        }
    }

    fn rect(&mut self, (x, y): (i64, i64), (w, h): (i64, i64), color: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, color);
            }
        }
    }

    /// A 2-pixel-wide line (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
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

    /// Text with its top-left corner at `(x, y)`.
    fn text(&mut self, (x, y): (i64, i64), text: &str, color: Rgb<u8>) {
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c);
            let left = x + i as i64 * 6 * SCALE;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let at = (left + col * SCALE, y + r as i64 * SCALE);
                        self.rect(at, (SCALE, SCALE), color);
                    }
                }
            }
        }
    }

    fn text_width(text: &str) -> i64 {
        (text.chars().count() as i64 * 6 - 1) * SCALE
    }

    fn panel(&mut self, p: &Panel<'_>) {
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
            self.rect((x0, y), (x1 - x0, 1), GRID);
            let label = format!("{v:.2}");
            self.text((x0 - 8 - Self::text_width(&label), y - 7), &label, INK);
        }
        // Integer epoch ticks, about six of them.
        let step = ((x_max - 1.0) / 6.0).ceil().max(1.0) as usize;
        for e in (1..=x_max as usize).step_by(step) {
            let (x, _) = to_px((e as f64, p.y_range.0));
            self.rect((x, y1), (1, 6), INK);
            let label = e.to_string();
            self.text((x - Self::text_width(&label) / 2, y1 + 10), &label, INK);
        }
        self.rect((x0, y0), (1, y1 - y0 + 1), INK);
        self.rect((x0, y1), (x1 - x0 + 1, 1), INK);
        let title_x = (x0 + x1 - Self::text_width(p.title)) / 2;
        self.text((title_x, 10), p.title, INK);
        let xlabel_x = (x0 + x1 - Self::text_width("epoch")) / 2;
        self.text((xlabel_x, y1 + 30), "epoch", INK);

        for (points, color) in &p.lines {
            let pixels: Vec<(i64, i64)> = points.iter().map(|&pt| to_px(pt)).collect();
            for pair in pixels.windows(2) {
                self.line(pair[0], pair[1], *color);
            }
            if pixels.len() <= 40 {
                for &(x, y) in &pixels {
                    self.rect((x - 2, y - 2), (5, 5), *color);
                }
            }
        }
        // Legend at the right, on a white box so it stays legible over a curve.
        let legend_x = x1 - 8 - Self::text_width("validation") - 28;
        let legend_y = if p.legend_at_top { y0 + 8 } else { y1 - 48 };
        self.rect((legend_x - 6, legend_y - 6), (x1 - legend_x, 46), WHITE);
        for (row, (name, color)) in [("train", TRAIN), ("validation", VALIDATION)]
            .into_iter()
            .enumerate()
        {
            let y = legend_y + row as i64 * 20;
            let x = legend_x;
            self.rect((x, y + 6), (20, 3), color);
            self.text((x + 28, y), name, INK);
        }
    }
}

/// 5x7 glyphs, one byte per row, bit 4 the leftmost column. Unknown characters are blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x0E, 0, 0, 0],
        'a' => [0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'c' => [0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0, 0, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'r' => [0, 0, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0, 0, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'y' => [0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_a_png_of_the_declared_size() -> Result<()> {
        let history: Vec<EpochMetrics> = (1..=12)
            .map(|epoch| EpochMetrics {
                epoch,
                train_loss: 1.0 / epoch as f64,
                train_accuracy: 1.0 - 0.5 / epoch as f64,
                val_loss: Some(1.2 / epoch as f64),
                val_accuracy: Some(1.0 - 0.6 / epoch as f64),
                seconds: 0.01,
            })
            .collect();
        for h in [&history[..], &history[..1], &[]] {
            let png = training_curves(h)?;
            let img = image::load_from_memory_with_format(&png, ImageFormat::Png)?.to_rgb8();
            assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        }
        assert_eq!(nice_step(0.42), 0.5);
        assert_eq!(nice_step(0.2), 0.2);
        assert_eq!(nice_step(3.1), 5.0);
        let img = image::load_from_memory(&training_curves(&history)?)?.to_rgb8();
        assert!(img.pixels().any(|p| *p == TRAIN) && img.pixels().any(|p| *p == VALIDATION));
        Ok(())
    }
}
