//! `wick train`: fine-tune a new classification head on a frozen pretrained backbone under
//! SageMaker's training contract (`../shared/docs/sagemaker-contract.md` §5), synchronously.
//!
//! The job: read the hyperparameters and the channels (`job.rs`, `hyperparams.rs`,
//! `dataset.rs`), load the backbone (`backbone.rs`), run it once over every image and cache the
//! pooled features (`features.rs`, `checkpoint.rs`), train the head for many epochs on the
//! cache (`trainer.rs`, `fit.rs`), then write the model package and the reports
//! (`report.rs`, `plot.rs`). Any failure leaves a one-line cause in `output/failure` and a
//! non-zero exit code; SIGTERM saves a checkpoint and the best model so far and exits.

pub mod backbone;
pub mod checkpoint;
pub mod dataset;
pub mod features;
pub mod fit;
pub mod hyperparams;
pub mod job;
pub mod optimizer;
pub mod plot;
pub mod progress;
pub mod report;
pub mod rng;
pub mod segmentation;
pub mod stop;
pub mod trainer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cli::TrainArgs;
use crate::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use backbone::Backbone;
use checkpoint::{Checkpoints, Fnv, JobKey};
use dataset::{Dataset, DatasetSpec, Sample};
use features::{extract, FeatureTable, Pass, Transform, Unreadable};
use fit::{fit, Fit};
use hyperparams::{Hyperparameters, TrainTask};
use job::{JobLayout, TRAINING_CHANNEL, VALIDATION_CHANNEL};
use report::{Final, ImageCounts, Report, Timing};
use stop::StopFlag;
use trainer::{class_weights, evaluate, Objective, Split, TrainState};

/// Exit code after a stop request: 128 + SIGTERM, what a shell reports for a process SIGTERM
/// ended. (SageMaker marks a stopped job `Stopped` whatever the code.)
pub const STOPPED_EXIT_CODE: u8 = 143;
/// More unreadable images than this share of the dataset fails the job.
const MAX_UNREADABLE_SHARE: f64 = 0.05;

/// How the job ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Trained to the end (epoch limit or early stopping).
    Completed,
    /// A stop request ended it; checkpoints and the best model so far are saved.
    Stopped,
}

/// Runs the command.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let layout = JobLayout::resolve(args);
    layout.clear_failure();
    if !args.extra_args.is_empty() {
        tracing::warn!(arguments = ?args.extra_args, "ignoring extra arguments after `train`");
    }
    let result = StopFlag::install()
        .context("installing the SIGTERM handler")
        .and_then(|stop| train(&layout, &stop));
    match result {
        Ok(Outcome::Completed) => Ok(ExitCode::SUCCESS),
        Ok(Outcome::Stopped) => {
            tracing::warn!(
                "stopped on request (SIGTERM); rerun with the same checkpoint directory to resume"
            );
            Ok(ExitCode::from(STOPPED_EXIT_CODE))
        }
        Err(err) => {
            layout.write_failure(&format!("{err:#}"));
            Err(err)
        }
    }
}

/// The hyperparameters and the keys the file set.
fn read_hyperparameters(layout: &JobLayout) -> Result<(Hyperparameters, BTreeSet<String>)> {
    let Some(text) = job::read_optional(&layout.hyperparameters)? else {
        tracing::info!(path = %layout.hyperparameters.display(), "no hyperparameters file; using the defaults");
        return Ok((Hyperparameters::default(), BTreeSet::new()));
    };
    let parsed = hyperparams::parse_file(&layout.hyperparameters, &text)?;
    for key in &parsed.unknown {
        tracing::warn!(key, "ignoring an unknown hyperparameter");
    }
    Ok((parsed.hyperparameters, parsed.given))
}

