//! Request bytes → 8-bit RGB image: format sniffing, the decompression-bomb guard, EXIF
//! orientation and colour conversion.
//!
//! Owns [`decode`] and [`DecodeLimits`] (re-exported from [`super`]). The format is
//! detected from the magic bytes only, never from a file name or content type. The result
//! matches what PIL's `Image.open(f)` + `ImageOps.exif_transpose` + `convert("RGB")` gives:
//! grey is replicated, alpha is dropped (not composited), CMYK is converted with the Adobe
//! inverted-CMYK convention, ICC profiles are ignored. JPEGs are decoded by libjpeg-turbo
//! (`jpeg.rs`), as in Pillow's wheels, so their pixels are Pillow's byte for byte; CMYK JPEGs
//! and the other formats go through the `image` crate. One deliberate difference: 16-bit
//! samples are scaled to 8 bits with rounding (PIL truncates 16-bit RGB to the high byte and
//! clips 16-bit grey at 255).

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::error::{DecodingError, ImageFormatHint};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use super::error::PreprocessError;
use super::jpeg::{decode_jpeg, Jpeg};

/// Limits applied while decoding untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, checked against the header before any pixel buffer
    /// is allocated. The default, 40 megapixels, admits any common camera photo; an 8-bit RGB
    /// image at the limit takes 120 MB.
    pub(crate) max_pixels: u64,
}

impl DecodeLimits {
    /// Default for [`DecodeLimits::max_pixels`].
    pub(crate) const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

    /// Fails with [`PreprocessError::TooManyPixels`] if a `width x height` image is over the
    /// limit.
    pub(crate) fn check(&self, width: u32, height: u32) -> Result<(), PreprocessError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(PreprocessError::TooManyPixels {
                width,
                height,
                pixels,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// The `image` crate limits: the second guard, for allocations the decoders make
    /// themselves (animation canvases, strips, metadata). 16 bytes per pixel is the widest
    /// sample layout `image` produces (RGBA f32); the fixed allowance covers metadata chunks
    /// of small images. Width and height are left unlimited on purpose, so the area check in
    /// [`DecodeLimits::check`] is the one that reports an oversized header.
    fn image_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = None;
        limits.max_image_height = None;
        limits.max_alloc = Some(self.max_pixels.saturating_mul(16).saturating_add(64 << 20));
        limits
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// Human name of a format, for error messages.
fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

/// Detects the format from the leading bytes, accepting only the formats we serve.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff),
        ) => Ok(format),
        // Recognised by `image` (ICO, QOI, ...) but not built into this server.
        Ok(other) => Err(PreprocessError::UnsupportedFormat {
            detail: format!("the content is {other:?}, which is not enabled"),
        }),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(PreprocessError::UnsupportedFormat {
                detail: format!("unrecognised signature (first bytes: {})", head.join(" ")),
            })
        }
    }
}

/// Sorts an `image` error into our variants.
fn classify(format: ImageFormat, limits: &DecodeLimits, err: ImageError) -> PreprocessError {
    let format_name = format_name(format);
    match err {
        ImageError::Limits(_) => PreprocessError::LimitExceeded {
            format: format_name,
            max_pixels: limits.max_pixels,
            source: err,
        },
        ImageError::Unsupported(_) => PreprocessError::UnsupportedFeature {
            format: format_name,
            source: err,
        },
        // Decoding, IO (truncation shows up as an unexpected EOF) and parameter errors all
        // mean the bytes are not a valid image of that format.
        _ => PreprocessError::Corrupt {
            format: format_name,
            source: err,
        },
    }
}

