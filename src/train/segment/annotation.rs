//! Annotation PNGs: one class index per pixel, as SageMaker's built-in semantic segmentation
//! and PASCAL VOC store them. A greyscale PNG's values are the classes; an indexed (palette)
//! PNG's palette indices are the classes, whatever colours the palette shows (VOC's
//! `SegmentationClass` files). Colour PNGs are refused: their colours would have to be mapped
//! to classes, which wick does not guess.

use std::io::Cursor;
use std::path::{Path, PathBuf};

/// What an annotation file can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The file cannot be read.
    #[error("annotation `{path}`: cannot read it: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// Not a PNG the decoder accepts.
    #[error("annotation `{path}`: not a readable PNG: {cause}")]
    Png {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        cause: String,
    },
    /// A colour (or grey + alpha) PNG.
    #[error(
        "annotation `{path}` is a {color} PNG; annotations must be single-channel PNGs of class \
         indices (greyscale or palette/indexed, as VOC's), not colours"
    )]
    NotSingleChannel {
        /// The file.
        path: PathBuf,
        /// Its colour type, e.g. `RGB`.
        color: &'static str,
    },
    /// A 16-bit value that does not fit a class index.
    #[error("annotation `{path}` has the value {value}; class indices must be below 256")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The value.
        value: u16,
    },
}

/// A decoded annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// One value per pixel, row-major.
    pub values: Vec<u8>,
}

impl Annotation {
    /// Which of the 256 values occur.
    pub(crate) fn present(&self) -> [bool; 256] {
        let mut seen = [false; 256];
        for &v in &self.values {
            seen[usize::from(v)] = true;
        }
        seen
    }
}

/// Reads and decodes the annotation at `path`.
pub fn read(path: &Path) -> Result<Annotation, AnnotationError> {
    let bytes = std::fs::read(path).map_err(|cause| AnnotationError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    decode(&bytes).map_err(|e| e.at(path))
}

/// A decoding failure before the path is known.
enum Failure {
    Png(String),
    NotSingleChannel(&'static str),
    TooLarge(u16),
}

impl Failure {
    fn at(self, path: &Path) -> AnnotationError {
        let path = path.to_path_buf();
        match self {
            Failure::Png(cause) => AnnotationError::Png { path, cause },
            Failure::NotSingleChannel(color) => AnnotationError::NotSingleChannel { path, color },
            Failure::TooLarge(value) => AnnotationError::TooLarge { path, value },
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Annotation, Failure> {
    let png_error = |e: png::DecodingError| Failure::Png(e.to_string());
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Raw samples: palette indices must not be expanded to the palette's colours.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (color, depth) = {
        let info = reader.info();
        (info.color_type, info.bit_depth)
    };
    let color_name = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => None,
        png::ColorType::Rgb => Some("RGB"),
        png::ColorType::Rgba => Some("RGBA"),
        png::ColorType::GrayscaleAlpha => Some("grey + alpha"),
    };
    if let Some(name) = color_name {
        return Err(Failure::NotSingleChannel(name));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Failure::Png("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_error)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let bits = depth as usize;
    let mut values = Vec::with_capacity(width * height);
    for row in buf.chunks(frame.line_size).take(height) {
        match bits {
            16 => {
                for pair in row.chunks_exact(2).take(width) {
                    let v = u16::from_be_bytes([pair[0], pair[1]]);
                    values.push(u8::try_from(v).map_err(|_| Failure::TooLarge(v))?);
                }
            }
            8 => values.extend_from_slice(&row[..width]),
            _ => {
                // 1, 2 or 4 bits per sample, packed from the most significant bit.
                let mask = (1u8 << bits) - 1;
                let per_byte = 8 / bits;
                for x in 0..width {
                    let byte = row[x / per_byte];
                    let shift = 8 - bits * (x % per_byte + 1);
                    values.push((byte >> shift) & mask);
                }
            }
        }
    }
    Ok(Annotation {
        width: frame.width,
        height: frame.height,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if color == png::ColorType::Indexed {
            // A palette whose colours are nothing like the indices.
            encoder.set_palette(vec![7u8; 3 * 16]);
        }
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(data).expect("data");
        writer.finish().expect("finish");
        out
    }

    #[test]
    fn greyscale_and_palette_values_are_the_classes() {
        let grey = encode(
            3,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[0, 1, 255],
        );
        assert!(matches!(decode(&grey), Ok(a) if a.values == [0, 1, 255]));
        // 4-bit indexed, 3 pixels: indices 2, 15, 1 packed as 0x2F, 0x10.
        let indexed = encode(
            3,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Four,
            &[0x2F, 0x10],
        );
        assert!(matches!(decode(&indexed), Ok(a) if a.values == [2, 15, 1] && a.width == 3));
        let wide = encode(
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0, 3, 1, 0],
        );
        assert!(matches!(decode(&wide), Err(Failure::TooLarge(256))));
    }

    #[test]
    fn colour_pngs_are_refused_by_name() {
        let rgb = encode(1, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3]);
        let err = decode(&rgb)
            .err()
            .map(|f| f.at(Path::new("a/x.png")).to_string());
        assert!(err
            .is_some_and(|e| e.contains("`a/x.png` is a RGB PNG") && e.contains("single-channel")));
    }
}
