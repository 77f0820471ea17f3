//! The answer formats of segmentation and detection models over HTTP, in process, with small
//! deterministic models: a segmenter that labels bright pixels and a detector that finds the
//! bright rectangle. The real networks behind the same interface have their own tests; these
//! pin down negotiation, every format, the options and the limits.

use std::sync::Arc;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use clap::Parser;
use http_body_util::BodyExt;
use image::{Rgb, RgbImage};
use serde_json::Value;
use tower::ServiceExt;
use wick::cli::{Cli, Command};
use wick::model::package::Task;
use wick::model::{Detection, InferenceOptions, Input, LabelMap, ModelError, Output};
use wick::serve::{app, AppState, Predictor, ServeConfig};

/// Class 1 ("building") where a pixel's red channel is over 128, else background.
struct BrightSegmenter {
    labels: Vec<String>,
}

/// One box around the pixels whose red channel is over 128, as class 1 ("cat"), score 0.9;
/// honours threshold, classes and max_detections like a real detector.
struct BrightDetector {
    labels: Vec<String>,
}

fn image_of(input: &Input) -> Result<&RgbImage, ModelError> {
    match input {
        Input::Image(image) => Ok(image),
        Input::Tensor(_) | Input::Letterboxed(_) | Input::Streamed(_) => {
            Err(ModelError::Unsupported("fake: expected an image".into()))
        }
    }
}

impl Predictor for BrightSegmenter {
    fn task(&self) -> Task {
        Task::Segmentation
    }
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        Ok(Input::Image(Arc::new(image)))
    }
    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError> {
        batch
            .iter()
            .map(|(input, _)| {
                let image = image_of(input)?;
                Ok(Output::Segmentation(LabelMap {
                    width: image.width(),
                    height: image.height(),
                    classes: image.pixels().map(|p| u8::from(p[0] > 128)).collect(),
                }))
            })
            .collect()
    }
    fn is_binary(&self) -> bool {
        true
    }
}

impl Predictor for BrightDetector {
    fn task(&self) -> Task {
        Task::Detection
    }
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        Ok(Input::Image(Arc::new(image)))
    }
    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError> {
        batch
            .iter()
            .map(|(input, options)| {
                let image = image_of(input)?;
                let bright: Vec<(u32, u32)> = image
                    .enumerate_pixels()
                    .filter(|(_, _, p)| p[0] > 128)
                    .map(|(x, y, _)| (x, y))
                    .collect();
                let detect = &options.detect;
                let wanted = detect.classes.as_ref().is_none_or(|c| c.contains(&1));
                let mut boxes = Vec::new();
                if !bright.is_empty() && wanted && detect.threshold <= 0.9 {
                    boxes.push(Detection {
                        class_id: 1,
                        label: self.labels[1].clone(),
                        score: 0.9,
                        xmin: bright.iter().map(|p| p.0).min().unwrap_or(0) as f32,
                        ymin: bright.iter().map(|p| p.1).min().unwrap_or(0) as f32,
                        xmax: bright.iter().map(|p| p.0 + 1).max().unwrap_or(0) as f32,
                        ymax: bright.iter().map(|p| p.1 + 1).max().unwrap_or(0) as f32,
                    });
                }
                boxes.truncate(detect.max_detections);
                Ok(Output::Detections(boxes))
            })
            .collect()
    }
}

pub(crate) fn state(predictor: Arc<dyn Predictor>, args: &[&str]) -> Result<AppState> {
    let cli = Cli::try_parse_from([&["wick", "serve", "--model-dir", "/unused"], args].concat())?;
    let Command::Serve(serve) = cli.command else {
        anyhow::bail!("not serve")
    };
    let state = AppState::new(ServeConfig::from_args(&serve)?);
    state.start_engine(predictor)?;
    Ok(state)
}

pub(crate) fn segmenter(args: &[&str]) -> Result<AppState> {
    let labels = vec!["background".into(), "building".into()];
    state(Arc::new(BrightSegmenter { labels }), args)
}

