//! Resuming a segmentation job after SIGTERM or a spot interruption, from the checkpoint
//! directory (`/opt/ml/checkpoints`, which SageMaker syncs with S3 and restores on restart):
//! the feature cache, written once the encoder pass is done, and the training state after every
//! completed epoch (the trained decoder tensors, AdamW's moments, the best decoder so far, the
//! history). A restarted job with the same data, base package and hyperparameters skips the
//! encoder pass and continues after the last saved epoch, ending where an uninterrupted run ends
//! (shuffles are a function of seed and epoch; the decoder's ops sum in a fixed order). A stop
//! during the encoder pass saves nothing: the pass runs again.
//!
//! Both files go through the checkpoint store both trainers use (`train/checkpoint.rs`). The
//! feature cache can take most of the memory, so it is written from and read into its own
//! buffers (no copy).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use safetensors::{Dtype, View};
use serde::{Deserialize, Serialize};

use super::base::BaseModel;
use super::dataset::Dataset;
use super::features::FeatureCache;
use super::fit::{Best, EpochMetrics, State};
use super::loss::Scores;
use crate::train::checkpoint::{
    CheckpointFile, Checkpoints, Fnv, JobKey, FORMAT_VERSION, METADATA_KEY,
};
use crate::train::hyperparams::Hyperparameters;
use crate::train::job::JobLayout;
use crate::train::optimizer::AdamState;

const FEATURES_FILE: &str = "segmentation-features.safetensors";
const STATE: CheckpointFile = CheckpointFile {
    name: "segmentation-training.safetensors",
    other_job: "ignoring a training checkpoint of another job (data, base package or hyperparameters differ); starting over",
    unusable: "ignoring an unusable training checkpoint",
};
/// The splits of the feature file, in order.
const SPLITS: [&str; 2] = ["train", "val"];

/// What each checkpoint must match to be used.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The feature cache: the data, the base package, what is frozen, the resolution.
    pub(crate) features: JobKey,
    /// The training state: the same and every hyperparameter that changes the trained decoder
    /// (not `epochs` or `patience`, so a resumed job may be given more epochs).
    pub(crate) training: JobKey,
}

/// The job's settings after defaults: training resolution, images per step, binary output.
pub(crate) struct Effective {
    /// `(height, width)`.
    pub(crate) size: (usize, usize),
    /// Images per step.
    pub(crate) batch_size: usize,
    /// One sigmoid output.
    pub(crate) binary: bool,
}

/// The keys of this job.
pub(crate) fn job_keys(
    hp: &Hyperparameters,
    base: &BaseModel,
    data: &Dataset,
    layout: &JobLayout,
    effective: &Effective,
) -> Keys {
    // Relative to the channel: SageMaker may mount a restarted job's data elsewhere.
    let roots = [
        &layout.train_dir,
        &layout.train_annotation_dir,
        &layout.validation_dir,
        &layout.validation_annotation_dir,
    ];
    let mut images = Fnv::default();
    for label in &data.labels {
        images.add(label.as_bytes());
    }
    images.add(format!("{:?}", data.values).as_bytes());
    for (split, samples) in SPLITS.iter().zip([&data.train, &data.val]) {
        images.add(split.as_bytes());
        for path in samples.iter().flat_map(|s| [&s.image, &s.annotation]) {
            let relative = roots
                .iter()
                .find_map(|root| path.strip_prefix(root).ok())
                .unwrap_or(path);
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            images
                .add(relative.to_string_lossy().as_bytes())
                .add(&size.to_le_bytes());
        }
    }
    let mut network = Fnv::default();
    network
        .add(base.architecture.as_bytes())
        .add(base.source.as_bytes())
        .add(&base.weights_size.to_le_bytes())
        .add(format!("{:?} {:?} {:?}", base.decoder, base.mean, base.std).as_bytes());
    let features = serde_json::json!({
        "image_size": [effective.size.0, effective.size.1],
        "augment": hp.augment,
    });
    let mut training = features.clone();
    if let Some(map) = training.as_object_mut() {
        map.extend([
            ("seed".to_string(), serde_json::json!(hp.seed)),
            ("lr".to_string(), serde_json::json!(hp.lr)),
            (
                "weight_decay".to_string(),
                serde_json::json!(hp.weight_decay),
            ),
            (
                "batch_size".to_string(),
                serde_json::json!(effective.batch_size),
            ),
            ("binary".to_string(), serde_json::json!(effective.binary)),
        ]);
    }
    let key = |training| JobKey {
        data: images.hex(),
        backbone: network.hex(),
        training,
    };
    Keys {
        features: key(features),
        training: key(training),
    }
}

/// One split of the feature file: the feature maps' `(h, w, channels)` and the item count.
#[derive(Serialize, Deserialize)]
struct SplitMeta {
    shapes: Vec<(usize, usize, usize)>,
    items: usize,
}

