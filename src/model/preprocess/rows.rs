//! Large PNG and TIFF images read row by row instead of decoded whole, so an image of hundreds
//! of megapixels (aerial imagery) costs a few rows of memory, not `width * height * 3` bytes.
//!
//! Owns [`ImageRows`] (an image handed out top to bottom as 8-bit RGB rows), [`probe`] (format
//! and size from the header, nothing decoded) and [`open_rows`]. PNG is read with the `png`
//! crate's row reader (interlaced PNGs cannot be streamed: their first pass already spans the
//! whole image). TIFF is read a strip, or a row of tiles, at a time with the `tiff` crate; a
//! chunk larger than [`MAX_TIFF_BAND_BYTES`] (say, a 20,000 x 20,000 image written as one strip)
//! is refused rather than read whole. Colours are converted as `decode` converts them (grey
//! replicated, alpha dropped, 16-bit samples rounded to 8 bits); EXIF orientation is not applied.

use std::io::{BufRead, Seek, SeekFrom};

use super::error::PreprocessError;

/// Largest band of decoded pixels a TIFF chunk row may take (a strip, or a row of tiles).
pub(crate) const MAX_TIFF_BAND_BYTES: usize = 64 << 20;

/// A reader that can also seek (TIFF directories point anywhere in the file).
pub(crate) trait SeekRead: BufRead + Seek + Send {}
impl<T: BufRead + Seek + Send> SeekRead for T {}

/// An image read top to bottom, one 8-bit RGB row at a time.
pub(crate) trait ImageRows: Send {
    /// `(width, height)` in pixels.
    fn dimensions(&self) -> (u32, u32);
    /// Fills `row` (`width * 3` bytes) with the next row.
    fn read_row(&mut self, row: &mut [u8]) -> Result<(), PreprocessError>;
}

/// Formats that can be read row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFormat {
    /// PNG, non-interlaced.
    Png,
    /// TIFF in strips or tiles, chunky (interleaved) samples.
    Tiff,
}

impl StreamFormat {
    fn name(self) -> &'static str {
        match self {
            StreamFormat::Png => "PNG",
            StreamFormat::Tiff => "TIFF",
        }
    }
}

/// The format and `(width, height)` of a PNG or TIFF from its header; `None` for any other
/// content or an unreadable header (the ordinary decoder then reports it). Leaves `reader`
/// anywhere: callers rewind.
pub(crate) fn probe(reader: &mut dyn SeekRead) -> Option<(StreamFormat, u32, u32)> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).ok()?;
    reader.seek(SeekFrom::Start(0)).ok()?;
    if magic == *b"\x89PNG\r\n\x1a\n" {
        let mut decoder = png::Decoder::new(reader);
        let info = decoder.read_header_info().ok()?;
        return Some((StreamFormat::Png, info.width, info.height));
    }
    if magic.starts_with(b"II*\0") || magic.starts_with(b"MM\0*") {
        let mut decoder = tiff::decoder::Decoder::new(reader).ok()?;
        let (width, height) = decoder.dimensions().ok()?;
        return Some((StreamFormat::Tiff, width, height));
    }
    None
}

/// Opens `reader` (rewound) for reading rows; the format is detected again from its bytes.
pub(crate) fn open_rows(
    mut reader: Box<dyn SeekRead>,
) -> Result<Box<dyn ImageRows>, PreprocessError> {
    let format = probe(&mut *reader)
        .map(|(format, ..)| format)
        .ok_or_else(|| PreprocessError::UnsupportedFormat {
            detail: "only PNG and TIFF images can be read row by row".into(),
        })?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| corrupt(format, e))?;
    match format {
        StreamFormat::Png => Ok(Box::new(PngRows::open(reader)?)),
        StreamFormat::Tiff => Ok(Box::new(TiffRows::open(reader)?)),
    }
}

fn corrupt(format: StreamFormat, err: impl std::fmt::Display) -> PreprocessError {
    PreprocessError::StreamCorrupt {
        format: format.name(),
        reason: err.to_string(),
    }
}

fn not_streamable(format: StreamFormat, reason: String) -> PreprocessError {
    PreprocessError::NotStreamable {
        format: format.name(),
        reason,
    }
}

