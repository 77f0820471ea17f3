//! Per-request options: read from JSON `parameters` or from `X-Amzn-SageMaker-Custom-Attributes`
//! (the only header SageMaker forwards), then checked against what the model does. Unknown
//! attribute keys are ignored (clients put tracing data there); a known key with a bad value,
//! or one that does not apply to the model's task, is a 400 naming the key and the value.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::CodecError;
use crate::model::package::Task;
use crate::model::{DetectOptions, InferenceOptions, ScoreFunction};

/// The longest `X-Amzn-SageMaker-Custom-Attributes` value SageMaker forwards.
pub(crate) const MAX_CUSTOM_ATTRIBUTES_CHARS: usize = 1024;

/// The most boxes a request may ask for.
pub(crate) const MAX_DETECTIONS_LIMIT: usize = 10_000;

/// Option values as sent, before validation: strings from the header, JSON values from a body.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawOptions(BTreeMap<String, Value>);

impl RawOptions {
    /// Parses `key=value;key=value` (a `,` also separates pairs when what follows it has its own
    /// `=`, so `classes=0,2;top_k=3` and `top_k=3,trace=x` both read as meant).
    pub(crate) fn from_custom_attributes(header: Option<&str>) -> Result<Self, CodecError> {
        let Some(header) = header else {
            return Ok(Self::default());
        };
        let chars = header.chars().count();
        if chars > MAX_CUSTOM_ATTRIBUTES_CHARS {
            return Err(CodecError::CustomAttributesTooLong {
                given: chars,
                limit: MAX_CUSTOM_ATTRIBUTES_CHARS,
            });
        }
        let mut options = BTreeMap::new();
        for piece in header.split(';') {
            let mut pairs: Vec<String> = Vec::new();
            for segment in piece.split(',') {
                match pairs.last_mut() {
                    Some(last) if !segment.contains('=') => {
                        last.push(',');
                        last.push_str(segment);
                    }
                    _ => pairs.push(segment.to_string()),
                }
            }
            for pair in pairs {
                if let Some((key, value)) = pair.split_once('=') {
                    let key = key.trim().to_ascii_lowercase().replace('-', "_");
                    options.insert(key, Value::String(value.trim().to_string()));
                }
            }
        }
        Ok(RawOptions(options))
    }

    /// Takes a JSON body's `parameters` object.
    pub(crate) fn from_json(parameters: serde_json::Map<String, Value>) -> Self {
        RawOptions(parameters.into_iter().collect())
    }

    /// `other`'s values win over this one's (a JSON body's parameters over the header's).
    pub(crate) fn merge(mut self, other: RawOptions) -> Self {
        self.0.extend(other.0);
        self
    }

    /// Whether no option was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// `on_record_error=`: what a failed record does to its request, if the request says.
    pub(crate) fn record_errors(&self) -> Result<Option<RecordErrors>, CodecError> {
        self.get("on_record_error")
            .map(|v| {
                RecordErrors::parse(&text(v))
                    .ok_or_else(|| invalid("on_record_error", "`continue` or `fail`", v))
            })
            .transpose()
    }
}

/// What a record that fails (an undecodable image, a bad option) does to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RecordErrors {
    /// An error object in the record's place; the other records are answered (default).
    Continue,
    /// The whole request fails with the record's error.
    Fail,
}

impl RecordErrors {
    /// `continue` or `fail` (any case).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "continue" => Some(RecordErrors::Continue),
            "fail" => Some(RecordErrors::Fail),
            _ => None,
        }
    }
}

/// The JSON shape of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonShape {
    /// The Hugging Face pipeline shape of the task (default).
    HuggingFace,
    /// IBM MAX's `{"status", "image_size", "seg_map"}` (segmentation).
    SegMap,
    /// SageMaker's built-in object detection `{"prediction": [[class, score, x0, y0, x1, y1]]}`.
    SageMaker,
}

/// How a segmentation mask travels inside JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskFormat {
    /// A base64 single-channel PNG (Hugging Face).
    Png,
    /// COCO run-length encoding `{"size": [h, w], "counts": [...]}`.
    Rle,
}

/// What an image answer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageOutput {
    /// The label map itself (segmentation with `Accept: image/png`).
    Mask,
    /// The input with the mask or the boxes drawn on it.
    Overlay,
}

/// Validated options of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestOptions {
    /// What the model reads.
    pub(crate) inference: InferenceOptions,
    /// `format=`.
    pub(crate) shape: JsonShape,
    /// `mask_format=`.
    pub(crate) mask_format: MaskFormat,
    /// `output=`.
    pub(crate) image_output: ImageOutput,
    /// `palette=voc`: a coloured label map.
    pub(crate) voc_palette: bool,
}

