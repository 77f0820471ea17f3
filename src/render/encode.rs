//! Image encodings of answers: label maps and per-class masks as 8-bit PNGs (grey, or indexed
//! with the VOC palette), pictures as PNG or JPEG.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use image::RgbImage;

use super::palette::voc_palette;
use crate::model::segment::streamed::LabelRows;
use crate::model::LabelMap;

/// An encoder failure (only a bug or an out-of-memory can cause one).
#[derive(Debug, thiserror::Error)]
#[error("encoding the {format} answer failed: {reason}")]
pub(crate) struct RenderError {
    /// `PNG` or `JPEG`.
    pub(crate) format: &'static str,
    /// What the encoder said.
    pub(crate) reason: String,
}

/// The label map as a single-channel PNG at the map's size: pixel = class index, a binary
/// model's foreground as 255 (the building services' convention), or an indexed PNG with the
/// VOC palette when `voc_palette` is set (pixel values are still the class indices).
pub(crate) fn label_map_png(
    map: &LabelMap,
    is_binary: bool,
    voc_palette_colors: bool,
) -> Result<Vec<u8>, RenderError> {
    if voc_palette_colors {
        let palette: Vec<u8> = voc_palette().iter().flatten().copied().collect();
        return write_png(map.width, map.height, &map.classes, Some(palette));
    }
    if is_binary {
        let pixels: Vec<u8> = map
            .classes
            .iter()
            .map(|&c| if c > 0 { 255 } else { 0 })
            .collect();
        return write_png(map.width, map.height, &pixels, None);
    }
    write_png(map.width, map.height, &map.classes, None)
}

/// The pixels of `class` as a grey PNG: 255 inside, 0 outside (Hugging Face's `mask`).
pub(crate) fn class_mask_png(map: &LabelMap, class: u8) -> Result<Vec<u8>, RenderError> {
    let pixels: Vec<u8> = map
        .classes
        .iter()
        .map(|&c| if c == class { 255 } else { 0 })
        .collect();
    write_png(map.width, map.height, &pixels, None)
}

/// An RGB picture as PNG.
pub(crate) fn encode_png(image: &RgbImage) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    finish(encoder, image.as_raw())?;
    Ok(out)
}

/// An RGB picture as JPEG, quality 90.
pub(crate) fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>, RenderError> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(image)
        .map_err(|e| RenderError {
            format: "JPEG",
            reason: e.to_string(),
        })?;
    Ok(out.into_inner())
}

/// A label map PNG written a row at a time as the segmenter produces it, so a map of
/// hundreds of megapixels never exists whole: only its compressed bytes do. Same pixels as
/// [`label_map_png`].
pub(crate) struct LabelMapPngStream {
    writer: png::StreamWriter<'static, SharedBytes>,
    bytes: SharedBytes,
    is_binary: bool,
    row: Vec<u8>,
}

/// The PNG's bytes, shared between the encoder (writing) and [`LabelMapPngStream::finish`].
#[derive(Clone, Default)]
struct SharedBytes(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBytes {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LabelMapPngStream {
    /// A `width x height` label map; see [`label_map_png`] for `is_binary` and `voc_palette`.
    pub(crate) fn new(
        width: u32,
        height: u32,
        is_binary: bool,
        voc_palette_colors: bool,
    ) -> Result<Self, RenderError> {
        let bytes = SharedBytes::default();
        let mut encoder = png::Encoder::new(bytes.clone(), width, height);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        if voc_palette_colors {
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(voc_palette().iter().flatten().copied().collect::<Vec<u8>>());
        } else {
            encoder.set_color(png::ColorType::Grayscale);
        }
        let writer = encoder
            .write_header()
            .and_then(png::Writer::into_stream_writer)
            .map_err(png_error)?;
        Ok(LabelMapPngStream {
            writer,
            bytes,
            is_binary: is_binary && !voc_palette_colors,
            row: Vec::with_capacity(width as usize),
        })
    }
}

impl LabelRows for LabelMapPngStream {
    fn write_row(&mut self, classes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if !self.is_binary {
            return self.writer.write_all(classes);
        }
        self.row.clear();
        self.row
            .extend(classes.iter().map(|&c| if c > 0 { 255 } else { 0 }));
        self.writer.write_all(&self.row)
    }

    fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>> {
        let LabelMapPngStream { writer, bytes, .. } = *self;
        writer.finish().map_err(std::io::Error::other)?;
        let mut shared = bytes.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut *shared))
    }
}

#[allow(clippy::needless_pass_by_value)] // a `map_err` adapter
fn png_error(err: png::EncodingError) -> RenderError {
    RenderError {
        format: "PNG",
        reason: err.to_string(),
    }
}

fn write_png(
    width: u32,
    height: u32,
    pixels: &[u8],
    palette: Option<Vec<u8>>,
) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_depth(png::BitDepth::Eight);
    // Label maps are long runs: the fast deflate shrinks them almost as well as the best.
    encoder.set_compression(png::Compression::Fast);
    match palette {
        Some(palette) => {
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(palette);
        }
        None => encoder.set_color(png::ColorType::Grayscale),
    }
    finish(encoder, pixels)?;
    Ok(out)
}

fn finish<W: std::io::Write>(encoder: png::Encoder<'_, W>, data: &[u8]) -> Result<(), RenderError> {
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(data).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> LabelMap {
        LabelMap {
            width: 3,
            height: 2,
            classes: vec![0, 1, 2, 2, 1, 0],
        }
    }

    fn decode_luma(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let image = image::load_from_memory_with_format(png_bytes, image::ImageFormat::Png)
            .expect("a valid PNG");
        let luma = image.to_luma8();
        (luma.width(), luma.height(), luma.into_raw())
    }

    #[test]
    fn label_maps_keep_size_and_class_indices() {
        let map = map();
        let (w, h, pixels) = decode_luma(&label_map_png(&map, false, false).expect("encodes"));
        assert_eq!((w, h), (3, 2));
        assert_eq!(pixels, map.classes);
        let (_, _, mask) = decode_luma(&class_mask_png(&map, 2).expect("encodes"));
        assert_eq!(mask, vec![0, 0, 255, 255, 0, 0]);
        let binary = LabelMap {
            classes: vec![0, 1, 1, 0, 0, 1],
            ..map
        };
        let (_, _, pixels) = decode_luma(&label_map_png(&binary, true, false).expect("encodes"));
        assert_eq!(pixels, vec![0, 255, 255, 0, 0, 255]);
    }

    #[test]
    fn the_voc_palette_png_stores_indices_with_voc_colours() {
        let bytes = label_map_png(&map(), false, true).expect("encodes");
        let decoder = png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("a valid PNG");
        let info = reader.info();
        assert_eq!(info.color_type, png::ColorType::Indexed);
        let palette = info.palette.as_ref().expect("a palette").to_vec();
        assert_eq!(&palette[3..6], &[128, 0, 0]);
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let frame = reader.next_frame(&mut buf).expect("a frame");
        let row_bytes = frame.line_size;
        // Row 0: indices 0, 1, 2 (8-bit indices, no expansion).
        assert_eq!(&buf[..3.min(row_bytes)], &[0, 1, 2]);
    }
}
