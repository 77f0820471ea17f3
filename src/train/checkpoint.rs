//! Checkpoints in the checkpoint directory (`/opt/ml/checkpoints`, which SageMaker syncs with
//! S3 and restores when a spot job restarts): the backbone features computed so far and the
//! training state after the last completed epoch.
//!
//! Each is one safetensors file whose metadata holds a JSON description, written beside its
//! final name and renamed, so a file is always whole. Each carries a key (hashes of the data
//! and the backbone, and the hyperparameters that shape the result); a file whose key differs
//! belongs to another job and is ignored, with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::backbone::HeadTensors;
use super::features::FeatureTable;
use super::optimizer::AdamState;
use super::trainer::{Best, EpochMetrics, StateParts};

/// Bumped when the files' layout changes; older files are ignored.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata entry holding the JSON description.
const METADATA_KEY: &str = "wick";
const FEATURES_FILE: &str = "features.safetensors";
const STATE_FILE: &str = "training.safetensors";

/// What a checkpoint must match to be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobKey {
    /// FNV-1a of the image list (paths relative to their channel, sizes, classes) and labels.
    pub data: String,
    /// FNV-1a of the backbone's config and weights file size.
    pub backbone: String,
    /// The hyperparameters that change the trained head (not `epochs` or `patience`, so a
    /// resumed job may be given more epochs).
    pub training: serde_json::Value,
}

/// FNV-1a, 64 bits: a stable hash (std's hasher may change between Rust versions).
#[derive(Debug, Clone)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds bytes, then a separator so that `("ab", "c")` and `("a", "bc")` differ.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The checkpoint directory.
pub struct Checkpoints {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct FeaturesMeta {
    version: u32,
    data: String,
    backbone: String,
    done: usize,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    version: u32,
    key: JobKey,
    step: usize,
    epochs_done: usize,
    best_epoch: Option<usize>,
    best_val_loss: Option<f64>,
    bad_epochs: usize,
    stopped_early: bool,
    history: Vec<EpochMetrics>,
}

impl Checkpoints {
    /// Checkpoints in `dir` (created on the first save).
    pub fn new(dir: &Path) -> Self {
        Checkpoints {
            dir: dir.to_path_buf(),
        }
    }

    /// The path of the checkpoint file `name`.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The saved features for this data and backbone, if any.
    pub fn load_features(
        &self,
        key: &JobKey,
        n: usize,
        num_features: usize,
    ) -> Option<FeatureTable> {
        let path = self.dir.join(FEATURES_FILE);
        let (tensors, meta) = self.read::<FeaturesMeta>(&path)?;
        if meta.version != FORMAT_VERSION || meta.data != key.data || meta.backbone != key.backbone
        {
            tracing::warn!(path = %path.display(), "ignoring cached features of other images or another backbone");
            return None;
        }
        let table = (|| -> Result<FeatureTable> {
            let rows = tensors.get("rows").context("no `rows`")?;
            let readable = tensors.get("readable").context("no `readable`")?;
            if rows.dims() != [n, num_features] || readable.dims() != [n] || meta.done > n {
                bail!(
                    "shapes {:?} / {:?} for {n} images",
                    rows.dims(),
                    readable.dims()
                );
            }
            Ok(FeatureTable {
                num_features,
                done: meta.done,
                rows: rows.flatten_all()?.to_vec1::<f32>()?,
                readable: readable
                    .to_vec1::<u8>()?
                    .into_iter()
                    .map(|r| r == 1)
                    .collect(),
            })
        })();
        table
            .map_err(|err| tracing::warn!(path = %path.display(), %err, "ignoring unusable cached features"))
            .ok()
    }

    /// Saves the features computed so far.
    pub fn save_features(&self, key: &JobKey, table: &FeatureTable) -> Result<()> {
        let n = table.len();
        let rows = Tensor::from_slice(&table.rows, (n, table.num_features), &Device::Cpu)?;
        let readable: Vec<u8> = table.readable.iter().map(|&r| u8::from(r)).collect();
        let readable = Tensor::from_vec(readable, n, &Device::Cpu)?;
        let meta = FeaturesMeta {
            version: FORMAT_VERSION,
            data: key.data.clone(),
            backbone: key.backbone.clone(),
            done: table.done,
        };
        self.write(
            FEATURES_FILE,
            &[("rows", &rows), ("readable", &readable)],
            &meta,
        )
    }