impl RequestOptions {
    /// Checks `raw` against the model: its task and its class names.
    pub(crate) fn resolve(
        raw: &RawOptions,
        task: Task,
        labels: &[String],
        default_top_k: usize,
    ) -> Result<Self, CodecError> {
        let mut inference = InferenceOptions {
            top_k: default_top_k,
            ..InferenceOptions::default()
        };
        if let Some(v) = raw.get("top_k").or_else(|| raw.get("topk")) {
            inference.top_k = whole(v, "top_k", 1, usize::MAX)?;
        }
        let threshold = raw
            .get("threshold")
            .map(|v| fraction(v, "threshold"))
            .transpose()?;
        let mask_threshold = raw
            .get("mask_threshold")
            .map(|v| fraction(v, "mask_threshold"))
            .transpose()?;
        match task {
            Task::Segmentation => {
                inference.mask_threshold = mask_threshold.or(threshold);
                // 0 and 1 would make every pixel one class: the logit threshold is infinite.
                if let Some(t) = inference.mask_threshold.filter(|t| *t <= 0.0 || *t >= 1.0) {
                    return Err(invalid(
                        "threshold",
                        "a number strictly between 0 and 1",
                        &t,
                    ));
                }
            }
            Task::Detection => {
                let defaults = DetectOptions::default();
                inference.detect = DetectOptions {
                    threshold: threshold.unwrap_or(defaults.threshold),
                    iou: raw
                        .get("iou")
                        .map(|v| fraction(v, "iou"))
                        .transpose()?
                        .unwrap_or(defaults.iou),
                    max_detections: raw
                        .get("max_detections")
                        .map(|v| whole(v, "max_detections", 1, MAX_DETECTIONS_LIMIT))
                        .transpose()?
                        .unwrap_or(defaults.max_detections),
                    classes: raw
                        .get("classes")
                        .map(|v| class_ids(v, labels))
                        .transpose()?,
                };
            }
            Task::Classification => {
                inference.scores = match raw.get("function_to_apply").map(text).as_deref() {
                    None | Some("default") => ScoreFunction::Default,
                    Some("softmax") => ScoreFunction::Softmax,
                    Some("sigmoid") => ScoreFunction::Sigmoid,
                    Some("none") => ScoreFunction::None,
                    Some(other) => {
                        return Err(invalid(
                            "function_to_apply",
                            "`softmax`, `sigmoid`, `none` or `default`",
                            other,
                        ))
                    }
                };
            }
        }
        if task != Task::Classification && raw.get("function_to_apply").is_some() {
            return Err(invalid(
                "function_to_apply",
                "absent: it applies to classification models only",
                &text(raw.get("function_to_apply").unwrap_or(&Value::Null)),
            ));
        }
        let shape = match raw.get("format").map(text).as_deref() {
            None | Some("hf" | "huggingface" | "default") => JsonShape::HuggingFace,
            Some("seg_map" | "segmap" | "max") if task == Task::Segmentation => JsonShape::SegMap,
            Some("sagemaker") if task == Task::Detection => JsonShape::SageMaker,
            Some(other) => {
                return Err(invalid(
                    "format",
                    match task {
                        Task::Classification => "`hf` for a classification model",
                        Task::Segmentation => "`hf` or `seg_map` for a segmentation model",
                        Task::Detection => "`hf` or `sagemaker` for a detection model",
                    },
                    other,
                ))
            }
        };
        let mask_format = match raw.get("mask_format").map(text).as_deref() {
            None | Some("png") => MaskFormat::Png,
            Some("rle") => MaskFormat::Rle,
            Some(other) => return Err(invalid("mask_format", "`png` or `rle`", other)),
        };
        let image_output = match raw.get("output").map(text).as_deref() {
            None | Some("mask" | "label_map") => ImageOutput::Mask,
            Some("overlay") => ImageOutput::Overlay,
            Some(other) => return Err(invalid("output", "`mask` or `overlay`", other)),
        };
        let voc_palette = match raw.get("palette").map(text).as_deref() {
            None | Some("none" | "gray" | "grey") => false,
            Some("voc") => true,
            Some(other) => return Err(invalid("palette", "`voc` or `none`", other)),
        };
        Ok(RequestOptions {
            inference,
            shape,
            mask_format,
            image_output,
            voc_palette,
        })
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.trim().to_ascii_lowercase(),
        other => other.to_string(),
    }
}

fn invalid(
    name: &'static str,
    expected: &'static str,
    value: &(impl ToString + ?Sized),
) -> CodecError {
    CodecError::InvalidParameter {
        name,
        expected,
        value: value.to_string(),
    }
}

fn whole(value: &Value, name: &'static str, min: usize, max: usize) -> Result<usize, CodecError> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let expected = if name == "max_detections" {
        "a whole number from 1 to 10000"
    } else {
        "a whole number >= 1"
    };
    parsed
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(name, expected, value))
}

fn fraction(value: &Value, name: &'static str) -> Result<f32, CodecError> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed
        .filter(|x| (0.0..=1.0).contains(x))
        .map(|x| x as f32)
        .ok_or_else(|| invalid(name, "a number from 0 to 1", value))
}

