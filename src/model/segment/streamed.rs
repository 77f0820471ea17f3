//! Segmenting an image that is never whole in memory: a large PNG or TIFF read row by row
//! ([`ImageRows`]) in, a label map written row by row ([`LabelRows`]) out.
//!
//! Owns [`StreamedImage`] (the pair, handed to the engine as one input), [`RowWindow`] (the
//! rows the current tile row needs, decoded as the tiles move down), [`downscale`] (the
//! `resize_shorter_side` resize done one input row at a time) and [`upsample_labels`] (the
//! working image's logits interpolated to the full size and labelled a band of rows at a time,
//! shared with the in-memory path).

use std::sync::{Mutex, MutexGuard};

use image::RgbImage;
use rayon::prelude::*;

use super::segmenter::Labeler;
use super::tiling::PixelRows;
use crate::model::error::ModelError;
use crate::model::kernels::ResizeAxis;
use crate::model::preprocess::rows::ImageRows;

/// Output rows labelled at once (in parallel) before they are written out.
const LABEL_BAND_ROWS: usize = 64;

/// Where labelled rows go: `(y, width classes)`, top to bottom.
pub(crate) type LabelRowSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), ModelError> + 'a;

/// Where a streamed label map goes, one row at a time.
pub(crate) trait LabelRows: Send {
    /// The next row of class indices, top to bottom.
    fn write_row(&mut self, classes: &[u8]) -> std::io::Result<()>;
    /// Ends the map and returns the encoded answer.
    fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>>;
}

/// An image read row by row and where its label map goes: one engine input.
pub struct StreamedImage {
    dimensions: (u32, u32),
    rows: Mutex<Option<Box<dyn ImageRows>>>,
    sink: Mutex<Option<Box<dyn LabelRows>>>,
}

impl std::fmt::Debug for StreamedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedImage")
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl StreamedImage {
    pub(crate) fn new(rows: Box<dyn ImageRows>, sink: Box<dyn LabelRows>) -> Self {
        StreamedImage {
            dimensions: rows.dimensions(),
            rows: Mutex::new(Some(rows)),
            sink: Mutex::new(Some(sink)),
        }
    }

    /// `(width, height)` in pixels.
    pub(crate) fn dimensions(&self) -> (u32, u32) {
        self.dimensions
    }

    /// The rows, once: a streamed image is read a single time.
    pub(crate) fn take_rows(&self) -> Result<Box<dyn ImageRows>, ModelError> {
        lock(&self.rows)
            .take()
            .ok_or_else(|| ModelError::Unsupported("a streamed image is read once".into()))
    }

    /// The label map's destination, held while rows are written.
    pub(crate) fn sink(&self) -> Result<SinkGuard<'_>, ModelError> {
        let guard = lock(&self.sink);
        if guard.is_none() {
            return Err(ModelError::Unsupported(
                "the label map was already finished".into(),
            ));
        }
        Ok(SinkGuard(guard))
    }

    /// The encoded label map, once every row is written.
    pub(crate) fn finish(&self) -> Result<Vec<u8>, ModelError> {
        let sink = lock(&self.sink)
            .take()
            .ok_or_else(|| ModelError::Unsupported("the label map was already finished".into()))?;
        Ok(sink.finish()?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sink of a [`StreamedImage`], locked.
pub(crate) struct SinkGuard<'a>(MutexGuard<'a, Option<Box<dyn LabelRows>>>);

impl SinkGuard<'_> {
    pub(crate) fn write_row(&mut self, classes: &[u8]) -> std::io::Result<()> {
        match self.0.as_mut() {
            Some(sink) => sink.write_row(classes),
            None => Err(std::io::Error::other("the label map was already finished")),
        }
    }
}

/// The rows a tile row needs, read from an [`ImageRows`] as the tiles move down: at most
/// `max_rows` rows of the image are held.
pub(crate) struct RowWindow<'a> {
    rows: &'a mut dyn ImageRows,
    width: usize,
    height: usize,
    buffer: Vec<u8>,
    /// Image row of the buffer's first row, and rows held.
    top: usize,
    held: usize,
}

impl<'a> RowWindow<'a> {
    pub(crate) fn new(rows: &'a mut dyn ImageRows, max_rows: usize) -> Self {
        let (width, height) = rows.dimensions();
        let (width, height) = (width as usize, height as usize);
        RowWindow {
            rows,
            width,
            height,
            buffer: Vec::with_capacity(max_rows.min(height) * width * 3),
            top: 0,
            held: 0,
        }
    }
}

impl PixelRows for RowWindow<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn band(&mut self, y0: usize, rows: usize) -> Result<&[u8], ModelError> {
        let row_len = self.width * 3;
        let mut scratch = Vec::new();
        // Rows above `y0` are done with: drop them (or read past them, if never held).
        while self.top < y0 {
            if self.held > 0 {
                let dropped = (y0 - self.top).min(self.held);
                self.buffer.copy_within(dropped * row_len.., 0);
                self.buffer.truncate((self.held - dropped) * row_len);
                self.held -= dropped;
                self.top += dropped;
            } else {
                scratch.resize(row_len, 0);
                self.rows.read_row(&mut scratch)?;
                self.top += 1;
            }
        }
        while self.held < rows {
            let start = self.buffer.len();
            self.buffer.resize(start + row_len, 0);
            self.rows.read_row(&mut self.buffer[start..])?;
            self.held += 1;
        }
        Ok(&self.buffer[..rows * row_len])
    }
}

