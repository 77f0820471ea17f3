//! segmentation_models_pytorch folders as wick packages: the `config.json` smp's own
//! `save_pretrained` wrote (kept in the fixtures by `tests/parity/generate_segmentation.py`)
//! next to `model.safetensors` rebuilt from the `synth` formula loads unchanged, and the
//! whole pipeline (normalise, zero padding to a multiple of 32, network, crop) matches smp run
//! the same way on a real photo, for ResNet and EfficientNet-B0 encoders. That `config.json`
//! next to the `.pth` of a plain `torch.save(model.state_dict())` loads as it is too (the file
//! rebuilt from what `tests/parity/generate_smp_pth.py` kept of torch's, its float storages
//! from `synth`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::{json, Value};
use wick::model::weights::{synthesize, Weights};
use wick::model::Segmenter;

use crate::support;

#[derive(Deserialize)]
struct NetworkFixture {
    num_classes: usize,
    input_shape: Vec<usize>,
    input_scale: f64,
    tensors: Vec<(String, Vec<usize>)>,
    samples: Vec<(usize, usize, usize, f32)>,
    smp_config: Value,
}

#[derive(Deserialize)]
struct PhotoFixture {
    photo: String,
    smp_config: Value,
    tensors: Vec<(String, Vec<usize>)>,
    ties: Vec<(usize, usize)>,
    argmax: Vec<String>,
}

/// What `generate_smp_pth.py` kept of a `torch.save(model.state_dict())` file.
#[derive(Deserialize)]
struct PthFixture {
    tensors: Vec<(String, Vec<usize>)>,
    /// Zip records in torch's order: `[name, "hex", bytes]` or `[name, "synth", tensor]`.
    records: Vec<(String, String, String)>,
}

fn read_fixture<T: serde::de::DeserializeOwned>(folder: &str, id: &str) -> Result<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder)
        .join(format!("{id}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// A folder as smp's `save_pretrained` leaves it: `config.json` + `model.safetensors`.
fn smp_folder(config: &Value, tensors: &[(String, Vec<usize>)]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(config)?,
    )?;
    let tensors: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    Weights::from_tensors(tensors).save_safetensors(&dir.path().join("model.safetensors"))?;
    Ok(dir)
}

/// Loads the fixture's folder and compares the network's logits with smp's at 1e-4 relative
/// (to max(1, |reference|)).
fn check_folder(id: &str, labels: &[&str]) -> Result<()> {
    let fixture: NetworkFixture = read_fixture("segmentation", id)?;
    assert!(
        fixture.smp_config.get("_model_class").is_some(),
        "{id}: the config smp wrote"
    );
    let dir = smp_folder(&fixture.smp_config, &fixture.tensors)?;
    check_logits(id, &fixture, dir.path(), labels)
}

/// The package in `dir` against the fixture's logits.
fn check_logits(id: &str, fixture: &NetworkFixture, dir: &Path, labels: &[&str]) -> Result<()> {
    let segmenter = Segmenter::load(dir)?;
    assert_eq!(segmenter.labels(), labels, "{id}: labels");
    let input = (synthesize("input", &fixture.input_shape) * fixture.input_scale)?;
    let logits = segmenter.logits(&input)?;
    let (_, c, h, w) = logits.dims4()?;
    assert_eq!(
        [c, h, w],
        [
            fixture.num_classes,
            fixture.input_shape[2],
            fixture.input_shape[3]
        ]
    );
    let values = logits.flatten_all()?.to_vec1::<f32>()?;
    for &(k, y, x, want) in &fixture.samples {
        let got = values[(k * h + y) * w + x];
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{id}: logit [{k}, {y}, {x}] = {got}, smp {want}"
        );
    }
    Ok(())
}

#[test]
fn smp_unet_resnet34_folder_loads_and_matches_smp() -> Result<()> {
    check_folder("smp_unet_resnet34", &["class_0", "class_1", "class_2"])
}

/// `config.json` (smp's `save_pretrained`) next to `model.pth` written by
/// `torch.save(model.state_dict())`: no safetensors in the folder.
#[test]
fn smp_config_next_to_a_torch_saved_state_dict_loads_and_matches_smp() -> Result<()> {
    let id = "smp_unet_resnet34";
    let pth: PthFixture = read_fixture("smp_pth", id)?;
    let fixture: NetworkFixture = read_fixture("segmentation", id)?;
    assert_eq!(pth.tensors, fixture.tensors, "the same state dict");
    let shapes: HashMap<&str, &[usize]> = pth
        .tensors
        .iter()
        .map(|(name, shape)| (name.as_str(), shape.as_slice()))
        .collect();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&fixture.smp_config)?,
    )?;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(dir.path().join("model.pth"))?);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut refilled = 0;
    for (name, kind, value) in &pth.records {
        let bytes = match kind.as_str() {
            "hex" => from_hex(value)?,
            "synth" => {
                refilled += 1;
                let shape = shapes
                    .get(value.as_str())
                    .context("a tensor of the state dict")?;
                let values = synthesize(value, shape).flatten_all()?.to_vec1::<f32>()?;
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            other => anyhow::bail!("record {name}: unknown kind {other}"),
        };
        zip.start_file(name.as_str(), stored)?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?;
    assert!(refilled > 100, "{refilled} float storages");
    check_logits(id, &fixture, dir.path(), &["class_0", "class_1", "class_2"])
}

fn from_hex(text: &str) -> Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            Ok(u8::from_str_radix(
                text.get(i..i + 2).context("odd hex")?,
                16,
            )?)
        })
        .collect()
}

