//! The backbone pass: image files → pooled features, batch by batch, decoding in parallel.
//!
//! With the evaluation transform the pass runs once per image and its table is cached (in the
//! checkpoint directory, by the caller), so the head trains for many epochs on features alone.
//! With `augment=true` the training images go through a random crop and flip every epoch and
//! the pass is repeated. An image that cannot be read or decoded is marked unreadable (its row
//! stays zero) and counted; the caller decides when too many fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Tensor;
use image::RgbImage;
use rayon::prelude::*;

use super::backbone::Backbone;
use crate::model::preprocess::{decode, preprocess, to_batch, DecodeLimits, PreprocessConfig};
use crate::train::progress::Progress;
use crate::train::rng::{Rng, Stream};
use crate::train::stop::StopFlag;

/// Images decoded and run through the backbone together.
pub(crate) const FEATURE_BATCH: usize = 16;
/// How often a long pass hands its partial table to the caller to persist.
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// Random crops keep this share of the image area at least (timm uses 0.08 for training from
/// scratch; a frozen backbone's head needs the object in view).
const MIN_CROP_AREA: f64 = 0.35;
/// Random crops have an aspect ratio between 3/4 and 4/3, as torchvision's RandomResizedCrop.
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// Features of a list of images, possibly partly computed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeatureTable {
    /// Width of one row.
    pub(crate) num_features: usize,
    /// Rows `0..done` are computed.
    pub(crate) done: usize,
    /// `n * num_features` values, row-major; unreadable and not-yet-computed rows are zero.
    pub(crate) rows: Vec<f32>,
    /// Whether each image could be read (meaningful for rows `0..done`).
    pub(crate) readable: Vec<bool>,
}

/// An image the pass could not use.
#[derive(Debug, Clone)]
pub(crate) struct Unreadable {
    /// The file.
    pub(crate) path: PathBuf,
    /// Why.
    pub(crate) cause: String,
}

impl FeatureTable {
    /// An empty table for `n` images.
    pub(crate) fn new(n: usize, num_features: usize) -> Self {
        FeatureTable {
            num_features,
            done: 0,
            rows: vec![0.0; n * num_features],
            readable: vec![false; n],
        }
    }

    /// Number of images.
    pub(crate) fn len(&self) -> usize {
        self.readable.len()
    }

    /// Whether every row is computed.
    pub(crate) fn is_complete(&self) -> bool {
        self.done == self.len()
    }

    /// The readable rows among `range`, as `(rows, n)` features plus their table indices.
    pub(crate) fn gather(&self, range: std::ops::Range<usize>) -> Result<(Tensor, Vec<usize>)> {
        let f = self.num_features;
        let kept: Vec<usize> = range.filter(|&i| self.readable[i]).collect();
        let mut data = Vec::with_capacity(kept.len() * f);
        for &i in &kept {
            data.extend_from_slice(&self.rows[i * f..(i + 1) * f]);
        }
        let tensor = Tensor::from_vec(data, (kept.len(), f), &candle_core::Device::Cpu)?;
        Ok((tensor, kept))
    }
}

/// Which transform images go through before the backbone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transform {
    /// The package's evaluation transform (resize, centre crop).
    Eval,
    /// A random crop and flip seeded by `(seed, epoch, image)`, then a resize to the input.
    Augment {
        /// The job's seed.
        seed: u64,
        /// The epoch (1-based).
        epoch: usize,
    },
}

/// One pass: which images, how, and what to skip.
pub(crate) struct Pass<'a> {
    /// Shown in the progress bar and logs.
    pub(crate) label: &'static str,
    /// The image files, in table order.
    pub(crate) paths: &'a [&'a Path],
    /// The transform.
    pub(crate) transform: Transform,
    /// Images already known to be unreadable (skipped without a retry).
    pub(crate) skip: Option<&'a [bool]>,
}

/// Fills `table` from row `table.done` on. Returns whether every row is done (`false`: a stop
/// was requested and the table holds what was computed) and the images this call could not
/// read. `save` receives the partial table every [`SAVE_EVERY`] and on a stop.
pub(crate) fn extract(
    backbone: &Backbone,
    pass: &Pass<'_>,
    table: &mut FeatureTable,
    stop: &StopFlag,
    save: &mut dyn FnMut(&FeatureTable) -> Result<()>,
) -> Result<(bool, Vec<Unreadable>)> {
    let mut unreadable = Vec::new();
    let mut progress = Progress::new(pass.label, "images", table.len(), table.done);
    let mut last_save = Instant::now();
    while table.done < table.len() {
        if stop.is_set() {
            progress.finish();
            save(table)?;
            return Ok((false, unreadable));
        }
        let start = table.done;
        let end = (start + FEATURE_BATCH).min(table.len());
        unreadable.extend(extract_batch(backbone, pass, table, start..end)?);
        table.done = end;
        progress.advance(end - start);
        if last_save.elapsed() >= SAVE_EVERY && !table.is_complete() {
            save(table)?;
            last_save = Instant::now();
        }
    }
    progress.finish();
    tracing::info!(
        pass = pass.label,
        images = table.len(),
        images_per_second = format!("{:.1}", progress.rate()),
        "backbone pass done"
    );
    Ok((true, unreadable))
}

