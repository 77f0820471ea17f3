//! The HTTP handlers (the route table is `routes.rs`): `/ping`, `/invocations`, `/execution-parameters`, and JSON
//! answers for unknown routes. Decoding and preprocessing run on the blocking pool; inference
//! on the engine's threads; the async runtime only moves bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use image::RgbImage;
use rayon::prelude::*;
use tracing::Instrument;

use super::engine::{EngineError, Predictor};
use super::error::ApiError;
use super::multipart;
use super::state::AppState;
use crate::codec::body::parse_body;
use crate::codec::error::CodecError;
use crate::codec::media::{RequestFormat, ResponseFormat};
use crate::codec::options::{RawOptions, RequestOptions};
use crate::codec::request::{ParsedRequest, RawImage};
use crate::codec::respond::Answer;
use crate::model::package::Task;
use crate::model::preprocess::{decode, DecodeLimits};
use crate::model::{Input, ModelError};

/// The response header SageMaker passes back to the client.
pub(super) const CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
/// A body this many times over the limit is not drained any further: the connection closes.
const MAX_DRAIN_FACTOR: u64 = 16;

pub(super) async fn ping(State(state): State<AppState>) -> Response {
    tracing::debug!("ping");
    let Some(ready) = state.ready() else {
        return ApiError::NotReady.into_response();
    };
    match ready.engine.unhealthy() {
        None => StatusCode::OK.into_response(),
        Some(reason) => {
            tracing::error!(
                reason,
                "unhealthy: /ping answers 503 so the instance is replaced"
            );
            ApiError::Unhealthy(reason).into_response()
        }
    }
}

pub(super) async fn execution_parameters(State(state): State<AppState>) -> Response {
    let config = state.config();
    Json(serde_json::json!({
        "MaxConcurrentTransforms": config.max_concurrent_transforms,
        "BatchStrategy": config.batch_strategy,
        "MaxPayloadInMB": config.max_payload_mb(),
    }))
    .into_response()
}

pub(super) async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response()
}

pub(super) async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

/// Per-stage wall times, returned to the client in Custom-Attributes.
#[derive(Default)]
struct Timings {
    decode: Duration,
    preprocess: Duration,
    queue: Duration,
    inference: Duration,
}

fn next_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id()
    });
    format!(
        "{prefix:08x}-{:06}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) async fn invocations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = next_request_id();
    let span = tracing::info_span!("invocation", request_id = %request_id);
    let timeout = state.config().timeout;
    let mut timings = Timings::default();
    let result = tokio::time::timeout(
        timeout,
        handle(&state, &headers, body, &mut timings).instrument(span.clone()),
    )
    .await
    .unwrap_or(Err(ApiError::Timeout {
        timeout_secs: timeout.as_secs(),
    }));
    let mut response = span.in_scope(|| match result {
        Ok(response) => response,
        Err(err) => err.into_response(),
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let attributes = format!(
        "request_id={request_id};decode_ms={:.2};preprocess_ms={:.2};queue_ms={:.2};inference_ms={:.2}",
        ms(timings.decode),
        ms(timings.preprocess),
        ms(timings.queue),
        ms(timings.inference)
    );
    if let Ok(value) = HeaderValue::from_str(&attributes) {
        response.headers_mut().insert(CUSTOM_ATTRIBUTES, value);
    }
    tracing::info!(
        parent: &span,
        status = response.status().as_u16(),
        latency_ms = format!("{:.2}", ms(started.elapsed())),
        "invocation"
    );
    response
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    timings: &mut Timings,
) -> Result<Response, ApiError> {
    let config = state.config();
    // The body is read before anything can fail: an error answered over an unread body makes
    // hyper close the connection, and the client sees a broken pipe instead of the JSON error.
    let mut bytes = read_body(body, headers, config.max_payload_bytes).await?;
    let ready = state.ready().ok_or(ApiError::NotReady)?;
    let header_text = |name| {
        headers.get(name).map(|v| {
            v.to_str().map_err(|_| CodecError::InvalidParameter {
                name: "headers",
                expected: "visible ASCII",
                value: format!("{name} with non-ASCII bytes"),
            })
        })
    };
    let attributes =
        RawOptions::from_custom_attributes(header_text(CUSTOM_ATTRIBUTES).transpose()?)?;
    let content_type = header_text(header::CONTENT_TYPE.as_str()).transpose()?;
    let (request_format, multipart) = match multipart::boundary(content_type) {
        Some(boundary) => {
            let parsed = multipart::parse(std::mem::take(&mut bytes).into(), boundary?).await?;
            (RequestFormat::Image, Some(parsed))
        }
        None => (RequestFormat::from_content_type(content_type)?, None),
    };
    let predictor = ready.predictor.clone();
    let task = predictor.task();
    let default_format = Some(config.default_response)
        .filter(|f| f.suits(task))
        .unwrap_or(ResponseFormat::Json);
    let response_format = ResponseFormat::negotiate(
        header_text(header::ACCEPT.as_str()).transpose()?,
        default_format,
        task,
    )?;

    let max_pixels = config.max_image_pixels;
    let span = tracing::Span::current();
    let decode_permit = state
        .decode_permits()
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("decode permits closed: {e}")))?;
    let worker_predictor = predictor.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let parsed = match multipart {
                Some(parsed) => parsed,
                None => parse_body(request_format, &bytes, max_pixels)?,
            };
            prepare(parsed, max_pixels, &*worker_predictor)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("preprocessing task failed: {e}")))??;
    drop(decode_permit);
    timings.decode = prepared.decode;
    timings.preprocess = prepared.preprocess;

    let options = RequestOptions::resolve(
        &attributes.merge(prepared.parameters),
        task,
        predictor.labels(),
        config.default_top_k,
    )?;
    if response_format.is_image() && prepared.inputs.len() != 1 {
        return Err(CodecError::OneImageOnly {
            accept: response_format.content_type(),
            images: prepared.inputs.len(),
        }
        .into());
    }
    let images: Vec<Arc<RgbImage>> = prepared
        .inputs
        .iter()
        .filter_map(|input| match input {
            Input::Image(image) => Some(Arc::clone(image)),
            Input::Tensor(_) => None,
        })
        .collect();
    let reply = ready
        .engine
        .submit(prepared.inputs, options.inference.clone())?;
    let outcome = reply
        .await
        .map_err(|_| ApiError::Engine(EngineError::Stopped))??;
    timings.queue = outcome.queue;
    timings.inference = outcome.inference;

    let is_list = prepared.is_list;
    let is_binary = predictor.is_binary();
    let encode = move || {
        Answer {
            outputs: &outcome.outputs,
            images: &images,
            is_list,
            format: response_format,
            options: &options,
            labels: predictor.labels(),
            is_binary,
        }
        .encode()
    };
    // Classification JSON is a few hundred bytes; masks and pictures are real work and stay
    // off the async runtime.
    let body = if task == Task::Classification {
        encode()?
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| ApiError::Internal(format!("encoding task failed: {e}")))??
    };
    if body.len() as u64 > config.max_payload_bytes {
        return Err(ApiError::ResponseTooLarge {
            size_bytes: body.len() as u64,
            limit_bytes: config.max_payload_bytes,
            smaller: match task {
                Task::Segmentation => "Accept: image/png (a label map), or mask_format=rle",
                Task::Detection => "Accept: application/json, or Accept: image/jpeg",
                Task::Classification => "a smaller top_k",
            },
        });
    }
    Ok((
        [(header::CONTENT_TYPE, response_format.content_type())],
        body,
    )
        .into_response())
}

