//! Object detection against the real implementations: YOLOv8 against ultralytics (raw head
//! output, letterbox, boxes after NMS on real photos on the square and the predictor's minimal
//! canvas, a `.pt` written by ultralytics' own save code) and Tiny YOLOv2 against OpenCV's
//! darknet reader. `tests/parity/generate_detection.py` produced the references once; the
//! weights come from the shared `synth` formula, so no weight file is involved except the
//! small committed `.pt`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::json;
use wick::model::detect::darknet::{self, Cfg};
use wick::model::detect::letterbox::{draw, Placement, PAD_VALUE};
use wick::model::package::Package;
use wick::model::weights::{synthesize, Weights};
use wick::model::{DetectOptions, Detection, Detector, ModelError};

use crate::support::fixture;

pub(crate) fn detection_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detection")
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T> {
    let path = detection_dir().join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

#[derive(Deserialize)]
pub(crate) struct Raw {
    pub(crate) shape: Vec<usize>,
    abs_sum: f64,
    sample_index: Vec<usize>,
    sample_value: Vec<f64>,
}

#[derive(Deserialize)]
pub(crate) struct Letterboxed {
    shape: Vec<usize>,
    pixel_y: Vec<usize>,
    pixel_x: Vec<usize>,
    pixel_rgb: Vec<[u8; 3]>,
}

#[derive(Deserialize)]
pub(crate) struct Photo {
    pub(crate) photo: String,
    /// `square` (ultralytics' `LetterBox(auto=False)`) or `rect` (`auto=True`).
    pub(crate) letterbox_mode: String,
    size: [usize; 2],
    letterbox: Letterboxed,
    pub(crate) threshold: f32,
    pub(crate) iou: f32,
    /// `[x1, y1, x2, y2, score, class]` in original pixels, best first.
    pub(crate) boxes: Vec<(f32, f32, f32, f32, f32, usize)>,
}

#[derive(Deserialize)]
struct YoloFixture {
    bn_eps: Vec<f64>,
    tensors: Vec<(String, Vec<usize>)>,
    input_shape: Vec<usize>,
    raw: Raw,
    photos: Vec<Photo>,
}

fn package(dir: &Path, config: &str) -> Result<Package> {
    std::fs::write(dir.join("config.json"), config)?;
    Ok(Package::open(dir)?)
}

/// A package directory with only a config (weights are passed in memory).
pub(crate) fn config_only(config: &str) -> Result<(tempfile::TempDir, Package)> {
    let dir = tempfile::tempdir()?;
    // Package::open wants a weights file; its content is never read here.
    std::fs::write(dir.path().join("unused.safetensors"), b"")?;
    let package = package(dir.path(), config)?;
    Ok((dir, package))
}

fn yolov8n() -> Result<(YoloFixture, Detector)> {
    let fixture: YoloFixture = read_json("yolov8n.json")?;
    let detector = yolov8n_detector(&fixture, "rect")?;
    Ok((fixture, detector))
}

/// The fixture's YOLOv8n with config.json `letterbox` set to `letterbox`.
fn yolov8n_detector(fixture: &YoloFixture, letterbox: &str) -> Result<Detector> {
    let tensors: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    let config = json!({"architecture": "yolov8n", "task": "detection", "letterbox": letterbox});
    let (_dir, package) = config_only(&config.to_string())?;
    Ok(Detector::from_package(
        &package,
        &Weights::from_tensors(tensors),
    )?)
}

/// `(synth("input") + 1) / 2`: image-like values in [0, 1], as the generator feeds.
pub(crate) fn synthetic_input(shape: &[usize]) -> Result<Tensor> {
    Ok(((synthesize("input", shape) + 1.0)? / 2.0)?)
}

/// Compares a raw output with the reference: every sample within 1e-3 (relative above 1), the
/// absolute sum within 1e-5 relative.
pub(crate) fn assert_raw_matches(got: &Tensor, want: &Raw, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.shape.as_slice(), "{what}: shape");
    let flat = got.flatten_all()?.to_vec1::<f32>()?;
    let mut worst = 0.0f64;
    for (&i, &w) in want.sample_index.iter().zip(&want.sample_value) {
        worst = worst.max((f64::from(flat[i]) - w).abs() / w.abs().max(1.0));
    }
    assert!(worst < 1e-3, "{what}: a sample deviates by {worst:e}");
    let abs_sum: f64 = flat.iter().map(|v| f64::from(v.abs())).sum();
    let rel = (abs_sum - want.abs_sum).abs() / want.abs_sum;
    assert!(
        rel < 1e-5,
        "{what}: |sum| {abs_sum} vs {} ({rel:e})",
        want.abs_sum
    );
    Ok(())
}

