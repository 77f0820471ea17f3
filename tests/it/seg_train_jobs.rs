//! `wick train` with `task=segmentation` beyond the real fine-tune (`seg_train.rs`): bad data
//! fails with the file and value named, the 0/255 binary-mask rule, fine-tuning an LR-ASPP
//! base package (its whole head) with the encoder kept bit for bit, the exported package
//! against the trainer, and SIGTERM. The DeepLab decoders: `seg_train_decoder.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use image::{GrayImage, Luma, RgbImage};
use wick::model::segment::Trainable;
use wick::model::weights::{synthesize, Weights};
use wick::model::Segmenter;
use wick::train::segment::dataset::{Dataset as SegDataset, DatasetSpec as SegDataSpec};

use crate::seg_dataset::{Photos, SEG_CLASSES};
use crate::train::{describe, epoch_losses, ml_root, run_train, train_command};
use crate::train_resume::interrupted_run;

/// A segmentation package with the `synth` weights of a parity fixture's tensor list.
pub(crate) fn synthetic_package(dir: &Path, fixture: &str, classes: usize) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/segmentation/{fixture}.json"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let tensors: Vec<(String, Vec<usize>)> = serde_json::from_value(doc["tensors"].clone())?;
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, s)| (n.clone(), synthesize(n, s)))
        .collect();
    std::fs::create_dir_all(dir)?;
    Weights::from_tensors(map).save_safetensors(&dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architecture": doc["architecture"],
        "task": "segmentation",
        "num_classes": classes,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    Ok(())
}

/// An `/opt/ml` tree whose `model` channel is a synthetic segmentation package, with
/// `count` composites of `size` pixels in `train` + `train_annotation`.
pub(crate) fn seg_base_job(
    dir: &Path,
    fixture: &str,
    base_classes: usize,
    hyperparameters: &[(&str, &str)],
    (size, count): (u32, u64),
) -> Result<PathBuf> {
    let root = ml_root(dir, hyperparameters)?;
    let model = root.join("input/data/model");
    std::fs::remove_dir_all(&model)?;
    synthetic_package(&model, fixture, base_classes)?;
    let data = root.join("input/data");
    Photos::load()?.write(
        (&data.join("train"), &data.join("train_annotation")),
        size,
        4,
        count,
    )?;
    Ok(root)
}

fn failure(root: &Path) -> String {
    std::fs::read_to_string(root.join("output/failure")).unwrap_or_default()
}

/// Every safetensors tensor of `path`.
pub(crate) fn tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        path,
        &candle_core::Device::Cpu,
    )?)
}

pub(crate) fn same(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.dims() == b.dims()
        && a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
}

/// Fine-tunes a synthetic segmentation package to the 3 composite classes; returns the
/// train losses per epoch.
fn fine_tune_base(fixture: &str, base_classes: usize, decoder_prefix: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = seg_base_job(
        dir.path(),
        fixture,
        base_classes,
        &[
            ("classes", &SEG_CLASSES.join(",")),
            ("image_size", "64"),
            ("epochs", "6"),
            ("lr", "0.01"),
            ("patience", "0"),
            ("validation_fraction", "0.25"),
        ],
        (64, 8),
    )?;
    let out = run_train(&root)?;
    ensure!(out.status.success(), "{fixture}: {}", describe(&out));
    let losses = epoch_losses(&out)?;
    ensure!(losses.len() == 6, "{fixture}: {}", describe(&out));
    assert!(
        losses[5] < losses[0],
        "{fixture}: the training loss did not fall: {losses:?}"
    );
    // The task was inferred from the base package; the architecture is the base's.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("model/config.json"))?)?;
    let base_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("input/data/model/config.json"))?)?;
    assert_eq!(config["architecture"], base_config["architecture"]);
    assert_eq!(config["num_classes"], 3);
    // The encoder is frozen: every base tensor outside the decoder is written unchanged; the
    // decoder's classifier has the new class count.
    let base = tensors(&root.join("input/data/model/model.safetensors"))?;
    let written = tensors(&root.join("model/model.safetensors"))?;
    let mut changed = Vec::new();
    for (name, t) in &base {
        let w = written
            .get(name)
            .with_context(|| format!("{fixture}: {name} missing"))?;
        if !same(t, w)? {
            changed.push(name.clone());
        }
    }
    assert!(!changed.is_empty());
    for name in &changed {
        assert!(
            name.starts_with(decoder_prefix),
            "{fixture}: {name} changed"
        );
    }
    // `wick serve` loads it as is and answers a label map at the photo's size.
    let segmenter = Segmenter::load(&root.join("model"))?;
    let photo = RgbImage::from_fn(90, 70, |x, y| image::Rgb([x as u8, y as u8, 100]));
    let map = segmenter.segment(&photo, None)?;
    assert_eq!((map.width, map.height), (90, 70));
    assert!(map.classes.iter().all(|&c| c < 3));
    Ok(())
}