/// Reads the body up to `limit` bytes. A larger body is read to its end and discarded (up to
/// a bound) so the client gets a JSON 413 on a connection that stays usable, rather than a
/// reset socket in the middle of its upload.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: u64) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::PayloadTooLarge {
        limit_bytes: limit,
        limit_mb: limit / (1024 * 1024),
    };
    let mut is_over = declared.is_some_and(|len| len > limit);
    let mut buffer = Vec::with_capacity(declared.filter(|len| *len <= limit).unwrap_or(0) as usize);
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::Internal(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit {
            is_over = true;
            buffer = Vec::new();
        }
        if is_over {
            if seen > limit.saturating_mul(MAX_DRAIN_FACTOR) {
                return Err(too_large());
            }
            continue;
        }
        buffer.extend_from_slice(&data);
    }
    if is_over {
        return Err(too_large());
    }
    Ok(buffer)
}

struct Prepared {
    inputs: Vec<Input>,
    is_list: bool,
    parameters: RawOptions,
    decode: Duration,
    preprocess: Duration,
}

/// Parsed body -> model inputs, on the blocking pool: decode every image (in parallel), then
/// let the model prepare each (classification applies its evaluation transform here).
fn prepare(
    parsed: ParsedRequest,
    max_pixels: u64,
    predictor: &dyn Predictor,
) -> Result<Prepared, ApiError> {
    let ParsedRequest {
        images,
        is_list,
        parameters,
    } = parsed;
    let limits = DecodeLimits { max_pixels };
    let decode_one = |image: RawImage| match image {
        RawImage::Encoded(bytes) => decode(&bytes, &limits),
        RawImage::Pixels(pixels) => Ok(pixels),
    };
    // A single image stays on this blocking thread: handing it to rayon would queue it behind
    // the inference running on rayon's pool, instead of overlapping with it.
    let started = Instant::now();
    let decoded = if images.len() == 1 {
        images
            .into_iter()
            .map(decode_one)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        images
            .into_par_iter()
            .map(decode_one)
            .collect::<Result<Vec<_>, _>>()?
    };
    let decode_time = started.elapsed();
    let started = Instant::now();
    let prepare_one = |image| predictor.prepare(image).map_err(model_error);
    let inputs = if decoded.len() == 1 {
        decoded
            .into_iter()
            .map(prepare_one)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        decoded
            .into_par_iter()
            .map(prepare_one)
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Prepared {
        inputs,
        is_list,
        parameters,
        decode: decode_time,
        preprocess: started.elapsed(),
    })
}

/// A preprocessing failure is the image's fault (400/413); anything else is ours.
fn model_error(err: ModelError) -> ApiError {
    match err {
        ModelError::Preprocess(err) => ApiError::Image(err),
        other => ApiError::Internal(format!("preparing the image: {other}")),
    }
}
