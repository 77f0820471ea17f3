//! What a classification job reports in `output/data/`: the shared `metrics.json` and
//! `training_curves.png` (`train/report.rs`) with the final accuracy and per-class precision,
//! recall and F1, plus `confusion_matrix.csv`. The final metrics and the matrix are those of the
//! exported (best) head, on the validation images, or on the training images when the job has
//! none.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::head::{EpochMetrics, Evaluation};
use crate::train::report::{self as shared, write_file, Report};

/// The confusion matrix's file name in `output/data/`.
pub(crate) const CONFUSION_FILE: &str = "confusion_matrix.csv";

/// The final evaluation of the exported head.
pub(crate) struct Final<'a> {
    /// `validation` or `training`.
    pub(crate) split: &'static str,
    /// The split's true classes.
    pub(crate) truth: &'a [u32],
    /// The head's numbers on it.
    pub(crate) evaluation: &'a Evaluation,
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
pub(crate) fn confusion_matrix(
    classes: usize,
    truth: &[u32],
    predicted: &[u32],
) -> Vec<Vec<usize>> {
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

/// Writes `metrics.json` and `training_curves.png` (`report`, with the final accuracy and
/// per-class metrics of `last`) and `confusion_matrix.csv` to `dir`.
pub(crate) fn write(
    dir: &Path,
    report: &Report<'_, EpochMetrics>,
    last: Option<&Final<'_>>,
) -> Result<()> {
    let classes = report.labels.len();
    let (final_metrics, matrix) = match last {
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
    let confusion = matrix.as_ref().map(|m| {
        serde_json::json!({
            "labels": report.labels,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": m,
        })
    });
    let task = serde_json::Map::from_iter([
        ("final".to_string(), serde_json::json!(final_metrics)),
        ("confusion_matrix".to_string(), serde_json::json!(confusion)),
    ]);
    shared::write(dir, report, task)?;
    if let Some(matrix) = &matrix {
        write_file(
            &dir.join(CONFUSION_FILE),
            confusion_csv(report.labels, matrix).as_bytes(),
        )?;
    }
    Ok(())
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

    /// The classification curves (loss, accuracy) through the shared plot.
    #[test]
    fn curves_are_a_png_of_the_declared_size() -> Result<()> {
        use crate::render::plot::{HEIGHT, TRAIN, VALIDATION, WIDTH};
        use crate::train::report::training_curves;
        use image::ImageFormat;

        let history: Vec<EpochMetrics> = (1..=12)
            .map(|epoch| EpochMetrics {
                epoch,
                train_loss: 1.0 / epoch as f64,
                train_accuracy: 1.0 - 0.5 / epoch as f64,
                val_loss: Some(1.2 / epoch as f64),
                val_accuracy: Some(1.0 - 0.6 / epoch as f64),
                seconds: 0.01,
            })
            .collect();
        for h in [&history[..], &history[..1], &[]] {
            let png = training_curves(h, "accuracy")?;
            let img = image::load_from_memory_with_format(&png, ImageFormat::Png)?.to_rgb8();
            assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        }
        let img = image::load_from_memory(&training_curves(&history, "accuracy")?)?.to_rgb8();
        assert!(img.pixels().any(|p| *p == TRAIN) && img.pixels().any(|p| *p == VALIDATION));
        Ok(())
    }
}
