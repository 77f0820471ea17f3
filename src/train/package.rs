//! Writing the trained model package, the same way for both trainers: `model.safetensors` and
//! `config.json` in the model directory, each whole or not at all
//! (`crate::model::atomic_file`). What goes in them is each trainer's
//! (`classify/backbone.rs`, `segment/base.rs`); both load the written package back and check
//! it against the trainer before the job reports success.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::atomic_file;
use crate::model::package::PackageConfig;
use crate::model::weights::Weights;

/// Weights file name of a written package.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";

/// Largest logit difference tolerated between the trainer and the reloaded package (both f32,
/// same kernels; only a packaging bug could move them further).
pub(crate) const MAX_RELOAD_DIFFERENCE: f32 = 1e-3;

/// Writes `weights` as `model.safetensors` and `config` as `config.json` to `dir`.
pub(crate) fn write(dir: &Path, weights: &Weights, config: &PackageConfig) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    weights.save_safetensors(&dir.join(WEIGHTS_FILE))?;
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config)? + "\n";
    atomic_file::write(&path, |tmp| std::fs::write(tmp, &text), |e| e)
        .with_context(|| format!("writing `{}`", path.display()))
}
