//! The wire formats of `/invocations`, without HTTP: which request Content-Types and response
//! Accepts are understood, how a body becomes a list of images (raw bytes, Hugging Face JSON
//! with base64, SageMaker SDK `.npy`), and which answer formats each task offers. Options live in
//! `options.rs`, answers are written in `respond.rs`.

use base64::Engine as _;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::options::{RawOptions, MAX_CUSTOM_ATTRIBUTES_CHARS};
use crate::model::package::Task;

/// What a request body can be wrong about.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The Content-Type is not one wick reads.
    #[error("Content-Type `{0}` is not supported; send image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff, application/x-image, application/octet-stream, application/json or application/x-npy")]
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
    #[error("X-Amzn-SageMaker-Custom-Attributes is {given} characters; the limit is {MAX_CUSTOM_ATTRIBUTES_CHARS}")]
    CustomAttributesTooLong {
        /// Length sent.
        given: usize,
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

/// How the request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    /// One encoded image; the format is sniffed from its magic bytes.
    Image,
    /// `{"inputs": ..., "parameters": ...}` with base64 images.
    Json,
    /// A NumPy `.npy` array (SageMaker Python SDK `NumpySerializer`).
    Npy,
}

impl RequestFormat {
    /// The format for a Content-Type header value; a missing one is treated as raw bytes.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, CodecError> {
        let Some(raw) = content_type else {
            return Ok(RequestFormat::Image);
        };
        let media = raw
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "image/jpeg"
            | "image/jpg"
            | "image/png"
            | "image/webp"
            | "image/gif"
            | "image/bmp"
            | "image/tiff"
            | "application/x-image"
            | "image/x-image"
            | "application/octet-stream"
            | "" => Ok(RequestFormat::Image),
            "application/json" => Ok(RequestFormat::Json),
            "application/x-npy" => Ok(RequestFormat::Npy),
            _ => Err(CodecError::UnsupportedMediaType(raw.to_string())),
        }
    }
}

/// How predictions are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResponseFormat {
    /// One JSON document.
    Json,
    /// One JSON document per image, newline-separated (batch transform's record format).
    JsonLines,
    /// A PNG image: a label map, an overlay or drawn boxes (segmentation and detection).
    Png,
    /// A JPEG image: an overlay or drawn boxes (segmentation and detection).
    Jpeg,
}

impl ResponseFormat {
    /// The format named by one media type, if wick produces it.
    pub fn from_media_type(media: &str) -> Option<Self> {
        match media
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "application/json" => Some(ResponseFormat::Json),
            "application/jsonlines" | "application/jsonl" | "application/x-jsonlines" => {
                Some(ResponseFormat::JsonLines)
            }
            "image/png" => Some(ResponseFormat::Png),
            "image/jpeg" | "image/jpg" => Some(ResponseFormat::Jpeg),
            _ => None,
        }
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::JsonLines => "application/jsonlines",
            ResponseFormat::Png => "image/png",
            ResponseFormat::Jpeg => "image/jpeg",
        }
    }

    /// Whether the answer is an image.
    pub fn is_image(self) -> bool {
        matches!(self, ResponseFormat::Png | ResponseFormat::Jpeg)
    }

    /// Whether a model doing `task` can answer in this format.
    pub fn suits(self, task: Task) -> bool {
        !self.is_image() || task != Task::Classification
    }

    /// The first acceptable format of an Accept header for a model doing `task`, in the
    /// client's order; `*/*`, `application/*` and a missing header mean `default`. Quality
    /// values are not ranked.
    pub fn negotiate(
        accept: Option<&str>,
        default: ResponseFormat,
        task: Task,
    ) -> Result<Self, CodecError> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(default);
        };
        for range in accept.split(',') {
            let media = range.split(';').next().unwrap_or_default().trim();
            if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                return Ok(default);
            }
            if media.eq_ignore_ascii_case("image/*") && task != Task::Classification {
                return Ok(ResponseFormat::Png);
            }
            if let Some(format) = Self::from_media_type(media).filter(|f| f.suits(task)) {
                return Ok(format);
            }
        }
        Err(CodecError::NotAcceptable {
            accept: accept.to_string(),
            offered: match task {
                Task::Classification => "application/json or application/jsonlines",
                Task::Segmentation | Task::Detection => {
                    "application/json, application/jsonlines, image/png or image/jpeg"
                }
            },
        })
    }
}

/// One image as it arrived: still encoded, or already pixels (`.npy` arrays).
pub enum RawImage {
    /// Encoded bytes (JPEG, PNG, ...), decoded later off the async runtime.
    Encoded(Vec<u8>),
    /// Decoded RGB pixels.
    Pixels(RgbImage),
}

