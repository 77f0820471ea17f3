//! Broken packages and hostile images: every one is a clear error naming what is wrong, never
//! a panic.

use std::ffi::OsStr;
use std::path::Path;

use anyhow::Result;
use wick::model::preprocess::{decode, DecodeLimits};
use wick::model::Classifier;

use crate::support::{lite0_package, wick};

/// A copy of the Lite0 package whose config and weights the test then breaks.
fn package_copy(dir: &Path) -> Result<()> {
    let source = lite0_package()?;
    for entry in std::fs::read_dir(&source)? {
        let path = entry?.path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap_or_default()))?;
    }
    Ok(())
}

fn load_error(dir: &Path) -> String {
    match Classifier::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(err) => err.to_string(),
    }
}

const WEIGHTS: &str = "efficientnet-lite0-57934424.pth";

#[test]
fn truncated_and_garbage_weights_are_refused_with_the_file_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    package_copy(dir.path())?;
    let weights = dir.path().join(WEIGHTS);
    let full = std::fs::read(&weights)?;
    for cut in [0, 10, 4096, full.len() / 2, full.len() - 1] {
        std::fs::write(&weights, &full[..cut])?;
        let err = load_error(dir.path());
        assert!(err.contains(WEIGHTS), "cut at {cut}: {err}");
    }
    std::fs::write(&weights, vec![0xAB; 100_000])?;
    let err = load_error(dir.path());
    assert!(err.contains(WEIGHTS), "{err}");
    Ok(())
}

#[test]
fn wrong_architecture_or_shapes_name_the_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    package_copy(dir.path())?;
    let config_path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&config_path)?;

    std::fs::write(
        &config_path,
        config.replace("efficientnet_lite0", "swin_tiny_patch4_window7_224"),
    )?;
    let err = load_error(dir.path());
    assert!(
        err.contains("swin_tiny_patch4_window7_224")
            && err.contains("resnet50")
            && err.contains("efficientnet_lite0"),
        "{err}"
    );

    // Lite2 is wider than Lite0: the first scaled layer's weights do not fit.
    std::fs::write(
        &config_path,
        config.replace("efficientnet_lite0", "efficientnet_lite2"),
    )?;
    let err = load_error(dir.path());
    assert!(
        err.contains("_blocks.") && err.contains("has shape") && err.contains("expected"),
        "{err}"
    );

    // A checkpoint of another family: the first tensor it needs is missing, by name.
    std::fs::write(
        &config_path,
        config.replace("efficientnet_lite0", "resnet18"),
    )?;
    let err = load_error(dir.path());
    assert!(err.contains("conv1.weight"), "{err}");
    Ok(())
}

#[test]
fn corrupt_and_oversized_images_are_refused_before_decoding() -> Result<()> {
    let jpeg = std::fs::read(crate::support::fixture("chelsea.jpg"))?;
    let err = decode(&jpeg[..jpeg.len() / 2], &DecodeLimits::default())
        .expect_err("truncated")
        .to_string();
    assert!(!err.is_empty());
    // Headers announcing 100000x100000 pixels in every format are unit-tested in
    // `model::preprocess::decode`; here the limit is exercised end to end.
    // Through the CLI, with the limit lowered below the photo's 451x300 pixels.
    let out = wick(&[
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        lite0_package()?.as_os_str(),
        OsStr::new("--max-image-pixels"),
        OsStr::new("100000"),
        crate::support::fixture("chelsea.png").as_os_str(),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout.contains("135300 pixels") && stdout.contains("100000"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn a_missing_model_directory_is_a_clear_cli_error() -> Result<()> {
    let out = wick(&[
        OsStr::new("predict"),
        OsStr::new("--model-dir"),
        OsStr::new("/nonexistent/model"),
        OsStr::new("x.jpg"),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    Ok(())
}
