//! What the job reports in `output/data/`: `metrics.json` (per-epoch history and the final
//! validation metrics), `confusion_matrix.csv` and `training_curves.png` (see `plot.rs`).
//! The final metrics and the matrix are those of the exported (best) head, on the validation
//! images, or on the training images when the job has none.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::dataset::ValidationSource;
use super::hyperparams::Hyperparameters;
use super::plot;
use super::trainer::{EpochMetrics, Evaluation};

/// File names in `output/data/`.
pub const METRICS_FILE: &str = "metrics.json";
/// See [`METRICS_FILE`].
pub const CONFUSION_FILE: &str = "confusion_matrix.csv";
/// See [`METRICS_FILE`].
pub const CURVES_FILE: &str = "training_curves.png";

/// Image counts of the job.
#[derive(Debug, Clone, Serialize)]
pub struct ImageCounts {
    /// Readable training images.
    pub train: usize,
    /// Readable validation images.
    pub validation: usize,
    /// Images skipped because they could not be read.
    pub unreadable: usize,
    /// Where the validation images came from.
    pub validation_source: ValidationSource,
}

/// Time spent, for the log and `docs/performance.md`.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Backbone images per second in the (last) evaluation-transform pass of this run.
    pub feature_images_per_second: Option<f64>,
    /// Mean wall time of one head epoch.
    pub seconds_per_epoch: Option<f64>,
    /// Wall time of the whole job so far (this run).
    pub total_seconds: f64,
}

/// The final evaluation of the exported head.
pub struct Final<'a> {
    /// `validation` or `training`.
    pub split: &'static str,
    /// The split's true classes.
    pub truth: &'a [u32],
    /// The head's numbers on it.
    pub evaluation: &'a Evaluation,
}

/// Everything a report is made of.
pub struct Report<'a> {
    /// `completed` or `stopped`.
    pub status: &'static str,
    /// The backbone's architecture.
    pub architecture: &'a str,
    /// Class names.
    pub labels: &'a [String],
    /// The job's hyperparameters.
    pub hyperparameters: &'a Hyperparameters,
    /// Image counts.
    pub images: ImageCounts,
    /// Every completed epoch.
    pub history: &'a [EpochMetrics],
    /// The epoch of the exported head.
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// The exported head on the validation (or training) images.
    pub last: Option<Final<'a>>,
    /// Time spent.
    pub timing: Timing,
}

#[derive(Serialize)]
struct ClassMetrics<'a> {
    label: &'a str,
    precision: f64,
    recall: f64,
    f1: f64,
    support: usize,
}

/// `matrix[true][predicted]` counts.
pub fn confusion_matrix(classes: usize, truth: &[u32], predicted: &[u32]) -> Vec<Vec<usize>> {
    let mut matrix = vec![vec![0; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if let Some(cell) = matrix
            .get_mut(t as usize)
            .and_then(|row| row.get_mut(p as usize))
        {
            *cell += 1;
        }
    }
    matrix
}

fn per_class<'a>(labels: &'a [String], matrix: &[Vec<usize>]) -> Vec<ClassMetrics<'a>> {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    labels
        .iter()
        .enumerate()
        .map(|(c, label)| {
            let tp = matrix[c][c];
            let support: usize = matrix[c].iter().sum();
            let predicted: usize = matrix.iter().map(|row| row[c]).sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                label,
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// `,`-separated with the label row and column; labels quoted when they need it.
fn confusion_csv(labels: &[String], matrix: &[Vec<usize>]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("true\\predicted");
    for l in labels {
        out.push(',');
        out.push_str(&quote(l));
    }
    out.push('\n');
    for (label, row) in labels.iter().zip(matrix) {
        out.push_str(&quote(label));
        for n in row {
            out.push_str(&format!(",{n}"));
        }
        out.push('\n');
    }
    out
}

/// Writes the three files to `dir`.
pub fn write(dir: &Path, report: &Report<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let classes = report.labels.len();
    let (final_metrics, matrix) = match &report.last {
        Some(last) => {
            let matrix = confusion_matrix(classes, last.truth, &last.evaluation.predicted);
            let metrics = serde_json::json!({
                "split": last.split,
                "loss": last.evaluation.loss,
                "accuracy": last.evaluation.accuracy,
                "per_class": per_class(report.labels, &matrix),
            });
            (Some(metrics), Some(matrix))
        }
        None => (None, None),
    };
    let json = serde_json::json!({
        "status": report.status,
        "architecture": report.architecture,
        "labels": report.labels,
        "hyperparameters": report.hyperparameters,
        "images": report.images,
        "history": report.history,
        "best_epoch": report.best_epoch,
        "stopped_early": report.stopped_early,
        "final": final_metrics,
        "confusion_matrix": matrix.as_ref().map(|m| serde_json::json!({
            "labels": report.labels,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": m,
        })),
        "timing": report.timing,
    });
    write_file(
        &dir.join(METRICS_FILE),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    if let Some(matrix) = &matrix {
        write_file(
            &dir.join(CONFUSION_FILE),
            confusion_csv(report.labels, matrix).as_bytes(),
        )?;
    }
    let png = plot::training_curves(report.history)?;
    write_file(&dir.join(CURVES_FILE), &png)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_and_per_class_metrics() {
        let labels = vec!["a".to_string(), "b,c".to_string()];
        let m = confusion_matrix(2, &[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0]);
        assert_eq!(m, [[1, 1], [1, 2]]);
        let pc = per_class(&labels, &m);
        assert_eq!(
            (pc[1].precision, pc[1].recall, pc[1].support),
            (2.0 / 3.0, 2.0 / 3.0, 3)
        );
        assert_eq!(
            confusion_csv(&labels, &m),
            "true\\predicted,a,\"b,c\"\na,1,1\n\"b,c\",1,2\n"
        );
    }
}
