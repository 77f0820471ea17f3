//! The checkpoint store both trainers use: files in the checkpoint directory
//! (`/opt/ml/checkpoints`, which SageMaker syncs with S3 and restores when a spot job restarts)
//! that let a restarted job resume. What goes in them is each trainer's (`classify/resume.rs`,
//! `segment/resume.rs`); how they are written, read and matched to a job is here.
//!
//! Each is one safetensors file whose metadata holds a JSON description, written whole or not
//! at all (`crate::model::atomic_file`). Each carries a key (hashes of the data and the
//! network, and the hyperparameters that shape the result); a file whose key differs belongs
//! to another job and is ignored, with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::View;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::atomic_file;

/// Bumped when the files' layout changes; older files are ignored.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata entry holding the JSON description.
pub(crate) const METADATA_KEY: &str = "wick";

/// What a checkpoint must match to be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobKey {
    /// FNV-1a of the image list (paths relative to their channel, sizes, classes) and labels.
    pub(crate) data: String,
    /// FNV-1a of the backbone's config and weights file size.
    pub(crate) backbone: String,
    /// The hyperparameters that change the trained head (not `epochs` or `patience`, so a
    /// resumed job may be given more epochs).
    pub(crate) training: serde_json::Value,
}

/// FNV-1a, 64 bits: a stable hash (std's hasher may change between Rust versions).
#[derive(Debug, Clone)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds bytes, then a separator so that `("ab", "c")` and `("a", "bc")` differ.
    pub(crate) fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The hash as 16 hex digits.
    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The checkpoint directory.
pub(crate) struct Checkpoints {
    dir: PathBuf,
}

/// A checkpoint file and what its warnings say when it cannot be used.
pub(crate) struct CheckpointFile {
    /// File name in the checkpoint directory.
    pub(crate) name: &'static str,
    /// The warning when the file belongs to another job.
    pub(crate) other_job: &'static str,
    /// The warning when the file is this job's but cannot be parsed.
    pub(crate) unusable: &'static str,
}

impl Checkpoints {
    /// Checkpoints in `dir` (created on the first save).
    pub(crate) fn new(dir: &Path) -> Self {
        Checkpoints {
            dir: dir.to_path_buf(),
        }
    }

    /// The path of the checkpoint file `name`.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The state in `file` when it belongs to this job: `belongs` checks its description,
    /// `parse` turns its tensors and description into the state. An absent file is `None`; a
    /// file of another job or an unusable one is `None` with a warning.
    pub(crate) fn load<M: DeserializeOwned, T>(
        &self,
        file: &CheckpointFile,
        belongs: impl FnOnce(&M) -> bool,
        parse: impl FnOnce(HashMap<String, Tensor>, M) -> Result<T>,
    ) -> Option<T> {
        let path = self.file(file.name);
        let (tensors, meta) = self.read::<M>(&path)?;
        if !belongs(&meta) {
            tracing::warn!(path = %path.display(), "{}", file.other_job);
            return None;
        }
        parse(tensors, meta)
            .map_err(|err| tracing::warn!(path = %path.display(), %err, "{}", file.unusable))
            .ok()
    }

    /// Writes `tensors` and the JSON `meta` to `name`, whole or not at all.
    pub(crate) fn write(
        &self,
        name: &str,
        tensors: &[(&str, &Tensor)],
        meta: &impl Serialize,
    ) -> Result<()> {
        let contiguous: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| Ok((*n, t.contiguous()?)))
            .collect::<candle_core::Result<_>>()?;
        self.write_views(name, contiguous.iter().map(|(n, t)| (*n, t)), meta)
    }

    /// Writes safetensors `views` (tensors, or buffers written as they are) and the JSON
    /// `meta` to `name`, whole or not at all.
    pub(crate) fn write_views<S, V>(
        &self,
        name: &str,
        views: impl IntoIterator<Item = (S, V)>,
        meta: &impl Serialize,
    ) -> Result<()>
    where
        S: AsRef<str> + Ord + std::fmt::Display,
        V: View,
    {
        std::fs::create_dir_all(&self.dir).with_context(|| {
            format!("creating the checkpoint directory `{}`", self.dir.display())
        })?;
        let path = self.dir.join(name);
        let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(meta)?)]);
        atomic_file::write(
            &path,
            |tmp| {
                safetensors::serialize_to_file(views, Some(metadata), tmp)
                    .map_err(anyhow::Error::from)
            },
            anyhow::Error::from,
        )
        .with_context(|| format!("writing the checkpoint `{}`", path.display()))
    }

    /// The tensors and description of a checkpoint file; `None` (with a warning unless it is
    /// simply absent) when it cannot be used.
    fn read<M: DeserializeOwned>(&self, path: &Path) -> Option<(HashMap<String, Tensor>, M)> {
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

    #[test]
    fn fnv_separates_fields() {
        let a = Fnv::default().add(b"ab").add(b"c").hex();
        let b = Fnv::default().add(b"a").add(b"bc").hex();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
