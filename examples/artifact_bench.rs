//! Benchmark: how long a model package takes to become a loadable local directory from a local
//! S3 server (s3s-fs in-process on 127.0.0.1), as a `.tar.gz` and as an uncompressed prefix,
//! next to the disk and decompressor baselines. Results go in `docs/performance.md`.
//!
//! ```sh
//! cargo run --release --example artifact_bench -- "$(scripts/fetch-efficientnet-lite0.sh)" [ITERATIONS]
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use wick::artifacts::{
    archive, fetch, upload, ArtifactUri, FetchOptions, S3Overrides, StaticCredentials,
};
use wick::model::Classifier;

const ACCESS_KEY: &str = "bench";
const SECRET_KEY: &str = "benchbench1234";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let package = PathBuf::from(args.next().context(
        "usage: artifact_bench PACKAGE_DIR [ITERATIONS] (e.g. scripts/fetch-efficientnet-lite0.sh)",
    )?);
    let iterations: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);

    let storage = tempfile::tempdir()?;
    let endpoint = start_s3(storage.path()).await?;
    std::fs::create_dir(storage.path().join("bench"))?;
    let work = tempfile::tempdir()?;
    let options = FetchOptions {
        scratch_parent: Some(work.path().to_owned()),
        s3: S3Overrides {
            endpoint_url: Some(endpoint),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
            }),
            force_path_style: None,
        },
        ..FetchOptions::default()
    };

    let tarball = work.path().join("model.tar.gz");
    let started = Instant::now();
    let packed = archive::pack(&package, &tarball)?;
    let pack_time = started.elapsed();
    println!(
        "package: {} files, {:.1} MB; archive {:.1} MB; pack {:.0} ms",
        packed.files,
        mb(packed.bytes),
        mb(packed.archive_bytes),
        ms(pack_time)
    );

    // Through the API, so the server stores ETags (seeded files would be hashed on every GET).
    let archive_uri: ArtifactUri = "s3://bench/lite0/model.tar.gz".parse()?;
    let prefix_uri: ArtifactUri = "s3://bench/lite0-files/".parse()?;
    upload(&tarball, &archive_uri, &options.transfer, &options.s3).await?;
    for entry in std::fs::read_dir(&package)? {
        upload(&entry?.path(), &prefix_uri, &options.transfer, &options.s3).await?;
    }

    println!(
        "| source | fetch median ms | min | max | fetch + load median ms | MB/s (fetched bytes) |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, uri) in [
        ("S3 `.tar.gz` (streamed unpack)", &archive_uri),
        ("S3 prefix (3 objects)", &prefix_uri),
        (
            "local `.tar.gz` (unpack only)",
            &ArtifactUri::Local(tarball.clone()),
        ),
    ] {
        let (mut fetches, mut readies) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..iterations {
            let started = Instant::now();
            let model = fetch(uri, &options).await?;
            fetches.push(started.elapsed());
            let dir = model.path().to_owned();
            tokio::task::spawn_blocking(move || Classifier::load(&dir)).await??;
            readies.push(started.elapsed());
            bytes = model.stats().bytes_downloaded.max(packed.archive_bytes);
        }
        let fetch = median(&mut fetches);
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ms(fetch),
            ms(fetches[0]),
            ms(fetches[fetches.len() - 1]),
            ms(median(&mut readies)),
            mb(bytes) / fetch.as_secs_f64()
        );
    }

    // End to end through the binary: process start to the first /ping 200 of
    // `wick serve --model-uri` (download, unpack, load, warm-up), if a release binary is given.
    if let Some(wick) = std::env::var_os("WICK_BIN") {
        for (label, uri) in [("S3 `.tar.gz`", &archive_uri), ("S3 prefix", &prefix_uri)] {
            let mut times = Vec::new();
            for _ in 0..iterations {
                times.push(time_to_first_ping(Path::new(&wick), uri, &options)?);
            }
            println!(
                "| `wick serve --model-uri` from {label}: start to first /ping 200 | | | | {:.0} (min {:.0}) | |",
                ms(median(&mut times)),
                ms(times[0])
            );
        }
    }

    // Baselines: copying the archive on this disk, and decompressing it to nowhere.
    let copy = repeat(iterations, || {
        std::fs::copy(&tarball, work.path().join("copy.tar.gz"))?;
        Ok(())
    })?;
    let gunzip = repeat(iterations, || {
        let mut decoder = flate2::read::GzDecoder::new(std::fs::File::open(&tarball)?);
        let mut sink = vec![0u8; 256 << 10];
        while decoder.read(&mut sink)? > 0 {}
        Ok(())
    })?;
    println!(
        "| baseline: `cp` of the archive | {:.0} | | | | {:.0} |",
        ms(copy),
        mb(packed.archive_bytes) / copy.as_secs_f64()
    );
    println!(
        "| baseline: gunzip to /dev/null | {:.0} | | | | {:.0} |",
        ms(gunzip),
        mb(packed.archive_bytes) / gunzip.as_secs_f64()
    );
    // What the packer's compression level buys on real weights (float data barely compresses).
    for level in [1, 6] {
        let mut size = 0;
        let time = repeat(iterations.min(3), || {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            for entry in std::fs::read_dir(&package)? {
                std::io::copy(&mut std::fs::File::open(entry?.path())?, &mut encoder)?;
            }
            size = encoder.finish()?.len() as u64;
            Ok(())
        })?;
        println!(
            "| baseline: gzip level {level} of the package files | {:.0} | | | | {:.0} (-> {:.2} MB) |",
            ms(time),
            mb(packed.bytes) / time.as_secs_f64(),
            mb(size)
        );
    }
    let load = repeat(iterations, || {
        Classifier::load(&package)?;
        Ok(())
    })?;
    println!(
        "| baseline: `Classifier::load` alone | {:.0} | | | | |",
        ms(load)
    );
    Ok(())
}

/// Starts `wick serve --model-uri URI` on a free port and polls /ping until it answers 200.
fn time_to_first_ping(wick: &Path, uri: &ArtifactUri, options: &FetchOptions) -> Result<Duration> {
    use std::io::Write;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let credentials = options
        .s3
        .credentials
        .as_ref()
        .context("static credentials")?;
    let started = Instant::now();
    let mut child = std::process::Command::new(wick)
        .args(["serve", "--model-uri", &uri.to_string()])
        .env("SAGEMAKER_BIND_TO_PORT", port.to_string())
        .env(
            "AWS_ENDPOINT_URL_S3",
            options.s3.endpoint_url.clone().unwrap_or_default(),
        )
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", &credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &credentials.secret_access_key)
        .env("RUST_LOG", "error")
        .spawn()?;
    let result = loop {
        if started.elapsed() > Duration::from_secs(60) {
            break Err(anyhow::anyhow!("no /ping 200 within 60 s"));
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                break Ok(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill()?;
    child.wait()?;
    result
}

fn repeat(iterations: usize, mut step: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        step()?;
        times.push(started.elapsed());
    }
    Ok(median(&mut times))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

async fn start_s3(root: &Path) -> Result<String> {
    let mut builder = S3ServiceBuilder::new(
        s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?,
    );
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}
