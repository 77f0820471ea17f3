//! The wire formats of `/invocations`, without HTTP: which request Content-Types and response
//! Accepts are understood, how a body becomes a list of images (raw bytes, Hugging Face JSON
//! with base64, SageMaker SDK `.npy`), how custom attributes are read, and how predictions are
//! written back (JSON or JSON Lines).

use base64::Engine as _;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::model::Prediction;

/// The longest `X-Amzn-SageMaker-Custom-Attributes` value SageMaker forwards.
pub const MAX_CUSTOM_ATTRIBUTES_CHARS: usize = 1024;

/// What a request body can be wrong about.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The Content-Type is not one wick reads.
    #[error("Content-Type `{0}` is not supported; send image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff, application/x-image, application/octet-stream, application/json or application/x-npy")]
    UnsupportedMediaType(String),
    /// No acceptable response type in Accept.
    #[error(
        "Accept `{0}` cannot be satisfied; wick answers application/json or application/jsonlines"
    )]
    NotAcceptable(String),
    /// The body is empty.
    #[error("the request body is empty; send an image")]
    EmptyBody,
    /// The JSON body does not parse or has the wrong shape.
    #[error("invalid JSON body: {0}; expected {{\"inputs\": \"<base64 image>\" | [\"<base64>\", ...], \"parameters\": {{\"top_k\": 5}}}}")]
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
            _ => None,
        }
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::JsonLines => "application/jsonlines",
        }
    }

    /// The first acceptable format of an Accept header, in the client's order; `*/*`,
    /// `application/*` and a missing header mean `default`. Quality values are not ranked.
    pub fn negotiate(accept: Option<&str>, default: ResponseFormat) -> Result<Self, CodecError> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(default);
        };
        for range in accept.split(',') {
            let media = range.split(';').next().unwrap_or_default().trim();
            if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                return Ok(default);
            }
            if let Some(format) = Self::from_media_type(media) {
                return Ok(format);
            }
        }
        Err(CodecError::NotAcceptable(accept.to_string()))
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
    /// `parameters.top_k` from a JSON body.
    pub top_k: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    inputs: JsonInputs,
    #[serde(default)]
    parameters: JsonParameters,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonInputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct JsonParameters {
    top_k: Option<serde_json::Value>,
    /// Accepted for Hugging Face compatibility; wick applies the model's own function.
    #[allow(dead_code)]
    function_to_apply: Option<String>,
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
            top_k: None,
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
    let top_k = match request.parameters.top_k {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|k| *k >= 1)
                .map(|k| k as usize)
                .ok_or_else(|| CodecError::InvalidParameter {
                    name: "top_k",
                    expected: "a whole number >= 1",
                    value: v.to_string(),
                })?,
        ),
    };
    Ok(ParsedRequest {
        images,
        is_list,
        top_k,
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

/// Options from `X-Amzn-SageMaker-Custom-Attributes` (`top_k=3;trace=abc`); unknown keys are
/// ignored and echoed nowhere.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CustomAttributes {
    /// `top_k=N`.
    pub top_k: Option<usize>,
}

impl CustomAttributes {
    /// Parses the header value.
    pub fn parse(value: Option<&str>) -> Result<Self, CodecError> {
        let Some(value) = value else {
            return Ok(Self::default());
        };
        let chars = value.chars().count();
        if chars > MAX_CUSTOM_ATTRIBUTES_CHARS {
            return Err(CodecError::CustomAttributesTooLong { given: chars });
        }
        let mut attributes = Self::default();
        for pair in value.split([';', ',']) {
            let Some((key, v)) = pair.split_once('=') else {
                continue;
            };
            if matches!(key.trim(), "top_k" | "topk" | "top-k") {
                let k = v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(|| CodecError::InvalidParameter {
                        name: "top_k",
                        expected: "a whole number >= 1",
                        value: v.trim().to_string(),
                    })?;
                attributes.top_k = Some(k);
            }
        }
        Ok(attributes)
    }
}

/// Writes the predictions: a list per image; for JSON, a single image's list alone unless the
/// request sent a list.
pub fn encode(results: &[Vec<Prediction>], is_list: bool, format: ResponseFormat) -> Vec<u8> {
    // Serialising strings and floats cannot fail (NaN scores become null).
    fn json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }
    match format {
        ResponseFormat::Json if is_list => json(results),
        ResponseFormat::Json => json(results.first().map(Vec::as_slice).unwrap_or_default()),
        ResponseFormat::JsonLines => {
            let mut out = Vec::new();
            for result in results {
                out.extend(json(result));
                out.push(b'\n');
            }
            out
        }
    }
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
    fn accept_negotiation_follows_the_clients_order() {
        let json = ResponseFormat::Json;
        assert_eq!(ResponseFormat::negotiate(None, json).ok(), Some(json));
        assert_eq!(
            ResponseFormat::negotiate(Some("*/*"), ResponseFormat::JsonLines).ok(),
            Some(ResponseFormat::JsonLines)
        );
        assert_eq!(
            ResponseFormat::negotiate(Some("application/xml, application/jsonlines;q=0.9"), json)
                .ok(),
            Some(ResponseFormat::JsonLines)
        );
        assert!(ResponseFormat::negotiate(Some("application/xml"), json).is_err());
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
        assert!(!one.is_list && one.images.len() == 1 && one.top_k.is_none());
        let many = parse_body(
            RequestFormat::Json,
            format!(r#"{{"inputs": ["{b64}", "data:image/png;base64,{b64}"], "parameters": {{"top_k": 2}}}}"#).as_bytes(),
            1,
        )
        .expect("parses");
        assert!(many.is_list && many.images.len() == 2 && many.top_k == Some(2));
        for (body, needle) in [
            (r#"{"inputs": "@@@"}"#.to_string(), "inputs[0]"),
            (
                r#"{"inputs": ["http://x/cat.jpg"]}"#.to_string(),
                "does not fetch URLs",
            ),
            (r#"{"inputs": []}"#.to_string(), "empty list"),
            (r#"{"image": "abc"}"#.to_string(), "invalid JSON"),
            (
                format!(r#"{{"inputs": "{b64}", "parameters": {{"top_k": 0}}}}"#),
                "top_k",
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

    #[test]
    fn custom_attributes_give_top_k_and_enforce_the_length_limit() {
        assert_eq!(
            CustomAttributes::parse(Some("trace=abc;top_k=3")).ok(),
            Some(CustomAttributes { top_k: Some(3) })
        );
        assert_eq!(
            CustomAttributes::parse(Some("anything")).ok(),
            Some(CustomAttributes::default())
        );
        assert!(CustomAttributes::parse(Some("top_k=zero")).is_err());
        let long = "a".repeat(MAX_CUSTOM_ATTRIBUTES_CHARS + 1);
        let err = CustomAttributes::parse(Some(&long))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("1025") && err.contains("1024"), "{err}");
    }

    #[test]
    fn responses_are_a_list_per_image() {
        let p = |label: &str| Prediction {
            label: label.into(),
            score: 0.5,
        };
        let results = vec![vec![p("cat")], vec![p("dog")]];
        assert_eq!(
            encode(&results[..1], false, ResponseFormat::Json),
            br#"[{"label":"cat","score":0.5}]"#.to_vec()
        );
        assert_eq!(
            String::from_utf8(encode(&results, true, ResponseFormat::Json)).unwrap_or_default(),
            r#"[[{"label":"cat","score":0.5}],[{"label":"dog","score":0.5}]]"#
        );
        assert_eq!(
            String::from_utf8(encode(&results, true, ResponseFormat::JsonLines))
                .unwrap_or_default(),
            "[{\"label\":\"cat\",\"score\":0.5}]\n[{\"label\":\"dog\",\"score\":0.5}]\n"
        );
    }
}