#[test]
fn fine_tuning_an_lraspp_package_trains_its_head_and_keeps_the_encoder() -> Result<()> {
    fine_tune_base("torchvision_lraspp_mobilenet_v3_large", 21, "classifier.")
}

#[test]
fn sigterm_writes_the_best_model_so_far_and_it_loads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = seg_base_job(
        dir.path(),
        "timm_lraspp_efficientnet_lite0",
        3,
        &[
            ("classes", &SEG_CLASSES.join(",")),
            ("image_size", "64"),
            ("epochs", "100000"),
            ("batch_size", "1"),
            ("patience", "0"),
        ],
        (64, 6),
    )?;
    let run = interrupted_run(&root, "epoch=", 2, false)?;
    assert_eq!(
        run.status.code(),
        Some(143),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stop_time.as_secs() < 30, "{:?}", run.stop_time);
    assert!(!root.join("output/failure").exists());
    let segmenter = Segmenter::load(&root.join("model"))?;
    assert_eq!(segmenter.labels(), SEG_CLASSES);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("output/data/metrics.json"))?)?;
    assert_eq!(metrics["status"], "stopped");
    assert!(metrics["best_epoch"].as_u64().is_some_and(|e| e >= 1));
    Ok(())
}

/// Writes one image/annotation pair under `root/input/data/{train,train_annotation}`.
fn pair(root: &Path, stem: &str, image: (u32, u32), annotation: Option<GrayImage>) -> Result<()> {
    let data = root.join("input/data");
    std::fs::create_dir_all(data.join("train"))?;
    std::fs::create_dir_all(data.join("train_annotation"))?;
    RgbImage::from_fn(image.0, image.1, |x, y| {
        image::Rgb([x as u8 * 7, y as u8 * 5, 90])
    })
    .save(data.join(format!("train/{stem}.jpg")))?;
    if let Some(a) = annotation {
        a.save(data.join(format!("train_annotation/{stem}.png")))?;
    }
    Ok(())
}

fn stripes(w: u32, h: u32, values: &[u8]) -> GrayImage {
    GrayImage::from_fn(w, h, |x, _| Luma([values[x as usize % values.len()]]))
}