#[test]
fn yolov8n_raw_head_output_matches_ultralytics() -> Result<()> {
    let (fixture, detector) = yolov8n()?;
    assert_eq!(
        fixture.bn_eps,
        vec![1e-3],
        "the reference model's batch norms"
    );
    assert_eq!(detector.labels().len(), 80);
    assert_eq!(
        detector.labels()[0],
        "person",
        "COCO names for an 80-class YOLOv8"
    );
    assert_eq!(detector.input_size(), (640, 640));
    let raw = detector.raw_output(&synthetic_input(&fixture.input_shape)?)?;
    assert_raw_matches(&raw, &fixture.raw, "yolov8n")
}

pub(crate) fn assert_same_boxes(
    got: &[Detection],
    want: &[(f32, f32, f32, f32, f32, usize)],
    what: &str,
) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: box count\n got {got:?}\nwant {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.class_id, w.5, "{what}: class of {g:?} vs {w:?}");
        assert!(
            (g.score - w.4).abs() < 1e-3,
            "{what}: score of {g:?} vs {w:?}"
        );
        let err = [g.xmin - w.0, g.ymin - w.1, g.xmax - w.2, g.ymax - w.3]
            .iter()
            .fold(0.0f32, |m, d| m.max(d.abs()));
        assert!(err < 0.5, "{what}: box {g:?} vs {w:?} is {err} px off");
    }
}

#[test]
fn an_unknown_letterbox_is_refused_naming_the_choices() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("unused.safetensors"), b"")?;
    let config = r#"{"architecture": "yolov8n", "task": "detection", "letterbox": "stretch"}"#;
    let err = package(dir.path(), config).err().map(|e| e.to_string());
    let err = err.context("an unknown letterbox loads")?;
    assert!(
        err.contains("config.json") && err.contains("`stretch`") && err.contains("`square`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn yolov8n_boxes_on_photos_match_ultralytics() -> Result<()> {
    let fixture: YoloFixture = read_json("yolov8n.json")?;
    let mut modes = Vec::new();
    for photo in &fixture.photos {
        let detector = yolov8n_detector(&fixture, &photo.letterbox_mode)?;
        let image = image::open(fixture_path(&photo.photo))?.to_rgb8();
        // wick's letterbox against ultralytics' (cv2.resize + copyMakeBorder) on 512 pixels,
        // on the same canvas: the whole 640x640 or the predictor's minimal one.
        let original = (image.height() as usize, image.width() as usize);
        let placement = match photo.letterbox_mode.as_str() {
            "rect" => Placement::minimal(original, (640, 640), 32),
            _ => Placement::new(original, (640, 640)),
        };
        let [h, w] = photo.size;
        assert_eq!(placement.canvas, (h, w), "{}", photo.letterbox_mode);
        assert_eq!(photo.letterbox.shape, vec![h, w]);
        modes.push((photo.letterbox_mode.clone(), (h, w)));
        let pixels = draw(&image, &placement, PAD_VALUE);
        let mut worst = 0u8;
        for ((&y, &x), rgb) in photo
            .letterbox
            .pixel_y
            .iter()
            .zip(&photo.letterbox.pixel_x)
            .zip(&photo.letterbox.pixel_rgb)
        {
            for (c, &want) in rgb.iter().enumerate() {
                let got = (pixels[(c * h + y) * w + x] * 255.0).round() as u8;
                worst = worst.max(got.abs_diff(want));
            }
        }
        assert_eq!(
            worst, 0,
            "{}: letterbox pixels differ from ultralytics' by {worst} levels",
            photo.photo
        );

        let options = DetectOptions {
            threshold: photo.threshold,
            iou: photo.iou,
            ..DetectOptions::default()
        };
        let found = detector.detect(&image, &options)?;
        assert!(!photo.boxes.is_empty());
        let what = format!("{} ({})", photo.photo, photo.letterbox_mode);
        assert_same_boxes(&found, &photo.boxes, &what);
    }
    // Both canvases were compared; the predictor's is smaller for these landscape photos.
    assert!(modes.contains(&("square".to_string(), (640, 640))));
    assert!(modes.iter().any(|(m, (h, _))| m == "rect" && *h < 640));
    Ok(())
}

pub(crate) fn fixture_path(name: &str) -> PathBuf {
    fixture(name)
}

#[derive(Deserialize)]
struct TinyPt {
    checkpoint: String,
    names: Vec<String>,
    input_shape: Vec<usize>,
    raw: Raw,
}

/// The ultralytics-saved tiny `.pt` in a package directory with `{"architecture": "yolov8"}`:
/// every size (width 1/16, 4 DFL bins, 3 classes) comes from the checkpoint itself.
fn tiny_pt_package() -> Result<(TinyPt, tempfile::TempDir)> {
    let fixture: TinyPt = read_json("tiny_yolov8.json")?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        detection_dir().join(&fixture.checkpoint),
        dir.path().join("best.pt"),
    )?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architecture": "yolov8", "task": "detection"}"#,
    )?;
    Ok((fixture, dir))
}

