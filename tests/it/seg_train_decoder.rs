//! `wick train` on DeepLab base packages (synthetic weights, tiny composites): DeepLabV3+
//! trains its whole decoder and head, DeepLabV3 everything after its dilated 3x3 branches,
//! `trainable=head` only the final convolution(s) of every family; the encoder and every batch
//! norm's running statistics stay bit for bit; the written package reproduces the trainer for
//! every family and serves. An ignored test measures seconds per epoch for
//! `docs/performance.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use wick::model::segment::Trainable;
use wick::model::Segmenter;
use wick::train::segment::base::{verify_package, BaseModel};
use wick::train::segment::decoder::{FeatureBatch, TrainableDecoder};
use wick::train::segment::features::{normalise, InputSpec};

use crate::seg_dataset::{Photos, SEG_CLASSES};
use crate::seg_train_jobs::{same, seg_base_job, synthetic_package, tensors};
use crate::train::{describe, epoch_losses, run_train};

/// A finished fine-tune of a synthetic base package.
struct FineTune {
    root: PathBuf,
    losses: Vec<f64>,
    /// Base tensors whose value (or shape) the job changed.
    changed: BTreeSet<String>,
    /// Every base tensor name.
    names: BTreeSet<String>,
}

/// Fine-tunes the `fixture` package (`base_classes` outputs) to the 3 composite classes on 8
/// composites of 64x64 for `epochs` epochs.
fn fine_tune(
    dir: &Path,
    fixture: &str,
    base_classes: usize,
    trainable: &str,
    epochs: usize,
) -> Result<FineTune> {
    let epochs_text = epochs.to_string();
    let root = seg_base_job(
        dir,
        fixture,
        base_classes,
        &[
            ("classes", &SEG_CLASSES.join(",")),
            ("image_size", "64"),
            ("epochs", &epochs_text),
            ("lr", "0.01"),
            ("patience", "0"),
            ("validation_fraction", "0.25"),
            ("trainable", trainable),
        ],
        (64, 8),
    )?;
    let out = run_train(&root)?;
    ensure!(out.status.success(), "{fixture}: {}", describe(&out));
    let losses = epoch_losses(&out)?;
    ensure!(losses.len() == epochs, "{fixture}: {}", describe(&out));
    let base = tensors(&root.join("input/data/model/model.safetensors"))?;
    let written = tensors(&root.join("model/model.safetensors"))?;
    let mut changed = BTreeSet::new();
    for (name, t) in &base {
        let w = written
            .get(name)
            .with_context(|| format!("{fixture}: {name} missing from the package"))?;
        if !same(t, w)? {
            changed.insert(name.clone());
        }
    }
    // `wick serve` loads the package as is and answers a label map at the photo's size.
    let segmenter = Segmenter::load(&root.join("model"))?;
    let photo = RgbImage::from_fn(90, 70, |x, y| image::Rgb([x as u8, y as u8, 100]));
    let map = segmenter.segment(&photo, None)?;
    assert_eq!((map.width, map.height), (90, 70));
    assert!(map.classes.iter().all(|&c| c < 3));
    Ok(FineTune {
        root,
        losses,
        changed,
        names: base.into_keys().collect(),
    })
}

fn is_running_statistic(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// The changed tensors are exactly the base tensors `trained` selects.
fn assert_trained_exactly(run: &FineTune, trained: impl Fn(&str) -> bool) {
    let expected: BTreeSet<String> = run.names.iter().filter(|n| trained(n)).cloned().collect();
    assert!(!expected.is_empty());
    let unchanged: Vec<_> = expected.difference(&run.changed).collect();
    let extra: Vec<_> = run.changed.difference(&expected).collect();
    assert!(unchanged.is_empty(), "should have trained: {unchanged:?}");
    assert!(extra.is_empty(), "should have stayed frozen: {extra:?}");
}

#[test]
fn fine_tuning_a_deeplabv3plus_package_trains_its_whole_decoder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = fine_tune(dir.path(), "smp_deeplabv3plus_resnet34", 5, "decoder", 6)?;
    assert!(
        run.losses[5] < run.losses[0],
        "the training loss did not fall: {:?}",
        run.losses
    );
    // Every decoder and head tensor (ASPP with its separable dilated branches and pooling
    // branch, aspp.1/2, block1, block2, the head) trains; the encoder and the running
    // statistics stay bit for bit.
    assert_trained_exactly(&run, |n| {
        (n.starts_with("decoder.") || n.starts_with("segmentation_head."))
            && !is_running_statistic(n)
    });
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.root.join("output/data/metrics.json"))?)?;
    assert!(
        metrics["trained"]
            .as_str()
            .is_some_and(|t| t.contains("whole DeepLabV3+ decoder")),
        "{}",
        metrics["trained"]
    );
    Ok(())
}

#[test]
fn fine_tuning_a_deeplabv3_package_trains_everything_after_its_dilated_branches() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = fine_tune(
        dir.path(),
        "torchvision_deeplabv3_mobilenet_v3_large",
        4,
        "decoder",
        6,
    )?;
    assert!(
        run.losses[5] < run.losses[0],
        "the training loss did not fall: {:?}",
        run.losses
    );
    // The ASPP's 1x1 and pooling branches, its projection, classifier.1/2 and classifier.4;
    // not the three dense dilated branches (classifier.0.convs.1-3), the backbone or the
    // auxiliary classifier.
    assert_trained_exactly(&run, |n| {
        n.starts_with("classifier.")
            && ![
                "classifier.0.convs.1.",
                "classifier.0.convs.2.",
                "classifier.0.convs.3.",
            ]
            .iter()
            .any(|p| n.starts_with(p))
            && !is_running_statistic(n)
    });
    Ok(())
}

