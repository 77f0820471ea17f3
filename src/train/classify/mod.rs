//! `wick train` for classification: a new classification head on a frozen pretrained backbone.
//!
//! The job, one step per function below: read the labelled images (`dataset.rs`), load the
//! backbone (`backbone.rs`), run it once over every image and cache the pooled features
//! (`features.rs`, checkpointed by `resume.rs`), train the head for many epochs on the cache
//! (`head.rs`, `fit.rs`), then write the model package, check it, and report (`report.rs`).

pub(crate) mod backbone;
pub(crate) mod dataset;
pub(crate) mod features;
pub(crate) mod fit;
pub(crate) mod head;
pub(crate) mod report;
pub(crate) mod resume;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use crate::train::checkpoint::{Checkpoints, Fnv, JobKey};
use crate::train::job::{Job, JobLayout, TRAINING_CHANNEL, VALIDATION_CHANNEL};
use crate::train::outcome::Outcome;
use crate::train::report::{Report, Timing};
use backbone::Backbone;
use dataset::{Dataset, DatasetSpec, Sample};
use features::{extract, FeatureTable, Pass, Transform, Unreadable};
use fit::{fit, Fit};
use head::{class_weights, evaluate, Objective, Split, TrainState};
use report::Final;

/// More unreadable images than this share of the dataset fails the job.
const MAX_UNREADABLE_SHARE: f64 = 0.05;

/// The images of the job, as the backbone pass sees them: training images first.
struct Images<'a> {
    data: &'a Dataset,
    samples: Vec<&'a Sample>,
    paths: Vec<&'a Path>,
}

impl<'a> Images<'a> {
    fn new(data: &'a Dataset) -> Self {
        let samples: Vec<&Sample> = data.train.iter().chain(&data.val).collect();
        let paths = samples.iter().map(|s| s.path.as_path()).collect();
        Images {
            data,
            samples,
            paths,
        }
    }

    /// The readable images among `range` of the table, with their classes.
    fn split(&self, table: &FeatureTable, range: std::ops::Range<usize>) -> Result<Split> {
        let (x, kept) = table.gather(range)?;
        let y = kept.iter().map(|&i| self.samples[i].class as u32).collect();
        Ok(Split { x, y })
    }
}

/// The backbone features of every image and how fast the pass ran.
struct Features {
    table: FeatureTable,
    /// Images per second of this run's pass (`None`: every feature came from the checkpoint).
    rate: Option<f64>,
}

/// The head after the epoch loop.
struct Trained {
    state: TrainState,
    /// Whether the loop ran to its end (else a stop request ended it).
    completed: bool,
    seconds_per_epoch: Option<f64>,
}

/// Runs the classification job.
pub(crate) fn train(job: &Job<'_>) -> Result<Outcome> {
    let started = Instant::now();
    check_inputs(job)?;
    let backbone = Backbone::load(job.base)?;
    let data = load_dataset(job, &backbone)?;
    let key = job_key(job, &backbone, &data);
    let checkpoints = Checkpoints::new(&job.layout.checkpoint_dir);
    let images = Images::new(&data);
    let Some(features) = backbone_pass(job, &backbone, &images, (&checkpoints, &key))? else {
        return Ok(Outcome::Stopped);
    };
    let n_train = data.train.len();
    let train = images.split(&features.table, 0..n_train)?;
    let val = images.split(&features.table, n_train..images.paths.len())?;
    let trained = fit_head(
        job,
        (&backbone, &images, &features.table),
        (&train, &val),
        (&checkpoints, &key),
    )?;
    finish(
        job,
        &Finished {
            backbone: &backbone,
            images: &images,
            features: &features,
            splits: (&train, &val),
            trained: &trained,
            started,
        },
    )
}

/// Everything the job's end reads.
struct Finished<'a> {
    backbone: &'a Backbone,
    images: &'a Images<'a>,
    features: &'a Features,
    /// Training and validation features.
    splits: (&'a Split, &'a Split),
    trained: &'a Trained,
    started: Instant,
}