#[test]
fn bad_data_fails_with_the_file_and_the_value_named() -> Result<()> {
    type Setup = fn(&Path) -> Result<()>;
    /// (case, hyperparameters added, data, what the failure line must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Setup, &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            "missing annotation",
            &[],
            |r| {
                pair(r, "a", (32, 32), Some(stripes(32, 32, &[0, 1])))?;
                pair(r, "b", (32, 32), None)
            },
            &["train/b.jpg", "has no annotation", "train_annotation/b.png"],
        ),
        (
            "size mismatch",
            &[],
            |r| pair(r, "a", (32, 24), Some(stripes(30, 24, &[0, 1]))),
            &["train_annotation/a.png", "30x24", "32x24", "train/a.jpg"],
        ),
        (
            "RGB annotation",
            &[],
            |r| {
                pair(r, "a", (32, 32), None)?;
                RgbImage::new(32, 32).save(r.join("input/data/train_annotation/a.png"))?;
                Ok(())
            },
            &["train_annotation/a.png", "RGB PNG", "single-channel"],
        ),
        (
            "out of range",
            &[],
            |r| {
                pair(r, "a", (32, 32), Some(stripes(32, 32, &[0, 1])))?;
                pair(r, "b", (32, 32), Some(stripes(32, 32, &[0, 7])))
            },
            &["train_annotation/b.png", "value 7", "3 classes"],
        ),
        (
            "bad label_map",
            &[("label_map", "{\"0\": \"bg\", \"2\": \"cat\"}")],
            |r| pair(r, "a", (32, 32), Some(stripes(32, 32, &[0, 1]))),
            &["`label_map`", "keys 0..N-1", r#"\"2\": \"cat\""#],
        ),
        (
            "unnamed classes",
            &[("classes", "")],
            |r| pair(r, "a", (32, 32), Some(stripes(32, 32, &[0, 1]))),
            &["`classes`", "(given: \"\")"],
        ),
    ];
    for (name, extra, setup, expected) in cases {
        let dir = tempfile::tempdir()?;
        let mut hp: Vec<(&str, &str)> = vec![("task", "segmentation"), ("classes", "bg,cat,dog")];
        for (k, v) in *extra {
            hp.retain(|(key, _)| *key != "classes" || *k != "label_map");
            hp.retain(|(key, _)| key != k);
            hp.push((k, v));
        }
        let root = ml_root(dir.path(), &hp)?;
        setup(&root)?;
        let out = train_command(&root).output()?;
        assert!(!out.status.success(), "{name}: {}", describe(&out));
        let cause = failure(&root);
        for e in *expected {
            assert!(
                cause.contains(e),
                "{name}: `{e}` not in the failure file: {cause}"
            );
        }
        assert_eq!(cause.lines().count(), 1, "{name}: {cause}");
    }
    Ok(())
}

#[test]
fn binary_masks_in_0_255_count_255_as_the_foreground_unless_a_1_appears() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let load = |labels: &[String]| {
        let d = dir.path().join("input/data");
        SegDataset::load(&SegDataSpec {
            train: (&d.join("train"), &d.join("train_annotation")),
            validation: None,
            labels: Some(labels),
            base_labels: None,
            ignore: Some(255),
            validation_fraction: 0.0,
            seed: 0,
        })
    };
    let two = vec!["background".to_string(), "building".to_string()];
    pair(dir.path(), "a", (16, 16), Some(stripes(16, 16, &[0, 255])))?;
    pair(
        dir.path(),
        "b",
        (16, 16),
        Some(stripes(16, 16, &[0, 0, 255])),
    )?;
    let data = load(&two)?;
    assert!(data.values.foreground_255);
    assert_eq!([0, 255].map(|v| data.values.target(v)), [0, 1]);
    // With three classes 255 is VOC's void: ignored.
    let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let data = load(&three)?;
    assert!(!data.values.foreground_255);
    assert_eq!(
        data.values.target(255),
        wick::train::segment::dataset::IGNORED
    );
    // One annotation with a 1: 255 is the ignore value everywhere.
    pair(
        dir.path(),
        "c",
        (16, 16),
        Some(stripes(16, 16, &[0, 1, 255])),
    )?;
    let data = load(&two)?;
    assert!(!data.values.foreground_255);
    assert_eq!(
        [1, 255].map(|v| data.values.target(v)),
        [1, wick::train::segment::dataset::IGNORED]
    );
    Ok(())
}