#[derive(Serialize, Deserialize)]
struct FeaturesMeta {
    version: u32,
    key: JobKey,
    /// Train, then validation.
    splits: Vec<SplitMeta>,
}

/// A tensor written straight from a buffer of the cache.
struct Borrowed<'a> {
    dtype: Dtype,
    shape: [usize; 1],
    bytes: &'a [u8],
}

impl View for &Borrowed<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Saves the train and validation caches.
pub(crate) fn save_features(
    ck: &Checkpoints,
    key: &JobKey,
    caches: [&FeatureCache; 2],
) -> Result<()> {
    let mut views = Vec::new();
    for (split, cache) in SPLITS.iter().zip(caches) {
        for (i, map) in cache.maps.iter().enumerate() {
            let bytes: &[u8] = bytemuck::cast_slice(map);
            views.push((format!("{split}.map{i}"), Dtype::F32, map.len(), bytes));
        }
        let targets = cache.targets.as_slice();
        views.push((
            format!("{split}.targets"),
            Dtype::U8,
            targets.len(),
            targets,
        ));
    }
    let views: Vec<(String, Borrowed<'_>)> = views
        .into_iter()
        .map(|(name, dtype, len, bytes)| {
            let shape = [len];
            (
                name,
                Borrowed {
                    dtype,
                    shape,
                    bytes,
                },
            )
        })
        .collect();
    let meta = FeaturesMeta {
        version: FORMAT_VERSION,
        key: key.clone(),
        splits: caches
            .iter()
            .map(|c| SplitMeta {
                shapes: c.shapes.clone(),
                items: c.len,
            })
            .collect(),
    };
    ck.write_views(FEATURES_FILE, views.iter().map(|(n, v)| (n, v)), &meta)
}

/// The saved train and validation caches of this job, if any.
pub(crate) fn load_features(ck: &Checkpoints, key: &JobKey) -> Option<[FeatureCache; 2]> {
    let path = ck.file(FEATURES_FILE);
    if !path.exists() {
        return None;
    }
    read_features(&path, key)
        .map_err(|err| {
            tracing::warn!(path = %path.display(), %err, "ignoring the cached features; running the encoder again");
        })
        .ok()
}

/// One tensor's entry in a safetensors header.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    data_offsets: (u64, u64),
}

fn read_features(path: &Path, key: &JobKey) -> Result<[FeatureCache; 2]> {
    let mut file = File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    ensure!(header_len < 100_000_000, "a {header_len}-byte header");
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let mut header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)?;
    let meta: FeaturesMeta = header
        .remove("__metadata__")
        .and_then(|m| m.get(METADATA_KEY)?.as_str().map(str::to_string))
        .context("no wick metadata")
        .and_then(|text| Ok(serde_json::from_str(&text)?))?;
    if meta.version != FORMAT_VERSION || &meta.key != key {
        bail!("they belong to other images, another base package or other settings");
    }
    let data_start = 8 + header_len;
    let mut read = |name: &str, dtype: &str, bytes: &mut [u8]| -> Result<()> {
        let entry: Entry = serde_json::from_value(
            header
                .remove(name)
                .with_context(|| format!("no tensor `{name}`"))?,
        )?;
        let (start, end) = entry.data_offsets;
        ensure!(
            entry.dtype == dtype && end.checked_sub(start) == Some(bytes.len() as u64),
            "tensor `{name}` is {} bytes of {}, expected {} of {dtype}",
            end.saturating_sub(start),
            entry.dtype,
            bytes.len()
        );
        file.seek(SeekFrom::Start(data_start + start))?;
        file.read_exact(bytes)?;
        Ok(())
    };
    let mut caches = [FeatureCache::default(), FeatureCache::default()];
    ensure!(meta.splits.len() == 2, "{} splits", meta.splits.len());
    for ((split, cache), SplitMeta { shapes, items }) in
        SPLITS.iter().zip(&mut caches).zip(meta.splits)
    {
        for (i, &(h, w, c)) in shapes.iter().enumerate() {
            let mut map = vec![0f32; items * h * w * c];
            read(
                &format!("{split}.map{i}"),
                "F32",
                bytemuck::cast_slice_mut(&mut map),
            )?;
            cache.maps.push(map);
        }
        // Every item's label map has the training resolution: pixels * items.
        let pixels = match key.training["image_size"].as_array().map(Vec::as_slice) {
            Some([h, w]) => h.as_u64().unwrap_or(0) * w.as_u64().unwrap_or(0),
            _ => bail!("no image size in the key"),
        };
        cache.targets = vec![0u8; items * pixels as usize];
        read(&format!("{split}.targets"), "U8", &mut cache.targets)?;
        cache.shapes = shapes;
        cache.len = items;
    }
    Ok(caches)
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    version: u32,
    key: JobKey,
    /// The trained tensors' keys, in the optimizer's order.
    vars: Vec<String>,
    /// The best decoder's tensor keys.
    best_keys: Vec<String>,
    step: usize,
    epochs_done: usize,
    best_epoch: Option<usize>,
    best_val: Option<Scores>,
    bad_epochs: usize,
    stopped_early: bool,
    history: Vec<EpochMetrics>,
}