/// Samples of one pixel laid out as `channels` values: the RGB of it.
fn to_rgb(samples: &[u8], channels: usize, rgb: &mut [u8]) {
    for (src, dst) in samples.chunks_exact(channels).zip(rgb.chunks_exact_mut(3)) {
        if channels < 3 {
            dst.fill(src[0]);
        } else {
            dst.copy_from_slice(&src[..3]);
        }
    }
}

struct PngRows {
    reader: png::Reader<Box<dyn SeekRead>>,
    channels: usize,
    scratch: Vec<u8>,
}

impl PngRows {
    fn open(reader: Box<dyn SeekRead>) -> Result<Self, PreprocessError> {
        let format = StreamFormat::Png;
        let mut decoder = png::Decoder::new(reader);
        // Palettes and low bit depths expand to 8 bits, 16-bit samples are cut to 8 below.
        decoder.set_transformations(png::Transformations::EXPAND);
        let reader = decoder.read_info().map_err(|e| corrupt(format, e))?;
        if reader.info().interlaced {
            return Err(not_streamable(
                format,
                "it is interlaced (Adam7), so no row is final before the last pass; save it without interlacing".into(),
            ));
        }
        let (color, depth) = reader.output_color_type();
        let channels = color.samples()
            * if depth == png::BitDepth::Sixteen {
                2
            } else {
                1
            };
        let scratch = vec![0; reader.output_line_size(reader.info().width).unwrap_or(0)];
        Ok(PngRows {
            reader,
            channels,
            scratch,
        })
    }
}

impl ImageRows for PngRows {
    fn dimensions(&self) -> (u32, u32) {
        let info = self.reader.info();
        (info.width, info.height)
    }

    fn read_row(&mut self, row: &mut [u8]) -> Result<(), PreprocessError> {
        let format = StreamFormat::Png;
        match self.reader.read_row(&mut self.scratch) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(corrupt(format, "the image data ends early")),
            Err(e) => return Err(corrupt(format, e)),
        }
        let (_, depth) = self.reader.output_color_type();
        if depth == png::BitDepth::Sixteen {
            // Big-endian samples, rounded to 8 bits as `decode` does.
            let samples = self.channels / 2;
            let eight: Vec<u8> = self
                .scratch
                .chunks_exact(2)
                .map(|b| round16(u16::from_be_bytes([b[0], b[1]])))
                .collect();
            to_rgb(&eight, samples, row);
        } else {
            to_rgb(&self.scratch, self.channels, row);
        }
        Ok(())
    }
}

fn round16(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32_767) / 65_535) as u8
}

struct TiffRows {
    decoder: tiff::decoder::Decoder<Box<dyn SeekRead>>,
    width: u32,
    height: u32,
    samples: usize,
    is_sixteen: bool,
    /// Chunk rows (strips, or rows of tiles) and their height in pixels.
    chunk_height: u32,
    chunks_across: u32,
    /// The current band as RGB rows, and the next row of it to hand out.
    band: Vec<u8>,
    band_rows: usize,
    next_in_band: usize,
    next_chunk_row: u32,
}

