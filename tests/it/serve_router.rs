//! The HTTP surface in process (`app(state).oneshot(..)`) with a fake model: readiness, the
//! error mapping, admission control and panic isolation, without sockets or real weights.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use image::RgbImage;
use tower::ServiceExt;
use wick::cli::{Cli, Command};
use wick::model::package::Task;
use wick::model::{InferenceOptions, Input, ModelError, Output, Prediction};
use wick::serve::{app, AppState, Predictor, ServeConfig};

/// Answers "bright" or "dark" from the mean pixel; panics on a pure-white image; sleeps if told.
struct FakeModel {
    labels: Vec<String>,
    delay: Duration,
}

impl Predictor for FakeModel {
    fn task(&self) -> Task {
        Task::Classification
    }

    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        let pixels = image.as_raw();
        let mean = pixels.iter().map(|&v| f32::from(v)).sum::<f32>() / pixels.len().max(1) as f32;
        Ok(Input::Tensor(vec![mean / 255.0]))
    }

    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError> {
        std::thread::sleep(self.delay);
        Ok(batch
            .iter()
            .map(|(input, options)| {
                let m = match input {
                    Input::Tensor(t) => t[0],
                    Input::Image(_) | Input::Letterboxed(_) | Input::Streamed(_) => 0.0,
                };
                assert!(m < 0.99, "fake model: white image");
                let ((a, a_id), (b, b_id)) = if m > 0.5 {
                    (("bright", 1), ("dark", 0))
                } else {
                    (("dark", 0), ("bright", 1))
                };
                Output::Classes(
                    vec![
                        Prediction {
                            class_id: a_id,
                            label: a.into(),
                            score: 0.9,
                        },
                        Prediction {
                            class_id: b_id,
                            label: b.into(),
                            score: 0.1,
                        },
                    ]
                    .into_iter()
                    .take(options.top_k)
                    .collect(),
                )
            })
            .collect())
    }
}

fn config(args: &[&str]) -> Result<ServeConfig> {
    let cli = Cli::try_parse_from([&["wick", "serve", "--model-dir", "/unused"], args].concat())?;
    match cli.command {
        Command::Serve(serve) => ServeConfig::from_args(&serve),
        _ => anyhow::bail!("not serve"),
    }
}

/// The configuration logged at startup reads as the flags that set it: durations in the
/// units their names carry, not serde's `{"secs": .., "nanos": ..}`.
#[test]
fn the_logged_configuration_names_its_units() -> Result<()> {
    let logged = serde_json::to_value(config(&["--timeout-secs", "7"])?)?;
    assert_eq!(logged["timeout_secs"], 7);
    assert_eq!(logged["shutdown_grace_secs"], 25);
    assert_eq!(logged["max_payload_bytes"], 6 * 1024 * 1024);
    assert!(logged.get("timeout").is_none(), "{logged}");
    Ok(())
}

fn state(args: &[&str], delay_ms: u64) -> Result<AppState> {
    let state = AppState::new(config(args)?);
    state.start_engine(Arc::new(FakeModel {
        labels: vec!["bright".into(), "dark".into()],
        delay: Duration::from_millis(delay_ms),
    }))?;
    Ok(state)
}

fn png(value: u8) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_pixel(40, 30, image::Rgb([value; 3]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

async fn invoke(state: &AppState, body: Vec<u8>) -> Result<(StatusCode, serde_json::Value)> {
    let request = Request::post("/invocations")
        .header("content-type", "image/png")
        .body(Body::from(body))?;
    let response = app(state.clone()).oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}

#[tokio::test]
async fn ping_is_503_until_the_model_is_ready_then_200_with_an_empty_body() -> Result<()> {
    let loading = AppState::new(config(&[])?);
    let response = app(loading.clone())
        .oneshot(Request::get("/ping").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = invoke(&loading, png(10)?).await?;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
    );

    let ready = state(&[], 0)?;
    let response = app(ready.clone())
        .oneshot(Request::get("/ping").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await?.to_bytes().is_empty());
    let (status, body) = invoke(&ready, png(250)?).await?;
    assert_eq!(
        (status, body[0]["label"].as_str()),
        (StatusCode::OK, Some("bright"))
    );
    Ok(())
}

#[tokio::test]
async fn a_panic_in_inference_is_a_500_without_internals_and_the_next_request_succeeds(
) -> Result<()> {
    let state = state(&[], 0)?;
    let (status, body) = invoke(&state, png(255)?).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error_type"], "internal");
    assert!(
        !body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("white image"),
        "no internals: {body}"
    );
    let (status, body) = invoke(&state, png(10)?).await?;
    assert_eq!(
        (status, body[0]["label"].as_str()),
        (StatusCode::OK, Some("dark"))
    );
    Ok(())
}

#[tokio::test]
async fn a_crashed_inference_worker_turns_ping_503() -> Result<()> {
    // Contract item 11: the worker thread dies after its first batch (fault injection).
    let state = state(&["--fault-worker-exit-after", "1"], 0)?;
    let ping = |state: &AppState| {
        let state = state.clone();
        async move {
            let response = app(state)
                .oneshot(Request::get("/ping").body(Body::empty())?)
                .await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((
                status,
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ))
        }
    };
    assert_eq!(ping(&state).await?.0, StatusCode::OK);
    assert_eq!(invoke(&state, png(10)?).await?.0, StatusCode::OK);
    // The next batch kills the worker; its request fails rather than hanging.
    let (status, _) = invoke(&state, png(10)?).await?;
    assert!(status.is_server_error(), "{status}");
    let (status, body) = ping(&state).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error_type"], "unhealthy", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1 of 1 inference workers"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_queue_answers_429() -> Result<()> {
    let state = state(&["--queue-capacity", "1", "--max-batch-size", "1"], 600)?;
    let first = tokio::spawn({
        let state = state.clone();
        async move { invoke(&state, png(10)?).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await; // the worker takes the first request
    let second = tokio::spawn({
        let state = state.clone();
        async move { invoke(&state, png(10)?).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await; // the second one waits in the queue
    let (status, body) = invoke(&state, png(10)?).await?;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("overloaded"))
    );
    assert_eq!(first.await??.0, StatusCode::OK);
    assert_eq!(second.await??.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors_and_execution_parameters_fit_the_caps(
) -> Result<()> {
    let state = state(&["--max-payload-mb", "30"], 0)?;
    let response = app(state.clone())
        .oneshot(Request::get("/invocations").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = app(state.clone())
        .oneshot(Request::get("/predictions").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("/predictions"));
    let response = app(state)
        .oneshot(Request::get("/execution-parameters").body(Body::empty())?)
        .await?;
    let params: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    let keys: Vec<&String> = params
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        ["BatchStrategy", "MaxConcurrentTransforms", "MaxPayloadInMB"]
    );
    assert_eq!(params["MaxPayloadInMB"], 30);
    assert!(params["MaxConcurrentTransforms"].as_u64().unwrap_or(0) * 30 <= 100);
    Ok(())
}