/// Saves the state; `vars` are the decoder's trained keys in the optimizer's order.
pub(crate) fn save_state(ck: &Checkpoints, key: &JobKey, vars: &[String], s: &State) -> Result<()> {
    let mut named: Vec<(String, &Tensor)> = Vec::new();
    for (i, k) in vars.iter().enumerate() {
        let value = s
            .tensors
            .get(k)
            .with_context(|| format!("no decoder tensor `{k}`"))?;
        let (m, v) = s
            .optimizer
            .first_moments
            .get(i)
            .zip(s.optimizer.second_moments.get(i))
            .with_context(|| format!("no optimizer moments for `{k}`"))?;
        named.extend([
            (format!("var.{k}"), value),
            (format!("adam.m.{k}"), m),
            (format!("adam.v.{k}"), v),
        ]);
    }
    let mut best_keys: Vec<String> = s
        .best
        .as_ref()
        .map(|b| b.tensors.keys().cloned().collect())
        .unwrap_or_default();
    best_keys.sort();
    if let Some(best) = &s.best {
        for k in &best_keys {
            named.push((format!("best.{k}"), &best.tensors[k]));
        }
    }
    let meta = StateMeta {
        version: FORMAT_VERSION,
        key: key.clone(),
        vars: vars.to_vec(),
        best_keys,
        step: s.optimizer.step,
        epochs_done: s.epochs_done,
        best_epoch: s.best.as_ref().map(|b| b.epoch),
        best_val: s.best.as_ref().and_then(|b| b.val.clone()),
        bad_epochs: s.bad_epochs,
        stopped_early: s.stopped_early,
        history: s.history.clone(),
    };
    let tensors: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    ck.write(STATE.name, &tensors, &meta)
}

/// The state a job with this key saved, if any, for a decoder training `vars`.
pub(crate) fn load_state(ck: &Checkpoints, key: &JobKey, vars: &[String]) -> Option<State> {
    let belongs =
        |meta: &StateMeta| meta.version == FORMAT_VERSION && &meta.key == key && meta.vars == vars;
    ck.load(&STATE, belongs, |mut tensors, meta: StateMeta| {
        let mut take = |name: String| {
            tensors
                .remove(&name)
                .with_context(|| format!("no `{name}`"))
        };
        let mut values = HashMap::new();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for k in vars {
            values.insert(k.clone(), take(format!("var.{k}"))?);
            first.push(take(format!("adam.m.{k}"))?);
            second.push(take(format!("adam.v.{k}"))?);
        }
        let best = match meta.best_epoch {
            Some(epoch) => Some(Best {
                epoch,
                val: meta.best_val,
                tensors: meta
                    .best_keys
                    .iter()
                    .map(|k| Ok((k.clone(), take(format!("best.{k}"))?)))
                    .collect::<Result<_>>()?,
            }),
            None => None,
        };
        Ok(State {
            epochs_done: meta.epochs_done,
            tensors: values,
            optimizer: AdamState {
                step: meta.step,
                first_moments: first,
                second_moments: second,
            },
            best,
            bad_epochs: meta.bad_epochs,
            stopped_early: meta.stopped_early,
            history: meta.history,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: usize) -> JobKey {
        JobKey {
            data: "d".into(),
            backbone: "b".into(),
            training: serde_json::json!({ "image_size": [size, size] }),
        }
    }

    /// Both splits (one empty) come back as saved; another key or a damaged file is ignored.
    #[test]
    fn features_round_trip_and_other_keys_or_damage_are_ignored() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ck = Checkpoints::new(dir.path());
        assert!(load_features(&ck, &key(2)).is_none());
        let train = FeatureCache {
            shapes: vec![(1, 2, 3), (2, 2, 1)],
            maps: vec![(0..12).map(|v| v as f32 * 0.5).collect(), vec![-1.0; 8]],
            targets: vec![0, 1, 255, 2, 1, 1, 0, 0],
            len: 2,
        };
        let val = FeatureCache::default();
        save_features(&ck, &key(2), [&train, &val])?;
        let [t, v] = load_features(&ck, &key(2)).context("not loaded")?;
        assert_eq!(
            (&t.shapes, &t.maps, &t.targets, t.len),
            (&train.shapes, &train.maps, &train.targets, 2)
        );
        assert_eq!((v.len, v.maps.len(), v.targets.len()), (0, 0, 0));
        assert!(load_features(&ck, &key(3)).is_none());
        let file = ck.file(FEATURES_FILE);
        let bytes = std::fs::read(&file)?;
        std::fs::write(&file, &bytes[..bytes.len() - 3])?;
        assert!(load_features(&ck, &key(2)).is_none());
        Ok(())
    }
}