impl TiffRows {
    fn open(reader: Box<dyn SeekRead>) -> Result<Self, PreprocessError> {
        use tiff::decoder::ChunkType;
        use tiff::ColorType;
        let format = StreamFormat::Tiff;
        let mut decoder = tiff::decoder::Decoder::new(reader)
            .map_err(|e| corrupt(format, e))?
            .with_limits(tiff::decoder::Limits::unlimited());
        let (width, height) = decoder.dimensions().map_err(|e| corrupt(format, e))?;
        let color = decoder.colortype().map_err(|e| corrupt(format, e))?;
        let (samples, bits) = match color {
            ColorType::Gray(b) => (1, b),
            ColorType::GrayA(b) => (2, b),
            ColorType::RGB(b) => (3, b),
            ColorType::RGBA(b) => (4, b),
            other => {
                return Err(not_streamable(
                    format,
                    format!("its colour type {other:?} is not grey or RGB"),
                ))
            }
        };
        if bits != 8 && bits != 16 {
            return Err(not_streamable(
                format,
                format!("it has {bits}-bit samples (8 or 16 are streamed)"),
            ));
        }
        let planar = decoder
            .find_tag_unsigned::<u16>(tiff::tags::Tag::PlanarConfiguration)
            .map_err(|e| corrupt(format, e))?;
        if planar == Some(2) {
            return Err(not_streamable(
                format,
                "its samples are stored in separate planes".into(),
            ));
        }
        let (chunk_width, chunk_height) = decoder.chunk_dimensions();
        let chunks_across = match decoder.get_chunk_type() {
            ChunkType::Strip => 1,
            ChunkType::Tile => width.div_ceil(chunk_width.max(1)),
        };
        let band_bytes = width as usize * chunk_height as usize * samples * usize::from(bits / 8);
        if band_bytes > MAX_TIFF_BAND_BYTES {
            return Err(not_streamable(
                format,
                format!(
                    "a strip or row of tiles holds {chunk_height} rows ({} MB decoded, limit {} MB); write it tiled or in shorter strips (e.g. gdal_translate -co TILED=YES)",
                    band_bytes >> 20,
                    MAX_TIFF_BAND_BYTES >> 20
                ),
            ));
        }
        Ok(TiffRows {
            decoder,
            width,
            height,
            samples,
            is_sixteen: bits == 16,
            chunk_height: chunk_height.max(1),
            chunks_across,
            band: Vec::new(),
            band_rows: 0,
            next_in_band: 0,
            next_chunk_row: 0,
        })
    }

    /// Decodes the next strip or row of tiles into `band` as RGB rows.
    fn next_band(&mut self) -> Result<(), PreprocessError> {
        use tiff::decoder::DecodingResult;
        let format = StreamFormat::Tiff;
        let width = self.width as usize;
        let first_row = self.next_chunk_row * self.chunk_height;
        let rows = self.chunk_height.min(self.height.saturating_sub(first_row)) as usize;
        if rows == 0 {
            return Err(corrupt(format, "the image data ends early"));
        }
        self.band.resize(rows * width * 3, 0);
        let mut x0 = 0usize;
        for across in 0..self.chunks_across {
            let index = self.next_chunk_row * self.chunks_across + across;
            let (chunk_w, chunk_h) = self.decoder.chunk_data_dimensions(index);
            let (chunk_w, chunk_h) = (chunk_w as usize, (chunk_h as usize).min(rows));
            let data = self
                .decoder
                .read_chunk(index)
                .map_err(|e| corrupt(format, e))?;
            let eight: Vec<u8> = match data {
                DecodingResult::U8(v) if !self.is_sixteen => v,
                DecodingResult::U16(v) if self.is_sixteen => v.into_iter().map(round16).collect(),
                _ => return Err(corrupt(format, "unexpected sample type in a chunk")),
            };
            let line = chunk_w * self.samples;
            if eight.len() < chunk_h * line || x0 + chunk_w > width {
                return Err(corrupt(format, "a chunk is smaller than its dimensions"));
            }
            for y in 0..chunk_h {
                let dst = &mut self.band[(y * width + x0) * 3..][..chunk_w * 3];
                to_rgb(&eight[y * line..][..line], self.samples, dst);
            }
            x0 += chunk_w;
        }
        self.band_rows = rows;
        self.next_in_band = 0;
        self.next_chunk_row += 1;
        Ok(())
    }
}

impl ImageRows for TiffRows {
    fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn read_row(&mut self, row: &mut [u8]) -> Result<(), PreprocessError> {
        if self.next_in_band == self.band_rows {
            self.next_band()?;
        }
        let len = self.width as usize * 3;
        row.copy_from_slice(&self.band[self.next_in_band * len..][..len]);
        self.next_in_band += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};
    use std::io::Cursor;

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    fn rows_of(bytes: Vec<u8>) -> Result<Vec<u8>, PreprocessError> {
        let mut rows = open_rows(Box::new(Cursor::new(bytes)))?;
        let (width, height) = rows.dimensions();
        let mut out = vec![0u8; (width * height * 3) as usize];
        for row in out.chunks_exact_mut(width as usize * 3) {
            rows.read_row(row)?;
        }
        Ok(out)
    }

    fn encoded(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encodes");
        out.into_inner()
    }

