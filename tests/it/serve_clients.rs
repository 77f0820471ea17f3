//! The clients wick replaces, in process: `multipart/form-data` uploads on `/invocations`
//! (browser forms, `curl -F`), and the FastAPI (`/predict`) and IBM MAX (`/model/predict`,
//! `/model/metadata`) routes, with real multipart bodies built as a browser writes them.

use std::sync::Arc;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::RgbImage;
use serde_json::{json, Value};
use wick::model::package::Task;
use wick::model::{InferenceOptions, Input, ModelError, Output, Prediction};
use wick::serve::{AppState, Predictor};

use crate::serve_tasks::{bright_mask, detector, photo_png, segmenter, send, state, Reply};

/// "bright" or "dark" from the mean red value, then the other class.
pub(crate) struct BrightClassifier {
    pub(crate) labels: Vec<String>,
}

impl Predictor for BrightClassifier {
    fn task(&self) -> Task {
        Task::Classification
    }
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        let red: f32 = image.pixels().map(|p| f32::from(p[0])).sum();
        Ok(Input::Tensor(vec![
            red / (255.0 * image.pixels().len().max(1) as f32),
        ]))
    }
    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError> {
        Ok(batch
            .iter()
            .map(|(input, options)| {
                let mean = match input {
                    Input::Tensor(t) => t[0],
                    Input::Image(_) | Input::Letterboxed(_) | Input::Streamed(_) => 0.0,
                };
                let (first, second) = if mean > 0.5 { (1, 0) } else { (0, 1) };
                let classes = [(first, 0.75), (second, 0.25)]
                    .into_iter()
                    .map(|(i, score)| Prediction {
                        class_id: i,
                        label: self.labels[i].clone(),
                        score,
                    })
                    .take(options.top_k)
                    .collect();
                Output::Classes(classes)
            })
            .collect())
    }
}

pub(crate) fn classifier(args: &[&str]) -> Result<AppState> {
    let labels = vec!["dark".into(), "bright <b>".into()];
    state(Arc::new(BrightClassifier { labels }), args)
}

/// One part of a form: a file (field, file name, bytes) or a text field (field, value).
pub(crate) enum Part<'a> {
    File(&'a str, &'a str, &'a [u8]),
    Text(&'a str, &'a str),
}

pub(crate) const BOUNDARY: &str = "----wickFormBoundary7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body as browsers and curl write it.
pub(crate) fn form(parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::File(name, filename, data) => {
                out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n")
                        .as_bytes(),
                );
                out.extend_from_slice(data);
            }
            Part::Text(name, value) => {
                out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                        .as_bytes(),
                );
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn post_form(
    state: &AppState,
    path: &str,
    parts: &[Part<'_>],
    accept: Option<&str>,
) -> Result<Reply> {
    let mut request = Request::post(path).header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    send(state, request.body(Body::from(form(parts)))?).await
}

#[tokio::test]
async fn a_form_upload_answers_as_the_raw_image_does_with_form_fields_as_options() -> Result<()> {
    let state = detector(&[])?;
    let photo = photo_png()?;
    let raw = send(
        &state,
        Request::post("/invocations")
            .header("content-type", "image/png")
            .body(Body::from(photo.clone()))?,
    )
    .await?;
    assert_eq!(raw.status, StatusCode::OK);
    for field in ["file", "image", "anything"] {
        let reply = post_form(
            &state,
            "/invocations",
            &[Part::File(field, "photo.png", &photo)],
            None,
        )
        .await?;
        assert_eq!(reply.status, StatusCode::OK, "{field}");
        assert_eq!(reply.json(), raw.json(), "field `{field}`");
    }

    // Two files: a list answer, one entry per file, in order.
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::File("file", "a.png", &photo),
            Part::File("file", "b.png", &photo),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.json(), json!([raw.json(), raw.json()]));

    // Plain fields are options, validated like Custom-Attributes.
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::Text("format", "sagemaker"),
            Part::File("file", "a.png", &photo),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.json()["prediction"][0][0], json!(1.0));
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::File("file", "a.png", &photo),
            Part::Text("threshold", "0.95"),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.json(), json!([]), "threshold above the box's score");
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::File("file", "a.png", &photo),
            Part::Text("max_detections", "0"),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_detections")),
        "{}",
        reply.json()
    );
    Ok(())
}

