//! `wick train` stopped by SIGTERM, during training and during the backbone pass, then
//! resumed from its checkpoints: the final head equals an uninterrupted run's with the same
//! seed, bit for bit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;

use crate::train::{
    describe, metric, ml_root, run_train, train_command, write_class_folders, CLASSES,
};

/// A small job: three classes, a few images each, many cheap epochs (batch size 1).
fn small_job(dir: &Path, epochs: &str) -> Result<PathBuf> {
    let root = ml_root(
        dir,
        &[
            ("epochs", epochs),
            ("batch_size", "1"),
            ("patience", "0"),
            ("seed", "3"),
            ("validation_fraction", "0.25"),
        ],
    )?;
    write_class_folders(&root.join("input/data/training"), &CLASSES[..3], 6, 5)?;
    Ok(root)
}

/// The head tensors (`_fc.*`) of a written package.
fn head(model_dir: &Path) -> Result<Vec<Vec<f32>>> {
    let tensors = candle_core::safetensors::load(
        model_dir.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    ["_fc.weight", "_fc.bias"]
        .iter()
        .map(|k| {
            let t: &Tensor = tensors.get(*k).with_context(|| format!("no {k}"))?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect()
}

/// How a run ended after SIGTERM.
pub(crate) struct Interrupted {
    pub(crate) status: std::process::ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) stop_time: Duration,
}

/// Starts a job and sends it SIGTERM after the `count`-th line starting with `prefix` on
/// stdout (`from_stderr`: on stderr, containing `prefix`).
pub(crate) fn interrupted_run(
    root: &Path,
    prefix: &str,
    count: usize,
    from_stderr: bool,
) -> Result<Interrupted> {
    let mut child = train_command(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (watched, other): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Read + Send>) =
        match (child.stdout.take(), child.stderr.take()) {
            (Some(out), Some(err)) if from_stderr => (Box::new(err), Box::new(out)),
            (Some(out), Some(err)) => (Box::new(out), Box::new(err)),
            _ => bail!("no pipes"),
        };
    // The other stream is drained on a thread so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let mut other = other;
        std::io::Read::read_to_string(&mut other, &mut text).map(|_| text)
    });
    let mut reader = BufReader::new(watched);
    let (mut seen, mut watched_text, mut line) = (0, String::new(), String::new());
    while seen < count {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!(
                "the run ended before `{prefix}` #{count}: {:?}\n{watched_text}",
                child.wait()?
            );
        }
        watched_text.push_str(&line);
        let hit = if from_stderr {
            line.contains(prefix)
        } else {
            line.starts_with(prefix)
        };
        seen += usize::from(hit);
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    ensure!(kill.success(), "kill -TERM failed");
    std::io::Read::read_to_string(&mut reader, &mut watched_text)?;
    let status = child.wait()?;
    let stop_time = signalled.elapsed();
    let other_text = drain
        .join()
        .map_err(|_| anyhow::anyhow!("drain thread"))??;
    let (stdout, stderr) = if from_stderr {
        (other_text, watched_text)
    } else {
        (watched_text, other_text)
    };
    Ok(Interrupted {
        status,
        stdout,
        stderr,
        stop_time,
    })
}

/// `(epoch, train_loss, val_loss)` of every epoch in a job's metrics.json.
fn history(root: &Path) -> Result<Vec<serde_json::Value>> {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("output/data/metrics.json"),
    )?)?;
    Ok(m["history"]
        .as_array()
        .context("no history")?
        .iter()
        .map(|e| serde_json::json!([e["epoch"], e["train_loss"], e["val_loss"]]))
        .collect())
}

#[test]
fn sigterm_saves_the_best_model_and_a_resumed_run_ends_like_an_uninterrupted_one() -> Result<()> {
    let epochs = "300";
    let whole = tempfile::tempdir()?;
    let whole_root = small_job(whole.path(), epochs)?;
    let out = run_train(&whole_root)?;
    ensure!(out.status.success(), "{}", describe(&out));

    // Stopped during training, after the third epoch line.
    let parted = tempfile::tempdir()?;
    let root = small_job(parted.path(), epochs)?;
    let run = interrupted_run(&root, "epoch=", 3, false)?;
    ensure!(
        run.status.code() == Some(143),
        "expected the stop exit code 143: {:?}\n{}",
        run.status,
        run.stderr
    );
    assert!(
        run.stop_time < Duration::from_secs(120),
        "{:?}",
        run.stop_time
    );
    assert!(run.stderr.contains("SIGTERM"), "{}", run.stderr);
    assert!(
        !root.join("output/failure").exists(),
        "a stop is not a failure"
    );
    assert!(root.join("checkpoints/training.safetensors").is_file());
    assert!(root.join("checkpoints/features.safetensors").is_file());
    // The best model so far is a complete package.
    let partial = wick::model::Classifier::load(&root.join("model"))?;
    assert_eq!(partial.labels().len(), 3);
    let stopped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("output/data/metrics.json"),
    )?)?;
    assert_eq!(stopped["status"], "stopped");

    let out = run_train(&root)?;
    ensure!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resuming training from the checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming from cached backbone features"),
        "{stderr}"
    );
    let resumed_lines = String::from_utf8(out.stdout)?;
    let first = resumed_lines
        .lines()
        .find(|l| l.starts_with("epoch="))
        .unwrap_or_default();
    assert!(
        metric(first, "epoch").is_some_and(|e| e >= 4.0),
        "the resumed run starts after the checkpointed epoch: {first}"
    );
    assert_eq!(head(&root.join("model"))?, head(&whole_root.join("model"))?);
    assert_eq!(history(&root)?, history(&whole_root)?);

    // Stopped during the backbone pass (as soon as the job logs its plan): the features so far
    // are kept, no model yet, and the resumed job still ends with the same head.
    let early = tempfile::tempdir()?;
    let root = small_job(early.path(), epochs)?;
    let run = interrupted_run(&root, "training a new head", 1, true)?;
    ensure!(
        run.status.code() == Some(143),
        "{:?}\n{}",
        run.status,
        run.stderr
    );
    ensure!(
        run.stderr.contains("stopped during the backbone pass"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("epoch="), "{}", run.stdout);
    assert!(!root.join("model/config.json").exists());
    let out = run_train(&root)?;
    ensure!(out.status.success(), "{}", describe(&out));
    assert_eq!(head(&root.join("model"))?, head(&whole_root.join("model"))?);
    Ok(())
}
