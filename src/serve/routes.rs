//! The route table: every route wick serves, each registered once with `utoipa-axum` so that
//! the router and `GET /openapi.json` come from the same line and cannot drift. The functions
//! here only carry the documentation and call the handlers (`handlers.rs`, `compat.rs`,
//! `page/`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::card::ModelCard;
use super::openapi::{
    Answer, ErrorBody, ExecutionParameters, FormRequest, JsonRequest, MaxAnswer, Options,
};
use super::state::AppState;
use super::{compat, handlers, page};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wick",
        description = "SageMaker-compatible serving of image models (classification, segmentation, detection). SageMaker calls only GET /ping and POST /invocations; the other routes serve the clients of the services wick replaces, people trying the model, and this description. Options go in X-Amzn-SageMaker-Custom-Attributes (`top_k=3;threshold=0.5`), in a JSON body's `parameters`, or as multipart form fields; see the `Options` schema. Every answer of /invocations carries `request_id`, `decode_ms`, `preprocess_ms`, `queue_ms` and `inference_ms` in X-Amzn-SageMaker-Custom-Attributes."
    ),
    components(schemas(Options, Answer, ErrorBody))
)]
struct ApiDoc;

/// The whole HTTP surface, without a socket (tests drive it with `oneshot`). `--ui false`
/// leaves out the page and the description.
pub fn app(state: AppState) -> Router {
    let mut table = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ping))
        .routes(routes!(invocations))
        .routes(routes!(execution_parameters))
        .routes(routes!(metrics))
        .routes(routes!(fastapi_predict))
        .routes(routes!(max_predict))
        .routes(routes!(max_metadata));
    if state.config().ui {
        table = table
            .routes(routes!(try_it_page))
            .routes(routes!(page_script))
            .routes(routes!(page_style))
            .routes(routes!(openapi_json));
    }
    let (router, description) = table.split_for_parts();
    let description = Arc::new(description.to_pretty_json().unwrap_or_default());
    router
        .layer(Extension(description))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// Readiness: 200 with an empty body once the model is loaded and warmed up.
#[utoipa::path(get, path = "/ping", tag = "sagemaker",
    responses(
        (status = 200, description = "Ready: the model has loaded and passed a warm-up inference."),
        (status = 503, description = "Loading, or an inference worker died or hung.", body = ErrorBody),
    ))]
async fn ping(state: State<AppState>) -> Response {
    handlers::ping(state).await
}

/// Inference on one image or a list of images.
#[utoipa::path(post, path = "/invocations", tag = "sagemaker",
    params(("X-Amzn-SageMaker-Custom-Attributes" = Option<String>, Header, description = "Options as `key=value` pairs separated by `;` (see the Options schema); at most 1024 characters. Unknown keys are ignored.")),
    request_body(description = "One encoded image (the format is sniffed), a JSON body with base64 images, a NumPy array (SageMaker SDK NumpySerializer, HxWx3 or Nx...x3 uint8), or a form upload. The whole body counts against --max-payload-mb.",
        content(
            ("image/jpeg"), ("image/png"), ("image/webp"), ("image/gif"), ("image/bmp"), ("image/tiff"),
            ("application/x-image"), ("application/octet-stream"),
            (JsonRequest = "application/json"),
            ("application/x-npy"),
            (FormRequest = "multipart/form-data"),
        )),
    responses(
        (status = 200, description = "The answer. JSON by default (a list for a list request); `Accept: application/jsonlines` gives one line per image; segmentation and detection also answer `image/png` / `image/jpeg` (a label map, an overlay or drawn boxes; `output=`, `palette=`).",
            content(
                (Answer = "application/json"),
                ("application/jsonlines"),
                ("image/png"),
                ("image/jpeg"),
            )),
        (status = 400, description = "A bad body, option or image.", body = ErrorBody),
        (status = 406, description = "Accept asks for an answer this model cannot give.", body = ErrorBody),
        (status = 413, description = "Body, image or answer over its limit.", body = ErrorBody),
        (status = 415, description = "A Content-Type wick does not read.", body = ErrorBody),
        (status = 429, description = "The inference queue is full.", body = ErrorBody),
        (status = 500, description = "A bug (the log has the details).", body = ErrorBody),
        (status = 503, description = "Not ready, unhealthy or shutting down.", body = ErrorBody),
        (status = 504, description = "Over the request timeout.", body = ErrorBody),
    ))]
async fn invocations(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handlers::invocations(state, headers, body).await
}

/// SageMaker batch transform's settings query.
#[utoipa::path(get, path = "/execution-parameters", tag = "sagemaker",
    responses((status = 200, body = ExecutionParameters)))]
async fn execution_parameters(state: State<AppState>) -> Response {
    handlers::execution_parameters(state).await
}

/// Prometheus text for SageMaker's detailed observability (scraped every 60 s): request
/// counts by status and error type, stage latencies, queue depth, batch sizes, health.
#[utoipa::path(get, path = "/metrics", tag = "sagemaker",
    responses((status = 200, description = "Prometheus text exposition format.",
        content(("text/plain; version=0.0.4; charset=utf-8")))))]
async fn metrics(state: State<AppState>) -> Response {
    handlers::metrics_text(state).await
}

/// The FastAPI service's route: `/invocations` under another name (multipart field `file`;
/// `Accept: image/png` gives a segmentation model's mask).
#[utoipa::path(post, path = "/predict", tag = "compatibility",
    params(("X-Amzn-SageMaker-Custom-Attributes" = Option<String>, Header, description = "Options as `key=value` pairs separated by `;` (see the Options schema); at most 1024 characters. Unknown keys are ignored.")),
    request_body(content((FormRequest = "multipart/form-data"), ("image/jpeg"), ("image/png"), (JsonRequest = "application/json"))),
    responses(
        (status = 200, content((Answer = "application/json"), ("image/png"), ("image/jpeg"))),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn fastapi_predict(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handlers::invocations(state, headers, body).await
}

/// IBM MAX's prediction route (multipart field `image`), in MAX's JSON shapes.
#[utoipa::path(post, path = "/model/predict", tag = "compatibility",
    request_body(content((FormRequest = "multipart/form-data"), ("image/jpeg"), ("image/png"))),
    responses(
        (status = 200, body = MaxAnswer),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn max_predict(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    compat::max_predict(state, headers, body).await
}

/// IBM MAX's model description, from the package's `config.json`.
#[utoipa::path(get, path = "/model/metadata", tag = "compatibility",
    responses((status = 200, body = ModelCard), (status = 503, body = ErrorBody)))]
async fn max_metadata(state: State<AppState>) -> Response {
    compat::max_metadata(state).await
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "ui",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
async fn openapi_json(Extension(description): Extension<Arc<String>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        description.as_str().to_owned(),
    )
        .into_response()
}

/// A page to try the model: pick or drop a photo, set the options, see the answer drawn.
#[utoipa::path(get, path = "/", tag = "ui",
    responses((status = 200, content_type = "text/html")))]
async fn try_it_page() -> Response {
    page::html()
}

/// The page's script.
#[utoipa::path(get, path = "/ui/page.js", tag = "ui",
    responses((status = 200, content_type = "text/javascript")))]
async fn page_script() -> Response {
    page::script()
}

/// The page's style sheet.
#[utoipa::path(get, path = "/ui/page.css", tag = "ui",
    responses((status = 200, content_type = "text/css")))]
async fn page_style() -> Response {
    page::style()
}
