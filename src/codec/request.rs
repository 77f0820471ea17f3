//! A request body once parsed: its records (one image each, with the options that came with
//! it, read lazily so a large body is never all in memory), how the client laid them out, and
//! the options the whole body carried.

use image::RgbImage;

use super::error::CodecError;
use super::options::RawOptions;

/// One image as it arrived: still encoded, or already pixels (`.npy` arrays).
pub(crate) enum RawImage {
    /// Encoded bytes (JPEG, PNG, ...), decoded later off the async runtime.
    Encoded(Vec<u8>),
    /// Decoded RGB pixels.
    Pixels(RgbImage),
}

/// One image of a request and the options sent with it alone (a JSON line's `parameters`).
pub(crate) struct Record {
    /// The image.
    pub(crate) image: RawImage,
    /// Options for this record only; they win over the request's.
    pub(crate) parameters: RawOptions,
}

/// How the client laid its images out, which decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyShape {
    /// One image: one answer.
    One,
    /// A JSON list or an `.npy` batch: a list of answers.
    List,
    /// JSON lines: one answer per line, in order.
    Lines,
}

/// The records in request order. A record that cannot be read is an error in its place, so
/// the others can still be answered.
pub(crate) type Records = Box<dyn Iterator<Item = Result<Record, CodecError>> + Send>;

/// A parsed request body.
pub(crate) struct ParsedRequest {
    /// The records, read as they are consumed.
    pub(crate) records: Records,
    /// How they were laid out.
    pub(crate) shape: BodyShape,
    /// Options for every record (a JSON document's `parameters`).
    pub(crate) parameters: RawOptions,
}

impl ParsedRequest {
    /// A request whose records are all read already.
    pub(crate) fn from_records(
        records: Vec<Result<Record, CodecError>>,
        shape: BodyShape,
        parameters: RawOptions,
    ) -> Self {
        ParsedRequest {
            records: Box::new(records.into_iter()),
            shape,
            parameters,
        }
    }

    /// One image with no options of its own.
    pub(crate) fn single(image: RawImage, parameters: RawOptions) -> Self {
        let record = Record {
            image,
            parameters: RawOptions::default(),
        };
        Self::from_records(vec![Ok(record)], BodyShape::One, parameters)
    }
}