pub(crate) fn detector(args: &[&str]) -> Result<AppState> {
    let labels = vec!["person".into(), "cat".into()];
    state(Arc::new(BrightDetector { labels }), args)
}

/// A 60x40 dark photo with a bright 20x10 rectangle at (30, 5).
pub(crate) fn photo_png() -> Result<Vec<u8>> {
    let image = RgbImage::from_fn(60, 40, |x, y| {
        if (30..50).contains(&x) && (5..15).contains(&y) {
            Rgb([200, 200, 200])
        } else {
            Rgb([20, 30, 40])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// A router answer, read whole.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn invoke(
    state: &AppState,
    content_type: &str,
    body: Vec<u8>,
    accept: Option<&str>,
    attributes: Option<&str>,
) -> Result<Reply> {
    let mut request = Request::post("/invocations").header("content-type", content_type);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(attributes) = attributes {
        request = request.header("x-amzn-sagemaker-custom-attributes", attributes);
    }
    send(state, request.body(Body::from(body))?).await
}

/// Runs `request` through the whole router.
pub(crate) async fn send(state: &AppState, request: Request<Body>) -> Result<Reply> {
    let response = app(state.clone()).oneshot(request).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

pub(crate) fn bright_mask() -> Vec<u8> {
    RgbImage::from_fn(60, 40, |x, y| {
        Rgb([u8::from((30..50).contains(&x) && (5..15).contains(&y)); 3])
    })
    .pixels()
    .map(|p| p[0] * 255)
    .collect()
}

#[tokio::test]
async fn segmentation_answers_json_masks_label_maps_overlays_seg_map_and_rle() -> Result<()> {
    let state = segmenter(&[])?;

    let reply = invoke(&state, "image/png", photo_png()?, None, None).await?;
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (StatusCode::OK, "application/json")
    );
    let entries = reply.json();
    assert_eq!(entries[1]["label"], "building", "{entries}");
    assert_eq!(entries[1]["pixels"], 200);
    let png = base64::engine::general_purpose::STANDARD
        .decode(entries[1]["mask"].as_str().unwrap_or_default())?;
    let mask = image::load_from_memory(&png)?.to_luma8();
    assert_eq!(mask.dimensions(), (60, 40), "the mask has the photo's size");
    assert_eq!(mask.into_raw(), bright_mask());

    // Accept image/png: the binary label map at the original size, 0/255.
    let reply = invoke(&state, "image/png", photo_png()?, Some("image/png"), None).await?;
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (StatusCode::OK, "image/png")
    );
    let map = image::load_from_memory(&reply.body)?.to_luma8();
    assert_eq!(map.into_raw(), bright_mask());

    // output=overlay (PNG) and image/jpeg: the photo with the mask blended in.
    for (accept, attributes) in [("image/png", Some("output=overlay")), ("image/jpeg", None)] {
        let reply = invoke(&state, "image/png", photo_png()?, Some(accept), attributes).await?;
        assert_eq!(
            (reply.status, reply.content_type.as_str()),
            (StatusCode::OK, accept)
        );
        let overlay = image::load_from_memory(&reply.body)?.to_rgb8();
        assert_eq!(overlay.dimensions(), (60, 40));
        let inside = overlay.get_pixel(40, 10);
        let outside = overlay.get_pixel(5, 30);
        assert!(
            inside[0] > 200 && inside[1] < 130,
            "{accept}: red blend {inside:?}"
        );
        assert!(
            outside[0].abs_diff(20) <= 6 && outside[2].abs_diff(40) <= 6,
            "{outside:?}"
        );
    }

    // IBM MAX's shape and COCO RLE, from JSON parameters this time.
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo_png()?);
    let body = serde_json::json!({"inputs": b64, "parameters": {"format": "seg_map"}});
    let reply = invoke(
        &state,
        "application/json",
        serde_json::to_vec(&body)?,
        None,
        None,
    )
    .await?;
    let seg_map = reply.json();
    assert_eq!(seg_map["status"], "ok");
    assert_eq!(seg_map["image_size"], serde_json::json!([60, 40]));
    assert_eq!(seg_map["seg_map"].as_array().map(Vec::len), Some(40));
    assert_eq!(seg_map["seg_map"][10][40], 1);
    assert_eq!(seg_map["seg_map"][10][10], 0);

    let reply = invoke(
        &state,
        "image/png",
        photo_png()?,
        None,
        Some("mask_format=rle"),
    )
    .await?;
    let rle = &reply.json()[1]["mask"];
    assert_eq!(rle["size"], serde_json::json!([40, 60]));
    // Column-major: 30 full background columns, then per bright column 5 out, 10 in, 25 out.
    let counts: Vec<u64> = rle["counts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(counts[..3], [30 * 40 + 5, 10, 25 + 5]);
    assert_eq!(counts.iter().sum::<u64>(), 60 * 40);
    Ok(())
}

#[tokio::test]
async fn segmentation_refuses_what_it_cannot_answer_with_a_clear_status() -> Result<()> {
    let state = segmenter(&["--max-payload-mb", "1"])?;
    // Two images cannot travel as one PNG.
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo_png()?);
    let body = serde_json::json!({"inputs": [b64.clone(), b64]});
    let reply = invoke(
        &state,
        "application/json",
        serde_json::to_vec(&body)?,
        Some("image/png"),
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("has 2"));

    // format=sagemaker belongs to detection.
    let reply = invoke(
        &state,
        "image/png",
        photo_png()?,
        None,
        Some("format=sagemaker"),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("seg_map"));

    // A seg_map of a 1500x1000 photo is ~3 MB of JSON: over a 1 MiB limit it is a 413 that
    // names the compact formats (the striped request itself compresses to a few kilobytes).
    let noisy = RgbImage::from_fn(1500, 1000, |x, _| Rgb([((x / 50) % 2 * 200) as u8; 3]));
    let mut png = std::io::Cursor::new(Vec::new());
    noisy.write_to(&mut png, image::ImageFormat::Png)?;
    let reply = invoke(
        &state,
        "image/png",
        png.into_inner(),
        None,
        Some("format=seg_map"),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = reply.json();
    assert_eq!(error["error_type"], "response_too_large");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("mask_format=rle"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn detection_answers_hf_boxes_sagemaker_fractions_and_drawn_images() -> Result<()> {
    let state = detector(&[])?;
    let reply = invoke(&state, "image/png", photo_png()?, None, None).await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!([{"score": 0.9f32, "label": "cat", "box": {"xmin": 30, "ymin": 5, "xmax": 50, "ymax": 15}}])
    );

    let reply = invoke(
        &state,
        "image/png",
        photo_png()?,
        None,
        Some("format=sagemaker"),
    )
    .await?;
    let row: Vec<f64> = reply.json()["prediction"][0]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let want = [1.0, 0.9, 0.5, 0.125, 50.0 / 60.0, 0.375];
    assert_eq!(row.len(), 6);
    for (got, want) in row.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{row:?}");
    }

    for accept in ["image/jpeg", "image/png"] {
        let reply = invoke(&state, "image/png", photo_png()?, Some(accept), None).await?;
        assert_eq!(
            (reply.status, reply.content_type.as_str()),
            (StatusCode::OK, accept)
        );
        let drawn = image::load_from_memory(&reply.body)?.to_rgb8();
        assert_eq!(drawn.dimensions(), (60, 40));
        // The box's bottom edge (the label tag covers its top on so small a photo).
        let edge = *drawn.get_pixel(40, 15);
        if accept == "image/png" {
            assert_eq!(
                edge,
                Rgb(wick::render::class_color(1)),
                "box edge in the class colour"
            );
        } else {
            assert_ne!(edge, Rgb([20, 30, 40]), "something is drawn on the edge");
        }
    }
    Ok(())
}

#[tokio::test]
async fn detection_options_come_from_attributes_or_json_and_are_validated() -> Result<()> {
    let state = detector(&[])?;
    let count = |reply: &Reply| reply.json().as_array().map(Vec::len).unwrap_or(99);
    for (attributes, boxes) in [
        ("threshold=0.95", 0),
        ("classes=person", 0),
        ("classes=cat,person", 1),
        ("classes=1;iou=0.3;max_detections=1", 1),
    ] {
        let reply = invoke(&state, "image/png", photo_png()?, None, Some(attributes)).await?;
        assert_eq!(
            (reply.status, count(&reply)),
            (StatusCode::OK, boxes),
            "{attributes}"
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo_png()?);
    let body = serde_json::json!({"inputs": b64, "parameters": {"classes": ["person"]}});
    let reply = invoke(
        &state,
        "application/json",
        serde_json::to_vec(&body)?,
        None,
        None,
    )
    .await?;
    assert_eq!(count(&reply), 0);

    for attributes in ["threshold=2", "iou=-1", "max_detections=0", "classes=dog"] {
        let reply = invoke(&state, "image/png", photo_png()?, None, Some(attributes)).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{attributes}");
        let name = attributes.split('=').next().unwrap_or_default();
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap_or_default()
                .contains(name),
            "{attributes}: {}",
            reply.json()
        );
    }
    // A classifier-only format is refused by Accept negotiation, naming what is offered.
    let reply = invoke(&state, "image/png", photo_png()?, Some("text/csv"), None).await?;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("image/jpeg"));
    Ok(())
}

/// The real LR-ASPP network (parity-formula weights) behind the HTTP surface, on a real photo:
/// what `/invocations` answers is exactly what the segmenter computes, at the photo's size.
#[tokio::test]
async fn a_real_segmentation_network_answers_every_format_at_the_photos_size() -> Result<()> {
    use wick::model::package::Package;
    use wick::model::weights::Weights;
    use wick::model::{Model, Segmenter};

    let dir = tempfile::tempdir()?;
    let config = serde_json::json!({
        "architecture": "lraspp_mobilenet_v3_large",
        "task": "segmentation",
        "label_names": ["background", "cat", "sofa"],
    });
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config)?)?;
    std::fs::write(dir.path().join("model.safetensors"), b"")?;
    let package = Package::open(dir.path())?;
    let segmenter = Segmenter::from_package(&package, &Weights::synthetic())?;
    let photo = std::fs::read(crate::support::fixture("chelsea.jpg"))?;
    // Decoded as the server decodes (libjpeg-turbo, Pillow's pixels).
    let decoded =
        wick::model::preprocess::decode(&photo, &wick::model::preprocess::DecodeLimits::default())?;
    let expected = segmenter.segment(&decoded, None)?;
    let state = state(Arc::new(Model::Segmenter(segmenter)), &[])?;

    let reply = invoke(&state, "image/jpeg", photo.clone(), Some("image/png"), None).await?;
    assert_eq!(reply.status, StatusCode::OK);
    let map = image::load_from_memory(&reply.body)?.to_luma8();
    assert_eq!(map.dimensions(), (451, 300), "the photo's own size");
    assert_eq!(map.into_raw(), expected.classes);

    let reply = invoke(&state, "image/jpeg", photo.clone(), None, None).await?;
    let entries = reply.json();
    let total: u64 = entries
        .as_array()
        .map(|e| e.iter().filter_map(|c| c["pixels"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(
        total,
        451 * 300,
        "every pixel in exactly one class: {entries}"
    );

    let reply = invoke(
        &state,
        "image/jpeg",
        photo.clone(),
        None,
        Some("format=seg_map"),
    )
    .await?;
    assert_eq!(reply.json()["image_size"], serde_json::json!([451, 300]));

    let reply = invoke(
        &state,
        "image/jpeg",
        photo.clone(),
        Some("image/png"),
        Some("palette=voc"),
    )
    .await?;
    let decoder = png::Decoder::new(std::io::Cursor::new(reply.body));
    assert_eq!(
        decoder.read_info()?.info().color_type,
        png::ColorType::Indexed
    );

    let reply = invoke(
        &state,
        "image/jpeg",
        photo,
        Some("image/jpeg"),
        Some("output=overlay"),
    )
    .await?;
    assert_eq!(reply.content_type, "image/jpeg");
    assert_eq!(
        image::load_from_memory(&reply.body)?.to_rgb8().dimensions(),
        (451, 300)
    );
    Ok(())
}
