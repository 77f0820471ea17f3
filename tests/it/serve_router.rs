//! The HTTP surface in process (`app(state).oneshot(..)`) with a fake model: readiness, the
//! error mapping, admission control and panic isolation, without sockets or real weights.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::Tensor;
use clap::Parser;
use http_body_util::BodyExt;
use tower::ServiceExt;
use wick::cli::{Cli, Command};
use wick::model::preprocess::{Interpolation, PreprocessConfig};
use wick::model::{ModelError, Prediction};
use wick::serve::{app, AppState, Predictor, ServeConfig};

/// Answers "bright" or "dark" from the mean pixel; panics on a pure-white image; sleeps if told.
struct FakeModel {
    cfg: PreprocessConfig,
    delay: Duration,
}

impl Predictor for FakeModel {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    fn classify(&self, batch: &Tensor, top_k: usize) -> Result<Vec<Vec<Prediction>>, ModelError> {
        std::thread::sleep(self.delay);
        let means = batch.flatten_from(1)?.mean(1)?.to_vec1::<f32>()?;
        Ok(means
            .iter()
            .map(|&m| {
                assert!(m < 0.99, "fake model: white image");
                let (a, b) = if m > 0.5 {
                    ("bright", "dark")
                } else {
                    ("dark", "bright")
                };
                vec![
                    Prediction {
                        label: a.into(),
                        score: 0.9,
                    },
                    Prediction {
                        label: b.into(),
                        score: 0.1,
                    },
                ]
                .into_iter()
                .take(top_k)
                .collect()
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

fn state(args: &[&str], delay_ms: u64) -> Result<AppState> {
    let state = AppState::new(config(args)?);
    let cfg = PreprocessConfig {
        input_height: 16,
        input_width: 16,
        crop_pct: 1.0,
        interpolation: Interpolation::Bilinear,
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    state.start_engine(Arc::new(FakeModel {
        cfg,
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
        .oneshot(Request::get("/predict").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("/predict"));
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
