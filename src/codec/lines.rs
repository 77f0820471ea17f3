//! JSON lines request bodies, as SageMaker batch transform sends a `SplitType=Line`
//! mini-batch: one record per line, `{"inputs": "<base64>", "parameters": {...}}` or a bare
//! base64 string. Lines are read one at a time from the (possibly spooled) body, so a body of
//! any size is never all in memory; blank lines are not records.

use std::borrow::Cow;
use std::io::BufRead;

use serde::Deserialize;
use serde_json::Value;

use super::body::decode_base64;
use super::error::CodecError;
use super::options::RawOptions;
use super::request::{BodyShape, ParsedRequest, RawImage, Record};

/// A line's object. `inputs` borrows from the line: a record of tens of megabytes of base64
/// is not copied before it is decoded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineObject<'a> {
    #[serde(borrow)]
    inputs: Cow<'a, str>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// The records of a JSON lines body; `first` is a line already read from `reader`.
pub(super) fn records(reader: Box<dyn BufRead + Send>, first: Option<Vec<u8>>) -> ParsedRequest {
    ParsedRequest {
        records: Box::new(LineRecords {
            reader,
            has_pending: first.is_some(),
            line: first.unwrap_or_default(),
            index: 0,
            is_done: false,
        }),
        shape: BodyShape::Lines,
        parameters: RawOptions::default(),
    }
}

/// The next line holding more than whitespace, without its line ending; `None` at the end.
pub(super) fn next_line(reader: &mut dyn BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    Ok(read_line_into(reader, &mut line)?.then_some(line))
}

/// [`next_line`] into `line` (cleared first), so one buffer serves every line of a body;
/// `false` at the end.
fn read_line_into(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        line.clear();
        if reader.read_until(b'\n', line)? == 0 {
            return Ok(false);
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            while line.last().is_some_and(|b| b.is_ascii_whitespace()) {
                line.pop();
            }
            return Ok(true);
        }
    }
}

/// Whether only whitespace is left in `reader` (which it consumes).
pub(super) fn only_whitespace_left(reader: &mut dyn BufRead) -> std::io::Result<bool> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(true);
        }
        if buffer.iter().any(|b| !b.is_ascii_whitespace()) {
            return Ok(false);
        }
        let n = buffer.len();
        reader.consume(n);
    }
}

struct LineRecords {
    reader: Box<dyn BufRead + Send>,
    /// The current line; reused, so a body of large records does not allocate one per line.
    line: Vec<u8>,
    /// Whether `line` holds a line already read and not yet parsed.
    has_pending: bool,
    index: usize,
    is_done: bool,
}

impl Iterator for LineRecords {
    type Item = Result<Record, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.is_done {
            return None;
        }
        let has_line = if std::mem::take(&mut self.has_pending) {
            Ok(true)
        } else {
            read_line_into(&mut *self.reader, &mut self.line)
        };
        match has_line {
            Ok(true) => {}
            Ok(false) => {
                self.is_done = true;
                return None;
            }
            Err(err) => {
                self.is_done = true;
                return Some(Err(CodecError::Spool(err.to_string())));
            }
        }
        let index = self.index;
        self.index += 1;
        Some(parse_line(index, &self.line))
    }
}

fn parse_line(index: usize, line: &[u8]) -> Result<Record, CodecError> {
    let invalid = |reason: String| CodecError::InvalidRecord { index, reason };
    // Parsed straight into borrowed text (no `Value` holding a copy of the image): the line
    // is the only copy of the base64 until it is decoded.
    let (text, parameters) = match line.first() {
        Some(b'"') => {
            let text: Cow<'_, str> =
                serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
            (text, RawOptions::default())
        }
        Some(b'{') => {
            let object: LineObject =
                serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
            (object.inputs, RawOptions::from_json(object.parameters))
        }
        _ => {
            let value: Value = serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
            return Err(invalid(format!("a JSON {}", kind(&value))));
        }
    };
    let bytes = decode_base64(&text).map_err(|reason| invalid(format!("`inputs` {reason}")))?;
    Ok(Record {
        image: RawImage::Encoded(bytes),
        parameters,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::io::Cursor;

    #[test]
    fn each_line_is_a_record_in_order_and_a_bad_line_fails_alone() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = format!(
            "{{\"inputs\": \"{}\", \"parameters\": {{\"top_k\": 2}}}}\r\n\n\"{}\"\nnot json\n{{\"inputs\": [\"{}\"]}}\n\"@@@\"\n[1]\n  \n",
            b64("one"),
            b64("two"),
            b64("x")
        );
        let parsed = records(Box::new(Cursor::new(body.into_bytes())), None);
        assert_eq!(parsed.shape, BodyShape::Lines);
        let got: Vec<Result<Record, CodecError>> = parsed.records.collect();
        assert_eq!(got.len(), 6, "blank lines are not records");
        let bytes = |r: &Result<Record, CodecError>| match r {
            Ok(Record {
                image: RawImage::Encoded(b),
                ..
            }) => b.clone(),
            _ => Vec::new(),
        };
        assert_eq!(bytes(&got[0]), b"one");
        assert!(got[0]
            .as_ref()
            .is_ok_and(|r| r.parameters != RawOptions::default()));
        assert_eq!(bytes(&got[1]), b"two");
        for (i, needle) in [
            (2, "record 2"),
            (3, "sequence"),
            (4, "base64"),
            (5, "a JSON list"),
        ] {
            let err = got[i]
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(err.contains(needle), "{i}: {err}");
        }
    }
}
