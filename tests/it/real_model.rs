//! The real ImageNet EfficientNet-Lite0 (legacy-format `.pth` from PyPI) against PyTorch's own
//! outputs in `../shared/fixtures` (see its README): the exact input tensor, then end to end
//! from the photo files; and `wick predict` / `wick convert` on it.

use std::ffi::OsStr;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Deserialize;
use wick::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use wick::model::{Classifier, ScoreFunction};

use crate::support::{fixture, lite0_package, read_npy_f32, wick};

#[test]
fn exact_input_tensor_gives_pytorchs_logits() -> Result<()> {
    let classifier = Classifier::load(&lite0_package()?)?;
    let (shape, values) = read_npy_f32(&fixture("chelsea_input_224.npy"))?;
    let input = Tensor::from_vec(values, shape, &Device::Cpu)?;
    let logits = classifier.logits(&input)?.flatten_all()?.to_vec1::<f32>()?;
    let reference: Vec<f32> = std::fs::read_to_string(fixture("chelsea_logits.txt"))?
        .lines()
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()?;
    assert_eq!(logits.len(), reference.len());
    let max_diff = logits
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        max_diff < 1e-3,
        "max logit difference from PyTorch: {max_diff}"
    );
    Ok(())
}

#[derive(Deserialize)]
struct Reference {
    images: std::collections::HashMap<String, ReferenceImage>,
}

#[derive(Deserialize)]
struct ReferenceImage {
    top5: Vec<ReferenceClass>,
}

#[derive(Deserialize)]
struct ReferenceClass {
    probability: f32,
    label: String,
}

#[test]
fn photos_end_to_end_match_pytorchs_top5() -> Result<()> {
    let classifier = Classifier::load(&lite0_package()?)?;
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference_top5.json"))?)?;
    let cfg = classifier.preprocess_config();
    for name in ["chelsea.png", "chelsea.jpg", "coffee.png", "coffee.jpg"] {
        let image = decode(&std::fs::read(fixture(name))?, &DecodeLimits::default())?;
        let batch = to_batch(&[preprocess(&image, cfg)?], cfg)?;
        let got = classifier
            .classify(&batch, &[(5, ScoreFunction::Default)])?
            .remove(0);
        let want = &reference.images[name].top5;
        let got_labels: Vec<&str> = got.iter().map(|p| p.label.as_str()).collect();
        let want_labels: Vec<&str> = want.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(got_labels, want_labels, "{name}: top-5 order");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g.score - w.probability).abs() < 0.03,
                "{name} {}: {} vs PyTorch {}",
                g.label,
                g.score,
                w.probability
            );
        }
    }
    Ok(())
}

#[test]
fn predict_prints_one_json_line_per_image_and_fails_on_a_bad_one() -> Result<()> {
    let package = lite0_package()?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "not an image")?;
    let out = wick(&[
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        package.as_os_str(),
        OsStr::new("--top-k"),
        OsStr::new("3"),
        fixture("chelsea.jpg").as_os_str(),
        bad.as_os_str(),
        fixture("coffee.jpg").as_os_str(),
    ])?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed image makes the exit code non-zero"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "one line per image, in order");
    assert_eq!(lines[0]["predictions"][0]["label"], "Egyptian cat");
    assert_eq!(lines[0]["predictions"].as_array().map(Vec::len), Some(3));
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unsupported image format"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["predictions"][0]["label"], "espresso");
    assert!(String::from_utf8(out.stderr)?.contains("1 of 3 images"));
    Ok(())
}

#[test]
fn convert_writes_a_safetensors_package_that_predicts_the_same() -> Result<()> {
    let package = lite0_package()?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("converted");
    let out = wick(&[OsStr::new("convert"), package.as_os_str(), dest.as_os_str()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join("model.safetensors").is_file());
    let original = Classifier::load(&package)?;
    let converted = Classifier::load(&dest)?;
    assert_eq!(converted.labels(), original.labels());
    let (shape, values) = read_npy_f32(&fixture("chelsea_input_224.npy"))?;
    let input = Tensor::from_vec(values, shape, &Device::Cpu)?;
    let diff = (original.logits(&input)? - converted.logits(&input)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-5, "converted logits differ by {diff}");
    // A second conversion into the same place is refused instead of overwriting.
    let again = wick(&[OsStr::new("convert"), package.as_os_str(), dest.as_os_str()])?;
    assert!(!again.status.success());
    assert!(String::from_utf8(again.stderr)?.contains("already holds a config.json"));
    Ok(())
}

/// `"precision": "bf16"` in config.json: the real EfficientNet-Lite0 keeps PyTorch's top-1 on
/// every photo with its probability within 0.05 (f32 holds 0.03 in the test above). Without
/// AVX512-BF16 the package still loads, in f32, and says why on stderr.
#[test]
fn a_bf16_package_keeps_pytorchs_top1_on_the_photos() -> Result<()> {
    let package = lite0_package()?;
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&package)? {
        let path = entry?.path();
        std::os::unix::fs::symlink(&path, dir.path().join(path.file_name().unwrap_or_default()))?;
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(package.join("config.json"))?)?;
    config["precision"] = "bf16".into();
    std::fs::remove_file(&config_path)?;
    std::fs::write(&config_path, serde_json::to_string(&config)?)?;
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference_top5.json"))?)?;
    let photos = ["chelsea.png", "chelsea.jpg", "coffee.png", "coffee.jpg"];
    let mut args = vec![
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        dir.path().as_os_str(),
    ];
    let paths: Vec<_> = photos.iter().map(|name| fixture(name)).collect();
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let out = wick(&args)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{stderr}");
    if !wick::model::precision::bf16_supported() {
        assert!(stderr.contains("no AVX512-BF16"), "{stderr}");
    }
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), photos.len());
    for (name, line) in photos.iter().zip(&lines) {
        let want = &reference.images[*name].top5[0];
        let got = &line["predictions"][0];
        assert_eq!(got["label"], want.label.as_str(), "{name}: top-1 in bf16");
        let score = got["score"].as_f64().unwrap_or_default() as f32;
        assert!(
            (score - want.probability).abs() < 0.05,
            "{name}: {score} vs PyTorch {}",
            want.probability
        );
    }
    Ok(())
}

#[test]
fn an_unknown_precision_is_refused_by_name() -> Result<()> {
    let out = wick(&[
        OsStr::new("predict"),
        OsStr::new("--precision"),
        OsStr::new("fp16"),
        fixture("chelsea.jpg").as_os_str(),
    ])?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("`fp16`") && stderr.contains("bf16"),
        "{stderr}"
    );
    Ok(())
}