/// Whether a JPEG stream reaches its end-of-image (EOI, `FF D9`) marker.
///
/// Walks the marker segments by their lengths (so an EOI inside an embedded EXIF thumbnail does
/// not count) and scans entropy-coded data for the next marker, skipping stuffed `FF 00`, fill
/// bytes and restart markers. Anything after the EOI (some cameras append data) is ignored.
fn jpeg_reaches_eoi(bytes: &[u8]) -> bool {
    let mut pos = 2; // past SOI
    while let Some(skip) = bytes
        .get(pos..)
        .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
    {
        pos += skip;
        let Some(&marker) = bytes.get(pos + 1) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Fill byte: the marker code follows.
            0xFF => pos += 1,
            // Stuffed data byte, TEM, restart markers, a stray SOI: no length field.
            0x00 | 0x01 | 0xD0..=0xD8 => pos += 2,
            // A marker segment; its length counts itself but not the marker.
            _ => {
                let Some(len) = bytes.get(pos + 2..pos + 4) else {
                    return false;
                };
                pos += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    false
}

/// Decodes a JPEG, PNG, WebP, GIF (first frame), BMP or TIFF image to 8-bit RGB, with its EXIF
/// orientation applied.
///
/// The header is read first and an image over `limits.max_pixels` is refused with
/// [`PreprocessError::TooManyPixels`] before its pixel buffer exists. Garbage, truncated and
/// empty input give an error, never a panic.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = sniff(bytes)?;
    // The decoders are third-party code fed with untrusted bytes; several have had panics on
    // crafted input in the past. A panic must not take the worker down with it, so it is
    // turned into a `Corrupt` error. (No state outlives the closure, hence AssertUnwindSafe.)
    match catch_unwind(AssertUnwindSafe(|| decode_format(bytes, format, limits))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PreprocessError::Corrupt {
                format: format_name(format),
                source: ImageError::Decoding(DecodingError::new(
                    ImageFormatHint::Exact(format),
                    format!("the decoder panicked: {message}"),
                )),
            })
        }
    }
}

