//! Hugging Face `ConvNextForImageClassification` folders, exactly as transformers'
//! `save_pretrained` writes their `config.json` and `preprocessor_config.json` (kept verbatim in
//! `tests/fixtures/hf_convnext_chelsea.json` by `tests/parity/generate_convnext.py`), with the
//! synthetic weights saved as `model.safetensors`: they load with no file added, and on the
//! photo `chelsea.jpg` give the logits transformers' own `ConvNextImageProcessor` and model
//! give, both for the 224 transform (shorter side to 256, centre crop) and the 384 one
//! (squashed, no crop). The hub's older `preprocessor_config.json` (an integer `size`) too.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use wick::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use wick::model::weights::{synthesize, Weights};
use wick::model::Classifier;

use crate::support::{fixture, wick};

#[derive(Deserialize)]
struct Case {
    files: BTreeMap<String, String>,
    pixel_values_shape: Vec<usize>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Reference {
    hub_preprocessor_config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>)>,
    cases: BTreeMap<String, Case>,
}

fn reference() -> Result<Reference> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_convnext_chelsea.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The folder transformers would leave: its two JSON files and `model.safetensors`.
fn hf_folder(reference: &Reference, case: &Case, dir: &Path) -> Result<PathBuf> {
    for (name, text) in &case.files {
        std::fs::write(dir.join(name), text)?;
    }
    let tensors = reference
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    Weights::from_tensors(tensors).save_safetensors(&dir.join("model.safetensors"))?;
    Ok(dir.to_path_buf())
}

/// wick's logits for the photo through the folder's own preprocessing.
fn photo_logits(folder: &Path, want_shape: &[usize]) -> Result<Vec<f32>> {
    let classifier = Classifier::load(folder)?;
    assert_eq!(
        classifier.labels()[3],
        "synth_3",
        "labels come from id2label"
    );
    let cfg = classifier.preprocess_config();
    let image = decode(
        &std::fs::read(fixture("chelsea.jpg"))?,
        &DecodeLimits::default(),
    )?;
    let batch = to_batch(&[preprocess(&image, cfg)?], cfg)?;
    assert_eq!(batch.dims(), want_shape, "the processor's output size");
    Ok(classifier.logits(&batch)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The parity fixtures' tolerance. Measured 4.2e-7 (224 crop, hub file) and 3.7e-7 (384 squash)
/// on an AVX2 machine: wick's decoder and bicubic resize give transformers' pixels, so the rest is
/// summation order; the margin covers other CPUs' kernels. A pixel one level off moves the logits
/// about 1e-3.
const TOLERANCE: f32 = 1e-4;

fn assert_close(case: &str, got: &[f32], want: &[f32]) {
    let deviation = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max);
    assert!(
        deviation < TOLERANCE,
        "{case}: logits deviate from transformers' by {deviation:e}\n got {got:?}\nwant {want:?}"
    );
}

#[test]
fn a_hugging_face_convnext_folder_classifies_a_photo_as_transformers_does() -> Result<()> {
    let reference = reference()?;
    for (name, case) in &reference.cases {
        let dir = tempfile::tempdir()?;
        let folder = hf_folder(&reference, case, dir.path())?;
        let logits = photo_logits(&folder, &case.pixel_values_shape)?;
        assert_close(name, &logits, &case.logits);
    }
    // The hub's file says the same transform with an integer `size`.
    let case = &reference.cases["crop_224"];
    let dir = tempfile::tempdir()?;
    let folder = hf_folder(&reference, case, dir.path())?;
    std::fs::write(
        folder.join("preprocessor_config.json"),
        reference.hub_preprocessor_config.to_string(),
    )?;
    let logits = photo_logits(&folder, &case.pixel_values_shape)?;
    assert_close("hub preprocessor_config.json", &logits, &case.logits);
    Ok(())
}

#[test]
fn wick_predict_serves_a_convnext_folder_and_refuses_an_unknown_activation() -> Result<()> {
    let reference = reference()?;
    let case = &reference.cases["crop_224"];
    let dir = tempfile::tempdir()?;
    let folder = hf_folder(&reference, case, dir.path())?;
    let out = wick(&[
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        folder.as_os_str(),
        fixture("chelsea.jpg").as_os_str(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let best = case
        .logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| format!("synth_{i}"));
    assert_eq!(line["predictions"][0]["label"].as_str(), best.as_deref());

    let mut config: serde_json::Value = serde_json::from_str(&case.files["config.json"])?;
    config["hidden_act"] = "gelu_new".into();
    std::fs::write(folder.join("config.json"), config.to_string())?;
    let err = Classifier::load(&folder)
        .err()
        .context("a tanh GELU must be refused")?
        .to_string();
    assert!(
        err.contains("hidden_act") && err.contains("gelu_new"),
        "{err}"
    );
    Ok(())
}
