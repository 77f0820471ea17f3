//! What a segmentation job reports in `output/data/`: `metrics.json` (history, the best
//! epoch's per-class IoU), `training_curves.png` (loss and mean IoU, `plot.rs`), and for a few
//! validation images `overlays/<stem>.png`: the image | its ground truth | the prediction,
//! side by side at the training resolution, in the VOC palette (ignored pixels in VOC's
//! near-white "void" colour).

use std::path::Path;

use anyhow::{Context, Result};
use image::{imageops, Rgb, RgbImage};
use serde::Serialize;

use super::data::IGNORED;
use super::fit::SegEpoch;
use super::loss::Scores;
use crate::render::{encode_png, voc_palette};
use crate::train::dataset::ValidationSource;
use crate::train::hyperparams::Hyperparameters;
use crate::train::plot::{curves, PanelData};
use crate::train::report::{CURVES_FILE, METRICS_FILE};

/// Sub-directory of the overlays.
pub const OVERLAYS_DIR: &str = "overlays";
/// Validation images drawn.
pub const MAX_OVERLAYS: usize = 4;

/// Image counts.
#[derive(Debug, Clone, Serialize)]
pub struct SegImageCounts {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub validation: usize,
    /// Where they came from.
    pub validation_source: ValidationSource,
    /// Whether each training image was also used mirrored.
    pub augmented: bool,
}

/// Time spent.
#[derive(Debug, Clone, Serialize)]
pub struct SegTiming {
    /// Encoder images per second (`None`: the features came from the checkpoint).
    pub encoder_images_per_second: Option<f64>,
    /// Mean wall time of a decoder epoch.
    pub seconds_per_epoch: Option<f64>,
    /// Wall time of the job.
    pub total_seconds: f64,
}

/// Everything the report shows.
pub struct SegReport<'a> {
    /// `completed` or `stopped`.
    pub status: &'static str,
    /// The trained network.
    pub architecture: &'a str,
    /// What trained.
    pub trained: &'static str,
    /// Class names.
    pub labels: &'a [String],
    /// The hyperparameters.
    pub hyperparameters: &'a Hyperparameters,
    /// Image counts.
    pub images: SegImageCounts,
    /// Every epoch.
    pub history: &'a [SegEpoch],
    /// Epoch of the exported decoder.
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// The exported decoder on the validation (or training) images.
    pub last: Option<(&'static str, f64, &'a Scores)>,
    /// Time spent.
    pub timing: SegTiming,
}

/// Writes `metrics.json` and the curves.
pub fn write(dir: &Path, r: &SegReport<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let last = r.last.map(|(split, loss, scores)| {
        serde_json::json!({
            "split": split,
            "loss": loss,
            "pixel_accuracy": scores.pixel_accuracy,
            "mean_iou": scores.mean_iou,
            "per_class_iou": r.labels.iter().zip(&scores.iou).map(|(label, iou)| {
                serde_json::json!({"label": label, "iou": iou})
            }).collect::<Vec<_>>(),
        })
    });
    let json = serde_json::json!({
        "status": r.status,
        "task": "segmentation",
        "architecture": r.architecture,
        "trained": r.trained,
        "labels": r.labels,
        "hyperparameters": r.hyperparameters,
        "images": r.images,
        "history": r.history,
        "best_epoch": r.best_epoch,
        "stopped_early": r.stopped_early,
        "final": last,
        "timing": r.timing,
    });
    let path = dir.join(METRICS_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing `{}`", path.display()))?;
    let series = |f: fn(&SegEpoch) -> Option<f64>| -> Vec<(f64, f64)> {
        r.history
            .iter()
            .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
            .collect()
    };
    let png = curves(&[
        PanelData {
            title: "loss",
            train: series(|m| Some(m.train_loss)),
            val: series(|m| m.val_loss),
            y_range: None,
        },
        PanelData {
            title: "mean iou",
            train: series(|m| Some(m.train_mean_iou)),
            val: series(|m| m.val_mean_iou),
            y_range: Some((0.0, 1.0)),
        },
    ])?;
    let path = dir.join(CURVES_FILE);
    std::fs::write(&path, png).with_context(|| format!("writing `{}`", path.display()))
}

/// Colours a class map (`IGNORED` in VOC's void colour).
fn colour(classes: &[u8], (h, w): (usize, usize)) -> RgbImage {
    let palette = voc_palette();
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let c = classes[y as usize * w + x as usize];
        Rgb(palette[usize::from(if c == IGNORED { 255 } else { c })])
    })
}

/// `overlays/<stem>.png`: `image` (resized to the training size) | `truth` | `predicted`.
pub fn write_overlay(
    dir: &Path,
    stem: &str,
    image: &RgbImage,
    truth: &[u8],
    predicted: &[u8],
    size: (usize, usize),
) -> Result<()> {
    let (h, w) = size;
    let dir = dir.join(OVERLAYS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let resized = imageops::resize(image, w as u32, h as u32, imageops::FilterType::Triangle);
    let mut canvas = RgbImage::new(3 * w as u32, h as u32);
    imageops::replace(&mut canvas, &resized, 0, 0);
    imageops::replace(&mut canvas, &colour(truth, size), w as i64, 0);
    imageops::replace(&mut canvas, &colour(predicted, size), 2 * w as i64, 0);
    let path = dir.join(format!("{stem}.png"));
    std::fs::write(&path, encode_png(&canvas)?)
        .with_context(|| format!("writing `{}`", path.display()))
}
