//! `wick train` with `task=segmentation`: a frozen encoder and a trained decoder.
//!
//! The job, one step per function below: pair the images and annotation PNGs of the channels
//! (`dataset.rs`, `annotation.rs`), load the base model (`base.rs`), run the frozen part of the
//! network once per image (and mirror image with `augment=true`) and cache its feature maps
//! (`features.rs`, if they fit: `memory.rs`), train the decoder (`trainable`: all of it or its
//! final convolutions) with Candle autograd on the cache (`decoder/`, `loss.rs`, `fit.rs`),
//! checkpointing the cache and every epoch for a restarted job (`resume.rs`), then write the
//! package, check it against the trainer, and report (`report.rs`). The job's files, the
//! hyperparameters, the stop flag, the checkpoint store, the package writer and the report's
//! shared part are `train/`'s.

pub mod annotation;
pub mod base;
pub mod dataset;
pub mod decoder;
pub mod features;
pub(crate) mod fit;
pub(crate) mod loss;
pub(crate) mod memory;
pub(crate) mod report;
pub(crate) mod resume;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::DType;
use candle_nn::optim::ParamsAdamW;

use crate::model::segment::{Decoder, SegmentationNetwork};
use crate::model::weights::Weights;
use crate::train::checkpoint::{Checkpoints, JobKey};
use crate::train::hyperparams::HyperparameterError;
use crate::train::job::{Channels, Job, VALIDATION_ANNOTATION_CHANNEL, VALIDATION_CHANNEL};
use crate::train::outcome::Outcome;
use crate::train::report::{Report, Timing};
use base::{verify_package, BaseModel, DEFAULT_SIZE};
use dataset::{Dataset, DatasetSpec};
use decoder::TrainableDecoder;
use features::{encode, normalise, read_image, FeatureCache, InputSpec};
use fit::{evaluate, fit, Fit, Fitted, State};
use report::{write_overlays, Evaluated};

/// Images per decoder step when `batch_size` is not given (a segmentation image holds tens of
/// thousands of labelled pixels; the classification default, 32, would leave few steps).
const DEFAULT_BATCH: usize = 8;

/// The job's settings after defaults and the decoder they give.
struct Setup {
    /// One sigmoid output.
    binary: bool,
    /// Outputs of the network (1 when binary).
    out_channels: usize,
    /// Classes of the metrics (2 for a binary model).
    metric_classes: usize,
    /// Items per decoder step.
    batch_size: usize,
    /// Training resolution and normalisation.
    spec: InputSpec,
    /// The decoder being trained.
    decoder: TrainableDecoder,
    /// The network with the decoder's initial tensors (its frozen part runs the encoder pass).
    network: Box<dyn SegmentationNetwork>,
    /// What trains, for the log and `metrics.json`.
    trained: &'static str,
}

/// The train and validation feature caches, and the encoder's images per second (`None`: the
/// features came from the checkpoint).
struct Caches {
    train: FeatureCache,
    val: FeatureCache,
    encoder_rate: Option<f64>,
}

/// Runs the segmentation job.
pub(crate) fn train(job: &Job<'_>) -> Result<Outcome> {
    let started = Instant::now();
    if !job.base.exists() {
        bail!(
            "no base model: `{}` does not exist; give the job a `model` channel holding a wick segmentation package or an EfficientNet-Lite classification package, or set the hyperparameter `base_model` to one",
            job.base.display()
        );
    }
    let base = BaseModel::load(job.base, job.hp.trainable)?;
    let data = load_dataset(job, &base)?;
    let setup = set_up(job, &base, &data)?;
    let checkpoints = Checkpoints::new(&job.layout.checkpoint_dir);
    let keys = resume::job_keys(
        job.hp,
        &base,
        &data,
        job.layout,
        &resume::Effective {
            size: setup.spec.size,
            batch_size: setup.batch_size,
            binary: setup.binary,
        },
    );
    let Some(caches) = cached_features(job, &setup, &data, (&checkpoints, &keys.features))? else {
        tracing::warn!(
            "stopped during the encoder pass; no decoder was trained yet, no model written"
        );
        return Ok(Outcome::Stopped);
    };
    let (fitted, seconds_per_epoch) =
        fit_decoder(job, &setup, &caches, (&checkpoints, &keys.training))?;
    finish(
        job,
        &Finished {
            base: &base,
            data: &data,
            setup: &setup,
            caches: &caches,
            fitted: &fitted,
            timing: (started, seconds_per_epoch),
        },
    )
}

