//! `wick train` as SageMaker runs it: the real binary on an `/opt/ml`-shaped temporary tree,
//! with the real ImageNet EfficientNet-Lite0 package as the backbone and datasets built here
//! from real photos (scikit-image's samples, `scripts/fetch-skimage-data.sh`, and the shared
//! fixtures): a real fine-tune then `wick predict` on held-out images, the failure file and
//! exit code, channels from the environment and manifests. SIGTERM and resume:
//! `train_resume.rs`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use image::{imageops, ImageFormat, RgbImage};
use wick::train::rng::{Rng, Stream};

use crate::support::{fixture, lite0_package, skimage_data_dir, wick};

/// The classes and the sample photo each is built from.
pub(crate) const CLASSES: &[(&str, &str)] = &[
    ("astronaut", "astronaut.png"),
    ("cat", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("motorcycle", "motorcycle_left.png"),
    ("rocket", "rocket.jpg"),
];
/// Variables the SageMaker toolkit sets; a test sets the ones it means and no others leak in.
const SM_VARIABLES: &[&str] = &[
    "SM_MODEL_DIR",
    "SM_CHANNEL_TRAINING",
    "SM_CHANNEL_VALIDATION",
    "SM_CHANNEL_MODEL",
    "SM_CHANNEL_TRAIN",
    "SM_CHANNEL_TRAIN_ANNOTATION",
    "SM_CHANNEL_VALIDATION_ANNOTATION",
    "SM_OUTPUT_DIR",
    "SM_OUTPUT_DATA_DIR",
    "WICK_CHECKPOINT_DIR",
    "WICK_ML_ROOT",
];

/// A random view of `photo`: a crop of 40-95% of its area, a flip half of the time, a colour
/// change (brightness, contrast, per-channel gain) and a size between 160 and 320 pixels.
pub(crate) fn variant(photo: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = (f64::from(photo.width()), f64::from(photo.height()));
    let share = rng.uniform(0.4, 0.95);
    let ratio = rng.uniform(0.8, 1.25);
    let cw = (w * h * share * ratio).sqrt().min(w).max(8.0) as u32;
    let ch = (w * h * share / ratio).sqrt().min(h).max(8.0) as u32;
    let x = rng.below((photo.width() - cw) as usize + 1) as u32;
    let y = rng.below((photo.height() - ch) as usize + 1) as u32;
    let mut img = imageops::crop_imm(photo, x, y, cw, ch).to_image();
    if rng.next_f64() < 0.5 {
        img = imageops::flip_horizontal(&img);
    }
    let long = rng.uniform(160.0, 320.0);
    let scale = long / f64::from(cw.max(ch));
    let (nw, nh) = (
        ((f64::from(cw) * scale) as u32).max(1),
        ((f64::from(ch) * scale) as u32).max(1),
    );
    img = imageops::resize(&img, nw, nh, imageops::FilterType::Triangle);
    let brightness = rng.uniform(-25.0, 25.0);
    let contrast = rng.uniform(0.75, 1.25);
    let gains = [
        rng.uniform(0.85, 1.15),
        rng.uniform(0.85, 1.15),
        rng.uniform(0.85, 1.15),
    ];
    for px in img.pixels_mut() {
        for (c, v) in px.0.iter_mut().enumerate() {
            let x = (f64::from(*v) - 128.0) * contrast * gains[c] + 128.0 + brightness;
            *v = x.clamp(0.0, 255.0) as u8;
        }
    }
    img
}

/// Writes `per_class` variants of each class's photo to `dir/<class>/<i>.{png,jpg}` (nested
/// one folder deeper for odd indices, as class folders may be), from the stream `key`.
pub(crate) fn write_class_folders(
    dir: &Path,
    classes: &[(&str, &str)],
    per_class: usize,
    key: u64,
) -> Result<()> {
    let photos = skimage_data_dir()?;
    for (c, (label, file)) in classes.iter().enumerate() {
        let photo = image::open(photos.join(file))
            .with_context(|| format!("opening {file}"))?
            .to_rgb8();
        for i in 0..per_class {
            let mut rng = Rng::for_stream(key, Stream::Augment, &[c as u64, i as u64]);
            let img = variant(&photo, &mut rng);
            let (sub, ext, format) = if i % 2 == 0 {
                ("", "png", ImageFormat::Png)
            } else {
                ("more/", "jpg", ImageFormat::Jpeg)
            };
            let path = dir.join(format!("{label}/{sub}{i}.{ext}"));
            std::fs::create_dir_all(path.parent().context("no parent")?)?;
            img.save_with_format(&path, format)?;
        }
    }
    Ok(())
}

/// An `/opt/ml` tree: `input/config/hyperparameters.json` (values JSON-encoded as the
/// SageMaker Python SDK sends them) and the backbone in the `model` channel.
pub(crate) fn ml_root(dir: &Path, hyperparameters: &[(&str, &str)]) -> Result<PathBuf> {
    let root = dir.join("ml");
    let config = root.join("input/config");
    std::fs::create_dir_all(&config)?;
    let map: BTreeMap<&str, String> = hyperparameters
        .iter()
        .map(|(k, v)| (*k, serde_json::to_string(v).unwrap_or_default()))
        .collect();
    std::fs::write(
        config.join("hyperparameters.json"),
        serde_json::to_string(&map)?,
    )?;
    // Empty, as in the scikit_bring_your_own example's test_dir: a single host.
    std::fs::write(config.join("resourceconfig.json"), "")?;
    let model_channel = root.join("input/data/model");
    std::fs::create_dir_all(&model_channel)?;
    for entry in std::fs::read_dir(lite0_package()?)? {
        let entry = entry?;
        std::fs::copy(entry.path(), model_channel.join(entry.file_name()))?;
    }
    Ok(root)
}

pub(crate) fn train_command(root: &Path) -> Command {
    // The ignored speed measurements run a release build this way (a test-profile binary is
    // several times slower); every other test runs the binary built with the tests.
    let wick = std::env::var_os("WICK_TRAIN_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wick")), PathBuf::from);
    let mut cmd = Command::new(wick);
    cmd.arg("train")
        .arg("--ml-root")
        .arg(root)
        .env("RUST_LOG", "info");
    for var in SM_VARIABLES {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn run_train(root: &Path) -> Result<Output> {
    Ok(train_command(root).output()?)
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the README's `MetricDefinitions` regex `{key}=([0-9.]+);` captures, as a float (no
/// key is a substring of another followed by `=`).
/// `train_loss` of each epoch's metric line on a job's stdout.
pub(crate) fn epoch_losses(out: &Output) -> Result<Vec<f64>> {
    Ok(std::str::from_utf8(&out.stdout)?
        .lines()
        .filter(|l| l.starts_with("epoch="))
        .filter_map(|l| metric(l, "train_loss"))
        .collect())
}

pub(crate) fn metric(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest[..rest.find(';')?].parse().ok()
}

#[test]
fn fine_tunes_lite0_on_real_photos_then_predict_classifies_held_out_images() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = ml_root(
        dir.path(),
        &[
            ("epochs", "40"),
            ("lr", "0.003"),
            ("batch_size", "16"),
            ("seed", "7"),
            ("patience", "10"),
            ("label_smoothing", "0.05"),
            ("_tuning_objective_metric", "val_loss"),
        ],
    )?;
    write_class_folders(&root.join("input/data/training"), CLASSES, 14, 1)?;
    // Held out: other crops of the same photos (another stream) and the shared fixtures' JPEGs.
    let held_out = dir.path().join("held_out");
    write_class_folders(&held_out, CLASSES, 3, 2)?;

    let started = Instant::now();
    let out = run_train(&root)?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(out.status.success(), "{}", describe(&out));
    assert!(!root.join("output/failure").exists());

    // One metric line per epoch, each documented regex matching once and parsing as a float.
    let stdout = String::from_utf8(out.stdout.clone())?;
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch=")).collect();
    ensure!(!lines.is_empty(), "{}", describe(&out));
    for line in &lines {
        for key in [
            "epoch",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
        ] {
            assert_eq!(
                line.matches(&format!("{key}=")).count(),
                1,
                "{key} in {line}"
            );
            assert!(metric(line, key).is_some(), "{key} in {line}");
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("_tuning_objective_metric"),
        "the unknown key is logged"
    );

    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("output/data/metrics.json"),
    )?)?;
    let accuracy = metrics["final"]["accuracy"].as_f64().unwrap_or(0.0);
    assert_eq!(metrics["final"]["split"], "validation");
    assert!(
        accuracy >= 0.9,
        "validation accuracy {accuracy}: {metrics:#}"
    );
    assert_eq!(
        metrics["history"].as_array().map(Vec::len),
        Some(lines.len())
    );
    assert_eq!(
        metrics["labels"].as_array().map(Vec::len),
        Some(CLASSES.len())
    );
    let csv = std::fs::read_to_string(root.join("output/data/confusion_matrix.csv"))?;
    assert_eq!(csv.lines().count(), CLASSES.len() + 1, "{csv}");
    let png = image::open(root.join("output/data/training_curves.png"))?;
    assert!(png.width() > 0);
    eprintln!(
        "fine-tune: {seconds:.1} s, {} epochs, validation accuracy {accuracy}, timing {}",
        lines.len(),
        metrics["timing"]
    );

    // `wick predict` loads the written package as is and classifies the held-out images.
    let model_dir = root.join("model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    assert_eq!(config["num_classes"], CLASSES.len());
    assert_eq!(config["architecture"], "efficientnet_lite0");
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    for (label, _) in CLASSES {
        for entry in walk(&held_out.join(label))? {
            files.push((entry, label));
        }
    }
    files.push((fixture("chelsea.jpg"), "cat"));
    files.push((fixture("coffee.jpg"), "coffee"));
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        model_dir.as_os_str(),
        OsStr::new("--top-k"),
        OsStr::new("1"),
    ];
    args.extend(files.iter().map(|(p, _)| p.as_os_str()));
    let predicted = wick(&args)?;
    ensure!(predicted.status.success(), "{}", describe(&predicted));
    let lines: Vec<serde_json::Value> = String::from_utf8(predicted.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), files.len());
    for ((file, label), line) in files.iter().zip(&lines) {
        assert_eq!(
            line["predictions"][0]["label"],
            *label,
            "{}: {line}",
            file.display()
        );
    }
    Ok(())
}

pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The failure file's single line, checking the exit code on the way.
fn failure(root: &Path) -> Result<String> {
    let out = run_train(root)?;
    ensure!(
        !out.status.success(),
        "expected a failure: {}",
        describe(&out)
    );
    let text = std::fs::read_to_string(root.join("output/failure"))
        .with_context(|| format!("no failure file: {}", describe(&out)))?;
    ensure!(text.trim_end().lines().count() == 1, "one line: {text:?}");
    Ok(text.trim_end().to_string())
}

#[test]
fn failures_write_a_one_line_cause_and_exit_non_zero() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = ml_root(dir.path(), &[("epochs", "ten")])?;
    write_class_folders(&root.join("input/data/training"), &CLASSES[..2], 2, 1)?;
    assert_eq!(
        failure(&root)?,
        "hyperparameter `epochs`: expected a whole number >= 1 (given: \"ten\")"
    );

    // An empty training channel.
    let dir = tempfile::tempdir()?;
    let root = ml_root(dir.path(), &[])?;
    std::fs::create_dir_all(root.join("input/data/training/cat"))?;
    let cause = failure(&root)?;
    assert!(cause.starts_with("channel `training` (`"), "{cause}");
    assert!(cause.contains("holds no images"), "{cause}");

    // No backbone: no `model` channel and no `base_model`.
    let dir = tempfile::tempdir()?;
    let root = ml_root(dir.path(), &[])?;
    std::fs::remove_dir_all(root.join("input/data/model"))?;
    write_class_folders(&root.join("input/data/training"), &CLASSES[..2], 2, 1)?;
    let cause = failure(&root)?;
    assert!(cause.starts_with("no backbone: `"), "{cause}");
    assert!(cause.contains("`base_model`"), "{cause}");

    // More than 5% unreadable images; and a stale failure file is replaced, not appended to.
    let dir = tempfile::tempdir()?;
    let root = ml_root(dir.path(), &[])?;
    write_class_folders(&root.join("input/data/training"), &CLASSES[..2], 4, 1)?;
    std::fs::write(
        root.join("input/data/training/cat/broken.jpg"),
        b"not a jpeg",
    )?;
    let cause = failure(&root)?;
    assert!(
        cause.starts_with("1 of 9 images (11.1%) could not be read"),
        "{cause}"
    );
    Ok(())
}