/// Rows `batch` of `table`: the images decoded and transformed in parallel, the readable ones
/// run through the backbone together. Returns the images this batch could not read.
fn extract_batch(
    backbone: &Backbone,
    pass: &Pass<'_>,
    table: &mut FeatureTable,
    batch: std::ops::Range<usize>,
) -> Result<Vec<Unreadable>> {
    let (f, start) = (table.num_features, batch.start);
    let limits = DecodeLimits::default();
    let mut unreadable = Vec::new();
    let inputs: Vec<Option<Result<Vec<f32>, String>>> = batch
        .into_par_iter()
        .map(|i| {
            if pass.skip.is_some_and(|s| !s[i]) {
                return None;
            }
            Some(prepare(
                pass.paths[i],
                i,
                pass.transform,
                backbone.preprocess(),
                &limits,
            ))
        })
        .collect();
    let ready: Vec<Vec<f32>> = inputs
        .iter()
        .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().ok()).cloned())
        .collect();
    let mut rows = if ready.is_empty() {
        Vec::new()
    } else {
        let batch = to_batch(&ready, backbone.preprocess())?;
        backbone.features(&batch)?.flatten_all()?.to_vec1::<f32>()?
    }
    .into_iter();
    for (offset, input) in inputs.into_iter().enumerate() {
        let i = start + offset;
        match input {
            Some(Ok(_)) => {
                for v in &mut table.rows[i * f..(i + 1) * f] {
                    *v = rows.next().unwrap_or(0.0);
                }
                table.readable[i] = true;
            }
            Some(Err(cause)) => {
                tracing::warn!(path = %pass.paths[i].display(), %cause, "skipping an unreadable image");
                table.readable[i] = false;
                unreadable.push(Unreadable {
                    path: pass.paths[i].to_path_buf(),
                    cause,
                });
            }
            None => table.readable[i] = false,
        }
    }
    Ok(unreadable)
}

/// Reads, decodes and transforms image `index`.
fn prepare(
    path: &Path,
    index: usize,
    transform: Transform,
    cfg: &PreprocessConfig,
    limits: &DecodeLimits,
) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let image = decode(&bytes, limits).map_err(|e| e.to_string())?;
    let result = match transform {
        Transform::Eval => preprocess(&image, cfg),
        Transform::Augment { seed, epoch } => {
            let mut rng = Rng::for_stream(seed, Stream::Augment, &[epoch as u64, index as u64]);
            let cropped = random_crop_flip(&image, &mut rng);
            // The crop is the augmentation: resize it to the input without another crop margin.
            let resize_only = PreprocessConfig {
                crop_pct: 1.0,
                ..cfg.clone()
            };
            preprocess(&cropped, &resize_only)
        }
    };
    result.map_err(|e| e.to_string())
}

/// torchvision's RandomResizedCrop box choice (scale [`MIN_CROP_AREA`]..1, ratio
/// [`CROP_RATIO`], ten tries then the whole image) and a horizontal flip half of the time.
fn random_crop_flip(image: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    let area = w * h;
    let mut cropped = None;
    for _ in 0..10 {
        let scale = rng.uniform(MIN_CROP_AREA, 1.0);
        let ratio = rng.uniform(CROP_RATIO.0.ln(), CROP_RATIO.1.ln()).exp();
        let cw = (area * scale * ratio).sqrt().round();
        let ch = (area * scale / ratio).sqrt().round();
        if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
            let x = rng.below((w - cw) as usize + 1) as u32;
            let y = rng.below((h - ch) as usize + 1) as u32;
            cropped = Some(image::imageops::crop_imm(image, x, y, cw as u32, ch as u32).to_image());
            break;
        }
    }
    let cropped = cropped.unwrap_or_else(|| image.clone());
    if rng.next_f64() < 0.5 {
        image::imageops::flip_horizontal(&cropped)
    } else {
        cropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_crops_stay_inside_and_repeat_with_the_seed() {
        let image = RgbImage::from_fn(120, 80, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let crop = |epoch| {
            let mut rng = Rng::for_stream(5, Stream::Augment, &[epoch, 3]);
            random_crop_flip(&image, &mut rng)
        };
        let (a, b, c) = (crop(1), crop(1), crop(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        for img in [&a, &c] {
            let share = f64::from(img.width() * img.height()) / (120.0 * 80.0);
            assert!((MIN_CROP_AREA - 0.02..=1.0).contains(&share), "{share}");
        }
    }

    #[test]
    fn gather_keeps_readable_rows_in_order() -> Result<()> {
        let mut table = FeatureTable::new(3, 2);
        table.rows = vec![1.0, 2.0, 0.0, 0.0, 5.0, 6.0];
        table.readable = vec![true, false, true];
        table.done = 3;
        let (x, kept) = table.gather(0..3)?;
        assert_eq!(kept, [0, 2]);
        assert_eq!(x.to_vec2::<f32>()?, [[1.0, 2.0], [5.0, 6.0]]);
        Ok(())
    }
}