/// Writes the best head's package, checks it (after a completed run), evaluates it and writes
/// the report.
fn finish(job: &Job<'_>, run: &Finished<'_>) -> Result<Outcome> {
    let Some(best) = run.trained.state.best.clone() else {
        tracing::warn!("stopped before the first epoch ended; no model written");
        return Ok(Outcome::Stopped);
    };
    let outcome = Outcome::from_completed(run.trained.completed);
    run.backbone
        .write_package(&job.layout.model_dir, &run.images.data.labels, &best.head)?;
    if outcome == Outcome::Completed {
        let probe = probe_batch(run.backbone, &run.images.paths, &run.features.table)?;
        run.backbone
            .verify_package(&job.layout.model_dir, &best.head, &probe)?;
    }
    let (train, val) = run.splits;
    let (final_split, final_name) = if val.is_empty() {
        (train, "training")
    } else {
        (val, "validation")
    };
    let evaluation = evaluate(&best.head, final_split)?;
    tracing::info!(
        model_dir = %job.layout.model_dir.display(),
        best_epoch = best.epoch,
        split = final_name,
        loss = evaluation.loss,
        accuracy = evaluation.accuracy,
        "model package written"
    );
    let report = Report {
        outcome,
        architecture: run.backbone.architecture(),
        labels: &run.images.data.labels,
        hyperparameters: job.hp,
        images: serde_json::json!({
            "train": train.len(),
            "validation": val.len(),
            "unreadable": run.features.table.readable.iter().filter(|r| !**r).count(),
            "validation_source": run.images.data.validation,
        }),
        history: &run.trained.state.history,
        score: "accuracy",
        best_epoch: Some(best.epoch),
        stopped_early: run.trained.state.stopped_early,
        timing: Timing {
            pass: "feature",
            images_per_second: run.features.rate,
            seconds_per_epoch: run.trained.seconds_per_epoch,
            total_seconds: run.started.elapsed().as_secs_f64(),
        },
    };
    let last = Final {
        split: final_name,
        truth: &final_split.y,
        evaluation: &evaluation,
    };
    report::write(&job.layout.output_data_dir, &report, Some(&last))?;
    Ok(outcome)
}

/// Fails early when the `training` channel or the backbone is missing.
fn check_inputs(job: &Job<'_>) -> Result<()> {
    if let Some(c) = job.channels {
        if !c.contains_key(TRAINING_CHANNEL) && !job.layout.training_dir.is_dir() {
            bail!(
                "inputdataconfig.json names the channels {:?}; the channel `training` is required",
                c.keys().collect::<Vec<_>>()
            );
        }
    }
    if !job.base.exists() {
        bail!(
            "no backbone: `{}` does not exist; give the job a `model` channel holding a wick model package, or set the hyperparameter `base_model` to one",
            job.base.display()
        );
    }
    Ok(())
}

/// The validation channel's directory, if the job has one.
fn validation_dir(job: &Job<'_>) -> Option<PathBuf> {
    let layout = job.layout;
    let listed = match job.channels {
        Some(c) => c.contains_key(VALIDATION_CHANNEL),
        None => layout.validation_dir.is_dir(),
    };
    (listed || layout.validation_dir_is_explicit).then(|| layout.validation_dir.clone())
}

/// The labelled training and validation images, logged with the job's settings.
fn load_dataset(job: &Job<'_>, backbone: &Backbone) -> Result<Dataset> {
    let validation = validation_dir(job);
    let data = Dataset::load(&DatasetSpec {
        training: &job.layout.training_dir,
        validation: validation.as_deref(),
        validation_fraction: job.hp.validation_fraction,
        seed: job.hp.seed,
    })?;
    tracing::info!(
        backbone = %backbone.weights_path().display(),
        architecture = backbone.architecture(),
        classes = ?data.labels,
        train_images = data.train.len(),
        validation_images = data.val.len(),
        validation = ?data.validation,
        hyperparameters = ?job.hp,
        "training a new head"
    );
    Ok(data)
}

/// The backbone features of every image: the checkpoint's, completed by the pass (saved as it
/// goes). `None` when a stop request ended the pass.
fn backbone_pass(
    job: &Job<'_>,
    backbone: &Backbone,
    images: &Images<'_>,
    (checkpoints, key): (&Checkpoints, &JobKey),
) -> Result<Option<Features>> {
    let (n, f) = (images.paths.len(), backbone.num_features());
    let mut table =
        resume::load_features(checkpoints, key, n, f).unwrap_or_else(|| FeatureTable::new(n, f));
    let resumed_at = table.done;
    if resumed_at > 0 {
        tracing::info!(
            done = resumed_at,
            total = n,
            "resuming from cached backbone features"
        );
    }
    let pass_started = Instant::now();
    let (complete, unreadable) = extract(
        backbone,
        &Pass {
            label: "features",
            paths: &images.paths,
            transform: Transform::Eval,
            skip: None,
        },
        &mut table,
        job.stop,
        &mut |t| resume::save_features(checkpoints, key, t),
    )?;
    if !complete {
        tracing::warn!(done = table.done, total = n, "stopped during the backbone pass; the features so far are saved, no head was trained yet");
        return Ok(None);
    }
    let computed = n - resumed_at;
    let rate =
        (computed > 0).then(|| computed as f64 / pass_started.elapsed().as_secs_f64().max(1e-9));
    if computed > 0 {
        resume::save_features(checkpoints, key, &table)?;
    }
    check_unreadable(&table, &images.paths, &unreadable)?;
    Ok(Some(Features { table, rate }))
}

/// The loss: every class needs a readable training image; class weights and smoothing from
/// the hyperparameters.
fn objective(job: &Job<'_>, labels: &[String], train: &Split) -> Result<Objective> {
    let mut counts = vec![0usize; labels.len()];
    for &y in &train.y {
        counts[y as usize] += 1;
    }
    if let Some(class) = counts.iter().position(|&c| c == 0) {
        bail!(
            "class {:?} has no readable training image; every class needs at least one",
            labels[class]
        );
    }
    Ok(Objective {
        class_weights: class_weights(&job.hp.class_weights, &counts).map_err(anyhow::Error::msg)?,
        label_smoothing: job.hp.label_smoothing,
    })
}

