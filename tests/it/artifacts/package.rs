//! `wick package` and the real EfficientNet-Lite0 end to end: package → archive → upload to S3
//! → fetch (as a `.tar.gz`, as a prefix, from a local model directory) → load → classify.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::Result;
use wick::artifacts::{fetch, upload, ArtifactUri};
use wick::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use wick::model::{Classifier, ScoreFunction};

use super::server::{aws_env, S3Server};
use crate::support::{fixture, lite0_package};

/// The top class for `chelsea.jpg` from the package in `dir`.
fn classify_chelsea(dir: &Path) -> Result<String> {
    let classifier = Classifier::load(dir)?;
    let cfg = classifier.preprocess_config();
    let image = decode(
        &std::fs::read(fixture("chelsea.jpg"))?,
        &DecodeLimits::default(),
    )?;
    let batch = to_batch(&[preprocess(&image, cfg)?], cfg)?;
    Ok(classifier
        .classify(&batch, &[(1, ScoreFunction::Default)])?
        .remove(0)
        .remove(0)
        .label)
}

/// Runs `wick` with exactly `env` on top of a cleared environment (no host AWS settings).
async fn wick_with_env(args: Vec<&OsStr>, env: Vec<(&'static str, String)>) -> Result<Output> {
    let args: Vec<_> = args.into_iter().map(ToOwned::to_owned).collect();
    Ok(tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wick"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .envs(env)
            .output()
    })
    .await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_upload_fetch_and_classify() -> Result<()> {
    let package = lite0_package()?;
    let server = S3Server::start().await?;
    server.bucket("models")?;
    let work = tempfile::tempdir()?;
    let out = work.path().join("model.tar.gz");

    let output = wick_with_env(
        vec![
            OsStr::new("package"),
            package.as_os_str(),
            out.as_os_str(),
            OsStr::new("--upload"),
            OsStr::new("s3://models/lite0/"),
        ],
        aws_env(&server, true),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        stdout.contains("s3://models/lite0/model.tar.gz"),
        "{stdout}"
    );
    // The uploaded object is the archive, byte for byte (it went up as a multipart upload:
    // the 17 MB archive is over the 16 MiB threshold).
    assert_eq!(
        std::fs::read(server.root().join("models/lite0/model.tar.gz"))?,
        std::fs::read(&out)?
    );

    let scratch = tempfile::tempdir()?;
    let options = server.options(scratch.path());
    let model = fetch(&"s3://models/lite0/model.tar.gz".parse()?, &options).await?;
    assert!(model.path().join("config.json").is_file());
    assert_eq!(classify_chelsea(model.path())?, "Egyptian cat");

    // SageMaker's own layout: /opt/ml/model holding only model.tar.gz.
    let opt_ml_model = work.path().join("opt-ml-model");
    std::fs::create_dir(&opt_ml_model)?;
    std::fs::copy(&out, opt_ml_model.join("model.tar.gz"))?;
    let local = fetch(&ArtifactUri::Local(opt_ml_model.clone()), &options).await?;
    assert!(local.is_scratch() && local.path() != opt_ml_model);
    assert_eq!(classify_chelsea(local.path())?, "Egyptian cat");

    // A directory that is already a package is used in place.
    let in_place = fetch(&ArtifactUri::Local(package.clone()), &options).await?;
    assert!(!in_place.is_scratch() && in_place.path() == package);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite0_as_an_s3_prefix() -> Result<()> {
    let package = lite0_package()?;
    let server = S3Server::start().await?;
    server.bucket("models")?;
    let scratch = tempfile::tempdir()?;
    let options = server.options(scratch.path());
    let dest: ArtifactUri = "s3://models/uncompressed/lite0/".parse()?;
    for entry in std::fs::read_dir(&package)? {
        let stats = upload(&entry?.path(), &dest, &options.transfer, &options.s3).await?;
        assert!(stats.uri.starts_with("s3://models/uncompressed/lite0/"));
    }
    let model = fetch(&dest, &options).await?;
    assert_eq!(model.stats().objects, 3);
    assert_eq!(classify_chelsea(model.path())?, "Egyptian cat");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_refuses_a_broken_package_and_reports_upload_failures() -> Result<()> {
    let work = tempfile::tempdir()?;
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken)?;
    std::fs::write(broken.join("labels.txt"), "cat\n")?;
    let out = work.path().join("model.tar.gz");
    let server = S3Server::start().await?;
    server.bucket("models")?;

    let output = wick_with_env(
        vec![OsStr::new("package"), broken.as_os_str(), out.as_os_str()],
        aws_env(&server, true),
    )
    .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("no config.json"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing is archived when the package does not load"
    );

    // No credentials anywhere: one clear line naming the destination.
    let package = lite0_package()?;
    let output = wick_with_env(
        vec![
            OsStr::new("package"),
            package.as_os_str(),
            out.as_os_str(),
            OsStr::new("--upload"),
            OsStr::new("s3://models/x/model.tar.gz"),
        ],
        aws_env(&server, false),
    )
    .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("`s3://models/x/model.tar.gz`"), "{stderr}");
    assert!(stderr.contains("failed: CredentialsError: "), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");

    // Wrong secret: the S3 code.
    let mut env = aws_env(&server, false);
    env.push(("AWS_ACCESS_KEY_ID", "test".into()));
    env.push(("AWS_SECRET_ACCESS_KEY", "wrong".into()));
    let output = wick_with_env(
        vec![
            OsStr::new("package"),
            package.as_os_str(),
            out.as_os_str(),
            OsStr::new("--upload"),
            OsStr::new("s3://models/x/model.tar.gz"),
        ],
        env,
    )
    .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    Ok(())
}
