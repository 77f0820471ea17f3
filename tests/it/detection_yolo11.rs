//! YOLO11 against ultralytics: the raw head output of yolo11n and yolo11s on a non-square input,
//! boxes after NMS on a real photo, and a `.pt` written by ultralytics' own save code loaded
//! from a folder with no `config.json` (the checkpoint alone says what it is). The references
//! come from `tests/parity/generate_yolo11.py`; weights from the shared `synth` formula, except
//! the small committed `.pt`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::json;
use wick::model::weights::{synthesize, Weights};
use wick::model::{DetectOptions, Detector};

use crate::detection::{
    assert_raw_matches, assert_same_boxes, config_only, detection_dir, fixture_path, read_json,
    synthetic_input, Photo, Raw,
};

#[derive(Deserialize)]
struct Yolo11Fixture {
    architecture: String,
    bn_eps: Vec<f64>,
    tensors: Vec<(String, Vec<usize>)>,
    input_shape: Vec<usize>,
    raw: Raw,
    photos: Vec<Photo>,
}

/// The fixture's network from its synthetic tensors, as a package naming its scale.
fn detector(fixture: &Yolo11Fixture) -> Result<Detector> {
    let tensors: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    let config = json!({"architecture": fixture.architecture, "task": "detection"});
    let (_dir, package) = config_only(&config.to_string())?;
    Ok(Detector::from_package(
        &package,
        &Weights::from_tensors(tensors),
    )?)
}

#[test]
fn yolo11n_and_yolo11s_raw_head_output_matches_ultralytics() -> Result<()> {
    for name in ["yolo11n.json", "yolo11s.json"] {
        let fixture: Yolo11Fixture = read_json(name)?;
        assert_eq!(fixture.bn_eps, vec![1e-3], "{name}: reference batch norms");
        assert_ne!(
            fixture.input_shape[2], fixture.input_shape[3],
            "a non-square input"
        );
        let detector = detector(&fixture)?;
        assert_eq!(detector.labels()[0], "person", "COCO names for 80 classes");
        let raw = detector.raw_output(&synthetic_input(&fixture.input_shape)?)?;
        assert_raw_matches(&raw, &fixture.raw, name)?;
    }
    Ok(())
}

#[test]
fn yolo11n_boxes_on_a_photo_match_ultralytics() -> Result<()> {
    let fixture: Yolo11Fixture = read_json("yolo11n.json")?;
    let detector = detector(&fixture)?;
    assert!(!fixture.photos.is_empty());
    for photo in &fixture.photos {
        assert_eq!(
            photo.letterbox_mode, "rect",
            "the predictor's canvas, wick's default"
        );
        let image = image::open(fixture_path(&photo.photo))?.to_rgb8();
        let options = DetectOptions {
            threshold: photo.threshold,
            iou: photo.iou,
            ..DetectOptions::default()
        };
        let found = detector.detect(&image, &options)?;
        assert!(!photo.boxes.is_empty());
        assert_same_boxes(&found, &photo.boxes, &photo.photo);
    }
    Ok(())
}

#[derive(Deserialize)]
struct TinyPt {
    checkpoint: String,
    names: Vec<String>,
    input_shape: Vec<usize>,
    raw: Raw,
}

/// A folder holding `file` copied from the detection fixtures as `best.pt`, nothing else.
fn pt_only(file: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(detection_dir().join(file), dir.path().join("best.pt"))?;
    Ok(dir)
}

#[test]
fn a_folder_with_only_an_ultralytics_yolo11_pt_is_a_detection_package() -> Result<()> {
    let fixture: TinyPt = read_json("tiny_yolo11.json")?;
    let dir = pt_only(&fixture.checkpoint)?;
    let detector = Detector::load(dir.path())?;
    assert_eq!(
        detector.labels(),
        fixture.names.as_slice(),
        "names from the .pt"
    );
    assert_eq!(detector.input_size(), (640, 640), "imgsz from the .pt");
    let raw = detector.raw_output(&synthetic_input(&fixture.input_shape)?)?;
    assert_raw_matches(&raw, &fixture.raw, "tiny_yolo11.pt")?;

    // Naming a scale the checkpoint is not is refused, saying which.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architecture": "yolo11n", "task": "detection"}"#,
    )?;
    let e = Detector::load(dir.path()).err().context("yolo11n loaded")?;
    assert!(e.to_string().contains("yolo11n"), "{e}");
    Ok(())
}

#[test]
fn a_yolov8_pt_alone_is_recognised_as_yolov8() -> Result<()> {
    let dir = pt_only("tiny_yolov8.pt")?;
    let detector = Detector::load(dir.path())?;
    assert_eq!(detector.labels(), ["cat", "cup", "saucer"]);
    let raw = detector.raw_output(&synthetic_input(&[1, 3, 64, 96])?)?;
    // 3 classes + 4 box rows over the three levels' anchors.
    assert_eq!(raw.dims(), &[1, 7, 8 * 12 + 4 * 6 + 2 * 3]);
    Ok(())
}

#[test]
fn a_lone_pt_that_is_not_an_ultralytics_model_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state_dict =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints/tiny_zip.pth");
    std::fs::copy(state_dict, dir.path().join("model.pt"))?;
    let e = Detector::load(dir.path())
        .err()
        .context("a state dict loaded")?;
    let message = e.to_string();
    assert!(
        message.contains("model.pt") && message.contains("no pickled ultralytics model"),
        "{message}"
    );
    assert!(
        message.contains("config.json"),
        "says what to add: {message}"
    );
    Ok(())
}