#[test]
fn channels_from_sm_variables_a_manifest_a_validation_channel_and_augmentation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = ml_root(dir.path(), &[("epochs", "2"), ("augment", "True")])?;
    // The training data lives outside the tree, named by SM_CHANNEL_TRAINING, as a CSV manifest.
    let elsewhere = dir.path().join("alt-training");
    write_class_folders(&elsewhere.join("images"), &CLASSES[..2], 4, 1)?;
    let mut csv = String::from("path,label\n");
    for (label, _) in &CLASSES[..2] {
        for file in walk(&elsewhere.join("images").join(label))? {
            let rel = file.strip_prefix(&elsewhere)?;
            csv.push_str(&format!("{},{label}\n", rel.display()));
        }
    }
    std::fs::write(elsewhere.join("train.csv"), csv)?;
    write_class_folders(&root.join("input/data/validation"), &CLASSES[..2], 2, 9)?;
    std::fs::write(
        root.join("input/config/inputdataconfig.json"),
        r#"{"training": {"TrainingInputMode": "File"}, "validation": {"TrainingInputMode": "File"}, "model": {"TrainingInputMode": "File"}}"#,
    )?;
    let out = train_command(&root)
        .env("SM_CHANNEL_TRAINING", &elsewhere)
        .output()?;
    ensure!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("augment=true"), "{stderr}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("output/data/metrics.json"),
    )?)?;
    assert_eq!(metrics["images"]["train"], 8);
    assert_eq!(metrics["images"]["validation"], 4);
    assert_eq!(metrics["images"]["validation_source"], "channel");
    assert_eq!(metrics["history"].as_array().map(Vec::len), Some(2));
    let labels = wick::model::Classifier::load(&root.join("model"))?
        .labels()
        .to_vec();
    assert_eq!(labels, ["astronaut", "cat"]);
    Ok(())
}
