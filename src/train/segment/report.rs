//! What a segmentation job reports in `output/data/`: the shared `metrics.json` and
//! `training_curves.png` (`train/report.rs`: loss and mean IoU) with the best epoch's
//! per-class IoU, and for a few validation images `overlays/<stem>.png`: the image | its
//! ground truth | the prediction, side by side at the training resolution
//! (`crate::render::overlay`).

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;

use super::dataset::{Sample, IGNORED};
use super::features::{read_image, FeatureCache};
use super::fit::EpochMetrics;
use super::loss::Scores;
use crate::render::{encode_png, training_overlay};
use crate::train::report::{self as shared, write_file, Report};

/// Sub-directory of the overlays.
pub(crate) const OVERLAYS_DIR: &str = "overlays";
/// Validation images drawn.
pub(crate) const MAX_OVERLAYS: usize = 4;

/// Writes `metrics.json` (`report`, with what `trained` and the per-class IoU of `last`: the
/// split, its loss and scores) and the curves.
pub(crate) fn write(
    dir: &Path,
    report: &Report<'_, EpochMetrics>,
    trained: &'static str,
    last: Option<(&'static str, f64, &Scores)>,
) -> Result<()> {
    let last = last.map(|(split, loss, scores)| {
        serde_json::json!({
            "split": split,
            "loss": loss,
            "pixel_accuracy": scores.pixel_accuracy,
            "mean_iou": scores.mean_iou,
            "per_class_iou": report.labels.iter().zip(&scores.iou).map(|(label, iou)| {
                serde_json::json!({"label": label, "iou": iou})
            }).collect::<Vec<_>>(),
        })
    });
    let task = serde_json::Map::from_iter([
        ("final".to_string(), serde_json::json!(last)),
        ("task".to_string(), serde_json::json!("segmentation")),
        ("trained".to_string(), serde_json::json!(trained)),
    ]);
    shared::write(dir, report, task)
}

/// `overlays/<stem>.png`: `image` (resized to the training size) | `truth` | `predicted`.
fn write_overlay(
    dir: &Path,
    stem: &str,
    image: &RgbImage,
    (truth, predicted): (&[u8], &[u8]),
    size: (usize, usize),
) -> Result<()> {
    let dir = dir.join(OVERLAYS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let picture = training_overlay(image, (truth, predicted), size, IGNORED);
    write_file(&dir.join(format!("{stem}.png")), &encode_png(&picture)?)
}

/// The final split's items and the best decoder's labels for them.
#[derive(Clone, Copy)]
pub(crate) struct Evaluated<'a> {
    /// The split's samples.
    pub(crate) samples: &'a [Sample],
    /// Their cached items.
    pub(crate) cache: &'a FeatureCache,
    /// Cache items per sample (2 when each training image is cached mirrored too).
    pub(crate) stride: usize,
    /// Every item's predicted label map, item after item.
    pub(crate) predicted: &'a [u8],
    /// Training resolution `(h, w)`.
    pub(crate) size: (usize, usize),
}

/// `overlays/<stem>.png` for the first [`MAX_OVERLAYS`] final images: the image, its ground
/// truth and the prediction side by side.
pub(crate) fn write_overlays(dir: &Path, final_split: &Evaluated<'_>) -> Result<()> {
    let Evaluated {
        samples,
        cache,
        stride,
        predicted,
        size,
    } = *final_split;
    let pixels = size.0 * size.1;
    for (i, sample) in samples.iter().take(MAX_OVERLAYS).enumerate() {
        let item = i * stride;
        let stem = sample
            .image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        write_overlay(
            dir,
            &stem,
            &read_image(&sample.image)?,
            (
                &cache.targets(&[item], pixels),
                &predicted[item * pixels..(item + 1) * pixels],
            ),
            size,
        )
        .with_context(|| format!("drawing the overlay of `{}`", sample.image.display()))?;
    }
    Ok(())
}