/// `classes` as ids or names: `[0, "person"]` in JSON, `0,person` in the header.
fn class_ids(value: &Value, labels: &[String]) -> Result<Vec<usize>, CodecError> {
    let items: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        Value::String(s) => s
            .split(',')
            .map(|p| Value::String(p.trim().to_string()))
            .filter(|v| v.as_str() != Some(""))
            .collect(),
        Value::Number(_) => vec![value.clone()],
        _ => return Err(invalid("classes", "a list of class ids or names", value)),
    };
    let resolve = |item: &Value| -> Option<usize> {
        match item {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::String(s) => s.parse::<usize>().ok().or_else(|| {
                labels
                    .iter()
                    .position(|label| label.eq_ignore_ascii_case(s))
            }),
            _ => None,
        }
        .filter(|&id| id < labels.len())
    };
    let ids = items
        .iter()
        .map(|item| {
            resolve(item).ok_or_else(|| {
                invalid(
                    "classes",
                    "class ids below the model's class count, or its class names",
                    item,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(invalid("classes", "at least one class id or name", value));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["person", "bicycle", "cat"].map(String::from).to_vec()
    }

    #[test]
    fn custom_attributes_split_pairs_but_keep_lists_whole() {
        let raw = RawOptions::from_custom_attributes(Some("trace=abc;classes=0,cat,top_k=3"))
            .expect("parses");
        let resolved = RequestOptions::resolve(&raw, Task::Detection, &labels(), 5).expect("valid");
        assert_eq!(resolved.inference.detect.classes, Some(vec![0, 2]));
        assert_eq!(resolved.inference.top_k, 3);
        let long = "a".repeat(MAX_CUSTOM_ATTRIBUTES_CHARS + 1);
        let err = RawOptions::from_custom_attributes(Some(&long))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("1025") && err.contains("1024"), "{err}");
    }

    #[test]
    fn json_parameters_win_and_are_validated_per_task() {
        let header = RawOptions::from_custom_attributes(Some("threshold=0.9;iou=0.3")).expect("ok");
        let body = RawOptions::from_json(
            serde_json::json!({"threshold": 0.1, "max_detections": 7})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let resolved = RequestOptions::resolve(&header.merge(body), Task::Detection, &labels(), 5)
            .expect("valid");
        let detect = &resolved.inference.detect;
        assert_eq!(
            (detect.threshold, detect.iou, detect.max_detections),
            (0.1, 0.3, 7)
        );

        for (attributes, task, needle) in [
            ("threshold=1.5", Task::Detection, "threshold"),
            ("iou=nan", Task::Detection, "iou"),
            ("max_detections=0", Task::Detection, "max_detections"),
            ("classes=dog", Task::Detection, "classes"),
            ("classes=7", Task::Detection, "classes"),
            ("format=seg_map", Task::Detection, "format"),
            ("format=sagemaker", Task::Classification, "format"),
            ("mask_format=zip", Task::Segmentation, "mask_format"),
            ("output=video", Task::Segmentation, "output"),
            ("top_k=0", Task::Classification, "top_k"),
            (
                "function_to_apply=relu",
                Task::Classification,
                "function_to_apply",
            ),
            (
                "function_to_apply=none",
                Task::Detection,
                "function_to_apply",
            ),
        ] {
            let raw = RawOptions::from_custom_attributes(Some(attributes)).expect("parses");
            let err = RequestOptions::resolve(&raw, task, &labels(), 5)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{attributes}: {err}");
        }
    }

    #[test]
    fn function_to_apply_and_the_record_error_policy_are_read() {
        for (value, want) in [
            ("softmax", ScoreFunction::Softmax),
            ("SIGMOID", ScoreFunction::Sigmoid),
            ("none", ScoreFunction::None),
        ] {
            let raw = RawOptions::from_json(
                serde_json::json!({ "function_to_apply": value })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            let resolved =
                RequestOptions::resolve(&raw, Task::Classification, &labels(), 5).expect("valid");
            assert_eq!(resolved.inference.scores, want);
        }
        let raw = RawOptions::from_custom_attributes(Some("on_record_error=fail")).expect("ok");
        assert_eq!(raw.record_errors().ok(), Some(Some(RecordErrors::Fail)));
        assert_eq!(RawOptions::default().record_errors().ok(), Some(None));
        let raw = RawOptions::from_custom_attributes(Some("on_record_error=maybe")).expect("ok");
        let err = raw
            .record_errors()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("on_record_error") && err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn segmentation_reads_threshold_as_the_mask_threshold() {
        let raw = RawOptions::from_custom_attributes(Some(
            "threshold=0.3;format=seg_map;mask_format=rle;output=overlay;palette=voc",
        ))
        .expect("parses");
        let resolved =
            RequestOptions::resolve(&raw, Task::Segmentation, &labels(), 5).expect("valid");
        assert_eq!(resolved.inference.mask_threshold, Some(0.3));
        assert_eq!(resolved.shape, JsonShape::SegMap);
        assert_eq!(resolved.mask_format, MaskFormat::Rle);
        assert_eq!(resolved.image_output, ImageOutput::Overlay);
        assert!(resolved.voc_palette);
    }
}
