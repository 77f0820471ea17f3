//! The routes of the services wick replaces, as aliases of `/invocations` (same body reading,
//! limits, options, errors and timings): the FastAPI building-mask service's `POST /predict`,
//! and IBM MAX's `POST /model/predict` and `GET /model/metadata` with MAX's JSON shapes.
//! SageMaker routes only `/ping` and `/invocations`, so these change nothing there. The route
//! table is `routes.rs`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::card::ModelCard;
use super::error::ApiError;
use super::handlers::{invocations, CUSTOM_ATTRIBUTES};
use super::state::AppState;
use crate::model::package::Task;

/// `GET /model/metadata`: `{"id", "name", "description", "type", "license"}`.
pub(crate) async fn max_metadata(State(state): State<AppState>) -> Response {
    let Some(ready) = state.ready() else {
        return ApiError::NotReady.into_response();
    };
    let card = state.model_card().cloned().unwrap_or_else(|| {
        ModelCard::generic(ready.predictor.task(), ready.predictor.labels().len())
    });
    Json(card).into_response()
}

/// `POST /model/predict`: `/invocations` asked for the JSON shape MAX's shape is made from,
/// then rewritten as `{"status": "ok", ...}`. Errors pass through unchanged.
pub(crate) async fn max_predict(
    State(state): State<AppState>,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(ready) = state.ready() else {
        return ApiError::NotReady.into_response();
    };
    let task = ready.predictor.task();
    let labels = ready.predictor.labels().to_vec();
    // MAX's segmenter already has its shape (`format=seg_map`); detection boxes as SageMaker's
    // fractions of the image are what MAX's `detection_box` holds, in another order.
    let shape = match task {
        Task::Classification => "hf",
        Task::Segmentation => "seg_map",
        Task::Detection => "sagemaker",
    };
    let client_attributes = headers
        .get(CUSTOM_ATTRIBUTES)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The client's keys first so that `format` here wins (later pairs overwrite earlier ones).
    let attributes = format!("{client_attributes};format={shape}");
    if let Ok(value) = HeaderValue::from_str(&attributes) {
        headers.insert(CUSTOM_ATTRIBUTES, value);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let response = invocations(State(state), headers, body).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return ApiError::Internal(format!("reading the answer: {e}")).into_response(),
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let rewritten = match task {
        Task::Segmentation => answer,
        Task::Classification | Task::Detection => json!({
            "status": "ok",
            "predictions": max_predictions(&answer, task, &labels),
        }),
    };
    let mut response = Json(rewritten).into_response();
    if let Some(attributes) = parts.headers.get(CUSTOM_ATTRIBUTES) {
        response
            .headers_mut()
            .insert(CUSTOM_ATTRIBUTES, attributes.clone());
    }
    response
}

/// MAX's prediction items for one answer, or a list of them for a list request.
fn max_predictions(answer: &Value, task: Task, labels: &[String]) -> Value {
    let is_list = match task {
        Task::Classification => answer
            .as_array()
            .and_then(|items| items.first())
            .is_some_and(Value::is_array),
        _ => answer.is_array(),
    };
    if is_list {
        let items = answer.as_array().map(Vec::as_slice).unwrap_or_default();
        return items
            .iter()
            .map(|one| max_predictions(one, task, labels))
            .collect();
    }
    match task {
        Task::Classification => answer
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|item| {
                let label = item["label"].as_str().unwrap_or_default();
                let id = labels.iter().position(|l| l == label);
                json!({"label_id": id.map(|i| i.to_string()), "label": label, "probability": item["score"]})
            })
            .collect(),
        // [class, score, x0, y0, x1, y1] -> MAX's [ymin, xmin, ymax, xmax].
        _ => answer["prediction"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|row| {
                let class = row[0].as_f64().unwrap_or(0.0) as usize;
                json!({
                    "label_id": class.to_string(),
                    "label": labels.get(class).cloned().unwrap_or_default(),
                    "probability": row[1],
                    "detection_box": [row[3], row[2], row[5], row[4]],
                })
            })
            .collect(),
    }
}