#[test]
fn a_checkpoint_saved_by_ultralytics_loads_without_python() -> Result<()> {
    let (fixture, dir) = tiny_pt_package()?;
    let detector = Detector::load(dir.path())?;
    assert_eq!(
        detector.labels(),
        fixture.names.as_slice(),
        "names from the .pt"
    );
    let raw = detector.raw_output(&synthetic_input(&fixture.input_shape)?)?;
    assert_eq!(raw.dims(), fixture.raw.shape.as_slice(), "raw output shape");

    // A named scale that does not fit the checkpoint is refused, saying why.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architecture": "yolov8n", "task": "detection"}"#,
    )?;
    let e = Detector::load(dir.path()).err().context("yolov8n loaded")?;
    assert!(e.to_string().contains("yolov8n"), "{e}");
    Ok(())
}

#[test]
fn tiny_pt_raw_output_matches_ultralytics() -> Result<()> {
    let (fixture, dir) = tiny_pt_package()?;
    let detector = Detector::load(dir.path())?;
    let raw = detector.raw_output(&synthetic_input(&fixture.input_shape)?)?;
    assert_raw_matches(&raw, &fixture.raw, "tiny_yolov8.pt")
}

#[test]
fn a_truncated_or_hollow_pt_is_an_error() -> Result<()> {
    let bytes = std::fs::read(detection_dir().join("tiny_yolov8.pt"))?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architecture": "yolov8", "task": "detection"}"#,
    )?;
    for cut in [bytes.len() / 2, bytes.len() - 30, 100] {
        std::fs::write(dir.path().join("best.pt"), &bytes[..cut])?;
        let e = Detector::load(dir.path())
            .err()
            .context("a cut .pt loaded")?;
        assert!(!e.to_string().is_empty());
    }
    Ok(())
}

#[derive(Deserialize)]
struct DarknetFixture {
    cfg: String,
    input_shape: Vec<usize>,
    conv_shape: Vec<usize>,
    conv_abs_sum: f64,
    conv_sample_index: Vec<usize>,
    conv_sample_value: Vec<f64>,
    region_rows_shape: Vec<usize>,
    region_sample_index: Vec<usize>,
    region_sample_value: Vec<f64>,
    photo: String,
    threshold: f32,
    nms_iou: f32,
    boxes: Vec<(f32, f32, f32, f32, f32, usize)>,
}