#[tokio::test]
async fn a_form_part_that_is_not_an_image_or_too_big_is_refused_with_the_reason() -> Result<()> {
    let state = detector(&["--max-payload-mb", "1"])?;
    let reply = post_form(
        &state,
        "/invocations",
        &[Part::File("image", "notes.txt", b"just some text")],
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error_type"], "invalid_image");
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("`image`") && error.contains("notes.txt"),
        "{error}"
    );

    let reply = post_form(&state, "/invocations", &[Part::Text("top_k", "3")], None).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("no file part")));

    // The cap counts the whole body: two parts of 600 kB each pass one by one, not together.
    let photo = photo_png()?;
    let padding = "x".repeat(600 * 1024);
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::File("file", "a.png", &photo),
            Part::Text("note", &padding),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
    let reply = post_form(
        &state,
        "/invocations",
        &[
            Part::File("file", "a.png", &photo),
            Part::Text("note", &padding),
            Part::Text("more", &padding),
        ],
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error_type"], "payload_too_large");

    let reply = send(
        &state,
        Request::post("/invocations")
            .header("content-type", "multipart/form-data")
            .body(Body::from(photo))?,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "no boundary");
    Ok(())
}

#[tokio::test]
async fn fastapi_predict_takes_the_file_field_and_gives_the_mask_as_png() -> Result<()> {
    let state = segmenter(&[])?;
    let photo = photo_png()?;
    let reply = post_form(
        &state,
        "/predict",
        &[Part::File("file", "roof.png", &photo)],
        Some("image/png"),
    )
    .await?;
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (StatusCode::OK, "image/png")
    );
    let mask = image::load_from_memory(&reply.body)?.to_luma8();
    assert_eq!(mask.dimensions(), (60, 40));
    assert_eq!(mask.into_raw(), bright_mask());

    let reply = post_form(
        &state,
        "/predict",
        &[Part::File("file", "roof.png", &photo)],
        None,
    )
    .await?;
    let answer = reply.json();
    let labels: Vec<&str> = answer
        .as_array()
        .map(|e| e.iter().filter_map(|c| c["label"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(labels, ["background", "building"], "{answer}");
    Ok(())
}

#[tokio::test]
async fn max_routes_answer_in_max_shapes_for_each_task() -> Result<()> {
    let photo = photo_png()?;
    let upload = [Part::File("image", "photo.png", &photo)];

    let state = segmenter(&[])?;
    let reply = post_form(&state, "/model/predict", &upload, None).await?;
    let answer = reply.json();
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["image_size"], json!([60, 40]));
    let rows = answer["seg_map"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 40);
    assert_eq!(rows[10][40], json!(1), "the bright rectangle");
    assert_eq!(rows[30][10], json!(0));

    let state = detector(&[])?;
    let reply = post_form(&state, "/model/predict", &upload, None).await?;
    let answer = reply.json();
    assert_eq!(answer["status"], "ok", "{answer}");
    let first = &answer["predictions"][0];
    assert_eq!(
        (&first["label_id"], &first["label"]),
        (&json!("1"), &json!("cat"))
    );
    let got: Vec<f64> = first["detection_box"]
        .as_array()
        .map(|b| b.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let want = [5.0 / 40.0, 30.0 / 60.0, 15.0 / 40.0, 50.0 / 60.0];
    assert_eq!(got.len(), 4, "{answer}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "[ymin, xmin, ymax, xmax] {got:?}");
    }
    let metadata = send(&state, Request::get("/model/metadata").body(Body::empty())?).await?;
    assert_eq!(metadata.json()["type"], "Object Detection");
    for key in ["id", "name", "description", "license"] {
        assert!(
            metadata.json()[key].is_string(),
            "{key}: {}",
            metadata.json()
        );
    }

    let state = classifier(&[])?;
    let reply = post_form(&state, "/model/predict", &upload, None).await?;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "predictions": [
            {"label_id": "0", "label": "dark", "probability": 0.75},
            {"label_id": "1", "label": "bright <b>", "probability": 0.25},
        ]})
    );
    // Errors are the same as /invocations'.
    let reply = post_form(
        &state,
        "/model/predict",
        &[Part::File("image", "x.txt", b"text")],
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error_type"], "invalid_image");
    Ok(())
}
