//! The schemas of `GET /openapi.json`: the options every route takes, the answer of each task in
//! each JSON shape, the error body and its `error_type` values. `routes.rs` attaches them to
//! the routes; tests hold them to what the handlers really answer (`tests/it/openapi.rs`
//! validates live answers against these schemas).

// The types below exist to be described, never built: the answers themselves are written by
// `codec::respond` and `compat`. Answer shapes deny unknown fields (`additionalProperties:
// false`) so that exactly one shape of the untagged `Answer` matches an answer.
#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

/// The options of a request, by name. The same names work as `key=value` pairs in
/// `X-Amzn-SageMaker-Custom-Attributes`, as JSON `parameters`, and as plain multipart form
/// fields (which win over the header). A key that does not apply to the model's task, or a bad
/// value, is a 400 naming the key.
#[derive(Serialize, ToSchema)]
pub(crate) struct Options {
    /// Classes per image (classification) [default: `--default-top-k`, 5].
    #[schema(minimum = 1)]
    top_k: Option<u32>,
    /// Detection: the lowest box score kept [default 0.25]. Segmentation: the foreground
    /// probability of a binary model (strictly between 0 and 1).
    #[schema(minimum = 0.0, maximum = 1.0)]
    threshold: Option<f32>,
    /// Segmentation: the same as `threshold`, by its own name.
    #[schema(minimum = 0.0, maximum = 1.0)]
    mask_threshold: Option<f32>,
    /// Detection: the overlap above which non-maximum suppression drops a box [default 0.45].
    #[schema(minimum = 0.0, maximum = 1.0)]
    iou: Option<f32>,
    /// Detection: most boxes per image [default 300].
    #[schema(minimum = 1, maximum = 10000)]
    max_detections: Option<u32>,
    /// Detection: keep only these classes, ids or names, comma-separated (`0,cat`).
    classes: Option<String>,
    /// The JSON shape: `hf` (Hugging Face pipelines, all tasks), `seg_map` (IBM MAX,
    /// segmentation), `sagemaker` (SageMaker's built-in detector).
    format: Option<ShapeName>,
    /// Segmentation JSON: each class mask as a base64 PNG (`png`) or COCO RLE (`rle`).
    mask_format: Option<MaskFormatName>,
    /// Segmentation image answers: the label map (`mask`) or the photo with the mask drawn
    /// (`overlay`).
    output: Option<OutputName>,
    /// Segmentation label maps: VOC colours (`voc`) or class indices as grey levels (`none`).
    palette: Option<PaletteName>,
}

/// `format=`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShapeName {
    /// Hugging Face pipeline shapes.
    Hf,
    /// IBM MAX's segmentation shape.
    SegMap,
    /// SageMaker's built-in object detection shape.
    Sagemaker,
}

/// `mask_format=`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MaskFormatName {
    /// Base64 single-channel PNG.
    Png,
    /// COCO run-length encoding.
    Rle,
}

/// `output=`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutputName {
    /// The label map.
    Mask,
    /// The photo with the answer drawn on it.
    Overlay,
}

/// `palette=`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PaletteName {
    /// VOC colours.
    Voc,
    /// Grey levels.
    None,
}

/// `application/json` request: one base64 image (or data URL), or a list (a list answer).
#[derive(Serialize, ToSchema)]
pub(crate) struct JsonRequest {
    /// Base64 image bytes, or a list of them.
    inputs: JsonInputs,
    /// Options, as in Custom-Attributes.
    parameters: Option<Options>,
}

/// One image or several.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JsonInputs {
    /// One base64 image.
    One(String),
    /// Several: the answer is a list, one entry per image.
    Many(Vec<String>),
}

/// `multipart/form-data` request (browser forms, `curl -F file=@photo.jpg`): every file part is
/// an image (any field name; several files give a list answer); plain fields are options.
#[derive(Serialize, ToSchema)]
pub(crate) struct FormRequest {
    /// The image (`image` and other field names work alike).
    #[schema(format = Binary)]
    file: String,
    /// Any option of `Options` as a text field.
    #[serde(flatten)]
    options: Options,
}

/// Classification: one entry per class, best first (Hugging Face `image-classification`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassScore {
    /// Class name.
    label: String,
    /// Probability.
    score: f32,
}

/// Segmentation (`format=hf`): one entry per class present.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentEntry {
    /// Always null (semantic segmentation has no per-segment score).
    score: Option<f32>,
    /// Class name.
    label: String,
    /// The class's pixels: a base64 PNG (`mask_format=png`) or COCO RLE (`mask_format=rle`).
    mask: SegmentMask,
    /// Pixels of this class.
    pixels: u64,
}

/// A class mask.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SegmentMask {
    /// Base64 single-channel PNG, 255 where the class is.
    Png(String),
    /// COCO RLE.
    Rle(CocoRle),
}

/// COCO run-length encoding, column-major, starting with a background run.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CocoRle {
    /// `[height, width]`.
    size: [u32; 2],
    /// Run lengths.
    counts: Vec<u64>,
}

/// Segmentation (`format=seg_map`, and `POST /model/predict`): IBM MAX's shape.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegMapAnswer {
    /// Always `ok`.
    status: String,
    /// `[width, height]` of the photo.
    image_size: [u32; 2],
    /// One row per image row, one class index per pixel.
    seg_map: Vec<Vec<u8>>,
}

/// Detection (`format=hf`): one entry per box.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetectionEntry {
    /// Box score.
    score: f32,
    /// Class name.
    label: String,
    /// The box in whole pixels of the photo.
    #[serde(rename = "box")]
    pixel_box: PixelBox,
}