/// The package `wick train` writes computes the trainer's logits (the check every job runs
/// before reporting success), and the check catches a package that does not.
#[test]
fn the_written_package_reproduces_the_trainer_and_the_check_catches_a_difference() -> Result<()> {
    use wick::train::segment::base::{verify_package, BaseModel};
    use wick::train::segment::decoder::TrainableDecoder;
    use wick::train::segment::features::{normalise, InputSpec};

    let dir = tempfile::tempdir()?;
    // `trainable=head` needs a trained decoder, which a classification base does not have.
    let head = BaseModel::load(&crate::support::lite0_package()?, Trainable::Head)
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        head.as_deref()
            .is_some_and(|e| e.contains("`trainable`") && e.contains("segmentation package")),
        "{head:?}"
    );
    let base = BaseModel::load(&crate::support::lite0_package()?, Trainable::Decoder)?;
    assert_eq!(base.architecture, "lraspp_tf_efficientnet_lite0");
    let decoder = TrainableDecoder::new(base.decoder, 3, None, 9, candle_core::DType::F32)?;
    let tensors = decoder.tensors()?;
    let size = (96, 128);
    base.write_package(
        dir.path(),
        &tensors,
        &SEG_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        3,
        size,
    )?;

    let (image, _) = Photos::load()?.composite(160, 8, 0);
    let spec = InputSpec {
        size,
        mean: base.mean,
        std: base.std,
    };
    let nhwc = Tensor::from_vec(
        normalise(&image, &spec)?,
        (1, size.0, size.1, 3),
        &candle_core::Device::Cpu,
    )?;
    let network = base.network(&tensors, 3)?;
    let features = network.frozen_features(&nhwc)?;
    let batch = wick::train::segment::decoder::FeatureBatch::from_nhwc(&features)?;
    let expected = decoder.forward(&batch, size)?;
    let nchw = nhwc.permute((0, 3, 1, 2))?.contiguous()?;
    verify_package(dir.path(), &nchw, &expected)?;

    // One changed bias: the package no longer computes what the trainer computes.
    let mut wrong = tensors.clone();
    let bias = wrong
        .get("classifier.low_classifier.bias")
        .context("bias")?
        .affine(1.0, 0.5)?;
    wrong.insert("classifier.low_classifier.bias".into(), bias);
    base.write_package(
        dir.path(),
        &wrong,
        &SEG_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        3,
        size,
    )?;
    let err = verify_package(dir.path(), &nchw, &expected)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("different logits")),
        "{err:?}"
    );
    Ok(())
}

/// A building-mask style job: 0/255 masks, two classes, `binary=true`: one sigmoid output
/// trained with BCE, written as a one-output package that serves 0/1 label maps.
#[test]
fn a_binary_job_on_0_255_masks_writes_a_one_output_model() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = ml_root(
        dir.path(),
        &[
            ("task", "segmentation"),
            ("label_map", r#"{"0": "background", "1": "object"}"#),
            ("binary", "true"),
            ("image_size", "96"),
            ("epochs", "4"),
            ("lr", "0.01"),
            ("validation_fraction", "0.25"),
        ],
    )?;
    let data = root.join("input/data");
    std::fs::create_dir_all(data.join("train"))?;
    std::fs::create_dir_all(data.join("train_annotation"))?;
    let photos = Photos::load()?;
    for i in 0..8 {
        let (image, labels) = photos.composite(96, 6, i);
        image.save(data.join(format!("train/{i}.png")))?;
        let mask = GrayImage::from_fn(96, 96, |x, y| {
            Luma([if labels.get_pixel(x, y)[0] > 0 {
                255
            } else {
                0
            }])
        });
        mask.save(data.join(format!("train_annotation/{i}.png")))?;
    }
    let out = run_train(&root)?;
    ensure!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch=")).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    // Both classes are scored: 255 was read as the foreground, not ignored.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("output/data/metrics.json"))?)?;
    let per_class = metrics["final"]["per_class_iou"]
        .as_array()
        .context("per_class_iou")?;
    assert_eq!(per_class.len(), 2);
    assert!(per_class[1]["iou"].as_f64().is_some(), "{per_class:?}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("model/config.json"))?)?;
    assert_eq!(config["num_classes"], 1);
    // A one-output package names its foreground; the model core adds `background`.
    assert_eq!(config["label_names"], serde_json::json!(["object"]));
    let segmenter = Segmenter::load(&root.join("model"))?;
    assert!(segmenter.is_binary());
    assert_eq!(segmenter.labels(), ["background", "object"]);
    let (image, _) = photos.composite(96, 6, 0);
    let map = segmenter.segment(&image, None)?;
    assert!(map.classes.iter().all(|&c| c <= 1));
    Ok(())
}