/// [`decode`] for a sniffed `format`, outside the panic guard.
fn decode_format(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    let fail = |err| classify(format, limits, err);
    if format == ImageFormat::Jpeg {
        // libjpeg (with a warning) and zune-jpeg both fill whatever is missing from a
        // truncated JPEG and report success; PIL refuses such a file ("image file is
        // truncated"), and a half-grey photo would silently get a wrong answer. Require the
        // end-of-image marker.
        if !jpeg_reaches_eoi(bytes) {
            return Err(fail(ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(format),
                "the data ends before the end-of-image marker (truncated file)",
            ))));
        }
        match decode_jpeg(bytes, limits)? {
            Jpeg::Rgb(image) => return Ok(image),
            // libjpeg has no CMYK -> RGB conversion; `image` (zune-jpeg) has Pillow's.
            Jpeg::Cmyk => {}
        }
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = limits.image_limits();
    reader.limits(image_limits.clone());
    // Constructing the decoder parses the header only; no pixel buffer is allocated yet.
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::NoPixels { width, height });
    }
    // Second guard, as `ImageReader::decode` does: the output buffer must fit `max_alloc`.
    image_limits.reserve(decoder.total_bytes()).map_err(fail)?;
    // A malformed EXIF block should not cost the request its image: PIL's `exif_transpose`
    // also leaves the image alone when it cannot read the tag.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(fail)?;
    // Convert first, orient second: rotating 3-byte pixels is cheaper than 4- or 8-byte ones.
    // `into_rgb8` is a move for RGB8 input (the common JPEG case) and otherwise replicates grey,
    // drops alpha and rounds 16-bit / float samples to 8 bits.
    let mut image = DynamicImage::ImageRgb8(image.into_rgb8());
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    const RED: [u8; 3] = [255, 0, 0];
    const GREEN: [u8; 3] = [0, 255, 0];
    const BLUE: [u8; 3] = [0, 0, 255];
    const WHITE: [u8; 3] = [255, 255, 255];

    /// A `w x h` image whose quadrants are red (top left), green (top right), blue (bottom
    /// left) and white (bottom right): any rotation or flip moves the colours somewhere else.
    fn quadrants(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb(match (x < w / 2, y < h / 2) {
                (true, true) => RED,
                (false, true) => GREEN,
                (true, false) => BLUE,
                (false, false) => WHITE,
            })
        })
    }

    #[test]
    fn jpegs_are_decoded_by_libjpeg_turbos_simd_code() {
        // Built without nasm, the decoder silently falls back to C and every JPEG request
        // pays about twice the decode time; CI must catch such a build.
        assert!(
            crate::model::preprocess::jpeg_decoder_has_simd(),
            "libjpeg-turbo was built without its SIMD code: install nasm and rebuild mozjpeg-sys \
             (`cargo clean -p mozjpeg-sys`)"
        );
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100)
            .encode_image(image)
            .unwrap();
        out
    }

    /// The colour at the centre of each quadrant: TL, TR, BL, BR.
    fn quadrant_colours(img: &RgbImage) -> [[u8; 3]; 4] {
        let (w, h) = img.dimensions();
        let at = |x: u32, y: u32| img.get_pixel(x, y).0;
        [
            at(w / 4, h / 4),
            at(3 * w / 4, h / 4),
            at(w / 4, 3 * h / 4),
            at(3 * w / 4, 3 * h / 4),
        ]
    }

    fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
        a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= tol)
    }

    #[test]
    fn every_format_decodes() {
        let src = quadrants(16, 8);
        let dynamic = DynamicImage::ImageRgb8(src.clone());
        let limits = DecodeLimits::default();
        // Lossless formats round-trip exactly.
        for format in [
            ImageFormat::Png,
            ImageFormat::WebP, // `image` only encodes lossless WebP
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let bytes = encode(&dynamic, format);
            let got = decode(&bytes, &limits).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(got, src, "{format:?}");
        }
        // GIF goes through a 256-colour palette (exact for four colours) and is RGBA inside.
        let gif = encode(
            &DynamicImage::ImageRgba8(dynamic.to_rgba8()),
            ImageFormat::Gif,
        );
        assert_eq!(decode(&gif, &limits).unwrap(), src, "GIF");
        // JPEG is lossy; flat quadrants come back within a few levels away from the edges.
        let got = decode(&jpeg(&src), &limits).unwrap();
        assert_eq!(got.dimensions(), (16, 8));
        for (g, want) in quadrant_colours(&got)
            .into_iter()
            .zip([RED, GREEN, BLUE, WHITE])
        {
            assert!(close(g, want, 8), "JPEG: {g:?} vs {want:?}");
        }
    }

    #[test]
    fn gif_first_frame_of_an_animation() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame};
        let frame = |colour: [u8; 3]| {
            let img = ImageBuffer::from_pixel(4, 4, Rgba([colour[0], colour[1], colour[2], 255]));
            Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(100, 1))
        };
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            encoder.encode_frames([frame(GREEN), frame(BLUE)]).unwrap();
        }
        let got = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(got, RgbImage::from_pixel(4, 4, Rgb(GREEN)));
    }

    #[test]
    fn format_comes_from_the_content_not_a_name() {
        // PNG bytes are PNG whatever the caller thinks they are; there is no name to consult.
        let src = quadrants(4, 4);
        let png = encode(&DynamicImage::ImageRgb8(src.clone()), ImageFormat::Png);
        assert_eq!(decode(&png, &DecodeLimits::default()).unwrap(), src);
        // A format `image` recognises but we do not serve is refused by name.
        let ico = [0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0];
        let err = decode(&ico, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, PreprocessError::UnsupportedFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Ico"), "{err}");
    }

    /// Inserts an EXIF APP1 segment carrying `orientation` right after the JPEG's SOI marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\x00\x2A"); // big-endian TIFF header
        tiff.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD0
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding to 4 bytes
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // Stored 32x16: TL red, TR green, BL blue, BR white.
        let stored = jpeg(&quadrants(32, 16));
        let limits = DecodeLimits::default();

        let plain = decode(&stored, &limits).unwrap();
        assert_eq!(plain.dimensions(), (32, 16));

        // Orientation 6: the camera was turned; displaying needs a 90° clockwise rotation. The
        // stored left column becomes the top row: TL blue, TR red, BL white, BR green.
        let img = decode(&with_exif_orientation(&stored, 6), &limits).unwrap();
        assert_eq!(img.dimensions(), (16, 32), "width and height swap");
        let want = [BLUE, RED, WHITE, GREEN];
        for (got, want) in quadrant_colours(&img).into_iter().zip(want) {
            assert!(close(got, want, 8), "orientation 6: {got:?} vs {want:?}");
        }
        // Pixel-exact against rotating the plainly decoded image ourselves.
        assert_eq!(img, image::imageops::rotate90(&plain));

        // Orientation 3 (180°) and 8 (90° counter-clockwise), for good measure.
        let img = decode(&with_exif_orientation(&stored, 3), &limits).unwrap();
        assert_eq!(img, image::imageops::rotate180(&plain));
        let img = decode(&with_exif_orientation(&stored, 8), &limits).unwrap();
        assert_eq!(img, image::imageops::rotate270(&plain));
        // An out-of-range orientation value is ignored, like PIL's exif_transpose does.
        let img = decode(&with_exif_orientation(&stored, 42), &limits).unwrap();
        assert_eq!(img, plain);
    }

    #[test]
    fn grey_alpha_and_16_bit_become_8_bit_rgb() {
        let limits = DecodeLimits::default();
        let png = |img: DynamicImage| decode(&encode(&img, ImageFormat::Png), &limits).unwrap();

        // Grey is replicated into the three channels.
        let grey = ImageBuffer::from_fn(3, 2, |x, y| Luma([(40 * x + 100 * y) as u8]));
        let got = png(DynamicImage::ImageLuma8(grey.clone()));
        for (x, y, p) in got.enumerate_pixels() {
            let v = grey.get_pixel(x, y).0[0];
            assert_eq!(p.0, [v, v, v]);
        }

        // Alpha is dropped, not composited: a fully transparent pixel keeps its colour, as in
        // PIL's `convert("RGB")`.
        let rgba = ImageBuffer::from_fn(2, 1, |x, _| {
            Rgba(if x == 0 {
                [200, 100, 50, 0]
            } else {
                [1, 2, 3, 128]
            })
        });
        let got = png(DynamicImage::ImageRgba8(rgba));
        assert_eq!(got.as_raw(), &[200, 100, 50, 1, 2, 3]);

        let grey_alpha = ImageBuffer::from_fn(2, 1, |x, _| LumaA([70 + x as u8, 0]));
        let got = png(DynamicImage::ImageLumaA8(grey_alpha));
        assert_eq!(got.as_raw(), &[70, 70, 70, 71, 71, 71]);

        // 16-bit samples are scaled to 8 bits with rounding (v * 255 / 65535).
        let rgb16 = ImageBuffer::from_fn(2, 1, |x, _| {
            Rgb(if x == 0 {
                [0u16, 65535, 257 * 77]
            } else {
                [0x8080, 128, 0x7F7F]
            })
        });
        let got = png(DynamicImage::ImageRgb16(rgb16));
        assert_eq!(got.as_raw(), &[0, 255, 77, 128, 0, 127]);

        let grey16 =
            ImageBuffer::from_fn(2, 1, |x, _| Luma([if x == 0 { 65535u16 } else { 257 * 9 }]));
        let got = png(DynamicImage::ImageLuma16(grey16));
        assert_eq!(got.as_raw(), &[255, 255, 255, 9, 9, 9]);

        let rgba16 = ImageBuffer::from_pixel(1, 1, Rgba([257 * 10u16, 257 * 20, 257 * 30, 0]));
        let got = png(DynamicImage::ImageRgba16(rgba16));
        assert_eq!(got.as_raw(), &[10, 20, 30]);
    }

    /// A baseline JPEG built by hand: 4 components (no subsampling, quantisation all 1s), an
    /// Adobe APP14 marker saying "CMYK, no transform", one flat 8x8 block per MCU. `blocks`
    /// holds the stored (Adobe-inverted) C, M, Y, K sample of each block, left to right.
    ///
    /// Only DC coefficients are coded: DC table = categories 0..=11 with 4-bit codes equal to
    /// the category, AC table = just end-of-block with the 1-bit code `0`.
    fn adobe_cmyk_jpeg(blocks: &[[u8; 4]]) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8];
        let mut segment = |marker: u8, payload: &[u8]| {
            out.extend_from_slice(&[0xFF, marker]);
            out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
            out.extend_from_slice(payload);
        };
        // APP14 "Adobe": version 100, flags 0, 0, transform 0 (CMYK).
        segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00");
        let mut dqt = vec![0x00];
        dqt.extend_from_slice(&[1u8; 64]);
        segment(0xDB, &dqt);
        let width = 8 * blocks.len() as u16;
        let mut sof = vec![8];
        sof.extend_from_slice(&8u16.to_be_bytes());
        sof.extend_from_slice(&width.to_be_bytes());
        sof.push(4);
        for id in 1..=4u8 {
            sof.extend_from_slice(&[id, 0x11, 0]);
        }
        segment(0xC0, &sof);
        let mut dc_table = vec![0x00];
        let mut counts = [0u8; 16];
        counts[3] = 12; // twelve 4-bit codes
        dc_table.extend_from_slice(&counts);
        dc_table.extend(0..12u8);
        segment(0xC4, &dc_table);
        let mut ac_table = vec![0x10];
        let mut counts = [0u8; 16];
        counts[0] = 1; // one 1-bit code
        ac_table.extend_from_slice(&counts);
        ac_table.push(0x00); // EOB
        segment(0xC4, &ac_table);
        segment(0xDA, &[4, 1, 0x00, 2, 0x00, 3, 0x00, 4, 0x00, 0, 63, 0]);

        // Entropy-coded data.
        let mut bits: Vec<bool> = Vec::new();
        let mut push = |value: u32, len: u32| {
            for i in (0..len).rev() {
                bits.push((value >> i) & 1 == 1);
            }
        };
        let mut previous = [0i32; 4];
        for block in blocks {
            for (c, &sample) in block.iter().enumerate() {
                // A flat block of value v has DC = 8 * (v - 128) after the level shift.
                let dc = 8 * (i32::from(sample) - 128);
                let diff = dc - previous[c];
                previous[c] = dc;
                let category = 32 - diff.unsigned_abs().leading_zeros();
                push(category, 4);
                let magnitude = if diff < 0 { diff - 1 } else { diff };
                push(magnitude as u32 & ((1 << category) - 1), category);
                push(0, 1); // EOB
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        for byte in bits.chunks(8) {
            let byte = byte.iter().fold(0u8, |acc, &b| (acc << 1) | u8::from(b));
            out.push(byte);
            if byte == 0xFF {
                out.push(0x00); // byte stuffing
            }
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }

    #[test]
    fn adobe_cmyk_jpeg_becomes_rgb() {
        // Stored values are inverted (Adobe/Photoshop convention): stored 255 = no ink. PIL
        // gives R = (255 - C) * (255 - K) / 255 in ink terms, i.e. stored_c * stored_k / 255.
        let blocks = [
            [255, 0, 255, 255],   // magenta ink only -> (255, 0, 255)
            [255, 255, 255, 128], // half black -> ~(128, 128, 128)
            [0, 255, 255, 255],   // cyan ink only -> (0, 255, 255)
        ];
        let bytes = adobe_cmyk_jpeg(&blocks);
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (24, 8));
        for (i, block) in blocks.iter().enumerate() {
            let want: [u8; 3] = std::array::from_fn(|c| {
                ((u32::from(block[c]) * u32::from(block[3]) + 127) / 255) as u8
            });
            for y in 0..8 {
                for x in 0..8 {
                    let got = img.get_pixel(8 * i as u32 + x, y).0;
                    assert!(
                        close(got, want, 2),
                        "block {i} ({x},{y}): {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_and_garbage_are_refused() {
        let limits = DecodeLimits::default();
        assert!(matches!(decode(&[], &limits), Err(PreprocessError::Empty)));
        let err = decode(b"<html>not an image</html>", &limits).unwrap_err();
        assert!(
            matches!(err, PreprocessError::UnsupportedFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("3c 68 74 6d"), "{err}");
        // The right magic followed by garbage.
        for magic in [
            &b"\x89PNG\r\n\x1a\n"[..],
            &[0xFF, 0xD8, 0xFF],
            b"GIF89a",
            b"RIFF\x10\x00\x00\x00WEBPVP8 ",
            b"BM",
            b"II*\x00",
            b"MM\x00*",
        ] {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(b"\x00\x01garbage garbage garbage garbage garbage");
            let err = decode(&bytes, &limits).unwrap_err();
            assert!(
                matches!(
                    err,
                    PreprocessError::Corrupt { .. } | PreprocessError::UnsupportedFeature { .. }
                ),
                "{magic:?}: {err}"
            );
        }
    }

    /// One small encoded sample of every format.
    fn samples() -> Vec<(ImageFormat, Vec<u8>)> {
        let src = DynamicImage::ImageRgb8(quadrants(24, 16));
        let mut out: Vec<_> = [
            ImageFormat::Png,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ]
        .into_iter()
        .map(|f| (f, encode(&src, f)))
        .collect();
        out.push((
            ImageFormat::Gif,
            encode(&DynamicImage::ImageRgba8(src.to_rgba8()), ImageFormat::Gif),
        ));
        out.push((ImageFormat::Jpeg, jpeg(&src.to_rgb8())));
        out
    }

    #[test]
    fn truncated_input_is_an_error() {
        let limits = DecodeLimits::default();
        for (format, bytes) in samples() {
            assert!(decode(&bytes, &limits).is_ok(), "{format:?} sample");
            let half = &bytes[..bytes.len() / 2];
            let err = decode(half, &limits).unwrap_err();
            assert!(
                matches!(err, PreprocessError::Corrupt { .. }),
                "{format:?}: {err}"
            );
            assert!(err.to_string().contains(format_name(format)), "{err}");
        }
    }

    #[test]
    fn truncated_jpeg_is_refused_like_pil_does() {
        // libjpeg would return a partly filled image for these; PIL raises "image file is
        // truncated" for every one of them, including a file missing only its EOI marker.
        let photo = std::fs::read(fixtures().join("chelsea.jpg")).unwrap();
        let limits = DecodeLimits::default();
        for keep in [
            photo.len() / 2,
            photo.len() * 99 / 100,
            photo.len() - 10,
            photo.len() - 1,
        ] {
            let err = decode(&photo[..keep], &limits).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{keep}: {err}");
        }
        // Trailing bytes after the EOI marker are fine (some cameras append data).
        let mut padded = photo.clone();
        padded.extend_from_slice(b"\x00\x00trailer");
        assert_eq!(
            decode(&padded, &limits).unwrap(),
            decode(&photo, &limits).unwrap()
        );
        // An EOI inside an EXIF thumbnail does not make a truncated file look complete.
        let thumb = jpeg(&quadrants(8, 8));
        let mut with_thumb = photo[..2].to_vec();
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&thumb);
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
        with_thumb.extend_from_slice(&app1);
        with_thumb.extend_from_slice(&photo[2..]);
        assert!(decode(&with_thumb, &limits).is_ok());
        let cut = &with_thumb[..with_thumb.len() - 100];
        assert!(decode(cut, &limits).is_err());
    }

    #[test]
    fn no_prefix_or_bit_flip_makes_a_decoder_panic() {
        // Every prefix of every sample, and a few thousand single-byte corruptions: each must
        // decode or fail cleanly. `decode` turns a decoder panic into an error whose message
        // says so; that must not happen either.
        let limits = DecodeLimits::default();
        let check = |format: ImageFormat, bytes: &[u8], what: &str| {
            if let Err(err) = decode(bytes, &limits) {
                assert!(
                    !err.to_string().contains("panicked"),
                    "{format:?} {what}: {err}"
                );
            }
        };
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (format, bytes) in samples() {
            for len in 0..bytes.len() {
                check(format, &bytes[..len], &format!("prefix {len}"));
            }
            for _ in 0..500 {
                let mut corrupt = bytes.clone();
                let at = (next() % corrupt.len() as u64) as usize;
                corrupt[at] = next() as u8;
                check(format, &corrupt, &format!("byte {at} changed"));
            }
        }
    }

    /// CRC-32 (ISO-HDLC, as PNG uses), bit by bit: only for building test files.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// Headers that announce a huge image, followed by (almost) no pixel data.
    fn bomb_headers() -> Vec<(ImageFormat, Vec<u8>, u32, u32)> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        png_chunk(&mut png, b"IEND", &[]);

        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&54u32.to_le_bytes()); // file size (a lie)
        bmp.extend_from_slice(&[0; 4]);
        bmp.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
        bmp.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
                                                     // The BMP decoder itself refuses sides above 65535, so stay just under that.
        bmp.extend_from_slice(&60_000i32.to_le_bytes());
        bmp.extend_from_slice(&60_000i32.to_le_bytes());
        bmp.extend_from_slice(&1u16.to_le_bytes()); // planes
        bmp.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
        bmp.extend_from_slice(&[0; 24]); // BI_RGB, sizes, resolution, palette counts

        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&65535u16.to_le_bytes());
        gif.extend_from_slice(&65535u16.to_le_bytes());
        gif.extend_from_slice(&[0, 0, 0]); // no global palette
                                           // One 1x1 frame (the decoder reads up to the first frame descriptor), then the trailer.
        gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0, 0x3B]);

        // JPEG: a real small file with the frame header (SOF0) patched to 65535x65535.
        let mut jpeg = jpeg(&quadrants(16, 8));
        let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);

        // TIFF: little-endian, one IFD describing a 100000x100000 8-bit grey image in one strip.
        let mut tiff = b"II*\x00".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes());
        let entries: [(u16, u16, u32); 8] = [
            (256, 4, 100_000), // ImageWidth, LONG
            (257, 4, 100_000), // ImageLength, LONG
            (258, 3, 8),       // BitsPerSample, SHORT
            (259, 3, 1),       // Compression: none
            (262, 3, 1),       // PhotometricInterpretation: BlackIsZero
            (273, 4, 200),     // StripOffsets
            (278, 4, 100_000), // RowsPerStrip
            (279, 4, 4),       // StripByteCounts (a lie)
        ];
        tiff.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, value) in entries {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&kind.to_le_bytes());
            tiff.extend_from_slice(&1u32.to_le_bytes());
            if kind == 3 {
                tiff.extend_from_slice(&(value as u16).to_le_bytes());
                tiff.extend_from_slice(&[0, 0]);
            } else {
                tiff.extend_from_slice(&value.to_le_bytes());
            }
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.resize(204, 0);

        // WebP: a real small lossless file with the VP8L header patched to 16383x16383: 14 bits
        // width - 1, 14 bits height - 1, then alpha and version. (16384, the format's maximum,
        // reads as 0 in image-webp 0.2.4, which masks after adding 1; decode reports NoPixels.)
        let mut webp = encode(
            &DynamicImage::ImageRgb8(quadrants(16, 8)),
            ImageFormat::WebP,
        );
        assert_eq!(&webp[12..16], b"VP8L");
        let header = u32::from_le_bytes(webp[21..25].try_into().unwrap());
        let patched = (header & !((1 << 28) - 1)) | 16382 | (16382 << 14);
        webp[21..25].copy_from_slice(&patched.to_le_bytes());

        vec![
            (ImageFormat::Png, png, 100_000, 100_000),
            (ImageFormat::Bmp, bmp, 60_000, 60_000),
            (ImageFormat::Gif, gif, 65535, 65535),
            (ImageFormat::Jpeg, jpeg, 65535, 65535),
            (ImageFormat::Tiff, tiff, 100_000, 100_000),
            (ImageFormat::WebP, webp, 16383, 16383),
        ]
    }

    #[test]
    fn huge_headers_are_refused_before_allocating() {
        // The pixel buffers these headers announce are 12-30 GB; the refusal comes from the
        // header check (TooManyPixels is only produced there), so nothing that size exists.
        for (format, bytes, width, height) in bomb_headers() {
            let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
            let pixels = u64::from(width) * u64::from(height);
            match err {
                PreprocessError::TooManyPixels {
                    width: w,
                    height: h,
                    pixels: p,
                    max_pixels,
                } => {
                    assert_eq!((w, h, p), (width, height, pixels), "{format:?}");
                    assert_eq!(max_pixels, DecodeLimits::DEFAULT_MAX_PIXELS);
                }
                other => panic!("{format:?}: expected TooManyPixels, got {other}"),
            }
        }
    }

    #[test]
    fn decoder_limit_errors_name_max_pixels() {
        use image::error::{LimitError, LimitErrorKind};
        let limits = DecodeLimits { max_pixels: 1000 };
        let err = ImageError::Limits(LimitError::from_kind(LimitErrorKind::InsufficientMemory));
        let err = classify(ImageFormat::Gif, &limits, err);
        assert!(
            matches!(err, PreprocessError::LimitExceeded { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("GIF decoder memory limit exceeded (derived from max_pixels = 1000)"),
            "{msg}"
        );
        // 16 bytes per pixel plus a fixed 64 MiB allowance.
        assert_eq!(limits.image_limits().max_alloc, Some(16_000 + (64 << 20)));
        let huge = DecodeLimits {
            max_pixels: u64::MAX,
        };
        assert_eq!(huge.image_limits().max_alloc, Some(u64::MAX));
    }

    #[test]
    fn max_pixels_is_configurable_and_named_in_the_message() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(quadrants(30, 20)),
            ImageFormat::Png,
        );
        assert!(decode(&bytes, &DecodeLimits { max_pixels: 600 }).is_ok());
        let err = decode(&bytes, &DecodeLimits { max_pixels: 599 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is 30x20 = 600 pixels; the limit (max_pixels) is 599"
        );
        let err = DecodeLimits::default().check(30_000, 30_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is 30000x30000 = 900000000 pixels; the limit (max_pixels) is 40000000"
        );
    }

    /// The shared fixtures folder, beside the repository (`shared/fixtures`).
    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
    }

    #[test]
    fn decodes_the_real_photos() {
        let dir = fixtures();
        let limits = DecodeLimits::default();
        for (name, size) in [
            ("chelsea.png", (451, 300)),
            ("chelsea.jpg", (451, 300)),
            ("coffee.png", (600, 400)),
            ("coffee.jpg", (600, 400)),
        ] {
            let path = dir.join(name);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
            let img = decode(&bytes, &limits).unwrap();
            assert_eq!(img.dimensions(), size, "{name}");
        }
        // The JPEG and the PNG of the same photo agree to JPEG noise.
        let png = decode(&std::fs::read(dir.join("chelsea.png")).unwrap(), &limits).unwrap();
        let jpg = decode(&std::fs::read(dir.join("chelsea.jpg")).unwrap(), &limits).unwrap();
        let mean: f64 = png
            .as_raw()
            .iter()
            .zip(jpg.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / png.as_raw().len() as f64;
        assert!(mean < 4.0, "mean |png - jpg| = {mean}");
    }
}
