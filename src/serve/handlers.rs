//! The HTTP handlers and router: `/ping`, `/invocations` (its work in `invoke.rs`),
//! `/execution-parameters`, and JSON answers for unknown routes. Decoding and preprocessing
//! run on the blocking pool; inference on the engine's threads; the async runtime only moves
//! bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::Instrument;

use super::error::ApiError;
use super::invoke::{self, Timings, CUSTOM_ATTRIBUTES};
use super::state::AppState;

/// The whole HTTP surface, without a socket (tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .route("/execution-parameters", get(execution_parameters))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn ping(State(state): State<AppState>) -> Response {
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

async fn execution_parameters(State(state): State<AppState>) -> Response {
    let config = state.config();
    Json(serde_json::json!({
        "MaxConcurrentTransforms": config.max_concurrent_transforms,
        "BatchStrategy": config.batch_strategy,
        "MaxPayloadInMB": config.max_payload_mb(),
    }))
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
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

async fn invocations(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let request_id = next_request_id();
    let span = tracing::info_span!("invocation", request_id = %request_id);
    let timeout = state.config().timeout;
    let mut timings = Timings::default();
    let result = tokio::time::timeout(
        timeout,
        invoke::handle(&state, &headers, body, &mut timings).instrument(span.clone()),
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