/// The task: the hyperparameter, else segmentation when the base package is one.
fn resolve_task(hp: &Hyperparameters, base: &Path) -> TrainTask {
    hp.task
        .unwrap_or_else(|| match crate::model::package::Package::open(base) {
            Ok(p) if p.config.task == crate::model::package::Task::Segmentation => {
                TrainTask::Segmentation
            }
            _ => TrainTask::Classification,
        })
}

/// The validation channel's directory, if the job has one.
fn validation_dir(layout: &JobLayout, channels: Option<&job::Channels>) -> Option<PathBuf> {
    let listed = match channels {
        Some(c) => c.contains_key(VALIDATION_CHANNEL),
        None => layout.validation_dir.is_dir(),
    };
    (listed || layout.validation_dir_is_explicit).then(|| layout.validation_dir.clone())
}

fn train(layout: &JobLayout, stop: &StopFlag) -> Result<Outcome> {
    let started = Instant::now();
    let (hp, given) = read_hyperparameters(layout)?;
    let channels = job::read_channels(layout)?;
    if let Some(resources) = job::read_resources(layout)? {
        if !resources.is_leader() {
            tracing::info!(host = %resources.current_host, hosts = ?resources.hosts, "wick trains on the first host only; this host has nothing to do");
            return Ok(Outcome::Completed);
        }
        if resources.hosts.len() > 1 {
            tracing::warn!(hosts = ?resources.hosts, "wick trains on one host; the other hosts stay idle");
        }
    }
    let base = hp
        .base_model
        .clone()
        .unwrap_or_else(|| layout.base_model_dir.clone());
    if resolve_task(&hp, &base) == TrainTask::Segmentation {
        if !base.exists() {
            bail!(
                "no base model: `{}` does not exist; give the job a `model` channel holding a wick segmentation package or an EfficientNet-Lite classification package, or set the hyperparameter `base_model` to one",
                base.display()
            );
        }
        return segmentation::train(layout, &hp, &given, &base, stop);
    }
    if let Some(c) = &channels {
        if !c.contains_key(TRAINING_CHANNEL) && !layout.training_dir.is_dir() {
            bail!(
                "inputdataconfig.json names the channels {:?}; the channel `training` is required",
                c.keys().collect::<Vec<_>>()
            );
        }
    }
    if !base.exists() {
        bail!(
            "no backbone: `{}` does not exist; give the job a `model` channel holding a wick model package, or set the hyperparameter `base_model` to one",
            base.display()
        );
    }
    let backbone = Backbone::load(&base)?;
    let validation = validation_dir(layout, channels.as_ref());
    let data = Dataset::load(&DatasetSpec {
        training: &layout.training_dir,
        validation: validation.as_deref(),
        validation_fraction: hp.validation_fraction,
        seed: hp.seed,
    })?;
    tracing::info!(
        backbone = %backbone.weights_path().display(),
        architecture = backbone.architecture(),
        classes = ?data.labels,
        train_images = data.train.len(),
        validation_images = data.val.len(),
        validation = ?data.validation,
        hyperparameters = ?hp,
        "training a new head"
    );

    let key = job_key(&hp, &backbone, &data, layout);
    let checkpoints = Checkpoints::new(&layout.checkpoint_dir);
    let samples: Vec<&Sample> = data.train.iter().chain(&data.val).collect();
    let paths: Vec<&Path> = samples.iter().map(|s| s.path.as_path()).collect();
    let (n, f) = (paths.len(), backbone.num_features());
    let mut table = checkpoints
        .load_features(&key, n, f)
        .unwrap_or_else(|| FeatureTable::new(n, f));
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
        &backbone,
        &Pass {
            label: "features",
            paths: &paths,
            transform: Transform::Eval,
            skip: None,
        },
        &mut table,
        stop,
        &mut |t| checkpoints.save_features(&key, t),
    )?;
    if !complete {
        tracing::warn!(done = table.done, total = n, "stopped during the backbone pass; the features so far are saved, no head was trained yet");
        return Ok(Outcome::Stopped);
    }
    let computed = n - resumed_at;
    let feature_rate =
        (computed > 0).then(|| computed as f64 / pass_started.elapsed().as_secs_f64().max(1e-9));
    if computed > 0 {
        checkpoints.save_features(&key, &table)?;
    }
    check_unreadable(&table, &paths, &unreadable)?;

    let n_train = data.train.len();
    let train = split(&table, 0..n_train, &samples)?;
    let val = split(&table, n_train..n, &samples)?;
    let mut counts = vec![0usize; data.labels.len()];
    for &y in &train.y {
        counts[y as usize] += 1;
    }
    if let Some(class) = counts.iter().position(|&c| c == 0) {
        bail!(
            "class {:?} has no readable training image; every class needs at least one",
            data.labels[class]
        );
    }
    let objective = Objective {
        class_weights: class_weights(&hp.class_weights, &counts).map_err(anyhow::Error::msg)?,
        label_smoothing: hp.label_smoothing,
    };
    let mut state = match checkpoints.load_state(&key) {
        Some(parts) => {
            tracing::info!(
                epochs_done = parts.epochs_done,
                "resuming training from the checkpoint"
            );
            TrainState::from_parts(parts, &hp)?
        }
        None => TrainState::new(data.labels.len(), f, &hp)?,
    };
    let epochs_before = state.epochs_done;
    let head_started = Instant::now();
    let train_paths = &paths[..n_train];
    let completed = fit(
        &Fit {
            hp: &hp,
            backbone: &backbone,
            train: &train,
            val: (!val.is_empty()).then_some(&val),
            objective: &objective,
            train_paths,
            train_readable: &table.readable[..n_train],
            checkpoints: &checkpoints,
            key: &key,
            stop,
        },
        &mut state,
    )?;
    let epochs_run = state.epochs_done - epochs_before;
    let seconds_per_epoch =
        (epochs_run > 0).then(|| head_started.elapsed().as_secs_f64() / epochs_run as f64);

    let Some(best) = state.best.clone() else {
        tracing::warn!("stopped before the first epoch ended; no model written");
        return Ok(Outcome::Stopped);
    };
    backbone.write_package(&layout.model_dir, &data.labels, &best.head)?;
    if completed {
        let probe = probe_batch(&backbone, &paths, &table)?;
        backbone.verify_package(&layout.model_dir, &best.head, &probe)?;
    }
    let (final_split, final_name) = if val.is_empty() {
        (&train, "training")
    } else {
        (&val, "validation")
    };
    let evaluation = evaluate(&best.head, final_split)?;
    tracing::info!(
        model_dir = %layout.model_dir.display(),
        best_epoch = best.epoch,
        split = final_name,
        loss = evaluation.loss,
        accuracy = evaluation.accuracy,
        "model package written"
    );
    report::write(
        &layout.output_data_dir,
        &Report {
            status: if completed { "completed" } else { "stopped" },
            architecture: backbone.architecture(),
            labels: &data.labels,
            hyperparameters: &hp,
            images: ImageCounts {
                train: train.len(),
                validation: val.len(),
                unreadable: table.readable.iter().filter(|r| !**r).count(),
                validation_source: data.validation,
            },
            history: &state.history,
            best_epoch: Some(best.epoch),
            stopped_early: state.stopped_early,
            last: Some(Final {
                split: final_name,
                truth: &final_split.y,
                evaluation: &evaluation,
            }),
            timing: Timing {
                feature_images_per_second: feature_rate,
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

/// The readable images among `range` of the table, with their classes.
fn split(
    table: &FeatureTable,
    range: std::ops::Range<usize>,
    samples: &[&Sample],
) -> Result<Split> {
    let (x, kept) = table.gather(range)?;
    let y = kept.iter().map(|&i| samples[i].class as u32).collect();
    Ok(Split { x, y })
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
fn job_key(
    hp: &Hyperparameters,
    backbone: &Backbone,
    data: &Dataset,
    layout: &JobLayout,
) -> JobKey {
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