/// One output pixel of a downscale along an axis: the first input pixel it reads, and the
/// weights of it and the ones after it.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// PIL's bilinear (triangle) filter with antialiasing for a downscale from `input` to
/// `output` pixels: the filter is stretched by the scale, so every input pixel counts.
fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let first = (center - support + 0.5).floor().max(0.0) as usize;
            let end = ((center + support + 0.5).floor() as usize).min(input);
            let raw: Vec<f64> = (first..end)
                .map(|x| (1.0 - ((x as f64 + 0.5 - center) / support).abs()).max(0.0))
                .collect();
            let total: f64 = raw.iter().sum();
            Taps {
                first,
                weights: raw.iter().map(|w| (w / total) as f32).collect(),
            }
        })
        .collect()
}

/// Resizes an image read row by row down to `(width, height)` with PIL's antialiased bilinear
/// filter, holding one input row and the output (as floats) at a time. Matches the in-memory
/// resize (`fast_image_resize`, fixed point) to about one level.
pub(crate) fn downscale(
    rows: &mut dyn ImageRows,
    (width, height): (u32, u32),
) -> Result<RgbImage, ModelError> {
    let (in_w, in_h) = rows.dimensions();
    let (in_w, in_h) = (in_w as usize, in_h as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w > in_w || out_h > in_h {
        return Err(ModelError::Preprocess(
            crate::model::preprocess::PreprocessError::NotStreamable {
                format: "image",
                reason: format!(
                    "the package's resize (resize_to or resize_shorter_side) would enlarge it ({in_w}x{in_h} to {out_w}x{out_h})"
                ),
            },
        ));
    }
    let columns = taps(in_w, out_w);
    let lines = taps(in_h, out_h);
    let mut sums = vec![0.0f32; out_w * out_h * 3];
    let mut row = vec![0u8; in_w * 3];
    let mut resized_row = vec![0.0f32; out_w * 3];
    // Output rows reading input row y: from `lowest` on, while their taps start at or before y.
    let mut lowest = 0;
    for y in 0..in_h {
        rows.read_row(&mut row)?;
        for (out, tap) in resized_row.chunks_exact_mut(3).zip(&columns) {
            let mut px = [0.0f32; 3];
            for (k, &w) in tap.weights.iter().enumerate() {
                let src = &row[(tap.first + k) * 3..][..3];
                for c in 0..3 {
                    px[c] = f32::from(src[c]).mul_add(w, px[c]);
                }
            }
            out.copy_from_slice(&px);
        }
        while lowest < out_h && lines[lowest].first + lines[lowest].weights.len() <= y {
            lowest += 1;
        }
        for (i, line) in lines.iter().enumerate().skip(lowest) {
            if line.first > y {
                break;
            }
            let Some(&w) = line.weights.get(y - line.first) else {
                continue;
            };
            let dst = &mut sums[i * out_w * 3..][..out_w * 3];
            dst.iter_mut()
                .zip(&resized_row)
                .for_each(|(d, &s)| *d = s.mul_add(w, *d));
        }
    }
    let pixels = sums
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| ModelError::Unsupported("downscaled image buffer size".into()))
}

