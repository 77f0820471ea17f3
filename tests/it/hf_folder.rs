//! A Hugging Face `ViTForImageClassification` folder, exactly as transformers'
//! `save_pretrained` writes its `config.json` and `preprocessor_config.json` (kept verbatim in
//! `tests/fixtures/hf_vit_chelsea.json` by `tests/parity/generate_vit.py`), with the synthetic
//! weights saved as `model.safetensors`: it loads with no file added, and on the photo
//! `chelsea.jpg` gives the logits transformers' own processor and model give.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use wick::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use wick::model::weights::{synthesize, Weights};
use wick::model::Classifier;

use crate::support::{fixture, wick};

#[derive(Deserialize)]
struct Reference {
    files: std::collections::BTreeMap<String, String>,
    tensors: Vec<(String, Vec<usize>)>,
    logits: Vec<f32>,
}

fn reference() -> Result<Reference> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_vit_chelsea.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The folder transformers would leave: its two JSON files and `model.safetensors`.
fn hf_folder(reference: &Reference, dir: &Path) -> Result<PathBuf> {
    for (name, text) in &reference.files {
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

#[test]
fn a_hugging_face_vit_folder_classifies_a_photo_as_transformers_does() -> Result<()> {
    let reference = reference()?;
    let dir = tempfile::tempdir()?;
    let classifier = Classifier::load(&hf_folder(&reference, dir.path())?)?;
    assert_eq!(classifier.labels().len(), reference.logits.len());
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
    let logits = classifier.logits(&batch)?.flatten_all()?.to_vec1::<f32>()?;
    // The network alone matches to 1e-4 (the parity fixtures), and the photo's pixels are
    // Pillow's (libjpeg-turbo, byte for byte) resized as torchvision resizes: measured 1.2e-6
    // (2026-12-07), f32 summation order only.
    let deviation = logits
        .iter()
        .zip(&reference.logits)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max);
    assert!(
        deviation < TOLERANCE,
        "logits deviate from transformers' by {deviation:e}\n got {logits:?}\nwant {:?}",
        reference.logits
    );
    Ok(())
}

/// The parity fixtures' tolerance: the measured 1.2e-6 with a wide margin for other CPUs'
/// kernels (AVX2 vs AVX-512 summation order); a pixel one level off moves the logits ~1e-3.
const TOLERANCE: f32 = 1e-4;

#[test]
fn wick_predict_serves_the_folder_and_an_unknown_class_is_named() -> Result<()> {
    let reference = reference()?;
    let dir = tempfile::tempdir()?;
    let folder = hf_folder(&reference, dir.path())?;
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
    let best = reference
        .logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| format!("synth_{i}"));
    assert_eq!(line["predictions"][0]["label"].as_str(), best.as_deref());

    let config = reference.files["config.json"]
        .replace("ViTForImageClassification", "SwinForImageClassification");
    std::fs::write(folder.join("config.json"), config)?;
    let err = Classifier::load(&folder)
        .err()
        .context("an unknown class must be refused")?
        .to_string();
    assert!(
        err.contains("architectures")
            && err.contains("SwinForImageClassification")
            && err.contains("supported: ViTForImageClassification"),
        "{err}"
    );
    Ok(())
}
