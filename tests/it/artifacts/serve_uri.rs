//! `wick serve --model-uri s3://...`: the real binary downloads the real EfficientNet-Lite0
//! package from an in-process S3 server (as a `.tar.gz` and as a prefix), answers /ping 503
//! while it does, then 200, and classifies the cat; a missing key ends the process with the
//! URI and the S3 error code in its log.

use anyhow::Result;
use wick::artifacts::archive::pack;

use super::server::{aws_env, S3Server};
use crate::http::request;
use crate::serve_process::Server;
use crate::support::{fixture, lite0_package};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fetches_the_model_from_s3_and_classifies() -> Result<()> {
    let s3 = S3Server::start().await?;
    let package = lite0_package()?;
    s3.bucket("models")?;
    for entry in std::fs::read_dir(&package)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        s3.seed("models", &format!("lite0/{name}"), &std::fs::read(&path)?)?;
    }
    let scratch = tempfile::tempdir()?;
    let archive = scratch.path().join("model.tar.gz");
    pack(&package, &archive)?;
    s3.seed("models", "archives/model.tar.gz", &std::fs::read(&archive)?)?;

    for uri in ["s3://models/archives/model.tar.gz", "s3://models/lite0/"] {
        let mut env: Vec<(&str, String)> = aws_env(&s3, true);
        env.push(("WICK_MODEL_URI", uri.to_string()));
        env.push(("RUST_LOG", "info".to_string()));
        let jpg = std::fs::read(fixture("chelsea.jpg"))?;
        let label = tokio::task::spawn_blocking(move || -> Result<String> {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let server = Server::start(std::path::Path::new("/nonexistent/unused"), &env)?;
            server.wait_ready()?;
            let reply = request(
                server.addr,
                "POST",
                "/invocations",
                &[("Content-Type", "image/jpeg")],
                &jpg,
            )?;
            anyhow::ensure!(
                reply.status == 200,
                "status {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            Ok(reply.json()?[0]["label"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .await??;
        assert_eq!(label, "Egyptian cat", "{uri}");
    }

    // A key that does not exist: the process exits non-zero, its log naming the URI and code.
    let env = aws_env(&s3, true);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
            .args(["--log-format", "json", "serve"])
            .env("SAGEMAKER_BIND_TO_PORT", "0")
            .env("WICK_MODEL_URI", "s3://models/missing/model.tar.gz")
            .envs(env)
            .output()
    })
    .await??;
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8(out.stderr)?;
    let failure = log
        .lines()
        .find(|l| l.contains("failed to load"))
        .unwrap_or_default();
    assert!(
        failure.contains("s3://models/missing/model.tar.gz") && failure.contains("NoSuchKey"),
        "{log}"
    );
    Ok(())
}
