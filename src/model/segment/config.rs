//! The `segmentation` section of a package's `config.json`: how an image is sized and tiled
//! for the network and the default binary threshold. See `docs/model-package.md`.

use serde::Deserialize;

use super::tiling::TilePadding;
use crate::model::package::{Package, PackageError};

/// Default tile side in pixels: the size the building-footprint models are trained on and
/// small enough that ResNet-50 activations stay around 1 GB at most.
pub(crate) const DEFAULT_TILE_SIZE: usize = 512;
/// Default overlap between neighbouring tiles, in pixels.
pub(crate) const DEFAULT_TILE_OVERLAP: usize = 128;
/// Default binary threshold on the sigmoid probability.
pub(crate) const DEFAULT_THRESHOLD: f32 = 0.5;
/// Smallest tile side accepted: below it dilated backbones see mostly padding.
pub(crate) const MIN_TILE_SIZE: usize = 64;
/// Largest tile side accepted (activations grow with its square).
pub(crate) const MAX_TILE_SIZE: usize = 2048;

/// The raw JSON section, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmentationConfig {
    resize_shorter_side: Option<usize>,
    resize_to: Option<[usize; 2]>,
    tile_size: Option<usize>,
    tile_overlap: Option<usize>,
    threshold: Option<f32>,
    padding: Option<TilePadding>,
}

/// How [`Segmenter::segment`](super::segmenter::Segmenter::segment) prepares an image,
/// validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SegmentationConfig {
    /// Resize the image so its shorter side has this many pixels before the network (the
    /// torchvision presets use 520); `None` runs at the image's own resolution.
    pub(crate) resize_shorter_side: Option<usize>,
    /// Resize the image to exactly `(height, width)` (squashed, as transformers' image
    /// processors do) before the network; exclusive with `resize_shorter_side`.
    pub(crate) resize_to: Option<(usize, usize)>,
    /// Largest square the network runs on at once; bigger images are tiled.
    pub(crate) tile_size: usize,
    /// Pixels shared by neighbouring tiles, blended with linear weights.
    pub(crate) tile_overlap: usize,
    /// Default sigmoid threshold of a binary model.
    pub(crate) threshold: f32,
    /// Per-channel mean of the `/255` pixels (`pretrained_cfg.mean`, ImageNet by default).
    pub(crate) mean: [f32; 3],
    /// Per-channel standard deviation (`pretrained_cfg.std`).
    pub(crate) std: [f32; 3],
    /// What pads a tile up to the network's size multiple.
    pub(crate) padding: TilePadding,
}

/// A threshold must be a probability strictly between 0 and 1.
pub(crate) fn check_threshold(field: &'static str, t: f32) -> Result<f32, PackageError> {
    if t.is_finite() && t > 0.0 && t < 1.0 {
        Ok(t)
    } else {
        Err(PackageError::InvalidField {
            field,
            message: "must be a probability strictly between 0 and 1".into(),
            value: t.to_string(),
        })
    }
}

