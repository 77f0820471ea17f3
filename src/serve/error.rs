//! `ApiError`: every way a request can fail, mapped to an HTTP status and a stable
//! `error_type` in one exhaustive match. Bodies are `{"error": "...", "error_type": "..."}`;
//! 5xx bodies carry no internals (those are logged once, with the request id).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::engine::EngineError;
use super::multipart::MultipartError;
use crate::codec::error::CodecError;
use crate::model::preprocess::PreprocessError;
use crate::render::RenderError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body, a header or a parameter is wrong.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A multipart/form-data body is malformed or holds no image.
    #[error(transparent)]
    Multipart(#[from] MultipartError),
    /// An image does not decode or is too large.
    #[error(transparent)]
    Image(#[from] PreprocessError),
    /// A segmentation image over `--max-image-pixels` that is also over the streamed limit
    /// (or streaming is off).
    #[error("image is {width}x{height} = {pixels} pixels; the limit is {max_image_pixels} (WICK_MAX_IMAGE_PIXELS), and {max_streamed_image_pixels} for PNG and TIFF images segmented row by row (WICK_MAX_STREAMED_IMAGE_PIXELS)")]
    ImageTooLargeToStream {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The in-memory limit.
        max_image_pixels: u64,
        /// The streamed limit.
        max_streamed_image_pixels: u64,
    },
    /// A streamed image's answer was asked in a format that would hold every pixel in memory.
    #[error("a {width}x{height} image is over WICK_MAX_IMAGE_PIXELS and is segmented row by row, so its answer can only be the label map PNG (Accept: image/png, without output=overlay); {asked} would hold every pixel in memory")]
    StreamedAnswerFormat {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// What was asked.
        asked: &'static str,
    },
    /// The body exceeds the payload limit.
    #[error("the request body exceeds the payload limit of {limit_bytes} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB={limit_mb})")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit_bytes: u64,
        /// The limit in MiB, as configured.
        limit_mb: u64,
    },
    /// The request body is malformed (a bad chunk) or ended before its Content-Length.
    #[error("the request body could not be read after {received_bytes} bytes: {reason}; send a complete body with a correct Content-Length or valid chunked encoding")]
    MalformedBody {
        /// What the HTTP layer found wrong.
        reason: String,
        /// Body bytes received before the problem.
        received_bytes: u64,
    },
    /// The client stopped sending its body.
    #[error("the request body stalled: nothing arrived for {idle_secs} s after {received_bytes} bytes (WICK_BODY_READ_TIMEOUT_SECS)")]
    BodyStalled {
        /// The idle limit in seconds.
        idle_secs: u64,
        /// Body bytes received before the stall.
        received_bytes: u64,
    },
    /// The server began shutting down before the body had arrived.
    #[error("the server is shutting down; the request body had not fully arrived; retry on another instance")]
    ShuttingDown,
    /// The model is still loading or warming up.
    #[error(
        "the model is not ready yet (loading or warming up); retry after GET /ping returns 200"
    )]
    NotReady,
    /// An inference worker has died or hung: SageMaker should replace the instance.
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    /// The answer would exceed the payload limit.
    #[error("the answer would be {size_bytes} bytes, over the payload limit of {limit_bytes} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB); ask for a smaller format: {smaller}")]
    ResponseTooLarge {
        /// Size of the encoded answer.
        size_bytes: u64,
        /// The limit in bytes.
        limit_bytes: u64,
        /// The formats that are smaller.
        smaller: &'static str,
    },
    /// Encoding the answer failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The engine refused or failed the work.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The request took longer than the configured deadline.
    #[error(
        "the request took longer than the {timeout_secs} s limit (SAGEMAKER_MODEL_SERVER_TIMEOUT)"
    )]
    Timeout {
        /// The deadline in seconds.
        timeout_secs: u64,
    },
    /// No such route.
    #[error("no route for {method} {path}; wick serves GET /ping, POST /invocations and GET /execution-parameters (GET /openapi.json lists every route)")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists with another method.
    #[error("method not allowed; use GET /ping, POST /invocations, GET /execution-parameters")]
    MethodNotAllowed,
    /// One record of several failed and the request asked to fail as a whole
    /// (`on_record_error=fail`, or an answer that cannot hold an error in a record's place).
    #[error("record {index}: {source}")]
    Record {
        /// Position among the request's records, from 0.
        index: usize,
        /// What failed.
        source: Box<ApiError>,
    },
    /// A bug: joining a blocking task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_type: &'static str,
}

impl ApiError {
    /// HTTP status and stable error type.
    pub(crate) fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Codec(err) => match err {
                CodecError::UnsupportedMediaType(_) => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                }
                CodecError::NotAcceptable { .. } => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
                CodecError::TooManyPixels { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
                }
                CodecError::Spool(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                CodecError::EmptyBody
                | CodecError::InvalidRecord { .. }
                | CodecError::InvalidJson(_)
                | CodecError::InvalidBase64 { .. }
                | CodecError::InvalidNpy(_)
                | CodecError::InvalidParameter { .. }
                | CodecError::OneImageOnly { .. }
                | CodecError::CustomAttributesTooLong { .. } => {
                    (StatusCode::BAD_REQUEST, "validation")
                }
            },
            ApiError::Multipart(err) => match err {
                MultipartError::NotAnImage { .. } => (StatusCode::BAD_REQUEST, "invalid_image"),
                MultipartError::Malformed(_)
                | MultipartError::NoFile
                | MultipartError::NotText { .. } => (StatusCode::BAD_REQUEST, "validation"),
            },
            ApiError::Image(err) => match err {
                PreprocessError::TooManyPixels { .. }
                | PreprocessError::LimitExceeded { .. }
                | PreprocessError::NotStreamable { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
                }
                PreprocessError::InvalidConfig { .. } | PreprocessError::Resize(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
                PreprocessError::Empty
                | PreprocessError::UnsupportedFormat { .. }
                | PreprocessError::UnsupportedFeature { .. }
                | PreprocessError::Corrupt { .. }
                | PreprocessError::StreamCorrupt { .. }
                | PreprocessError::NoPixels { .. } => (StatusCode::BAD_REQUEST, "invalid_image"),
            },
            ApiError::ImageTooLargeToStream { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
            }
            ApiError::StreamedAnswerFormat { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "response_too_large")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::MalformedBody { .. } => (StatusCode::BAD_REQUEST, "malformed_body"),
            ApiError::BodyStalled { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Unhealthy(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
            ApiError::ResponseTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "response_too_large")
            }
            ApiError::Render(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Engine(err) => match err {
                EngineError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
                EngineError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                EngineError::Inference(_) | EngineError::Panicked(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ApiError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Record { source, .. } => source.status(),
        }
    }

    /// The message a client sees: server faults carry no internals (they are logged once).
    pub(crate) fn public_message(&self) -> String {
        let status = self.status().0;
        if status.is_server_error()
            && status != StatusCode::SERVICE_UNAVAILABLE
            && status != StatusCode::GATEWAY_TIMEOUT
        {
            tracing::error!(error = %self, "request failed");
            "internal server error; the server log has the details".to_string()
        } else {
            self.to_string()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status();
        let message = self.public_message();
        let body = serde_json::to_vec(&ErrorBody {
            error: &message,
            error_type,
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
