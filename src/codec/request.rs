//! A request body once parsed: its images, still encoded or already pixels, whether the client
//! sent a list, and the options a JSON body carried.

use image::RgbImage;

use super::options::RawOptions;

/// One image as it arrived: still encoded, or already pixels (`.npy` arrays).
pub(crate) enum RawImage {
    /// Encoded bytes (JPEG, PNG, ...), decoded later off the async runtime.
    Encoded(Vec<u8>),
    /// Decoded RGB pixels.
    Pixels(RgbImage),
}

/// A parsed request body.
pub(crate) struct ParsedRequest {
    /// The images, in request order.
    pub(crate) images: Vec<RawImage>,
    /// Whether the client sent a list (and so expects a list of results).
    pub(crate) is_list: bool,
    /// A JSON body's `parameters`.
    pub(crate) parameters: RawOptions,
}
