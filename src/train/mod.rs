//! `wick train`: SageMaker's training contract (`../shared/docs/sagemaker-contract.md` §5),
//! synchronously. Two trainers share one job: a new classification head on a frozen backbone
//! (`classify/`), or a segmentation decoder or head on a frozen encoder (`segment/`).
//!
//! This file reads what every job reads (the hyperparameters, the channels, the hosts), picks
//! the trainer by task and maps how it ended to the exit code. The shared pieces are at this
//! level: the job's files (`job.rs`), the hyperparameters (`hyperparams.rs`), AdamW with a
//! saveable state (`optimizer.rs`), seeded randomness (`rng.rs`), the stop flag (`stop.rs`),
//! progress and metric lines (`progress.rs`), image walking (`images.rs`), the checkpoint
//! store (`checkpoint.rs`), the written package (`package.rs`) and the report
//! (`report.rs`). Any failure leaves a one-line cause in `output/failure` and a non-zero exit
//! code; SIGTERM saves a checkpoint and the best model so far and exits.

pub(crate) mod checkpoint;
pub(crate) mod classify;
pub(crate) mod hyperparams;
pub(crate) mod images;
pub(crate) mod job;
pub(crate) mod optimizer;
pub(crate) mod outcome;
pub(crate) mod package;
pub(crate) mod progress;
pub(crate) mod report;
pub mod rng;
pub mod segment;
pub(crate) mod stop;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::TrainArgs;
use crate::model::package::{Package, Task};
use hyperparams::{Hyperparameters, TrainTask};
use job::{Job, JobLayout};
use outcome::Outcome;
use stop::StopFlag;

/// Exit code after a stop request: 128 + SIGTERM, what a shell reports for a process SIGTERM
/// ended. (SageMaker marks a stopped job `Stopped` whatever the code.)
pub(crate) const STOPPED_EXIT_CODE: u8 = 143;

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
    hp.task.unwrap_or_else(|| match Package::open(base) {
        Ok(p) if p.config.task == Task::Segmentation => TrainTask::Segmentation,
        _ => TrainTask::Classification,
    })
}

/// Whether this host trains: the only host or the first one (the others have nothing to do).
fn is_training_host(layout: &JobLayout) -> Result<bool> {
    let Some(resources) = job::read_resources(layout)? else {
        return Ok(true);
    };
    if !resources.is_leader() {
        tracing::info!(host = %resources.current_host, hosts = ?resources.hosts, "wick trains on the first host only; this host has nothing to do");
        return Ok(false);
    }
    if resources.hosts.len() > 1 {
        tracing::warn!(hosts = ?resources.hosts, "wick trains on one host; the other hosts stay idle");
    }
    Ok(true)
}

/// Reads the job and runs the trainer of its task.
fn train(layout: &JobLayout, stop: &StopFlag) -> Result<Outcome> {
    let (hp, given) = read_hyperparameters(layout)?;
    let channels = job::read_channels(layout)?;
    if !is_training_host(layout)? {
        return Ok(Outcome::Completed);
    }
    let base = hp
        .base_model
        .clone()
        .unwrap_or_else(|| layout.base_model_dir.clone());
    let job = Job {
        layout,
        hp: &hp,
        given: &given,
        channels: channels.as_ref(),
        base: &base,
        stop,
    };
    match resolve_task(&hp, &base) {
        TrainTask::Segmentation => segment::train(&job),
        TrainTask::Classification => classify::train(&job),
    }
}
