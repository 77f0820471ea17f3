//! `wick train` with `task=segmentation`: a frozen encoder and a trained decoder.
//!
//! The job: pair the images and annotation PNGs of the channels (`data.rs`, `annotation.rs`),
//! load the base model (`base.rs`), run the frozen part of the network once per image (and
//! mirror image with `augment=true`) and cache its feature maps (`features.rs`, if they fit:
//! `memory.rs`), train the decoder (`trainable`: all of it or its final convolutions) with
//! Candle autograd on the cache (`decoder/`, `loss.rs`, `fit.rs`), checkpointing the cache and
//! every epoch for a restarted job (`resume.rs`), then write the package, check it against the
//! trainer, and report (`report.rs`). Hyperparameters, the job layout, the failure file, the
//! stop flag and the plots are the classification trainer's.

pub mod annotation;
pub mod base;
pub mod data;
pub mod decoder;
pub mod features;
pub mod fit;
pub mod loss;
pub mod memory;
pub mod report;
pub mod resume;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::optim::ParamsAdamW;

use super::checkpoint::Checkpoints;
use super::hyperparams::{HyperparameterError, Hyperparameters};
use super::job::{self, JobLayout, VALIDATION_ANNOTATION_CHANNEL, VALIDATION_CHANNEL};
use super::stop::StopFlag;
use super::Outcome;
use crate::model::arch::segmentation::{Decoder, Trainable};
use base::{verify_package, BaseModel, DEFAULT_SIZE};
use data::{SegDataSpec, SegDataset};
use decoder::TrainableDecoder;
use features::{encode, normalise, read_image, FeatureCache, InputSpec};
use fit::{evaluate, fit, SegFit};
use report::{write_overlay, SegImageCounts, SegReport, SegTiming, MAX_OVERLAYS};

/// Images per decoder step when `batch_size` is not given (a segmentation image holds tens of
/// thousands of labelled pixels; the classification default, 32, would leave few steps).
const DEFAULT_BATCH: usize = 8;

/// Whether a channel takes part: named in `inputdataconfig.json`, or (without that file) its
/// directory exists, or its path was given explicitly.
fn has_channel(channels: Option<&job::Channels>, name: &str, dir: &Path, explicit: bool) -> bool {
    explicit
        || match channels {
            Some(c) => c.contains_key(name),
            None => dir.is_dir(),
        }
}

/// The train and validation feature caches, from the checkpoint when it holds this job's, else
/// from the encoder pass (then saved), with the encoder's images per second; `None` when a stop
/// was requested during the pass.
fn cached_features(
    frozen: (
        &dyn crate::model::arch::segmentation::SegmentationNetwork,
        Trainable,
    ),
    data: &SegDataset,
    augment: bool,
    spec: &InputSpec,
    (checkpoints, key): (&Checkpoints, &crate::train::checkpoint::JobKey),
    stop: &StopFlag,
) -> Result<Option<([FeatureCache; 2], Option<f64>)>> {
    if let Some(caches) = resume::load_features(checkpoints, key) {
        tracing::info!(
            images = caches[0].len + caches[1].len,
            "feature cache read from the checkpoint; no encoder pass"
        );
        return Ok(Some((caches, None)));
    }
    let started = Instant::now();
    let Some(train) = encode(
        frozen,
        &data.train,
        augment,
        spec,
        &data.values,
        stop,
        "encoder (train)",
    )?
    else {
        return Ok(None);
    };
    let Some(val) = encode(
        frozen,
        &data.val,
        false,
        spec,
        &data.values,
        stop,
        "encoder (validation)",
    )?
    else {
        return Ok(None);
    };
    let encoded = train.len + val.len;
    let rate = encoded as f64 / started.elapsed().as_secs_f64().max(1e-9);
    tracing::info!(
        images = encoded,
        images_per_second = format!("{rate:.1}"),
        "encoder pass done"
    );
    resume::save_features(checkpoints, key, [&train, &val])?;
    Ok(Some(([train, val], Some(rate))))
}