    /// The training state saved by a job with this key, if any.
    pub fn load_state(&self, key: &JobKey) -> Option<StateParts> {
        let path = self.dir.join(STATE_FILE);
        let (tensors, meta) = self.read::<StateMeta>(&path)?;
        if meta.version != FORMAT_VERSION || &meta.key != key {
            tracing::warn!(path = %path.display(), "ignoring a training checkpoint of another job (data, backbone or hyperparameters differ); starting over");
            return None;
        }
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .with_context(|| format!("no `{name}` in {}", path.display()))
        };
        let parts = (|| -> Result<StateParts> {
            let best = match (meta.best_epoch, get("best.weight"), get("best.bias")) {
                (Some(epoch), Ok(weight), Ok(bias)) => Some(Best {
                    epoch,
                    val_loss: meta.best_val_loss,
                    head: HeadTensors { weight, bias },
                }),
                _ => None,
            };
            Ok(StateParts {
                head: HeadTensors {
                    weight: get("head.weight")?,
                    bias: get("head.bias")?,
                },
                optimizer: AdamState {
                    step: meta.step,
                    first_moments: vec![get("adam.m.weight")?, get("adam.m.bias")?],
                    second_moments: vec![get("adam.v.weight")?, get("adam.v.bias")?],
                },
                epochs_done: meta.epochs_done,
                best,
                bad_epochs: meta.bad_epochs,
                history: meta.history,
                stopped_early: meta.stopped_early,
            })
        })();
        parts
            .map_err(|err| tracing::warn!(path = %path.display(), %err, "ignoring an unusable training checkpoint"))
            .ok()
    }

    /// Saves the training state after a completed epoch.
    pub fn save_state(&self, key: &JobKey, parts: &StateParts) -> Result<()> {
        let mut tensors: Vec<(&str, &Tensor)> = vec![
            ("head.weight", &parts.head.weight),
            ("head.bias", &parts.head.bias),
        ];
        let names = [
            ("adam.m.weight", "adam.m.bias"),
            ("adam.v.weight", "adam.v.bias"),
        ];
        for (moments, (w, b)) in [
            &parts.optimizer.first_moments,
            &parts.optimizer.second_moments,
        ]
        .into_iter()
        .zip(names)
        {
            if let [mw, mb] = moments.as_slice() {
                tensors.extend([(w, mw), (b, mb)]);
            }
        }
        if let Some(best) = &parts.best {
            tensors.extend([
                ("best.weight", &best.head.weight),
                ("best.bias", &best.head.bias),
            ]);
        }
        let meta = StateMeta {
            version: FORMAT_VERSION,
            key: key.clone(),
            step: parts.optimizer.step,
            epochs_done: parts.epochs_done,
            best_epoch: parts.best.as_ref().map(|b| b.epoch),
            best_val_loss: parts.best.as_ref().and_then(|b| b.val_loss),
            bad_epochs: parts.bad_epochs,
            stopped_early: parts.stopped_early,
            history: parts.history.clone(),
        };
        self.write(STATE_FILE, &tensors, &meta)
    }

    /// Writes `tensors` and the JSON `meta` to `name`, whole or not at all.
    pub(crate) fn write(
        &self,
        name: &str,
        tensors: &[(&str, &Tensor)],
        meta: &impl Serialize,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| {
            format!("creating the checkpoint directory `{}`", self.dir.display())
        })?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(meta)?)]);
        let contiguous: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| Ok((*n, t.contiguous()?)))
            .collect::<candle_core::Result<_>>()?;
        safetensors::serialize_to_file(
            contiguous.iter().map(|(n, t)| (*n, t)),
            Some(metadata),
            &tmp,
        )
        .map_err(anyhow::Error::from)
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(anyhow::Error::from))
        .with_context(|| format!("writing the checkpoint `{}`", path.display()))
    }

    /// The tensors and description of a checkpoint file; `None` (with a warning unless it is
    /// simply absent) when it cannot be used.
    pub(crate) fn read<M: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Option<(HashMap<String, Tensor>, M)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read a checkpoint; ignoring it");
                return None;
            }
        };
        let parsed = (|| -> Result<(HashMap<String, Tensor>, M)> {
            let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)?;
            let text = metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get(METADATA_KEY))
                .context("no wick metadata")?;
            let meta = serde_json::from_str(text)?;
            let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
            let tensors = tensors
                .into_iter()
                .map(|(k, t)| {
                    let t = if t.dtype() == DType::U8 {
                        t
                    } else {
                        t.to_dtype(DType::F32)?
                    };
                    Ok((k, t))
                })
                .collect::<candle_core::Result<_>>()?;
            Ok((tensors, meta))
        })();
        parsed
            .map_err(|err| tracing::warn!(path = %path.display(), %err, "ignoring an unreadable checkpoint"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u64) -> JobKey {
        JobKey {
            data: Fnv::default().add(b"images").hex(),
            backbone: "b".into(),
            training: serde_json::json!({ "seed": seed }),
        }
    }

    #[test]
    fn features_round_trip_and_other_keys_are_ignored() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path());
        assert!(ck.load_features(&key(1), 3, 2).is_none());
        let mut table = FeatureTable::new(3, 2);
        table.rows = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0];
        table.readable = vec![true, true, false];
        table.done = 2;
        ck.save_features(&key(1), &table)?;
        assert_eq!(ck.load_features(&key(1), 3, 2), Some(table));
        let other = JobKey {
            backbone: "c".into(),
            ..key(1)
        };
        assert!(ck.load_features(&other, 3, 2).is_none());
        assert!(ck.load_features(&key(1), 4, 2).is_none());
        Ok(())
    }

    #[test]
    fn fnv_separates_fields() {
        let a = Fnv::default().add(b"ab").add(b"c").hex();
        let b = Fnv::default().add(b"a").add(b"bc").hex();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