/// Whether a channel takes part: named in `inputdataconfig.json`, or (without that file) its
/// directory exists, or its path was given explicitly.
fn has_channel(channels: Option<&Channels>, name: &str, dir: &Path, explicit: bool) -> bool {
    explicit
        || match channels {
            Some(c) => c.contains_key(name),
            None => dir.is_dir(),
        }
}

/// The paired images and annotations of the job; validation needs both of its channels.
fn load_dataset(job: &Job<'_>, base: &BaseModel) -> Result<Dataset> {
    let (layout, hp) = (job.layout, job.hp);
    let val_images = has_channel(
        job.channels,
        VALIDATION_CHANNEL,
        &layout.validation_dir,
        layout.validation_dir_is_explicit,
    );
    let val_annotations = has_channel(
        job.channels,
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
    Ok(Dataset::load(&DatasetSpec {
        train: (&layout.train_dir, &layout.train_annotation_dir),
        validation: val_images
            .then_some((&*layout.validation_dir, &*layout.validation_annotation_dir)),
        labels: hp.labels.as_deref(),
        base_labels: base.labels.as_deref(),
        ignore: hp.ignore_index,
        validation_fraction: hp.validation_fraction,
        seed: hp.seed,
    })?)
}

/// The job's settings after defaults (binary output, resolution, batch size), checked against
/// the network, and the decoder they give, logged.
fn set_up(job: &Job<'_>, base: &BaseModel, data: &Dataset) -> Result<Setup> {
    let hp = job.hp;
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
    let batch_size = if job.given.contains("batch_size") {
        hp.batch_size
    } else {
        DEFAULT_BATCH
    };
    let init = base
        .is_segmentation
        .then(|| Weights::from_tensors(base.tensors.clone()));
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
    Ok(Setup {
        binary,
        out_channels,
        metric_classes: if binary { 2 } else { classes },
        batch_size,
        spec: InputSpec {
            size,
            mean: base.mean,
            std: base.std,
        },
        decoder,
        network,
        trained,
    })
}

/// The train and validation feature caches, from the checkpoint when it holds this job's, else
/// from the encoder pass (then saved); `None` when a stop was requested during the pass.
fn cached_features(
    job: &Job<'_>,
    setup: &Setup,
    data: &Dataset,
    (checkpoints, key): (&Checkpoints, &JobKey),
) -> Result<Option<Caches>> {
    if let Some([train, val]) = resume::load_features(checkpoints, key) {
        tracing::info!(
            images = train.len + val.len,
            "feature cache read from the checkpoint; no encoder pass"
        );
        let encoder_rate = None;
        return Ok(Some(Caches {
            train,
            val,
            encoder_rate,
        }));
    }
    let started = Instant::now();
    let frozen = (setup.network.as_ref(), job.hp.trainable);
    let pass = |samples, augment, label| {
        encode(
            frozen,
            samples,
            augment,
            &setup.spec,
            &data.values,
            job.stop,
            label,
        )
    };
    let Some(train) = pass(&data.train, job.hp.augment, "encoder (train)")? else {
        return Ok(None);
    };
    let Some(val) = pass(&data.val, false, "encoder (validation)")? else {
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
    Ok(Some(Caches {
        train,
        val,
        encoder_rate: Some(rate),
    }))
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
        Decoder::FinalConv3x3 { .. } => "the final 3x3 classifier convolution",
    }
}

/// The epoch loop on the caches, from the checkpoint's state when it holds this job's, with
/// the mean wall time of this run's epochs.
fn fit_decoder(
    job: &Job<'_>,
    setup: &Setup,
    caches: &Caches,
    (checkpoints, key): (&Checkpoints, &JobKey),
) -> Result<(Fitted, Option<f64>)> {
    let hp = job.hp;
    let var_keys = setup.decoder.var_keys();
    let resumed = resume::load_state(checkpoints, key, &var_keys);
    if let Some(state) = &resumed {
        tracing::info!(
            epochs_done = state.epochs_done,
            "resuming training from the checkpoint"
        );
    }
    let epochs_before = resumed.as_ref().map_or(0, |s| s.epochs_done);
    let checkpoint = |state: &State| resume::save_state(checkpoints, key, &var_keys, state);
    let fit_started = Instant::now();
    let fitted = fit(&Fit {
        decoder: &setup.decoder,
        train: &caches.train,
        val: (caches.val.len > 0).then_some(&caches.val),
        size: setup.spec.size,
        classes: setup.metric_classes,
        epochs: hp.epochs,
        batch_size: setup.batch_size,
        patience: hp.patience,
        seed: hp.seed,
        adam: ParamsAdamW {
            lr: hp.lr,
            weight_decay: hp.weight_decay,
            ..ParamsAdamW::default()
        },
        stop: job.stop,
        resume: resumed.as_ref(),
        checkpoint: &checkpoint,
    })?;
    let epochs_run = fitted.history.len().saturating_sub(epochs_before);
    let seconds_per_epoch =
        (epochs_run > 0).then(|| fit_started.elapsed().as_secs_f64() / epochs_run as f64);
    Ok((fitted, seconds_per_epoch))
}

/// Everything the job's end reads.
struct Finished<'a> {
    base: &'a BaseModel,
    data: &'a Dataset,
    setup: &'a Setup,
    caches: &'a Caches,
    fitted: &'a Fitted,
    /// When the job started, and the mean wall time of an epoch.
    timing: (Instant, Option<f64>),
}

