//! A request's answer put together from its records' answers, as they come (a large request is
//! answered window by window): one JSON value, a JSON list, JSON lines (no newline after the
//! last: batch transform's `AssembleWith=Line` adds one per record), a classification `.npy`
//! of scores `(n, classes)`, or the one picture or array of a one-image request. A record that
//! failed is an `{"error", "error_type"}` object in its place.

use serde_json::json;

use super::media::ResponseFormat;
use super::npy;
use super::request::BodyShape;
use super::respond::{to_json, Answer};
use crate::model::package::Task;
use crate::render::RenderError;

/// An answer being assembled.
pub(crate) struct AnswerBody {
    format: ResponseFormat,
    shape: BodyShape,
    /// A classification `.npy`: rows of scores, one per record.
    is_score_rows: bool,
    classes: usize,
    bytes: Vec<u8>,
    records: usize,
}

impl AnswerBody {
    /// An empty answer in `format` for a request laid out as `shape` to a model doing `task`
    /// with `classes` classes (the width of a classification `.npy`).
    pub(crate) fn new(
        format: ResponseFormat,
        shape: BodyShape,
        task: Task,
        classes: usize,
    ) -> Self {
        AnswerBody {
            format,
            shape,
            is_score_rows: format == ResponseFormat::Npy && task == Task::Classification,
            classes,
            bytes: Vec::new(),
            records: 0,
        }
    }

    /// Records answered so far.
    pub(crate) fn records(&self) -> usize {
        self.records
    }

    /// Bytes of answer so far.
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Adds the next record's answer.
    pub(crate) fn push(&mut self, answer: &Answer<'_>) -> Result<(), RenderError> {
        match self.format {
            ResponseFormat::Json | ResponseFormat::JsonLines => {
                let value = answer.json()?;
                self.push_json(&to_json(&value));
            }
            ResponseFormat::Npy if self.is_score_rows => {
                let row = answer.scores_in_label_order();
                self.bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                self.records += 1;
            }
            ResponseFormat::Npy | ResponseFormat::Png | ResponseFormat::Jpeg => {
                self.bytes = answer.encode(self.format)?;
                self.records += 1;
            }
        }
        Ok(())
    }

    /// Adds a failed record's error in its place (JSON answers only hold them).
    pub(crate) fn push_error(&mut self, message: &str, error_type: &str) {
        let value = json!({ "error": message, "error_type": error_type });
        self.push_json(&to_json(&value));
    }

    fn push_json(&mut self, value: &[u8]) {
        if self.records > 0 {
            let is_lines =
                self.format == ResponseFormat::JsonLines || self.shape == BodyShape::Lines;
            self.bytes.push(if is_lines { b'\n' } else { b',' });
        }
        self.bytes.extend_from_slice(value);
        self.records += 1;
    }

    /// The response body.
    pub(crate) fn finish(self) -> Vec<u8> {
        match self.format {
            ResponseFormat::Json if self.shape == BodyShape::List => {
                let mut out = Vec::with_capacity(self.bytes.len() + 2);
                out.push(b'[');
                out.extend(self.bytes);
                out.push(b']');
                out
            }
            ResponseFormat::Npy if self.is_score_rows => {
                npy::encode_f32_le(&[self.records, self.classes], &self.bytes)
            }
            _ => self.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::options::{RawOptions, RequestOptions};
    use crate::model::{Output, Prediction};

    fn body_of(format: ResponseFormat, shape: BodyShape, fail_second: bool) -> String {
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let options =
            RequestOptions::resolve(&RawOptions::default(), Task::Classification, &labels, 1)
                .expect("valid");
        let output = Output::Classes(vec![Prediction {
            class_id: 1,
            label: "dog".into(),
            score: 0.5,
        }]);
        let answer = Answer {
            output: &output,
            image: None,
            image_size: None,
            options: &options,
            labels: &labels,
            is_binary: false,
        };
        let mut body = AnswerBody::new(format, shape, Task::Classification, 2);
        body.push(&answer).expect("encodes");
        if fail_second {
            body.push_error("bad image", "invalid_image");
        } else {
            body.push(&answer).expect("encodes");
        }
        String::from_utf8_lossy(&body.finish()).into_owned()
    }

    #[test]
    fn lists_lines_and_errors_in_place() {
        let dog = r#"[{"label":"dog","score":0.5}]"#;
        let error = r#"{"error":"bad image","error_type":"invalid_image"}"#;
        assert_eq!(
            body_of(ResponseFormat::Json, BodyShape::List, true),
            format!("[{dog},{error}]")
        );
        // No newline after the last line: AssembleWith=Line adds one per record.
        assert_eq!(
            body_of(ResponseFormat::JsonLines, BodyShape::List, false),
            format!("{dog}\n{dog}")
        );
        assert_eq!(
            body_of(ResponseFormat::Json, BodyShape::Lines, true),
            format!("{dog}\n{error}")
        );
        let npy = body_of(ResponseFormat::Npy, BodyShape::List, false);
        assert!(npy.contains("'<f4'") && npy.contains("(2, 2)"), "{npy}");
        let empty = AnswerBody::new(
            ResponseFormat::Json,
            BodyShape::List,
            Task::Classification,
            2,
        );
        assert_eq!(empty.finish(), b"[]");
    }
}
