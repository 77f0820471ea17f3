//! Resuming a classification job from the checkpoint directory (the store is
//! `train/checkpoint.rs`): the backbone features computed so far (`features.safetensors`, saved
//! during the pass and after it) and the training state after the last completed epoch
//! (`training.safetensors`: the head, AdamW's moments, the best head so far, the history).

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::backbone::HeadTensors;
use super::features::FeatureTable;
use super::head::{Best, EpochMetrics, StateParts};
use crate::train::checkpoint::{CheckpointFile, Checkpoints, JobKey, FORMAT_VERSION};
use crate::train::optimizer::AdamState;

const FEATURES: CheckpointFile = CheckpointFile {
    name: "features.safetensors",
    other_job: "ignoring cached features of other images or another backbone",
    unusable: "ignoring unusable cached features",
};
const STATE: CheckpointFile = CheckpointFile {
    name: "training.safetensors",
    other_job: "ignoring a training checkpoint of another job (data, backbone or hyperparameters differ); starting over",
    unusable: "ignoring an unusable training checkpoint",
};

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

/// The saved features for this data and backbone, if any.
pub(crate) fn load_features(
    ck: &Checkpoints,
    key: &JobKey,
    n: usize,
    num_features: usize,
) -> Option<FeatureTable> {
    let belongs = |meta: &FeaturesMeta| {
        meta.version == FORMAT_VERSION && meta.data == key.data && meta.backbone == key.backbone
    };
    ck.load(&FEATURES, belongs, |tensors, meta: FeaturesMeta| {
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
    })
}

/// Saves the features computed so far.
pub(crate) fn save_features(ck: &Checkpoints, key: &JobKey, table: &FeatureTable) -> Result<()> {
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
    ck.write(
        FEATURES.name,
        &[("rows", &rows), ("readable", &readable)],
        &meta,
    )
}

/// The training state saved by a job with this key, if any.
pub(crate) fn load_state(ck: &Checkpoints, key: &JobKey) -> Option<StateParts> {
    let belongs = |meta: &StateMeta| meta.version == FORMAT_VERSION && &meta.key == key;
    ck.load(&STATE, belongs, |tensors, meta: StateMeta| {
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .with_context(|| format!("no `{name}`"))
        };
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
    })
}

/// Saves the training state after a completed epoch.
pub(crate) fn save_state(ck: &Checkpoints, key: &JobKey, parts: &StateParts) -> Result<()> {
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
    ck.write(STATE.name, &tensors, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::Fnv;

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
        assert!(load_features(&ck, &key(1), 3, 2).is_none());
        let mut table = FeatureTable::new(3, 2);
        table.rows = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0];
        table.readable = vec![true, true, false];
        table.done = 2;
        save_features(&ck, &key(1), &table)?;
        assert_eq!(load_features(&ck, &key(1), 3, 2), Some(table));
        let other = JobKey {
            backbone: "c".into(),
            ..key(1)
        };
        assert!(load_features(&ck, &other, 3, 2).is_none());
        assert!(load_features(&ck, &key(1), 4, 2).is_none());
        Ok(())
    }
}