/// `trainable=head`: only the final convolution(s) change, as before the whole decoders
/// trained (for jobs with little data).
#[test]
fn trainable_head_trains_only_the_final_convolutions() -> Result<()> {
    let cases: &[(&str, usize, &[&str])] = &[
        ("smp_deeplabv3plus_resnet34", 5, &["segmentation_head.0."]),
        (
            "torchvision_deeplabv3_mobilenet_v3_large",
            4,
            &["classifier.4."],
        ),
        (
            "torchvision_lraspp_mobilenet_v3_large",
            21,
            &["classifier.low_classifier.", "classifier.high_classifier."],
        ),
        ("hf_segformer_b0", 5, &["decode_head.classifier."]),
    ];
    for (fixture, classes, heads) in cases {
        let dir = tempfile::tempdir()?;
        let run = fine_tune(dir.path(), fixture, *classes, "head", 3)?;
        assert!(
            run.losses[2] < run.losses[0],
            "{fixture}: the training loss did not fall: {:?}",
            run.losses
        );
        assert_trained_exactly(&run, |n| heads.iter().any(|h| n.starts_with(h)));
    }
    Ok(())
}

/// For every family and both `trainable` settings, a package written from a freshly
/// initialised decoder computes the trainer's logits on a photo (the check each job runs
/// before reporting success).
#[test]
fn the_written_package_reproduces_the_trainer_for_every_family() -> Result<()> {
    let size = (64, 96);
    let (image, _) = Photos::load()?.composite(120, 8, 0);
    let labels: Vec<String> = SEG_CLASSES.iter().map(|s| s.to_string()).collect();
    for (fixture, classes) in [
        ("smp_deeplabv3plus_resnet34", 5),
        ("torchvision_deeplabv3_resnet50", 21),
        ("torchvision_deeplabv3_mobilenet_v3_large", 4),
        ("torchvision_lraspp_mobilenet_v3_large", 21),
        ("timm_lraspp_efficientnet_lite0", 3),
        ("hf_segformer_b0", 5),
    ] {
        let dir = tempfile::tempdir()?;
        let package = dir.path().join("base");
        synthetic_package(&package, fixture, classes)?;
        for trainable in [Trainable::Decoder, Trainable::Head] {
            let base = BaseModel::load(&package, trainable)?;
            let decoder = TrainableDecoder::new(base.decoder, 3, None, 9, candle_core::DType::F32)?;
            let tensors = decoder.tensors()?;
            let out = dir.path().join(format!("{trainable:?}"));
            base.write_package(&out, &tensors, &labels, 3, size)?;
            let spec = InputSpec {
                size,
                mean: base.mean,
                std: base.std,
            };
            let nhwc = Tensor::from_vec(
                normalise(&image, &spec)?,
                (1, size.0, size.1, 3),
                &Device::Cpu,
            )?;
            let features = base.network(&tensors, 3)?.features_for(&nhwc, trainable)?;
            let batch = FeatureBatch::from_nhwc(&features)?;
            let expected = decoder.forward(&batch, size)?;
            let nchw = nhwc.permute((0, 3, 1, 2))?.contiguous()?;
            verify_package(&out, &nchw, &expected)
                .with_context(|| format!("{fixture}, trainable={trainable:?}"))?;
        }
    }
    Ok(())
}

/// Seconds per epoch of DeepLabV3+ ResNet-50 decoder training at 256x256 and 320x320
/// (synthetic weights: the speed does not depend on them), for `docs/performance.md`, with the
/// release binary: `cargo build --release && WICK_TRAIN_BIN=target/release/wick cargo test
/// --test it seg_train_decoder_speed -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (~2 minutes), run by hand"]
fn seg_train_decoder_speed_deeplabv3plus_resnet50() -> Result<()> {
    for side in [256u32, 320] {
        let dir = tempfile::tempdir()?;
        let side_text = side.to_string();
        let root = seg_base_job(
            dir.path(),
            "smp_deeplabv3plus_resnet50",
            3,
            &[
                ("classes", &SEG_CLASSES.join(",")),
                ("image_size", &side_text),
                ("epochs", "2"),
                ("patience", "0"),
                ("validation_fraction", "0"),
            ],
            (side, 16),
        )?;
        let out = run_train(&root)?;
        ensure!(out.status.success(), "{}", describe(&out));
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("output/data/metrics.json"))?)?;
        let timing = &metrics["timing"];
        let per_epoch = timing["seconds_per_epoch"]
            .as_f64()
            .context("seconds_per_epoch")?;
        eprintln!(
            "DeepLabV3+ R50 decoder, {side}x{side}, 16 images, batch 8: {per_epoch:.1} s/epoch \
             ({:.2} s/image), encoder {:.2} images/s",
            per_epoch / 16.0,
            timing["encoder_images_per_second"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