/// The working image's logits (`working` pixels, channels innermost) interpolated bilinearly
/// to `full` and labelled, handed to `emit` row by row, top to bottom. The full-size logits
/// never exist: each output pixel interpolates its four neighbours and is labelled at once,
/// [`LABEL_BAND_ROWS`] rows at a time in parallel.
pub(crate) fn upsample_labels(
    logits: &[f32],
    (ww, wh): (usize, usize),
    (w, h): (usize, usize),
    labeler: &Labeler,
    emit: &mut LabelRowSink<'_>,
) -> Result<(), ModelError> {
    let channels = labeler.channels();
    let rows = ResizeAxis::plan(wh, h, false);
    let cols = ResizeAxis::plan(ww, w, false);
    let mut band = vec![0u8; LABEL_BAND_ROWS.min(h) * w];
    for (band_index, plans) in rows.chunks(LABEL_BAND_ROWS).enumerate() {
        let band = &mut band[..plans.len() * w];
        band.par_chunks_mut(w)
            .zip(plans.par_iter())
            .for_each(|(out, ry)| {
                let mut px = vec![0.0f32; channels];
                let top = &logits[ry.i0 * ww * channels..][..ww * channels];
                let bottom = &logits[ry.i1 * ww * channels..][..ww * channels];
                for (o, rx) in out.iter_mut().zip(&cols) {
                    for (k, v) in px.iter_mut().enumerate() {
                        let upper =
                            rx.w0 * top[rx.i0 * channels + k] + rx.w1 * top[rx.i1 * channels + k];
                        let lower = rx.w0 * bottom[rx.i0 * channels + k]
                            + rx.w1 * bottom[rx.i1 * channels + k];
                        *v = ry.w0 * upper + ry.w1 * lower;
                    }
                    *o = labeler.label(&px);
                }
            });
        for (r, row) in band.chunks_exact(w).enumerate() {
            emit(band_index * LABEL_BAND_ROWS + r, row)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preprocess::PreprocessError;
    use fast_image_resize::{self as fr, FilterType, ResizeAlg, ResizeOptions};

    struct Memory {
        image: RgbImage,
        next: u32,
    }

    impl ImageRows for Memory {
        fn dimensions(&self) -> (u32, u32) {
            self.image.dimensions()
        }
        fn read_row(&mut self, row: &mut [u8]) -> Result<(), PreprocessError> {
            let len = row.len();
            row.copy_from_slice(&self.image.as_raw()[self.next as usize * len..][..len]);
            self.next += 1;
            Ok(())
        }
    }

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = |k: u32| ((x * k + y * (k + 3) + x * y / 7) % 256) as u8;
            image::Rgb([v(3), v(5), v(11)])
        })
    }

    #[test]
    fn the_streamed_downscale_matches_the_in_memory_resize() {
        let image = pattern(997, 601);
        for (w, h) in [(200, 120), (997, 300), (64, 601)] {
            let mut rows = Memory {
                image: image.clone(),
                next: 0,
            };
            let streamed = downscale(&mut rows, (w, h)).expect("downscales");
            let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
            let options =
                ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
            fr::Resizer::new()
                .resize(&image, &mut dst, &options)
                .expect("resizes");
            let worst = streamed
                .as_raw()
                .iter()
                .zip(dst.buffer())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            assert!(worst <= 1, "{w}x{h}: off by {worst} levels");
        }
    }

    /// Collects a streamed label map's rows.
    struct Collect(Vec<u8>);

    impl LabelRows for Collect {
        fn write_row(&mut self, classes: &[u8]) -> std::io::Result<()> {
            self.0.extend_from_slice(classes);
            Ok(())
        }
        fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>> {
            Ok(self.0)
        }
    }

    fn segmenter(segmentation: &serde_json::Value) -> super::super::Segmenter {
        use crate::model::package::Package;
        use crate::model::weights::Weights;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = serde_json::json!({
            "architecture": "lraspp_mobilenet_v3_large",
            "task": "segmentation",
            "num_classes": 3,
            "segmentation": segmentation,
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("writes");
        std::fs::write(dir.path().join("model.safetensors"), b"").expect("writes");
        let package = Package::open(dir.path()).expect("package");
        super::super::Segmenter::from_package(&package, &Weights::synthetic()).expect("builds")
    }

    /// The label map of `image` sent through the streamed path as a PNG.
    fn streamed_map(segmenter: &super::super::Segmenter, image: &RgbImage) -> Vec<u8> {
        let mut png = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut png, image::ImageFormat::Png)
            .expect("encodes");
        png.set_position(0);
        let rows = crate::model::preprocess::rows::open_rows(Box::new(png)).expect("opens");
        let streamed = StreamedImage::new(rows, Box::new(Collect(Vec::new())));
        segmenter
            .segment_streamed(&streamed, None)
            .expect("segments");
        streamed.finish().expect("finishes")
    }

    #[test]
    fn streamed_segmentation_gives_the_in_memory_label_map() {
        let image = pattern(300, 200);
        let tiled = segmenter(&serde_json::json!({"tile_size": 128, "tile_overlap": 32}));
        let whole = tiled.segment(&image, None).expect("segments");
        assert_eq!(
            streamed_map(&tiled, &image),
            whole.classes,
            "tiles at full size"
        );
        assert!(whole.classes.iter().any(|&c| c != whole.classes[0]));
        // Resized: the streamed downscale is within a level of the in-memory one, so a few
        // pixels on class boundaries may differ.
        for section in [
            serde_json::json!({"resize_shorter_side": 96}),
            serde_json::json!({"resize_to": [80, 150]}),
        ] {
            let resized = segmenter(&section);
            let whole = resized.segment(&image, None).expect("segments");
            let streamed = streamed_map(&resized, &image);
            assert_eq!(streamed.len(), whole.classes.len(), "{section}");
            let differing = streamed
                .iter()
                .zip(&whole.classes)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differing * 100 < streamed.len(),
                "{section}: {differing} of {} pixels differ",
                streamed.len()
            );
        }
    }

    #[test]
    fn a_row_window_hands_out_the_rows_asked_for() {
        let image = pattern(13, 40);
        let mut rows = Memory {
            image: image.clone(),
            next: 0,
        };
        let mut window = RowWindow::new(&mut rows, 16);
        for (y0, n) in [(0, 10), (0, 10), (6, 10), (20, 16), (24, 16)] {
            let band = window.band(y0, n).expect("rows").to_vec();
            assert_eq!(band, image.as_raw()[y0 * 39..(y0 + n) * 39], "{y0}+{n}");
        }
    }
}
