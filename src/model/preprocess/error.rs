//! [`PreprocessError`]: every way request bytes can fail to become a model input, shared by
//! decoding and the transform.

/// Everything that can go wrong between request bytes and a model input.
///
/// Messages are meant for the API caller and are self-contained: they name the field or limit
/// and the offending value, and `Corrupt` / `UnsupportedFeature` / `LimitExceeded` include the
/// decoder's own message (also available through `source`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// The input has zero bytes.
    #[error("empty input: the image has 0 bytes")]
    Empty,
    /// The leading bytes are not a JPEG, PNG, WebP, GIF, BMP or TIFF signature.
    #[error("unsupported image format: {detail}; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF (detected from the content, not the name)")]
    UnsupportedFormat {
        /// What was detected, e.g. the first bytes in hex.
        detail: String,
    },
    /// The format is accepted but this file uses a feature the decoder lacks (e.g. 12-bit JPEG).
    #[error("unsupported {format} feature: {source}")]
    UnsupportedFeature {
        /// Detected format name.
        format: &'static str,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// The data is damaged, truncated or not really of the detected format.
    #[error("corrupt or truncated {format} image: {source}")]
    Corrupt {
        /// Detected format name.
        format: &'static str,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// The header announces more pixels than `max_pixels` (checked before any pixel buffer is
    /// allocated: decompression-bomb guard).
    #[error("image is {width}x{height} = {pixels} pixels; the limit (max_pixels) is {max_pixels}")]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The configured limit.
        max_pixels: u64,
    },
    /// A decoder hit the allocation limit derived from `max_pixels` (the second guard).
    #[error(
        "{format} decoder memory limit exceeded (derived from max_pixels = {max_pixels}): {source}"
    )]
    LimitExceeded {
        /// Detected format name.
        format: &'static str,
        /// The configured limit.
        max_pixels: u64,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// The image has a zero width or height.
    #[error("image is {width}x{height}: it has no pixels")]
    NoPixels {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
    /// A large image read row by row is damaged or truncated.
    #[error("corrupt or truncated {format} image: {reason}")]
    StreamCorrupt {
        /// Detected format name.
        format: &'static str,
        /// The decoder's error.
        reason: String,
    },
    /// An image over the in-memory limit that cannot be read row by row either.
    #[error(
        "this {format} image is over --max-image-pixels and cannot be read row by row: {reason}"
    )]
    NotStreamable {
        /// Detected format name.
        format: &'static str,
        /// Why not.
        reason: String,
    },
    /// A [`PreprocessConfig`](super::PreprocessConfig) field is out of range.
    #[error("invalid preprocessing config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// Field name, as in the config.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// The resampler rejected its arguments (a bug in the crop geometry, not bad input).
    #[error("internal error while resizing: {0}")]
    Resize(#[from] fast_image_resize::ResizeError),
}
