//! What a request can be wrong about, before the model sees it: the media types, the body's
//! encoding, the options. `serve` maps each variant to an HTTP status; `wick predict` prints it.

/// What a request body can be wrong about.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// The Content-Type is not one wick reads.
    #[error("Content-Type `{0}` is not supported; send image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff, application/x-image, application/octet-stream, file-path/raw-bytes, application/json, application/jsonlines, application/x-npy or multipart/form-data")]
    UnsupportedMediaType(String),
    /// No acceptable response type in Accept.
    #[error("Accept `{accept}` cannot be satisfied; this model answers {offered}")]
    NotAcceptable {
        /// The Accept header sent.
        accept: String,
        /// The media types the model's task offers.
        offered: &'static str,
    },
    /// An image answer was asked for a request holding several images.
    #[error("an image answer (Accept: {accept}) holds one image, but the request has {images}; send one image or Accept application/json")]
    OneImageOnly {
        /// The image media type asked for.
        accept: &'static str,
        /// Images in the request.
        images: usize,
    },
    /// The body is empty.
    #[error("the request body is empty; send an image")]
    EmptyBody,
    /// The JSON body does not parse or has the wrong shape.
    #[error("invalid JSON body: {0}; expected {{\"inputs\": \"<base64 image>\" | [\"<base64>\", ...], \"parameters\": {{...}}}}")]
    InvalidJson(String),
    /// A base64 string does not decode.
    #[error("`inputs[{index}]` is not valid base64: {reason}")]
    InvalidBase64 {
        /// Position in `inputs` (0 for a single string).
        index: usize,
        /// What the decoder found.
        reason: String,
    },
    /// One JSON line (a record) cannot be read; the other records still can.
    #[error("record {index} is not a valid JSON line: {reason}; a line is {{\"inputs\": \"<base64 image>\", \"parameters\": {{...}}}} or \"<base64 image>\"")]
    InvalidRecord {
        /// Position among the records, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The spooled body could not be read back (a disk problem, not the client's).
    #[error("reading the spooled request body: {0}")]
    Spool(String),
    /// The `.npy` payload is malformed or has an unsupported dtype or shape.
    #[error("invalid application/x-npy body: {0}")]
    InvalidNpy(String),
    /// A parameter has a value wick cannot use.
    #[error("parameter `{name}` must be {expected} (given: {value})")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// What is allowed.
        expected: &'static str,
        /// What was sent.
        value: String,
    },
    /// Custom attributes longer than SageMaker allows.
    #[error("X-Amzn-SageMaker-Custom-Attributes is {given} characters; the limit is {limit}")]
    CustomAttributesTooLong {
        /// Length sent.
        given: usize,
        /// The longest value SageMaker forwards.
        limit: usize,
    },
    /// An `.npy` pixel array larger than the pixel limit.
    #[error("image is {width}x{height} = {pixels} pixels; the limit (max_pixels) is {max_pixels}")]
    TooManyPixels {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Their product.
        pixels: u64,
        /// The configured limit.
        max_pixels: u64,
    },
}