/// The `.weights` bytes the generator wrote: header 0.2.0, `seen` as u64, synth values.
fn synth_darknet_weights(cfg: &Cfg) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [0i32, 2, 0] {
        bytes.extend(v.to_le_bytes());
    }
    bytes.extend(0u64.to_le_bytes());
    for (name, shape) in cfg.tensor_layout() {
        let values = synthesize(&name, &shape)
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("synthetic tensor");
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

#[test]
fn tiny_yolov2_matches_opencv_darknet_reader() -> Result<()> {
    let fixture: DarknetFixture = read_json("tiny_yolov2.json")?;
    let dir = tempfile::tempdir()?;
    let cfg_path = dir.path().join("yolov2-tiny-voc.cfg");
    std::fs::copy(detection_dir().join(&fixture.cfg), &cfg_path)?;
    let cfg = Cfg::read(&cfg_path)?;
    let weights = synth_darknet_weights(&cfg);
    std::fs::write(dir.path().join("yolov2-tiny-voc.weights"), &weights)?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architecture": "tiny_yolov2", "task": "detection", "darknet_cfg": "yolov2-tiny-voc.cfg"}"#,
    )?;
    let detector = Detector::load(dir.path())?;
    assert_eq!(detector.input_size(), (416, 416));
    assert_eq!(detector.labels().len(), 20);
    assert_eq!(detector.labels()[14], "person", "VOC names for 20 classes");
    let input = synthetic_input(&fixture.input_shape)?;

    // The layer stack: OpenCV's last convolution (NCHW) against wick's (NHWC), every sample.
    let net = darknet::Darknet::load(&cfg, &darknet::weights_from_bytes(&cfg, &weights)?)?;
    let conv = net.features(&input.permute((0, 2, 3, 1))?.contiguous()?)?;
    let (_, gh, gw, c) = conv.dims4()?;
    assert_eq!(fixture.conv_shape, vec![1, c, gh, gw]);
    let conv = conv.flatten_all()?.to_vec1::<f32>()?;
    let mut worst = 0.0f64;
    for (&i, &want) in fixture
        .conv_sample_index
        .iter()
        .zip(&fixture.conv_sample_value)
    {
        let (ch, y, x) = (i / (gh * gw), i / gw % gh, i % gw);
        let got = f64::from(conv[(y * gw + x) * c + ch]);
        worst = worst.max((got - want).abs() / want.abs().max(1.0));
    }
    assert!(
        worst < 1e-4,
        "last convolution deviates from OpenCV by {worst:e}"
    );
    let abs_sum: f64 = conv.iter().map(|v| f64::from(v.abs())).sum();
    let rel = (abs_sum - fixture.conv_abs_sum).abs() / fixture.conv_abs_sum;
    assert!(
        rel < 1e-5,
        "last convolution |sum| {abs_sum} vs {} ({rel:e})",
        fixture.conv_abs_sum
    );

    // The region layer. OpenCV's rows: per cell (row-major) and anchor, [cx, cy, w, h] relative
    // to the image, objectness, objectness x class probability. Its layer also runs darknet's
    // per-class NMS (IoU 0.4) and writes suppressed class scores as 0: those are skipped, every
    // other value is compared.
    let raw = detector.raw_output(&input)?;
    let (_, c, gh, gw) = raw.dims4()?;
    let data = raw.flatten_all()?.to_vec1::<f32>()?;
    let anchors = [
        (1.08, 1.19),
        (3.42, 4.41),
        (6.63, 11.38),
        (9.42, 5.11),
        (16.62, 10.52),
    ];
    let per_anchor = c / anchors.len();
    assert_eq!(
        fixture.region_rows_shape,
        vec![gh * gw * anchors.len(), per_anchor]
    );
    let plane = gh * gw;
    let (mut worst, mut compared_scores) = (0.0f64, 0);
    for (&i, &want) in fixture
        .region_sample_index
        .iter()
        .zip(&fixture.region_sample_value)
    {
        let (row, col) = (i / per_anchor, i % per_anchor);
        if col >= 5 && want == 0.0 {
            continue;
        }
        compared_scores += usize::from(col >= 5);
        let (loc, a) = (row / anchors.len(), row % anchors.len());
        let at = |e: usize| f64::from(data[(a * per_anchor + e) * plane + loc]);
        let (y, x) = ((loc / gw) as f64, (loc % gw) as f64);
        let got = match col {
            0 => (x + at(0)) / gw as f64,
            1 => (y + at(1)) / gh as f64,
            2 => at(2).exp() * anchors[a].0 / gw as f64,
            3 => at(3).exp() * anchors[a].1 / gh as f64,
            4 => at(4),
            k => at(4) * at(k),
        };
        worst = worst.max((got - want).abs() / want.abs().max(1.0));
    }
    assert!(
        compared_scores >= 50,
        "only {compared_scores} class scores compared"
    );
    assert!(
        worst < 1e-4,
        "region output deviates from OpenCV by {worst:e}"
    );

    // Every box above the threshold on a real photo, after the same NMS as OpenCV's.
    let image = image::open(fixture_path(&fixture.photo))?.to_rgb8();
    let options = DetectOptions {
        threshold: fixture.threshold,
        iou: fixture.nms_iou,
        max_detections: 10_000,
        classes: None,
    };
    let found = detector.detect(&image, &options)?;
    assert_same_boxes(&found, &fixture.boxes, "tiny_yolov2 on chelsea");
    Ok(())
}