impl SegmentationConfig {
    /// The size the network sees for a `width x height` image: `resize_to`, or the shorter
    /// side set to `resize_shorter_side`, or the image's own.
    pub(crate) fn working_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize_to {
            Some((h, w)) => (w as u32, h as u32),
            None => shorter_side_size(width, height, self.resize_shorter_side),
        }
    }

    /// Reads `config.json`'s `segmentation` section (absent = defaults) and the normalisation
    /// of `pretrained_cfg`.
    pub(crate) fn from_package(package: &Package) -> Result<Self, PackageError> {
        let raw: RawSegmentationConfig = match package.config.extra.get("segmentation") {
            None => RawSegmentationConfig::default(),
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| PackageError::InvalidField {
                    field: "segmentation",
                    message: e.to_string(),
                    value: value.to_string(),
                })?
            }
        };
        let preprocess = package.preprocess_config()?;
        let tile_size = raw.tile_size.unwrap_or(DEFAULT_TILE_SIZE);
        if !(MIN_TILE_SIZE..=MAX_TILE_SIZE).contains(&tile_size) {
            return Err(PackageError::InvalidField {
                field: "segmentation.tile_size",
                message: format!("must be between {MIN_TILE_SIZE} and {MAX_TILE_SIZE} pixels"),
                value: tile_size.to_string(),
            });
        }
        let tile_overlap = raw.tile_overlap.unwrap_or(DEFAULT_TILE_OVERLAP);
        if tile_overlap * 2 > tile_size {
            return Err(PackageError::InvalidField {
                field: "segmentation.tile_overlap",
                message: format!("must be at most half the tile size ({tile_size})"),
                value: tile_overlap.to_string(),
            });
        }
        if let Some(side) = raw.resize_shorter_side {
            if !(1..=MAX_TILE_SIZE * 4).contains(&side) {
                return Err(PackageError::InvalidField {
                    field: "segmentation.resize_shorter_side",
                    message: format!("must be between 1 and {} pixels", MAX_TILE_SIZE * 4),
                    value: side.to_string(),
                });
            }
        }
        let resize_to = match raw.resize_to {
            Some(_) if raw.resize_shorter_side.is_some() => {
                return Err(PackageError::InvalidField {
                    field: "segmentation.resize_to",
                    message: "give either resize_to or resize_shorter_side, not both".into(),
                    value: format!("{:?}", raw.resize_to),
                })
            }
            Some([h, w])
                if !(1..=MAX_TILE_SIZE).contains(&h) || !(1..=MAX_TILE_SIZE).contains(&w) =>
            {
                return Err(PackageError::InvalidField {
                    field: "segmentation.resize_to",
                    message: format!(
                        "[height, width] must each be between 1 and {MAX_TILE_SIZE} pixels"
                    ),
                    value: format!("[{h}, {w}]"),
                })
            }
            Some([h, w]) => Some((h, w)),
            None => None,
        };
        let threshold = check_threshold(
            "segmentation.threshold",
            raw.threshold.unwrap_or(DEFAULT_THRESHOLD),
        )?;
        Ok(SegmentationConfig {
            resize_shorter_side: raw.resize_shorter_side,
            resize_to,
            tile_size,
            tile_overlap,
            threshold,
            mean: preprocess.mean,
            std: preprocess.std,
            padding: raw.padding.unwrap_or_default(),
        })
    }
}

/// The size the network sees: the image's own, or (`resize_shorter_side`) the shorter side
/// set to `side` and the longer one scaled and truncated, as torchvision's `Resize(int)`.
fn shorter_side_size(width: u32, height: u32, side: Option<usize>) -> (u32, u32) {
    let Some(side) = side else {
        return (width, height);
    };
    let (w, h) = (u64::from(width), u64::from(height));
    let short = w.min(h);
    if short == side as u64 {
        return (width, height);
    }
    let long = ((side as u64 * w.max(h)) as f64 / short as f64).max(1.0) as u32;
    if w <= h {
        (side as u32, long)
    } else {
        (long, side as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(segmentation: &serde_json::Value) -> Result<SegmentationConfig, PackageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = serde_json::json!({
            "architecture": "segformer_b0",
            "task": "segmentation",
            "num_classes": 3,
            "segmentation": segmentation,
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("writes");
        std::fs::write(dir.path().join("model.safetensors"), b"").expect("writes");
        SegmentationConfig::from_package(&Package::open(dir.path()).expect("package"))
    }

    #[test]
    fn the_working_size_follows_the_configured_resize() {
        let squash = config(&serde_json::json!({"resize_to": [512, 256]})).expect("valid");
        assert_eq!(squash.working_size(1000, 300), (256, 512), "width x height");
        let shorter = config(&serde_json::json!({"resize_shorter_side": 150})).expect("valid");
        assert_eq!(shorter.working_size(1000, 300), (500, 150));
        let native = config(&serde_json::json!({})).expect("valid");
        assert_eq!(native.working_size(1000, 300), (1000, 300));
    }

    #[test]
    fn a_bad_resize_to_is_refused_by_name() {
        for (section, needle) in [
            (
                serde_json::json!({"resize_to": [512, 512], "resize_shorter_side": 520}),
                "not both",
            ),
            (serde_json::json!({"resize_to": [0, 512]}), "[0, 512]"),
            (serde_json::json!({"resize_to": [512, 9000]}), "2048"),
        ] {
            let err = config(&section).expect_err("refused").to_string();
            assert!(
                err.contains("segmentation.resize_to") && err.contains(needle),
                "{section}: {err}"
            );
        }
        let err = config(&serde_json::json!({"resize_to": [512]}))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("segmentation"), "{err}");
    }
}
