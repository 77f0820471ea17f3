//! How a request body becomes a list of images: raw image bytes, Hugging Face JSON with base64
//! strings (data URLs accepted, URLs refused), or a SageMaker SDK `.npy` array (`npy.rs`).

use base64::Engine as _;
use serde::Deserialize;

use super::error::CodecError;
use super::media::RequestFormat;
use super::npy;
use super::options::RawOptions;
use super::request::{ParsedRequest, RawImage};

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
pub(crate) fn parse_body(
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
        RequestFormat::Npy => npy::parse(body, max_pixels),
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
