//! `wick predict`'s progress as a person and as CloudWatch see it: the real binary under a
//! pseudo-terminal (util-linux `script`, from `bsdutils`, which every Debian has; `.ci/run`
//! checks for it) draws `indicatif`'s bar; with stderr a pipe it writes one plain log line per
//! tenth of the pass instead.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::support::{fixture, lite0_package};

/// Photos in the pass: ten, so each is a tenth.
const IMAGES: usize = 10;

/// `path` quoted for `sh -c`.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// `wick predict` over [`IMAGES`] copies of the real photo, one per batch.
fn predict_command(log_format: &str) -> Result<Vec<String>> {
    let photo = quoted(&fixture("chelsea.jpg"));
    let mut args = vec![
        quoted(Path::new(env!("CARGO_BIN_EXE_wick"))),
        "--log-format".into(),
        log_format.into(),
        "predict".into(),
        "--batch-size".into(),
        "1".into(),
        "--model-dir".into(),
        quoted(&lite0_package()?),
    ];
    args.extend(std::iter::repeat_n(photo, IMAGES));
    Ok(args)
}

#[test]
fn predict_draws_a_progress_bar_on_a_terminal() -> Result<()> {
    let command = predict_command("text")?.join(" ");
    // `script` runs the command with a new pseudo-terminal as its stdin, stdout and stderr,
    // and copies what it printed there to its own stdout.
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .context("running `script` (util-linux)")?;
    let screen = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{}: {screen}", out.status);
    assert_eq!(
        screen.matches(r#""predictions""#).count(),
        IMAGES,
        "every answer reached the terminal: {screen}"
    );
    // The bar's template: `predict [=====>    ] 3/10 images, 12.3/s, eta 1s`, finished full.
    assert!(
        screen.contains(&format!(
            "predict [{}] {IMAGES}/{IMAGES} images",
            "=".repeat(30)
        )),
        "the finished bar: {screen:?}"
    );
    // Redrawn in place: the cursor goes back to the line's start (indicatif's `\r` and clear).
    assert!(screen.contains("\r\u{1b}[2K"), "{screen:?}");
    assert!(
        !screen.contains("wick::progress"),
        "no log lines while a bar is drawn: {screen}"
    );
    Ok(())
}

#[test]
fn predict_writes_plain_progress_lines_when_stderr_is_not_a_terminal() -> Result<()> {
    let args = predict_command("json")?;
    let out = Command::new("sh")
        .args(["-c", &args.join(" ")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.success(), "{}: {stderr}", out.status);
    let done: Vec<u64> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "progress")
        .map(|line| {
            assert_eq!(line["pass"], "predict", "{line}");
            assert_eq!(line["total"], IMAGES as u64, "{line}");
            line["done"].as_u64().unwrap_or_default()
        })
        .collect();
    let every_image: Vec<u64> = (1..=IMAGES as u64).collect();
    assert_eq!(done, every_image, "one line per tenth: {stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains("[="),
        "no bar: {stderr}"
    );
    Ok(())
}
