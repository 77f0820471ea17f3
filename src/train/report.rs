//! What every job reports in `output/data/`, whatever the task: `metrics.json` (status,
//! network, labels, hyperparameters, image counts, every epoch, the best one, the final
//! numbers, timing, and the task's own entries) and `training_curves.png` (the loss and the
//! task's score per epoch). The classification and segmentation reports
//! (`classify/report.rs`, `segment/report.rs`) fill in their numbers and extra files.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::hyperparams::Hyperparameters;
use super::outcome::Outcome;
use crate::render::plot::{curves, PanelData};

/// File names in `output/data/`.
pub(crate) const METRICS_FILE: &str = "metrics.json";
/// See [`METRICS_FILE`].
pub(crate) const CURVES_FILE: &str = "training_curves.png";

/// The PNG bytes of the curves of `history` (an empty history gives empty axes): the loss on
/// the left (`train_loss`, `val_loss`), `score` on the right (`train_{score}`,
/// `val_{score}`, in [0, 1]), read from each epoch as `metrics.json` writes it.
pub(crate) fn training_curves<E: Serialize>(history: &[E], score: &str) -> Result<Vec<u8>> {
    let records = history
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r.get("epoch")?.as_f64()?, r.get(key)?.as_f64()?)))
            .collect()
    };
    let title = score.replace('_', " ");
    Ok(curves(&[
        PanelData {
            title: "loss",
            train: series("train_loss"),
            val: series("val_loss"),
            y_range: None,
        },
        PanelData {
            title: &title,
            train: series(&format!("train_{score}")),
            val: series(&format!("val_{score}")),
            y_range: Some((0.0, 1.0)),
        },
    ])?)
}

/// Time spent, for the log and `docs/performance.md`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// What `images_per_second` measured: `feature` (the backbone pass) or `encoder`.
    pub(crate) pass: &'static str,
    /// Images per second of this run's pass (`None`: its output came from the checkpoint).
    pub(crate) images_per_second: Option<f64>,
    /// Mean wall time of one epoch.
    pub(crate) seconds_per_epoch: Option<f64>,
    /// Wall time of the whole job so far (this run).
    pub(crate) total_seconds: f64,
}

impl Timing {
    fn to_json(self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::from_iter([
            (
                format!("{}_images_per_second", self.pass),
                serde_json::json!(self.images_per_second),
            ),
            (
                "seconds_per_epoch".to_string(),
                serde_json::json!(self.seconds_per_epoch),
            ),
            (
                "total_seconds".to_string(),
                serde_json::json!(self.total_seconds),
            ),
        ]))
    }
}

/// Everything `metrics.json` holds.
pub(crate) struct Report<'a, E> {
    /// `completed` or `stopped`.
    pub(crate) outcome: Outcome,
    /// The trained network's architecture.
    pub(crate) architecture: &'a str,
    /// Class names.
    pub(crate) labels: &'a [String],
    /// The job's hyperparameters.
    pub(crate) hyperparameters: &'a Hyperparameters,
    /// Image counts.
    pub(crate) images: serde_json::Value,
    /// Every completed epoch.
    pub(crate) history: &'a [E],
    /// The score the curves plot beside the loss (see [`training_curves`]).
    pub(crate) score: &'static str,
    /// The epoch of the exported model.
    pub(crate) best_epoch: Option<usize>,
    /// Whether early stopping ended training.
    pub(crate) stopped_early: bool,
    /// Time spent.
    pub(crate) timing: Timing,
}

/// Writes `metrics.json` and `training_curves.png` to `dir`. `task` adds the task's own
/// entries: `final` (the exported model's numbers on the validation, or training, images) and
/// any other (classification: `confusion_matrix`; segmentation: `task`, `trained`).
pub(crate) fn write<E: Serialize>(
    dir: &Path,
    report: &Report<'_, E>,
    task: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let mut json = serde_json::json!({
        "status": report.outcome.status(),
        "architecture": report.architecture,
        "labels": report.labels,
        "hyperparameters": report.hyperparameters,
        "images": report.images,
        "history": report.history,
        "best_epoch": report.best_epoch,
        "stopped_early": report.stopped_early,
        "timing": report.timing.to_json(),
    });
    if let Some(map) = json.as_object_mut() {
        map.extend(task);
    }
    write_file(
        &dir.join(METRICS_FILE),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    write_file(
        &dir.join(CURVES_FILE),
        &training_curves(report.history, report.score)?,
    )
}

/// Writes `bytes` to `path`, naming the file on failure.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing `{}`", path.display()))
}
