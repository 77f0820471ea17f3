//! The HTTP handlers (the route table is `routes.rs`): `/ping`, `/invocations` (its work in
//! `invoke.rs`), `/execution-parameters`, `/metrics`, and JSON answers for unknown routes.
//! Decoding and preprocessing run on the blocking pool; inference on the engine's threads; the
//! async runtime only moves bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::Instrument;

use super::error::ApiError;
use super::invoke;
pub(super) use super::invoke::CUSTOM_ATTRIBUTES;
use super::metrics::{self, StageTimes};
use super::state::AppState;

/// SageMaker's id for one invocation (also in the endpoint's own logs).
const INFERENCE_ID: &str = "x-amzn-sagemaker-inference-id";
/// AWS X-Ray's trace header.
const TRACE_ID: &str = "x-amzn-trace-id";
/// A client-sent id longer than this is cut.
const MAX_REQUEST_ID_CHARS: usize = 128;

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

/// Prometheus scrape: reads counters and gauges only, never the inference queue, and logs
/// only at debug (SageMaker scrapes every 60 s).
pub(super) async fn metrics_text(State(state): State<AppState>) -> Response {
    tracing::debug!("metrics scrape");
    let text = state.metrics().render(state.snapshot());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
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

/// The request id: SageMaker's own inference id or trace id when it sends one (so the
/// endpoint's CloudWatch lines and wick's join up), else one of ours.
fn request_id(headers: &HeaderMap) -> String {
    let from_header = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        // X-Amzn-Trace-Id is `Root=1-...;Parent=...;Sampled=1`: the root names the request.
        let value = value
            .split(';')
            .find_map(|part| part.trim().strip_prefix("Root="))
            .unwrap_or(value);
        // Custom-Attributes separates fields with `;` and `=`: keep the id to safe characters.
        let id: String = value
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            .take(MAX_REQUEST_ID_CHARS)
            .collect();
        (!id.is_empty()).then_some(id)
    };
    from_header(INFERENCE_ID)
        .or_else(|| from_header(TRACE_ID))
        .unwrap_or_else(next_request_id)
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
    let request_id = request_id(&headers);
    let span = tracing::info_span!("invocation", request_id = %request_id);
    let timeout = state.config().timeout;
    let mut timings = StageTimes::default();
    let result = tokio::time::timeout(
        timeout,
        invoke::handle(&state, &headers, body, &mut timings).instrument(span.clone()),
    )
    .await
    .unwrap_or(Err(ApiError::Timeout {
        timeout_secs: timeout.as_secs(),
    }));
    let (mut response, error_type) = span.in_scope(|| match result {
        Ok(response) => (response, None),
        Err(err) => {
            let error_type = err.status().1;
            (err.into_response(), Some(error_type))
        }
    });
    let ms = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64() * 1e3;
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
    let total = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics()
        .observe_request(status, error_type, total, &timings);
    tracing::info!(
        parent: &span,
        status,
        latency_ms = format!("{:.2}", ms(Some(total))),
        "invocation"
    );
    response
}