/// What trains, for the log and `metrics.json`.
fn describe(decoder: Decoder) -> &'static str {
    match decoder {
        Decoder::LrAspp { .. } => "the whole LR-ASPP head (classifier.*)",
        Decoder::LrAsppClassifiers { .. } => {
            "LR-ASPP's two classifiers (classifier.low_classifier, classifier.high_classifier)"
        }
        Decoder::DeepLabV3 { .. } => {
            "DeepLabV3's classifier after its dilated 3x3 branches (classifier.0 1x1 and pooling branches and projection, classifier.1/2, classifier.4)"
        }
        Decoder::DeepLabV3Plus { .. } => {
            "the whole DeepLabV3+ decoder (decoder.*) and segmentation_head.0"
        }
        Decoder::FinalConv { .. } => "the final 1x1 classifier convolution",
    }
}

/// Runs the segmentation job.
pub(crate) fn train(
    layout: &JobLayout,
    hp: &Hyperparameters,
    given: &std::collections::BTreeSet<String>,
    base_dir: &Path,
    stop: &StopFlag,
) -> Result<Outcome> {
    let started = Instant::now();
    let channels = job::read_channels(layout)?;
    let base = BaseModel::load(base_dir, hp.trainable)?;
    let val_images = has_channel(
        channels.as_ref(),
        VALIDATION_CHANNEL,
        &layout.validation_dir,
        layout.validation_dir_is_explicit,
    );
    let val_annotations = has_channel(
        channels.as_ref(),
        VALIDATION_ANNOTATION_CHANNEL,
        &layout.validation_annotation_dir,
        layout.validation_annotation_dir_is_explicit,
    );
    if val_images != val_annotations {
        bail!(
            "the job has the channel `{}` but not `{}`; validation needs both (images and their annotations)",
            if val_images { "validation" } else { "validation_annotation" },
            if val_images { "validation_annotation" } else { "validation" },
        );
    }
    let data = SegDataset::load(&SegDataSpec {
        train: (&layout.seg_train_dir, &layout.train_annotation_dir),
        validation: val_images
            .then_some((&*layout.validation_dir, &*layout.validation_annotation_dir)),
        labels: hp.labels.as_deref(),
        base_labels: base.labels.as_deref(),
        ignore: hp.ignore_index,
        validation_fraction: hp.validation_fraction,
        seed: hp.seed,
    })?;
    let classes = data.labels.len();
    let binary = hp
        .binary
        .unwrap_or(base.out_channels == Some(1) && classes == 2);
    if binary && classes != 2 {
        return Err(HyperparameterError::Invalid {
            key: "binary".into(),
            expected: format!("false for a job with {classes} classes (a binary model has 2)"),
            value: "true".into(),
        }
        .into());
    }
    let out_channels = if binary { 1 } else { classes };
    let size = hp.image_size.or(base.input_size).unwrap_or(DEFAULT_SIZE);
    let batch_size = if given.contains("batch_size") {
        hp.batch_size
    } else {
        DEFAULT_BATCH
    };
    let init = base
        .is_segmentation
        .then(|| crate::model::weights::Weights::from_tensors(base.tensors.clone()));
    let decoder = TrainableDecoder::new(
        base.decoder,
        out_channels,
        init.as_ref(),
        hp.seed,
        DType::F32,
    )?;
    let network = base.network(&decoder.tensors()?, out_channels)?;
    let multiple = network.size_multiple();
    if !size.0.is_multiple_of(multiple) || !size.1.is_multiple_of(multiple) {
        return Err(HyperparameterError::Invalid {
            key: "image_size".into(),
            expected: format!(
                "a height and width divisible by {multiple} for `{}`",
                base.architecture
            ),
            value: format!("{}x{}", size.0, size.1),
        }
        .into());
    }
    let trained = describe(base.decoder);
    tracing::info!(
        architecture = %base.architecture,
        trained,
        classes = ?data.labels,
        binary,
        train_images = data.train.len(),
        validation_images = data.val.len(),
        validation = ?data.validation,
        image_size = ?size,
        batch_size,
        "training a segmentation decoder on a frozen encoder"
    );
    let spec = InputSpec {
        size,
        mean: base.mean,
        std: base.std,
    };
    let checkpoints = Checkpoints::new(&layout.checkpoint_dir);
    let keys = resume::job_keys(
        hp,
        &base,
        &data,
        layout,
        &resume::Effective {
            size,
            batch_size,
            binary,
        },
    );
    let Some(([train_cache, val_cache], encoder_rate)) = cached_features(
        (network.as_ref(), hp.trainable),
        &data,
        hp.augment,
        &spec,
        (&checkpoints, &keys.features),
        stop,
    )?
    else {
        tracing::warn!(
            "stopped during the encoder pass; no decoder was trained yet, no model written"
        );
        return Ok(Outcome::Stopped);
    };

    let metric_classes = if binary { 2 } else { classes };
    let var_keys = decoder.var_keys();
    let resumed = resume::load_state(&checkpoints, &keys.training, &var_keys);
    if let Some(state) = &resumed {
        tracing::info!(
            epochs_done = state.epochs_done,
            "resuming training from the checkpoint"
        );
    }
    let epochs_before = resumed.as_ref().map_or(0, |s| s.epochs_done);
    let checkpoint = |state: &resume::SegState| {
        resume::save_state(&checkpoints, &keys.training, &var_keys, state)
    };
    let fit_started = Instant::now();
    let outcome = fit(&SegFit {
        decoder: &decoder,
        train: &train_cache,
        val: (val_cache.len > 0).then_some(&val_cache),
        size,
        classes: metric_classes,
        epochs: hp.epochs,
        batch_size,
        patience: hp.patience,
        seed: hp.seed,
        adam: ParamsAdamW {
            lr: hp.lr,
            weight_decay: hp.weight_decay,
            ..ParamsAdamW::default()
        },
        stop,
        resume: resumed.as_ref(),
        checkpoint: &checkpoint,
    })?;
    let epochs_run = outcome.history.len().saturating_sub(epochs_before);
    let seconds_per_epoch =
        (epochs_run > 0).then(|| fit_started.elapsed().as_secs_f64() / epochs_run as f64);
    let Some(best) = &outcome.best else {
        tracing::warn!("stopped before the first epoch ended; no model written");
        return Ok(Outcome::Stopped);
    };
    let completed = !outcome.stopped;
    decoder.load(&best.tensors)?;
    base.write_package(
        &layout.model_dir,
        &best.tensors,
        &data.labels,
        out_channels,
        size,
    )?;

    let (final_cache, final_samples, final_split, stride) = if val_cache.len > 0 {
        (&val_cache, &data.val, "validation", 1)
    } else {
        (
            &train_cache,
            &data.train,
            "training",
            if hp.augment { 2 } else { 1 },
        )
    };
    let (final_loss, confusion, predicted) = evaluate(&decoder, final_cache, size, metric_classes)?;
    let scores = confusion.scores();
    let pixels = size.0 * size.1;
    if completed {
        let sample = &final_samples[0];
        let probe = normalise(&read_image(&sample.image)?, &spec)?;
        let probe = candle_core::Tensor::from_vec(
            probe,
            (1, size.0, size.1, 3),
            &candle_core::Device::Cpu,
        )?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
        let expected = decoder.forward(&final_cache.batch(&[0])?, size)?;
        verify_package(&layout.model_dir, &probe, &expected)?;
    }
    for (i, sample) in final_samples.iter().take(MAX_OVERLAYS).enumerate() {
        let item = i * stride;
        let stem = sample
            .image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        write_overlay(
            &layout.output_data_dir,
            &stem,
            &read_image(&sample.image)?,
            &final_cache.targets(&[item], pixels),
            &predicted[item * pixels..(item + 1) * pixels],
            size,
        )
        .with_context(|| format!("drawing the overlay of `{}`", sample.image.display()))?;
    }
    tracing::info!(
        model_dir = %layout.model_dir.display(),
        best_epoch = best.epoch,
        split = final_split,
        loss = final_loss,
        pixel_accuracy = scores.pixel_accuracy,
        mean_iou = scores.mean_iou,
        "model package written"
    );
    report::write(
        &layout.output_data_dir,
        &SegReport {
            status: if completed { "completed" } else { "stopped" },
            architecture: &base.architecture,
            trained,
            labels: &data.labels,
            hyperparameters: hp,
            images: SegImageCounts {
                train: data.train.len(),
                validation: data.val.len(),
                validation_source: data.validation,
                augmented: hp.augment,
            },
            history: &outcome.history,
            best_epoch: Some(best.epoch),
            stopped_early: outcome.stopped_early,
            last: Some((final_split, final_loss, &scores)),
            timing: SegTiming {
                encoder_images_per_second: encoder_rate,
                seconds_per_epoch,
                total_seconds: started.elapsed().as_secs_f64(),
            },
        },
    )?;
    Ok(if completed {
        Outcome::Completed
    } else {
        Outcome::Stopped
    })
}
