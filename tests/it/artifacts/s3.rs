//! Fetching from a real S3 server: the prefix layout (nested keys, pagination past 1,000 keys,
//! a 50 MB object in ranged parts), `.tar.gz` objects, resumed downloads, and the errors users
//! see for wrong credentials, missing keys and buckets.

use std::path::Path;

use anyhow::Result;
use wick::artifacts::{archive, fetch, ArtifactError, ArtifactUri, TransferOptions};

use super::server::{cutting_proxy, noise, options_for, S3Server};

fn uri(text: &str) -> Result<ArtifactUri> {
    Ok(text.parse()?)
}

/// Nothing left behind in the scratch parent.
fn assert_empty(dir: &Path) -> Result<()> {
    let left: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_layout_recreates_nested_keys() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("models")?;
    server.seed("models", "lite0/config.json", b"{}")?;
    server.seed("models", "lite0/labels.txt", b"cat\ndog\n")?;
    server.seed("models", "lite0/weights/a/b/model.pth", &noise(100_000, 1))?;
    server.seed("models", "lite0/empty.bin", b"")?;
    // A sibling prefix that must not be picked up.
    server.seed("models", "lite0-old/config.json", b"old")?;
    let scratch = tempfile::tempdir()?;

    let model = fetch(&uri("s3://models/lite0/")?, &server.options(scratch.path())).await?;
    let dir = model.path();
    assert!(dir.starts_with(scratch.path()) && model.is_scratch());
    assert_eq!(std::fs::read(dir.join("config.json"))?, b"{}");
    assert_eq!(std::fs::read(dir.join("labels.txt"))?, b"cat\ndog\n");
    assert_eq!(
        std::fs::read(dir.join("weights/a/b/model.pth"))?,
        noise(100_000, 1)
    );
    assert_eq!(std::fs::metadata(dir.join("empty.bin"))?.len(), 0);
    assert!(!dir.join("config.json.old").exists() && !dir.join("lite0-old").exists());
    assert_eq!(model.stats().objects, 4);
    assert_eq!(model.stats().bytes_downloaded, 2 + 8 + 100_000);

    // Dropping the model removes its scratch copy.
    drop(model);
    assert_empty(scratch.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_thousand_objects_are_all_listed() -> Result<()> {
    let server = S3Server::start().await?;
    let bucket = server.bucket("many")?;
    const COUNT: usize = 1234;
    for i in 0..COUNT {
        let path = bucket.join(format!("p/shard{}/file{i:04}.txt", i % 7));
        std::fs::create_dir_all(path.parent().unwrap_or(&bucket))?;
        std::fs::write(path, i.to_string())?;
    }
    let scratch = tempfile::tempdir()?;
    let model = fetch(&uri("s3://many/p/")?, &server.options(scratch.path())).await?;
    assert_eq!(model.stats().objects, COUNT as u64);
    // Two listing pages (1,000 + 234), one GET per object.
    assert_eq!(model.stats().requests, COUNT as u64 + 2);
    for i in [0, 999, 1000, 1233] {
        let text =
            std::fs::read_to_string(model.path().join(format!("shard{}/file{i:04}.txt", i % 7)))?;
        assert_eq!(text, i.to_string());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_object_downloads_in_ranged_parts() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("big")?;
    let data = noise(50_000_000, 7);
    server.seed("big", "m/weights.bin", &data)?;
    server.seed("big", "m/config.json", b"{}")?;
    let scratch = tempfile::tempdir()?;
    let model = fetch(&uri("s3://big/m/")?, &server.options(scratch.path())).await?;
    let got = std::fs::read(model.path().join("weights.bin"))?;
    assert!(got == data, "the reassembled 50 MB object differs");
    // 1 listing page + 1 GET for config.json + ceil(50 MB / 8 MiB) = 6 parts.
    let stats = model.stats();
    assert_eq!((stats.objects, stats.requests), (2, 1 + 1 + 6));
    assert_eq!(stats.bytes_downloaded, 50_000_002);
    Ok(())
}

/// A `.tar.gz` made with the crate's own packer from a small package.
fn archive_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    for (name, bytes) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&src))?;
        std::fs::write(path, bytes)?;
    }
    let out = dir.path().join("model.tar.gz");
    archive::pack(&src, &out)?;
    Ok(std::fs::read(out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_gz_objects_stream_into_the_scratch_dir() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("bkt")?;
    let weights = noise(20_000_000, 3);
    let tarball = archive_of(&[("config.json", b"{}"), ("sub/w.bin", &weights)])?;
    server.seed("bkt", "job/output/model.tar.gz", &tarball)?;
    let scratch = tempfile::tempdir()?;
    let mut options = server.options(scratch.path());
    // Small parts: the archive streams as many ranged GETs, three of them ahead.
    options.transfer = TransferOptions {
        part_bytes: 2 << 20,
        concurrency: 3,
        ..TransferOptions::default()
    };
    let model = fetch(&uri("s3://bkt/job/output/model.tar.gz")?, &options).await?;
    assert!(std::fs::read(model.path().join("sub/w.bin"))? == weights);
    let stats = model.stats();
    assert_eq!(stats.bytes_downloaded, tarball.len() as u64);
    assert_eq!(stats.requests, tarball.len().div_ceil(2 << 20) as u64);
    assert_eq!(stats.unpacked.map(|u| u.files), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_are_resumed() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("bkt")?;
    let weights = noise(12_000_000, 5);
    let tarball = archive_of(&[("config.json", b"{}"), ("w.bin", &weights)])?;
    server.seed("bkt", "model.tar.gz", &tarball)?;
    server.seed("bkt", "prefix/w.bin", &weights)?;
    // The first three connections die after 1.5 MB of response each.
    let proxy = cutting_proxy(server.addr, 1_500_000, 3).await?;
    let scratch = tempfile::tempdir()?;
    let mut options = options_for(&proxy, super::server::SECRET_KEY, scratch.path());
    options.transfer.initial_backoff = std::time::Duration::from_millis(10);

    let model = fetch(&uri("s3://bkt/model.tar.gz")?, &options).await?;
    assert!(std::fs::read(model.path().join("w.bin"))? == weights);
    assert!(model.stats().resumed >= 1, "{:?}", model.stats());

    let proxy = cutting_proxy(server.addr, 1_500_000, 3).await?;
    let mut options = options_for(&proxy, super::server::SECRET_KEY, scratch.path());
    options.transfer.initial_backoff = std::time::Duration::from_millis(10);
    let model = fetch(&uri("s3://bkt/prefix/")?, &options).await?;
    assert!(std::fs::read(model.path().join("w.bin"))? == weights);
    assert!(model.stats().resumed >= 1, "{:?}", model.stats());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_fetch_mid_way_leaves_nothing_behind() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("bkt")?;
    let tarball = archive_of(&[("config.json", b"{}"), ("w.bin", &noise(30_000_000, 9))])?;
    server.seed("bkt", "model.tar.gz", &tarball)?;
    server.seed("bkt", "prefix/w.bin", &noise(30_000_000, 9))?;
    let scratch = tempfile::tempdir()?;
    let options = server.options(scratch.path());
    for text in ["s3://bkt/model.tar.gz", "s3://bkt/prefix/"] {
        // What a server does on SIGTERM during the download: drop the future.
        let cut = std::time::Duration::from_millis(60);
        let outcome = tokio::time::timeout(cut, fetch(&uri(text)?, &options)).await;
        assert!(
            outcome.is_err(),
            "{text}: the fetch should still be running"
        );
        // The unpacker stops on its own (its input ends) and then deletes the directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(scratch.path())?.next().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "{text}: scratch left behind"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

fn s3_error(result: Result<wick::artifacts::LocalModel, ArtifactError>) -> ArtifactError {
    match result {
        Ok(model) => panic!("expected an error, got {}", model.path().display()),
        Err(err) => err,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_uri_and_the_s3_code() -> Result<()> {
    let server = S3Server::start().await?;
    server.bucket("bkt")?;
    server.seed("bkt", "m/config.json", b"{}")?;
    server.seed(
        "bkt",
        "model.tar.gz",
        &archive_of(&[("config.json", b"{}")])?,
    )?;
    let scratch = tempfile::tempdir()?;
    let good = server.options(scratch.path());
    let wrong_secret = options_for(&server.endpoint(), "not-the-secret", scratch.path());

    let cases = [
        (
            "s3://bkt/model.tar.gz",
            &wrong_secret,
            "SignatureDoesNotMatch",
        ),
        ("s3://bkt/m/", &wrong_secret, "SignatureDoesNotMatch"),
        ("s3://bkt/missing.tar.gz", &good, "NoSuchKey"),
        ("s3://nobucket/model.tar.gz", &good, "NoSuchKey"),
        ("s3://nobucket/m/", &good, "NoSuchBucket"),
    ];
    for (text, options, code) in cases {
        let err = s3_error(fetch(&uri(text)?, options).await);
        let message = err.to_string();
        assert_eq!(err.s3_code(), Some(code), "{text}: {message}");
        assert!(message.contains(&format!("`{text}`")), "{message}");
        assert!(message.contains(code), "{message}");
        assert!(!message.contains("service error"), "{message}");
    }

    let err = s3_error(fetch(&uri("s3://bkt/nothing-here/")?, &good).await);
    assert!(matches!(err, ArtifactError::EmptyPrefix { .. }), "{err}");

    // Nothing listens here: the SDK's failure kind and cause instead of an S3 code.
    let closed = options_for(
        "http://127.0.0.1:9",
        super::server::SECRET_KEY,
        scratch.path(),
    );
    let mut closed = closed;
    closed.transfer.max_attempts = 1;
    let err = s3_error(fetch(&uri("s3://bkt/model.tar.gz")?, &closed).await);
    assert_eq!(err.s3_code(), Some("DispatchFailure"), "{err}");
    assert!(err.to_string().contains("s3://bkt/model.tar.gz"), "{err}");

    assert_empty(scratch.path())
}
