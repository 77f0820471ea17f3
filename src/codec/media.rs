//! The media types of `/invocations`: which request Content-Types are read ([`RequestFormat`])
//! and which response Accepts each task can answer ([`ResponseFormat`]).

use serde::Serialize;

use super::error::CodecError;
use crate::model::package::Task;

/// How the request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFormat {
    /// One encoded image; the format is sniffed from its magic bytes.
    Image,
    /// `{"inputs": ..., "parameters": ...}` with base64 images (several such lines are read
    /// as JSON lines: SageMaker sends a `SplitType=Line` mini-batch with the job's type).
    Json,
    /// One record per line: `{"inputs": "<base64>", "parameters": ...}` or a base64 string.
    JsonLines,
    /// A NumPy `.npy` array (SageMaker Python SDK `NumpySerializer`).
    Npy,
}

impl RequestFormat {
    /// The format for a Content-Type header value; a missing one is treated as raw bytes.
    pub(crate) fn from_content_type(content_type: Option<&str>) -> Result<Self, CodecError> {
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
            // The SageMaker SDK's `DataSerializer` (raw file bytes).
            | "file-path/raw-bytes"
            | "" => Ok(RequestFormat::Image),
            "application/json" => Ok(RequestFormat::Json),
            "application/jsonlines" | "application/jsonl" | "application/x-jsonlines" => {
                Ok(RequestFormat::JsonLines)
            }
            "application/x-npy" => Ok(RequestFormat::Npy),
            _ => Err(CodecError::UnsupportedMediaType(raw.to_string())),
        }
    }
}

/// How predictions are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum ResponseFormat {
    /// One JSON document.
    Json,
    /// One JSON document per image, newline-separated (batch transform's record format).
    JsonLines,
    /// A PNG image: a label map, an overlay or drawn boxes (segmentation and detection).
    Png,
    /// A JPEG image: an overlay or drawn boxes (segmentation and detection).
    Jpeg,
    /// A NumPy `.npy` array (the SageMaker SDK's `NumpyDeserializer`): classification scores
    /// `(n, classes)` float32, a segmentation label map `(h, w)` uint8, detections `(k, 6)`
    /// float32.
    Npy,
}

impl ResponseFormat {
    /// The format named by one media type, if wick produces it.
    pub(crate) fn from_media_type(media: &str) -> Option<Self> {
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
            "application/x-npy" => Some(ResponseFormat::Npy),
            _ => None,
        }
    }

    /// The Content-Type of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::JsonLines => "application/jsonlines",
            ResponseFormat::Png => "image/png",
            ResponseFormat::Jpeg => "image/jpeg",
            ResponseFormat::Npy => "application/x-npy",
        }
    }

    /// Whether the answer is an image.
    pub(crate) fn is_image(self) -> bool {
        matches!(self, ResponseFormat::Png | ResponseFormat::Jpeg)
    }

    /// Whether the answer describes one image only (a picture, or a segmentation or detection
    /// array).
    pub(crate) fn is_single_image(self, task: Task) -> bool {
        self.is_image() || (self == ResponseFormat::Npy && task != Task::Classification)
    }

    /// Whether the answer can carry a failed record in its place (JSON does; arrays and
    /// pictures cannot).
    pub(crate) fn holds_record_errors(self) -> bool {
        matches!(self, ResponseFormat::Json | ResponseFormat::JsonLines)
    }

    /// Whether a model doing `task` can answer in this format.
    pub(crate) fn suits(self, task: Task) -> bool {
        !self.is_image() || task != Task::Classification
    }

    /// The first acceptable format of an Accept header for a model doing `task`, in the
    /// client's order; `*/*`, `application/*` and a missing header mean `default`. Quality
    /// values are not ranked.
    pub(crate) fn negotiate(
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
                Task::Classification => {
                    "application/json, application/jsonlines or application/x-npy"
                }
                Task::Segmentation | Task::Detection => {
                    "application/json, application/jsonlines, application/x-npy, image/png or image/jpeg"
                }
            },
        })
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
            "file-path/raw-bytes",
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
        assert_eq!(
            RequestFormat::from_content_type(Some("application/jsonlines")).ok(),
            Some(RequestFormat::JsonLines)
        );
        for refused in ["text/csv", "application/x-recordio-protobuf"] {
            let err = RequestFormat::from_content_type(Some(refused))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(refused) && err.contains("application/jsonlines"),
                "{err}"
            );
        }
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
        for task in [Task::Classification, Task::Segmentation, Task::Detection] {
            assert_eq!(
                ResponseFormat::negotiate(Some("application/x-npy"), json, task).ok(),
                Some(ResponseFormat::Npy)
            );
        }
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
}