    #[test]
    fn png_and_tiff_rows_match_the_whole_image_decode() {
        let rgb = pattern(67, 41);
        for image in [
            image::DynamicImage::ImageRgb8(rgb.clone()),
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8()),
            image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(rgb).to_rgba8()),
        ] {
            for format in [ImageFormat::Png, ImageFormat::Tiff] {
                let bytes = encoded(&image, format);
                let mut cursor = Cursor::new(bytes.clone());
                let (_, w, h) = probe(&mut cursor).expect("a PNG or TIFF");
                assert_eq!((w, h), (67, 41));
                let whole = super::super::decode(&bytes, &Default::default()).expect("decodes");
                assert_eq!(
                    rows_of(bytes).expect("streams"),
                    whole.into_raw(),
                    "{format:?}"
                );
            }
        }
    }

    /// A little-endian RGB TIFF in uncompressed `tile x tile` tiles (edge tiles padded), laid
    /// out by hand: the `tiff` crate writes strips only.
    fn tiled_tiff(image: &RgbImage, tile: u32) -> Vec<u8> {
        let (width, height) = image.dimensions();
        let (across, down) = (width.div_ceil(tile), height.div_ceil(tile));
        let tile_bytes = tile * tile * 3;
        let mut out = b"II*\0\0\0\0\0".to_vec();
        let mut offsets = Vec::new();
        for ty in 0..down {
            for tx in 0..across {
                offsets.push(out.len() as u32);
                for y in ty * tile..(ty + 1) * tile {
                    for x in tx * tile..(tx + 1) * tile {
                        let px = if x < width && y < height {
                            image.get_pixel(x, y).0
                        } else {
                            [0; 3]
                        };
                        out.extend_from_slice(&px);
                    }
                }
            }
        }
        let bits_at = out.len() as u32;
        out.extend_from_slice(&[8, 0, 8, 0, 8, 0]);
        let offsets_at = out.len() as u32;
        offsets
            .iter()
            .for_each(|o| out.extend_from_slice(&o.to_le_bytes()));
        let counts_at = out.len() as u32;
        offsets
            .iter()
            .for_each(|_| out.extend_from_slice(&tile_bytes.to_le_bytes()));
        let ifd_at = out.len() as u32;
        out[4..8].copy_from_slice(&ifd_at.to_le_bytes());
        let n = offsets.len() as u32;
        // (tag, type: 3 short / 4 long, count, value or offset)
        let entries: [(u16, u16, u32, u32); 11] = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, 3, bits_at),
            (259, 3, 1, 1),
            (262, 3, 1, 2),
            (277, 3, 1, 3),
            (284, 3, 1, 1),
            (322, 4, 1, tile),
            (323, 4, 1, tile),
            (324, 4, n, offsets_at),
            (325, 4, n, counts_at),
        ];
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, count, value) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn tiled_tiff_rows_are_stitched_from_each_row_of_tiles() {
        let image = pattern(40, 35);
        let bytes = tiled_tiff(&image, 16);
        let whole = super::super::decode(&bytes, &Default::default()).expect("decodes");
        assert_eq!(
            whole.as_raw(),
            image.as_raw(),
            "the hand-made TIFF is valid"
        );
        assert_eq!(rows_of(bytes).expect("streams"), image.into_raw());
    }

    #[test]
    fn what_cannot_be_streamed_is_refused_with_the_reason() {
        assert!(probe(&mut Cursor::new(b"GIF89a..".to_vec())).is_none());
        let mut png = encoded(
            &image::DynamicImage::ImageRgb8(pattern(40, 30)),
            ImageFormat::Png,
        );
        png.truncate(png.len() / 2);
        let err = rows_of(png)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("PNG"), "{err}");
        // One strip of 3,000 x 8,000 RGB (72 MB decoded) is over the band limit.
        let mut tiff = Cursor::new(Vec::new());
        let mut encoder = tiff::encoder::TiffEncoder::new(&mut tiff).expect("encoder");
        let mut image = encoder
            .new_image::<tiff::encoder::colortype::RGB8>(3000, 8000)
            .expect("image");
        image.rows_per_strip(8000).expect("strip");
        image
            .write_strip(&vec![7u8; 3000 * 8000 * 3])
            .expect("writes");
        image.finish().expect("finishes");
        let err = open_rows(Box::new(Cursor::new(tiff.into_inner())))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("8000 rows") && err.contains("TILED=YES"),
            "{err}"
        );
    }
}
