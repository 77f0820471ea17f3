//! A segmentation job stopped by SIGTERM after a few epochs, then rerun with the same
//! checkpoint directory: it skips the encoder pass, continues after the last saved epoch, and
//! writes the package an uninterrupted run writes, bit for bit (DeepLabV3+ training its whole
//! decoder: the depthwise and im2col custom ops, AdamW's state and the shuffles all resume).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::seg_dataset::SEG_CLASSES;
use crate::seg_train_jobs::{same, seg_base_job, tensors};
use crate::train::{describe, metric, run_train};
use crate::train_resume::interrupted_run;

const EPOCHS: usize = 8;

fn job(dir: &Path) -> Result<PathBuf> {
    let epochs = EPOCHS.to_string();
    seg_base_job(
        dir,
        "smp_deeplabv3plus_resnet34",
        5,
        &[
            ("classes", &SEG_CLASSES.join(",")),
            ("image_size", "64"),
            ("epochs", &epochs),
            ("batch_size", "2"),
            ("lr", "0.01"),
            ("patience", "0"),
            ("seed", "5"),
            ("validation_fraction", "0.25"),
        ],
        (64, 8),
    )
}

/// The epochs a run printed metric lines for.
fn epochs(stdout: &str) -> Vec<usize> {
    stdout
        .lines()
        .filter(|l| l.starts_with("epoch="))
        .filter_map(|l| metric(l, "epoch"))
        .map(|e| e as usize)
        .collect()
}

#[test]
fn a_resumed_segmentation_job_ends_like_an_uninterrupted_one() -> Result<()> {
    let whole = tempfile::tempdir()?;
    let whole_root = job(whole.path())?;
    let out = run_train(&whole_root)?;
    ensure!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        epochs(&String::from_utf8(out.stdout)?),
        (1..=EPOCHS).collect::<Vec<_>>()
    );

    let parts = tempfile::tempdir()?;
    let root = job(parts.path())?;
    let stopped = interrupted_run(&root, "epoch=", 2, false)?;
    assert_eq!(stopped.status.code(), Some(143), "{}", stopped.stderr);
    let done = epochs(&stopped.stdout);
    assert!(
        done.len() >= 2 && done.len() < EPOCHS,
        "the stop came too late to test a resume: {done:?}"
    );
    let out = run_train(&root)?;
    ensure!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone())?;
    let stderr = String::from_utf8(out.stderr)?;
    // It continued after the last completed epoch, from the cached features.
    assert_eq!(
        epochs(&stdout),
        (done.len() + 1..=EPOCHS).collect::<Vec<_>>(),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming training from the checkpoint"),
        "{stderr}"
    );
    assert!(stderr.contains("no encoder pass"), "{stderr}");

    let expected = tensors(&whole_root.join("model/model.safetensors"))?;
    let got = tensors(&root.join("model/model.safetensors"))?;
    assert_eq!(got.len(), expected.len());
    for (name, t) in &expected {
        let g = got.get(name).with_context(|| format!("{name} missing"))?;
        assert!(same(t, g)?, "{name} differs from the uninterrupted run's");
    }
    let history = |root: &Path| -> Result<serde_json::Value> {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("output/data/metrics.json"))?)?;
        Ok(serde_json::json!([
            m["best_epoch"],
            m["history"]
                .as_array()
                .context("no history")?
                .iter()
                .map(|e| serde_json::json!([e["epoch"], e["train_loss"], e["val_mean_iou"]]))
                .collect::<Vec<_>>()
        ]))
    };
    assert_eq!(history(&root)?, history(&whole_root)?);
    Ok(())
}