#[test]
fn truncated_darknet_weights_are_an_error_naming_the_layer() -> Result<()> {
    let cfg = Cfg::read(&detection_dir().join("tiny_yolov2.cfg"))?;
    let bytes = synth_darknet_weights(&cfg);
    let e = darknet::weights_from_bytes(&cfg, &bytes[..bytes.len() / 3])
        .err()
        .context("a third of the weights loaded")?;
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(e.to_string().contains("layers."), "{e}");
    Ok(())
}

#[test]
fn options_are_honoured_and_boxes_stay_inside_the_image() -> Result<()> {
    let (_, detector) = yolov8n()?;
    let image = image::open(fixture_path("coffee.jpg"))?.to_rgb8();
    let (w, h) = (image.width() as f32, image.height() as f32);
    let loose = DetectOptions {
        threshold: 0.0,
        iou: 0.45,
        max_detections: 10_000,
        classes: None,
    };
    let all = detector.detect(&image, &loose)?;
    assert!(
        all.len() > 20,
        "a zero threshold keeps many boxes: {}",
        all.len()
    );
    for d in &all {
        assert!(
            d.xmin >= 0.0 && d.ymin >= 0.0 && d.xmax <= w && d.ymax <= h,
            "{d:?}"
        );
        assert!(d.xmin <= d.xmax && d.ymin <= d.ymax, "{d:?}");
        assert_eq!(d.label, detector.labels()[d.class_id]);
    }
    assert!(
        all.windows(2).all(|p| p[0].score >= p[1].score),
        "sorted by score"
    );

    let median = all[all.len() / 2].score;
    let above = detector.detect(
        &image,
        &DetectOptions {
            threshold: median,
            ..loose.clone()
        },
    )?;
    assert!(!above.is_empty() && above.len() < all.len());
    assert!(above.iter().all(|d| d.score > median));

    let capped = detector.detect(
        &image,
        &DetectOptions {
            max_detections: 3,
            ..loose.clone()
        },
    )?;
    assert_eq!(capped, all[..3].to_vec(), "the cap keeps the best boxes");

    let class = all[0].class_id;
    let one_class = detector.detect(
        &image,
        &DetectOptions {
            classes: Some(vec![class]),
            ..loose
        },
    )?;
    assert!(!one_class.is_empty() && one_class.iter().all(|d| d.class_id == class));

    let strict_nms = detector.detect(&image, &DetectOptions { iou: 0.1, ..loose })?;
    assert!(
        strict_nms.len() < all.len(),
        "a lower IoU limit suppresses more"
    );
    Ok(())
}