/// A box in pixels.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PixelBox {
    /// Left.
    xmin: i64,
    /// Top.
    ymin: i64,
    /// Right.
    xmax: i64,
    /// Bottom.
    ymax: i64,
}

/// Detection (`format=sagemaker`): SageMaker's built-in object detection shape.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SageMakerDetections {
    /// `[class_id, score, xmin, ymin, xmax, ymax]`, coordinates as fractions of the photo.
    prediction: Vec<Vec<f32>>,
}

/// The JSON answer of `/invocations` for one image, by task and `format`. A list request
/// answers a list of these; `application/jsonlines` one per line.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Answer {
    /// Classification.
    Classification(Vec<ClassScore>),
    /// Segmentation, `format=hf`.
    Segmentation(Vec<SegmentEntry>),
    /// Segmentation, `format=seg_map`.
    SegMap(SegMapAnswer),
    /// Detection, `format=hf`.
    Detection(Vec<DetectionEntry>),
    /// Detection, `format=sagemaker`.
    SageMakerDetection(SageMakerDetections),
}

/// Every failure: a message naming the field, the limit and the value given, and a stable type.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    error: String,
    /// What went wrong, for programs.
    error_type: ErrorType,
}

/// The `error_type` values (`error.rs` maps each failure to one).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorType {
    /// 400: a body, header or option is wrong.
    Validation,
    /// 400: an image does not decode (or a form's file part is not an image).
    InvalidImage,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 406: the Accept header asks for nothing this model answers.
    NotAcceptable,
    /// 413: the body is over the payload limit.
    PayloadTooLarge,
    /// 413: an image has more pixels than allowed.
    ImageTooLarge,
    /// 413: the answer would be over the payload limit.
    ResponseTooLarge,
    /// 415: a Content-Type wick does not read.
    UnsupportedMediaType,
    /// 429: the inference queue is full.
    Overloaded,
    /// 500: a bug; the log has the details.
    Internal,
    /// 503: the model is still loading.
    NotReady,
    /// 503: an inference worker died or hung.
    Unhealthy,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 504: the request took longer than the timeout.
    Timeout,
}

/// The `error_type` strings as `ErrorType` serialises them.
pub(crate) const ERROR_TYPES: [&str; 15] = [
    "validation",
    "invalid_image",
    "not_found",
    "method_not_allowed",
    "not_acceptable",
    "payload_too_large",
    "image_too_large",
    "response_too_large",
    "unsupported_media_type",
    "overloaded",
    "internal",
    "not_ready",
    "unhealthy",
    "shutting_down",
    "timeout",
];

/// `GET /execution-parameters` (SageMaker batch transform).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ExecutionParameters {
    /// Concurrent requests batch transform may send.
    max_concurrent_transforms: u32,
    /// `MULTI_RECORD` or `SINGLE_RECORD`.
    batch_strategy: String,
    /// The payload limit in MiB.
    #[serde(rename = "MaxPayloadInMB")]
    max_payload_in_mb: u32,
}

/// `POST /model/predict` for classification and detection: IBM MAX's shape.
#[derive(Serialize, ToSchema)]
pub(crate) struct MaxPredictions {
    /// Always `ok`.
    status: String,
    /// Classes (best first) or boxes.
    predictions: Vec<MaxPrediction>,
}

/// One MAX prediction.
#[derive(Serialize, ToSchema)]
pub(crate) struct MaxPrediction {
    /// The class index, as a string.
    label_id: String,
    /// The class name.
    label: String,
    /// Score.
    probability: f32,
    /// Detection only: `[ymin, xmin, ymax, xmax]` as fractions of the photo.
    detection_box: Option<[f32; 4]>,
}

/// `POST /model/predict`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum MaxAnswer {
    /// Segmentation.
    SegMap(SegMapAnswer),
    /// Classification and detection.
    Predictions(MaxPredictions),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_what_the_schema_enumerates() {
        let schema = serde_json::to_value(<ErrorType as utoipa::PartialSchema>::schema())
            .unwrap_or_default();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(listed, ERROR_TYPES.to_vec());
    }

    #[test]
    fn every_failure_maps_to_a_listed_error_type() {
        use crate::codec::error::CodecError;
        use crate::model::preprocess::PreprocessError;
        use crate::serve::engine::EngineError;
        use crate::serve::error::ApiError;
        use crate::serve::multipart::MultipartError;
        let failures = [
            ApiError::Codec(CodecError::EmptyBody),
            ApiError::Codec(CodecError::UnsupportedMediaType("text/csv".into())),
            ApiError::Codec(CodecError::NotAcceptable {
                accept: "x".into(),
                offered: "y",
            }),
            ApiError::Image(PreprocessError::Empty),
            ApiError::Multipart(MultipartError::NoFile),
            ApiError::Multipart(MultipartError::NotAnImage {
                field: "f".into(),
                filename: None,
                reason: "r".into(),
            }),
            ApiError::PayloadTooLarge {
                limit_bytes: 1,
                limit_mb: 1,
            },
            ApiError::NotReady,
            ApiError::Unhealthy("x".into()),
            ApiError::ResponseTooLarge {
                size_bytes: 2,
                limit_bytes: 1,
                smaller: "x",
            },
            ApiError::Engine(EngineError::Overloaded { capacity: 1 }),
            ApiError::Engine(EngineError::Stopped),
            ApiError::Timeout { timeout_secs: 1 },
            ApiError::NotFound {
                method: "GET".into(),
                path: "/x".into(),
            },
            ApiError::MethodNotAllowed,
            ApiError::Internal("x".into()),
        ];
        for failure in failures {
            let (_, error_type) = failure.status();
            assert!(
                ERROR_TYPES.contains(&error_type),
                "{error_type} is not documented"
            );
        }
    }
}
