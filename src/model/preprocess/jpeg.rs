//! JPEG → 8-bit RGB with libjpeg-turbo's decoder, so wick sees the pixels Pillow gives the
//! training stack: Pillow's wheels decode with libjpeg-turbo (accurate integer IDCT, "fancy"
//! triangular chroma upsampling, its YCbCr → RGB tables), and any other decoder differs by a
//! few levels around edges and in chroma. The library is mozjpeg's build of libjpeg-turbo
//! (the `mozjpeg` crate, C compiled with `cc` and its SIMD assembled with nasm); its decoder is
//! libjpeg-turbo's, whose SIMD and C paths give the same bytes. Checked byte for byte against
//! Pillow for baseline and progressive JPEGs in 4:4:4, 4:2:2 and 4:2:0 and greyscale
//! (`tests/fixtures/pixels/jpeg.json`).
//!
//! Owns [`decode_jpeg`]: the pixel limit is checked on the frame header before libjpeg starts,
//! the EXIF orientation is read from the first `Exif` APP1 segment (as Pillow's
//! `exif_transpose`), and libjpeg's fatal errors (raised as unwinding panics by the crate) come
//! back as [`PreprocessError::Corrupt`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use image::error::{DecodingError, ImageFormatHint};
use image::metadata::Orientation;
use image::{DynamicImage, ImageError, ImageFormat, RgbImage};
use mozjpeg::{ColorSpace, Decompress, Marker};

use super::decode::DecodeLimits;
use super::error::PreprocessError;

/// What [`decode_jpeg`] found.
pub(super) enum Jpeg {
    /// The decoded image, orientation applied.
    Rgb(RgbImage),
    /// A CMYK or YCCK JPEG: libjpeg does not convert those to RGB; the caller decodes them
    /// with the `image` crate's decoder.
    Cmyk,
}

/// A JPEG error as the decode module reports every corrupt file.
fn corrupt(message: impl Into<String>) -> PreprocessError {
    PreprocessError::Corrupt {
        format: "JPEG",
        source: ImageError::Decoding(DecodingError::new(
            ImageFormatHint::Exact(ImageFormat::Jpeg),
            message.into(),
        )),
    }
}

/// The EXIF orientation of the first APP1 segment that holds EXIF (`Exif\0\0` then a TIFF
/// structure), if it has a valid one.
fn exif_orientation<R>(decompress: &Decompress<R>) -> Option<Orientation> {
    decompress
        .markers()
        .filter(|m| m.marker == Marker::APP(1))
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .and_then(Orientation::from_exif_chunk)
}

/// The `(width, height)` of the frame header (SOFn), found by walking the marker segments
/// before the first scan. libjpeg refuses sides over 65,500 with a generic error; reading the
/// size first lets every oversized header get the pixel-limit error that names the limit.
fn frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut pos = 2; // past SOI
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(pos + 1)?;
        match marker {
            // Fill byte before the marker code.
            0xFF => pos += 1,
            // SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let field = |at: usize| bytes.get(pos + at..pos + at + 2);
                let height = u16::from_be_bytes(field(5)?.try_into().ok()?);
                let width = u16::from_be_bytes(field(7)?.try_into().ok()?);
                return Some((width.into(), height.into()));
            }
            // Start of scan before any frame header: not a valid JPEG, libjpeg says so.
            0xDA => return None,
            _ => {
                let length = bytes.get(pos + 2..pos + 4)?;
                pos += 2 + usize::from(u16::from_be_bytes([length[0], length[1]]));
            }
        }
    }
}

/// Whether the linked libjpeg-turbo runs its SIMD code for the accurate integer IDCT, the
/// decoder's largest cost. The `mozjpeg-sys` build script falls back to the C code, with only
/// a cargo warning, when `nasm` is not on `PATH`, and keeps that result in its target
/// directory after nasm is installed. `wick bench`'s decode + preprocess to 224x224, C build
/// against SIMD build, 2026-12-07: a 1920x1080 JPEG 21.2 vs 9.9 ms, the 451x300 test photo
/// 1.68 vs 0.90 ms. Only x86 needs nasm; other architectures assemble their SIMD with the C
/// compiler.
#[allow(unsafe_code)]
pub(crate) fn has_simd() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        unsafe extern "C" {
            /// libjpeg-turbo's `jsimd.h`: nonzero when the IDCT has a SIMD version on this
            /// CPU; the C fallback (`jsimd_none.c`) always answers 0.
            fn jsimd_can_idct_islow() -> std::ffi::c_int;
        }
        // SAFETY: no arguments; it reads the CPU's features once (per thread) and a constant.
        unsafe { jsimd_can_idct_islow() != 0 }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    {
        true
    }
}

/// Decodes a JPEG (the caller has sniffed the format) to RGB as Pillow's
/// `ImageOps.exif_transpose(Image.open(f)).convert("RGB")` does.
pub(super) fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<Jpeg, PreprocessError> {
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, limits))) {
        Ok(result) => result,
        // The crate turns libjpeg's `error_exit` into a panic carrying libjpeg's message.
        Err(panic) => Err(corrupt(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg failed without a message".into()),
        )),
    }
}

/// [`decode_jpeg`] outside the unwinding guard.
fn decode_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<Jpeg, PreprocessError> {
    if let Some((width, height)) = frame_size(bytes) {
        limits.check(width, height)?;
    }
    let io_error = |err: std::io::Error| corrupt(format!("libjpeg: {err}"));
    // Reading the header allocates nothing the size of the image.
    let decompress = Decompress::with_markers(&[Marker::APP(1)])
        .from_mem(bytes)
        .map_err(io_error)?;
    let (width, height) = (decompress.width(), decompress.height());
    let (width, height) = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    limits.check(width, height)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::NoPixels { width, height });
    }
    if matches!(
        decompress.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    ) {
        return Ok(Jpeg::Cmyk);
    }
    // As Pillow: a malformed EXIF block leaves the image as it is.
    let orientation = exif_orientation(&decompress).unwrap_or(Orientation::NoTransforms);
    // libjpeg's defaults are Pillow's: ISLOW IDCT, fancy upsampling, block smoothing (which
    // only acts on a progressive file whose scans stop early). Greyscale comes out replicated.
    let mut started = decompress.rgb().map_err(io_error)?;
    let pixels: Vec<u8> = started.read_scanlines().map_err(io_error)?;
    started.finish().map_err(io_error)?;
    let image = RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| corrupt("libjpeg returned fewer rows than the header announced"))?;
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    Ok(Jpeg::Rgb(image.into_rgb8()))
}