/// The images the exported decoder is evaluated on: the validation split, else the training
/// split (whose cache holds each image twice, mirrored too, with `augment`). Returns the
/// split's name, its samples, its cache and the cache items per sample.
fn final_split<'a>(
    run: &Finished<'a>,
    augment: bool,
) -> (&'static str, &'a [dataset::Sample], &'a FeatureCache, usize) {
    if run.caches.val.len > 0 {
        ("validation", &run.data.val, &run.caches.val, 1)
    } else {
        let stride = if augment { 2 } else { 1 };
        ("training", &run.data.train, &run.caches.train, stride)
    }
}

/// Writes the best decoder's package, checks it (after a completed run), draws a few
/// overlays and writes the report.
fn finish(job: &Job<'_>, run: &Finished<'_>) -> Result<Outcome> {
    let (setup, data, hp) = (run.setup, run.data, job.hp);
    let Some(best) = &run.fitted.best else {
        tracing::warn!("stopped before the first epoch ended; no model written");
        return Ok(Outcome::Stopped);
    };
    let outcome = Outcome::from_completed(!run.fitted.stopped);
    let size = setup.spec.size;
    setup.decoder.load(&best.tensors)?;
    run.base.write_package(
        &job.layout.model_dir,
        &best.tensors,
        &data.labels,
        setup.out_channels,
        size,
    )?;
    let (final_split, final_samples, final_cache, stride) = final_split(run, hp.augment);
    let (final_loss, confusion, predicted) =
        evaluate(&setup.decoder, final_cache, size, setup.metric_classes)?;
    let scores = confusion.scores();
    if outcome == Outcome::Completed {
        check_package(job, setup, &final_samples[0].image, final_cache)?;
    }
    write_overlays(
        &job.layout.output_data_dir,
        &Evaluated {
            samples: final_samples,
            cache: final_cache,
            stride,
            predicted: &predicted,
            size,
        },
    )?;
    tracing::info!(
        model_dir = %job.layout.model_dir.display(),
        best_epoch = best.epoch,
        split = final_split,
        loss = final_loss,
        pixel_accuracy = scores.pixel_accuracy,
        mean_iou = scores.mean_iou,
        "model package written"
    );
    let (started, seconds_per_epoch) = run.timing;
    let report = Report {
        outcome,
        architecture: &run.base.architecture,
        labels: &data.labels,
        hyperparameters: hp,
        images: serde_json::json!({
            "train": data.train.len(),
            "validation": data.val.len(),
            "validation_source": data.validation,
            "augmented": hp.augment,
        }),
        history: &run.fitted.history,
        score: "mean_iou",
        best_epoch: Some(best.epoch),
        stopped_early: run.fitted.stopped_early,
        timing: Timing {
            pass: "encoder",
            images_per_second: run.caches.encoder_rate,
            seconds_per_epoch,
            total_seconds: started.elapsed().as_secs_f64(),
        },
    };
    let last = (final_split, final_loss, &scores);
    report::write(
        &job.layout.output_data_dir,
        &report,
        setup.trained,
        Some(last),
    )?;
    Ok(outcome)
}

/// Loads the written package as `wick serve` does and checks its logits on the first final
/// image against the trainer's on the same cached features.
fn check_package(job: &Job<'_>, setup: &Setup, image: &Path, cache: &FeatureCache) -> Result<()> {
    let size = setup.spec.size;
    let probe = normalise(&read_image(image)?, &setup.spec)?;
    let probe =
        candle_core::Tensor::from_vec(probe, (1, size.0, size.1, 3), &candle_core::Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
    let expected = setup.decoder.forward(&cache.batch(&[0])?, size)?;
    verify_package(&job.layout.model_dir, &probe, &expected)
}