/// The epoch loop on the cached features, from the checkpoint's state when it holds this
/// job's.
fn fit_head(
    job: &Job<'_>,
    (backbone, images, table): (&Backbone, &Images<'_>, &FeatureTable),
    (train, val): (&Split, &Split),
    (checkpoints, key): (&Checkpoints, &JobKey),
) -> Result<Trained> {
    let labels = &images.data.labels;
    let objective = objective(job, labels, train)?;
    let mut state = match resume::load_state(checkpoints, key) {
        Some(parts) => {
            tracing::info!(
                epochs_done = parts.epochs_done,
                "resuming training from the checkpoint"
            );
            TrainState::from_parts(parts, job.hp)?
        }
        None => TrainState::new(labels.len(), backbone.num_features(), job.hp)?,
    };
    let epochs_before = state.epochs_done;
    let head_started = Instant::now();
    let n_train = images.data.train.len();
    let completed = fit(
        &Fit {
            hp: job.hp,
            backbone,
            train,
            val: (!val.is_empty()).then_some(val),
            objective: &objective,
            train_paths: &images.paths[..n_train],
            train_readable: &table.readable[..n_train],
            checkpoints,
            key,
            stop: job.stop,
        },
        &mut state,
    )?;
    let epochs_run = state.epochs_done - epochs_before;
    let seconds_per_epoch =
        (epochs_run > 0).then(|| head_started.elapsed().as_secs_f64() / epochs_run as f64);
    Ok(Trained {
        state,
        completed,
        seconds_per_epoch,
    })
}

/// Fails when more than 5% of the images could not be read; otherwise logs how many were
/// skipped.
fn check_unreadable(table: &FeatureTable, paths: &[&Path], found: &[Unreadable]) -> Result<()> {
    let bad: Vec<usize> = (0..table.len()).filter(|&i| !table.readable[i]).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let share = bad.len() as f64 / table.len() as f64;
    let example = match found.first() {
        Some(u) => format!("{}: {}", u.path.display(), u.cause),
        None => paths[bad[0]].display().to_string(),
    };
    if share > MAX_UNREADABLE_SHARE {
        bail!(
            "{} of {} images ({:.1}%) could not be read; more than {}% fails the job (first: {example})",
            bad.len(),
            table.len(),
            share * 100.0,
            MAX_UNREADABLE_SHARE * 100.0
        );
    }
    tracing::warn!(skipped = bad.len(), total = table.len(), first = %example, "skipped unreadable images");
    Ok(())
}

/// One readable image, preprocessed, to check the written package against the trained head.
fn probe_batch(
    backbone: &Backbone,
    paths: &[&Path],
    table: &FeatureTable,
) -> Result<candle_core::Tensor> {
    let cfg = backbone.preprocess();
    let index = (0..table.len())
        .rev()
        .find(|&i| table.readable[i])
        .context("no readable image")?;
    let bytes = std::fs::read(paths[index])?;
    let image = decode(&bytes, &DecodeLimits::default())?;
    Ok(to_batch(&[preprocess(&image, cfg)?], cfg)?)
}

/// What a checkpoint must match: the images and their classes, the backbone, and the
/// hyperparameters that change the result.
fn job_key(job: &Job<'_>, backbone: &Backbone, data: &Dataset) -> JobKey {
    let (hp, layout): (_, &JobLayout) = (job.hp, job.layout);
    let mut images = Fnv::default();
    for label in &data.labels {
        images.add(label.as_bytes());
    }
    for (name, samples) in [("train", &data.train), ("val", &data.val)] {
        images.add(name.as_bytes());
        for s in samples {
            // Relative to the channel: SageMaker may mount a restarted job's data elsewhere.
            let path = [&layout.training_dir, &layout.validation_dir]
                .into_iter()
                .find_map(|root| s.path.strip_prefix(root).ok())
                .unwrap_or(&s.path);
            let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
            images
                .add(path.to_string_lossy().as_bytes())
                .add(&size.to_le_bytes())
                .add(&(s.class as u64).to_le_bytes());
        }
    }
    let mut net = Fnv::default();
    net.add(backbone.architecture().as_bytes())
        .add(format!("{:?}", backbone.preprocess()).as_bytes());
    let size = std::fs::metadata(backbone.weights_path())
        .map(|m| m.len())
        .unwrap_or(0);
    net.add(&size.to_le_bytes());
    JobKey {
        data: images.hex(),
        backbone: net.hex(),
        training: serde_json::json!({
            "seed": hp.seed,
            "lr": hp.lr,
            "batch_size": hp.batch_size,
            "weight_decay": hp.weight_decay,
            "label_smoothing": hp.label_smoothing,
            "class_weights": hp.class_weights,
            "augment": hp.augment,
            "validation_fraction": hp.validation_fraction,
        }),
    }
}