#[test]
fn smp_unet_resnet50_binary_folder_loads_and_matches_smp() -> Result<()> {
    check_folder("smp_unet_resnet50_binary", &["background", "class_0"])
}

#[test]
fn smp_fpn_resnet34_folder_loads_and_matches_smp() -> Result<()> {
    check_folder(
        "smp_fpn_resnet34",
        &["class_0", "class_1", "class_2", "class_3"],
    )
}

#[test]
fn smp_fpn_resnet50_folder_loads_and_matches_smp() -> Result<()> {
    check_folder("smp_fpn_resnet50", &["class_0", "class_1"])
}

#[test]
fn smp_unet_efficientnet_b0_folder_loads_and_matches_smp() -> Result<()> {
    check_folder(
        "smp_unet_efficientnet_b0",
        &["class_0", "class_1", "class_2"],
    )
}

#[test]
fn smp_fpn_efficientnet_b0_folder_loads_and_matches_smp() -> Result<()> {
    check_folder("smp_fpn_efficientnet_b0", &["class_0", "class_1"])
}

#[test]
fn smp_unet_timm_efficientnet_b0_binary_folder_loads_and_matches_smp() -> Result<()> {
    check_folder(
        "smp_unet_timm_efficientnet_b0_binary",
        &["background", "class_0"],
    )
}

#[test]
fn smp_fpn_timm_efficientnet_b0_folder_loads_and_matches_smp() -> Result<()> {
    check_folder(
        "smp_fpn_timm_efficientnet_b0",
        &["class_0", "class_1", "class_2"],
    )
}

/// The label map of the whole pipeline on the photo, as smp gives it: every pixel but the
/// near ties smp itself barely separated.
fn check_photo(id: &str) -> Result<()> {
    let fixture: PhotoFixture = read_fixture("segmentation_photo", id)?;
    let dir = smp_folder(&fixture.smp_config, &fixture.tensors)?;
    let segmenter = Segmenter::load(dir.path())?;
    let image = image::open(support::fixture(&fixture.photo))?.to_rgb8();
    assert_eq!(image.dimensions(), (451, 300), "not a multiple of 32");
    let map = segmenter.segment(&image, None)?;
    let width = map.width as usize;
    let ties: std::collections::HashSet<(usize, usize)> = fixture.ties.iter().copied().collect();
    let mut mismatches = Vec::new();
    for (y, row) in fixture.argmax.iter().enumerate() {
        for (x, digit) in row.bytes().enumerate() {
            let want = digit - b'0';
            let got = map.classes[y * width + x];
            if got != want && !ties.contains(&(y, x)) {
                mismatches.push((y, x, got, want));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{id}: {} pixels differ from smp's label map, e.g. (y, x, wick, smp) {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    let present: std::collections::BTreeSet<u8> = map.classes.iter().copied().collect();
    assert!(
        present.len() > 1,
        "{id}: a label map of one class tests little"
    );
    Ok(())
}

#[test]
fn smp_unet_on_a_photo_pads_with_zeros_and_crops_like_smp() -> Result<()> {
    check_photo("smp_unet_resnet34_chelsea")
}

#[test]
fn smp_fpn_on_a_photo_pads_with_zeros_and_crops_like_smp() -> Result<()> {
    check_photo("smp_fpn_resnet34_chelsea")
}

/// The EfficientNet-B0 encoder's TF "same" padding on the padded photo (480x320), where smp's
/// port pads as it computed for 224x224.
#[test]
fn smp_unet_efficientnet_b0_on_a_photo_matches_smp() -> Result<()> {
    check_photo("smp_unet_efficientnet_b0_chelsea")
}

/// A config smp wrote for a model wick does not run is refused at load, naming the field and
/// the value, before any weight is read.
#[test]
fn unsupported_smp_arguments_are_refused_by_name() -> Result<()> {
    let fixture: NetworkFixture = read_fixture("segmentation", "smp_unet_resnet34")?;
    for (field, value, expected) in [
        ("decoder_attention_type", json!("scse"), "\"scse\""),
        ("in_channels", json!(4), "given: 4"),
        ("encoder_name", json!("efficientnet-b7"), "efficientnet-b7"),
    ] {
        let mut config = fixture.smp_config.clone();
        config[field] = value;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("config.json"), config.to_string())?;
        std::fs::write(dir.path().join("model.safetensors"), b"not read")?;
        let err = Segmenter::load(dir.path())
            .err()
            .context("refused")?
            .to_string();
        assert!(
            err.contains(field) && err.contains(expected) && err.contains("`Unet`"),
            "{field}: {err}"
        );
    }
    Ok(())
}