#[test]
fn bad_options_are_rejected_naming_the_field() -> Result<()> {
    let (_, detector) = yolov8n()?;
    let image = image::RgbImage::new(64, 48);
    let base = DetectOptions::default();
    let cases = [
        (
            "threshold",
            DetectOptions {
                threshold: 1.5,
                ..base.clone()
            },
        ),
        (
            "threshold",
            DetectOptions {
                threshold: f32::NAN,
                ..base.clone()
            },
        ),
        (
            "iou",
            DetectOptions {
                iou: -0.1,
                ..base.clone()
            },
        ),
        (
            "max_detections",
            DetectOptions {
                max_detections: 0,
                ..base.clone()
            },
        ),
        (
            "max_detections",
            DetectOptions {
                max_detections: 10_001,
                ..base.clone()
            },
        ),
        (
            "classes",
            DetectOptions {
                classes: Some(vec![80]),
                ..base
            },
        ),
    ];
    for (field, options) in cases {
        match detector.detect(&image, &options) {
            Err(e @ ModelError::InvalidOption { .. }) => {
                assert!(e.to_string().contains(field), "{field}: {e}")
            }
            other => panic!("{field}: {options:?} gave {other:?}"),
        }
    }
    // A blank image is valid input; no crash, boxes inside it.
    let found = detector.detect(&image, &base)?;
    assert!(found.iter().all(|d| d.xmax <= 64.0 && d.ymax <= 48.0));
    Ok(())
}

/// `wick serve` letterboxes a detection request while decoding it unless the answer is a
/// picture: the JSON boxes must be the library pipeline's, in pixels and as SageMaker's
/// fractions, and a picture must still be drawn.
#[test]
fn a_served_detector_answers_the_pipelines_boxes_as_json_and_draws_them() -> Result<()> {
    let (_, dir) = tiny_pt_package()?;
    let jpg = std::fs::read(fixture("coffee.jpg"))?;
    let image = image::load_from_memory(&jpg)?.to_rgb8();
    let (w, h) = (image.width() as f64, image.height() as f64);
    let options = DetectOptions {
        threshold: 0.0,
        iou: 0.45,
        max_detections: 5,
        classes: None,
    };
    let want = Detector::load(dir.path())?.detect(&image, &options)?;
    assert_eq!(want.len(), 5, "the test needs boxes to compare");

    let server = crate::serve_process::Server::start(dir.path(), &[])?;
    server.wait_ready()?;
    let mut connection = crate::http::Connection::open(server.addr)?;
    let attributes = "threshold=0;max_detections=5;format=sagemaker";
    let reply = connection.send(
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/jpeg"),
            ("X-Amzn-SageMaker-Custom-Attributes", attributes),
        ],
        &jpg,
    )?;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let rows = reply.json()?["prediction"].clone();
    let rows = rows.as_array().context("a prediction list")?;
    assert_eq!(rows.len(), want.len());
    for (row, d) in rows.iter().zip(&want) {
        let got: Vec<f64> = row
            .as_array()
            .context("a row")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let expected = [
            d.class_id as f64,
            f64::from(d.score),
            f64::from(d.xmin) / w,
            f64::from(d.ymin) / h,
            f64::from(d.xmax) / w,
            f64::from(d.ymax) / h,
        ];
        assert_eq!(got.len(), 6, "{row}");
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    let reply = connection.send(
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/jpeg"),
            ("Accept", "image/jpeg"),
            (
                "X-Amzn-SageMaker-Custom-Attributes",
                "threshold=0;max_detections=5",
            ),
        ],
        &jpg,
    )?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "image/jpeg");
    let drawn = image::load_from_memory(&reply.body)?;
    assert_eq!(
        (drawn.width(), drawn.height()),
        (image.width(), image.height())
    );
    Ok(())
}