/// A parsed request body.
pub struct ParsedRequest {
    /// The images, in request order.
    pub images: Vec<RawImage>,
    /// Whether the client sent a list (and so expects a list of results).
    pub is_list: bool,
    /// A JSON body's `parameters`.
    pub parameters: RawOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    inputs: JsonInputs,
    /// Validated later against the model (`options.rs`).
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonInputs {
    One(String),
    Many(Vec<String>),
}

/// Parses a body of the given format into images; `max_pixels` guards `.npy` pixel arrays.
pub fn parse_body(
    format: RequestFormat,
    body: &[u8],
    max_pixels: u64,
) -> Result<ParsedRequest, CodecError> {
    if body.is_empty() {
        return Err(CodecError::EmptyBody);
    }
    match format {
        RequestFormat::Image => Ok(ParsedRequest {
            images: vec![RawImage::Encoded(body.to_vec())],
            is_list: false,
            parameters: RawOptions::default(),
        }),
        RequestFormat::Json => parse_json(body),
        RequestFormat::Npy => super::npy::parse(body, max_pixels),
    }
}

fn parse_json(body: &[u8]) -> Result<ParsedRequest, CodecError> {
    let request: JsonRequest =
        serde_json::from_slice(body).map_err(|e| CodecError::InvalidJson(e.to_string()))?;
    let (strings, is_list) = match request.inputs {
        JsonInputs::One(s) => (vec![s], false),
        JsonInputs::Many(list) if list.is_empty() => {
            return Err(CodecError::InvalidJson("`inputs` is an empty list".into()))
        }
        JsonInputs::Many(list) => (list, true),
    };
    let images = strings
        .iter()
        .enumerate()
        .map(|(index, s)| decode_base64(index, s).map(RawImage::Encoded))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedRequest {
        images,
        is_list,
        parameters: RawOptions::from_json(request.parameters),
    })
}

fn decode_base64(index: usize, text: &str) -> Result<Vec<u8>, CodecError> {
    let text = text.trim();
    if text.starts_with("http://") || text.starts_with("https://") || text.starts_with("s3://") {
        return Err(CodecError::InvalidBase64 {
            index,
            reason: "wick does not fetch URLs (endpoints may have no network access); send the image bytes base64-encoded".into(),
        });
    }
    // Browsers and some clients send data URLs.
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, data)| data).unwrap_or(rest),
        None => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| CodecError::InvalidBase64 {
            index,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_map_to_formats() {
        for ct in [
            "image/jpeg",
            "image/png; charset=binary",
            "application/x-image",
            "image/x-image",
            "application/octet-stream",
            "IMAGE/WEBP",
        ] {
            assert_eq!(
                RequestFormat::from_content_type(Some(ct)).ok(),
                Some(RequestFormat::Image),
                "{ct}"
            );
        }
        assert_eq!(
            RequestFormat::from_content_type(None).ok(),
            Some(RequestFormat::Image)
        );
        assert_eq!(
            RequestFormat::from_content_type(Some("application/json; charset=utf-8")).ok(),
            Some(RequestFormat::Json)
        );
        assert_eq!(
            RequestFormat::from_content_type(Some("application/x-npy")).ok(),
            Some(RequestFormat::Npy)
        );
        let err = RequestFormat::from_content_type(Some("text/csv"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("text/csv"), "{err}");
    }

    #[test]
    fn accept_negotiation_follows_the_clients_order_and_the_task() {
        let json = ResponseFormat::Json;
        let classification = Task::Classification;
        assert_eq!(
            ResponseFormat::negotiate(None, json, classification).ok(),
            Some(json)
        );
        assert_eq!(
            ResponseFormat::negotiate(Some("*/*"), ResponseFormat::JsonLines, classification).ok(),
            Some(ResponseFormat::JsonLines)
        );
        assert_eq!(
            ResponseFormat::negotiate(
                Some("application/xml, application/jsonlines;q=0.9"),
                json,
                classification
            )
            .ok(),
            Some(ResponseFormat::JsonLines)
        );
        assert!(ResponseFormat::negotiate(Some("application/xml"), json, classification).is_err());
        // Images answer only for the tasks that have one to give.
        let err = ResponseFormat::negotiate(Some("image/png"), json, classification)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("image/png") && err.contains("application/json"),
            "{err}"
        );
        for task in [Task::Segmentation, Task::Detection] {
            assert_eq!(
                ResponseFormat::negotiate(Some("image/png"), json, task).ok(),
                Some(ResponseFormat::Png)
            );
            assert_eq!(
                ResponseFormat::negotiate(Some("image/jpeg"), json, task).ok(),
                Some(ResponseFormat::Jpeg)
            );
        }
    }

    #[test]
    fn json_bodies_take_one_or_many_base64_images() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"abc");
        let one = parse_body(
            RequestFormat::Json,
            format!(r#"{{"inputs": "{b64}"}}"#).as_bytes(),
            1,
        )
        .expect("parses");
        assert!(!one.is_list && one.images.len() == 1 && one.parameters == RawOptions::default());
        let many = parse_body(
            RequestFormat::Json,
            format!(r#"{{"inputs": ["{b64}", "data:image/png;base64,{b64}"], "parameters": {{"top_k": 2}}}}"#).as_bytes(),
            1,
        )
        .expect("parses");
        assert!(many.is_list && many.images.len() == 2);
        assert_eq!(
            many.parameters,
            RawOptions::from_json(
                serde_json::json!({"top_k": 2})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            )
        );
        for (body, needle) in [
            (r#"{"inputs": "@@@"}"#.to_string(), "inputs[0]"),
            (
                r#"{"inputs": ["http://x/cat.jpg"]}"#.to_string(),
                "does not fetch URLs",
            ),
            (r#"{"inputs": []}"#.to_string(), "empty list"),
            (r#"{"image": "abc"}"#.to_string(), "invalid JSON"),
            (
                format!(r#"{{"inputs": "{b64}", "parameters": 3}}"#),
                "invalid JSON",
            ),
            ("not json".to_string(), "invalid JSON"),
        ] {
            let err = parse_body(RequestFormat::Json, body.as_bytes(), 1)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
