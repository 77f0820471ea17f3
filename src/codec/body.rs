//! How a request body becomes records: raw image bytes, Hugging Face JSON with base64
//! strings (data URLs accepted, URLs refused), JSON lines (`lines.rs`; also several JSON lines
//! sent as `application/json`, as batch transform does with the job's type), or a SageMaker
//! SDK `.npy` array (`npy.rs`).

use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;

use super::error::CodecError;
use super::lines;
use super::media::RequestFormat;
use super::npy;
use super::options::RawOptions;
use super::payload::Payload;
use super::request::{BodyShape, ParsedRequest, RawImage, Record};

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

/// Parses a body of the given format into records; `max_pixels` guards `.npy` pixel arrays.
pub(crate) fn parse_body(
    format: RequestFormat,
    payload: Payload,
    max_pixels: u64,
) -> Result<ParsedRequest, CodecError> {
    if payload.len_bytes() == 0 {
        return Err(CodecError::EmptyBody);
    }
    match format {
        RequestFormat::Image => Ok(ParsedRequest::single(
            RawImage::Encoded(payload.into_bytes().map_err(spool)?),
            RawOptions::default(),
        )),
        RequestFormat::Json => parse_json(payload),
        RequestFormat::JsonLines => Ok(lines::records(payload.into_reader().map_err(spool)?, None)),
        RequestFormat::Npy => npy::parse(payload, max_pixels),
    }
}

// A `map_err` adapter: it takes the error by value.
#[allow(clippy::needless_pass_by_value)]
pub(super) fn spool(err: std::io::Error) -> CodecError {
    CodecError::Spool(err.to_string())
}

/// One JSON document, or JSON lines when the first line is a whole JSON value and more
/// follows (a pretty-printed document's first line is not).
fn parse_json(payload: Payload) -> Result<ParsedRequest, CodecError> {
    let mut reader = payload.into_reader().map_err(spool)?;
    let first = lines::next_line(&mut *reader)
        .map_err(spool)?
        .unwrap_or_default();
    let is_value = serde_json::from_slice::<serde::de::IgnoredAny>(&first).is_ok();
    if is_value && !lines::only_whitespace_left(&mut *reader).map_err(spool)? {
        return Ok(lines::records(reader, Some(first)));
    }
    let mut body = first;
    reader.read_to_end(&mut body).map_err(spool)?;
    parse_json_document(&body)
}

fn parse_json_document(body: &[u8]) -> Result<ParsedRequest, CodecError> {
    let request: JsonRequest =
        serde_json::from_slice(body).map_err(|e| CodecError::InvalidJson(e.to_string()))?;
    let parameters = RawOptions::from_json(request.parameters);
    let (strings, shape) = match request.inputs {
        JsonInputs::One(s) => (vec![s], BodyShape::One),
        JsonInputs::Many(list) => (list, BodyShape::List),
    };
    let records = strings
        .iter()
        .enumerate()
        .map(|(index, s)| {
            decode_base64(s)
                .map(|bytes| Record {
                    image: RawImage::Encoded(bytes),
                    parameters: RawOptions::default(),
                })
                .map_err(|reason| CodecError::InvalidBase64 { index, reason })
        })
        .collect();
    Ok(ParsedRequest::from_records(records, shape, parameters))
}

/// A base64 image (or a data URL); the error says why not.
pub(super) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if text.starts_with("http://") || text.starts_with("https://") || text.starts_with("s3://") {
        return Err("is a URL: wick does not fetch URLs (endpoints may have no network access); send the image bytes base64-encoded".into());
    }
    // Browsers and some clients send data URLs.
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, data)| data).unwrap_or(rest),
        None => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| format!("is not valid base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: RequestFormat, body: &str) -> Result<ParsedRequest, CodecError> {
        parse_body(format, Payload::Memory(body.as_bytes().to_vec()), 1)
    }

    fn outcomes(parsed: ParsedRequest) -> Vec<Result<Vec<u8>, String>> {
        parsed
            .records
            .map(|r| match r {
                Ok(Record {
                    image: RawImage::Encoded(b),
                    ..
                }) => Ok(b),
                Ok(_) => Err("pixels".into()),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    #[test]
    fn json_bodies_take_one_or_many_base64_images() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"abc");
        let one = parse(RequestFormat::Json, &format!(r#"{{"inputs": "{b64}"}}"#)).expect("parses");
        assert!(one.shape == BodyShape::One && one.parameters == RawOptions::default());
        assert_eq!(outcomes(one), [Ok(b"abc".to_vec())]);
        let many = parse(
            RequestFormat::Json,
            &format!(r#"{{"inputs": ["{b64}", "data:image/png;base64,{b64}", "@@@", "http://x/cat.jpg"], "parameters": {{"top_k": 2}}}}"#),
        )
        .expect("parses");
        assert_eq!(many.shape, BodyShape::List);
        assert_eq!(
            many.parameters,
            RawOptions::from_json(
                serde_json::json!({"top_k": 2})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            )
        );
        let got = outcomes(many);
        assert_eq!(got[..2], [Ok(b"abc".to_vec()), Ok(b"abc".to_vec())]);
        // A bad item fails alone, in its place.
        let err = |i: usize| got[i].clone().err().unwrap_or_default();
        assert!(err(2).contains("inputs[2]"), "{}", err(2));
        assert!(err(3).contains("does not fetch URLs"), "{}", err(3));
        let empty = parse(RequestFormat::Json, r#"{"inputs": []}"#).expect("parses");
        assert!(empty.shape == BodyShape::List && outcomes(empty).is_empty());
        for (body, needle) in [
            (r#"{"image": "abc"}"#.to_string(), "invalid JSON"),
            (
                format!(r#"{{"inputs": "{b64}", "parameters": 3}}"#),
                "invalid JSON",
            ),
            ("not json".to_string(), "invalid JSON"),
            ("{\n  \"inputs\": 3\n}".to_string(), "invalid JSON"),
            (String::new(), "empty"),
        ] {
            let err = parse(RequestFormat::Json, &body)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn json_lines_sent_as_json_are_records() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"abc");
        let body = format!("{{\"inputs\": \"{b64}\"}}\n\"{b64}\"\n");
        for format in [RequestFormat::Json, RequestFormat::JsonLines] {
            let parsed = parse(format, &body).expect("parses");
            assert_eq!(parsed.shape, BodyShape::Lines);
            assert_eq!(outcomes(parsed).len(), 2);
        }
        // One line followed by nothing is one JSON document.
        let one = parse(
            RequestFormat::Json,
            &format!("{{\"inputs\": \"{b64}\"}}\n\n"),
        )
        .expect("parses");
        assert_eq!(one.shape, BodyShape::One);
        // A pretty-printed document is one document.
        let pretty = parse(
            RequestFormat::Json,
            &format!("{{\n \"inputs\": [\"{b64}\"]\n}}"),
        )
        .expect("parses");
        assert_eq!(pretty.shape, BodyShape::List);
    }
}
