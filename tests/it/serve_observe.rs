//! What an operator sees of `wick serve`: the log level as the shipped image sets it (the
//! Dockerfile's environment, nothing removed), request ids that join SageMaker's, and
//! `/metrics` read by a real Prometheus text parser after known traffic.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus_parse::{Scrape, Value};

use crate::http::request;
use crate::serve_process::{join_clients, ready_server, start_clients, wait_for_port};
use crate::support::{fixture, lite0_package};

/// The `ENV` settings of the Dockerfile's runtime image (the stages from `AS base` on), as
/// `(name, value)` pairs.
fn runtime_image_env() -> Result<Vec<(String, String)>> {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))?;
    let runtime = dockerfile
        .split_once(" AS base")
        .context("the Dockerfile has no `base` stage")?
        .1;
    let mut env = Vec::new();
    for line in runtime.lines() {
        let Some(settings) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        for setting in settings.split_whitespace() {
            let (name, value) = setting
                .split_once('=')
                .with_context(|| format!("ENV without `=`: {line}"))?;
            env.push((name.to_string(), value.trim_matches('"').to_string()));
        }
    }
    Ok(env)
}

/// Runs the server with exactly the image's environment plus `extra`, sends a ping and a
/// classification (with SageMaker's inference id), stops it, and returns its log.
fn logs_as_the_image_runs(extra: &[(&str, &str)]) -> Result<String> {
    let child = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["--log-format", "json", "serve", "--model-dir"])
        .arg(lite0_package()?)
        .env_clear()
        .envs(runtime_image_env()?)
        .env("SAGEMAKER_BIND_TO_PORT", "0")
        .envs(extra.iter().copied())
        .stderr(Stdio::piped())
        .spawn()?;
    // At level 40 the address line is not logged: find the port from /proc instead.
    let port = wait_for_port(child.id())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(addr, "GET", "/ping", &[], b"")
        .map(|r| r.status)
        .unwrap_or(0)
        != 200
    {
        anyhow::ensure!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let reply = request(
        addr,
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/jpeg"),
            ("X-Amzn-SageMaker-Inference-Id", "5f2c7a1e-log-test"),
        ],
        &jpg,
    )?;
    anyhow::ensure!(reply.status == 200, "status {}", reply.status);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    let out = child.wait_with_output()?;
    let logs = String::from_utf8(out.stderr)?;
    for line in logs.lines() {
        anyhow::ensure!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    Ok(logs)
}

/// (extra environment, request lines at info expected, debug detail expected)
type LogCase = (&'static [(&'static str, &'static str)], bool, bool);

#[test]
fn sagemaker_log_level_governs_the_image_and_rust_log_still_wins() -> Result<()> {
    let image_env = runtime_image_env()?;
    assert!(
        !image_env
            .iter()
            .any(|(name, _)| name == "RUST_LOG" || name == "SAGEMAKER_CONTAINER_LOG_LEVEL"),
        "the image must set neither: {image_env:?}"
    );
    let cases: [LogCase; 6] = [
        (&[], true, false),
        (&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "20")], true, false),
        (&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "40")], false, false),
        (&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "ERROR")], false, false),
        (&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "10")], true, true),
        (
            &[
                ("SAGEMAKER_CONTAINER_LOG_LEVEL", "40"),
                ("RUST_LOG", "info"),
            ],
            true,
            false,
        ),
    ];
    for (extra, expect_requests, expect_debug) in cases {
        let logs = logs_as_the_image_runs(extra)?;
        assert_eq!(
            logs.contains("\"invocation\""),
            expect_requests,
            "{extra:?}: {logs}"
        );
        // Level 10's promised detail: every /ping, each request's headers and size, each
        // forward pass.
        for detail in ["\"ping\"", "\"request received\"", "\"forward pass\""] {
            assert_eq!(
                logs.contains(detail),
                expect_debug,
                "{extra:?}, {detail}: {logs}"
            );
        }
        if expect_requests {
            // The request line carries SageMaker's inference id, so CloudWatch lines join up.
            assert!(logs.contains("5f2c7a1e-log-test"), "{extra:?}: {logs}");
        }
    }
    Ok(())
}

#[test]
fn the_request_id_is_sagemakers_inference_id_or_trace_root() -> Result<()> {
    let server = ready_server(&[])?;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let request_id = |headers: &[(&str, &str)]| -> Result<String> {
        let mut all = vec![("Content-Type", "image/jpeg")];
        all.extend_from_slice(headers);
        let reply = request(server.addr, "POST", "/invocations", &all, &jpg)?;
        let attributes = reply
            .header("x-amzn-sagemaker-custom-attributes")
            .to_string();
        let id = attributes
            .split(';')
            .find_map(|field| field.strip_prefix("request_id="))
            .with_context(|| format!("no request_id in {attributes:?}"))?;
        Ok(id.to_string())
    };
    assert_eq!(
        request_id(&[("X-Amzn-SageMaker-Inference-Id", "abc-123")])?,
        "abc-123"
    );
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    assert_eq!(
        request_id(&[("X-Amzn-Trace-Id", trace)])?,
        "1-5759e988-bd862e3fe1be46a994272793"
    );
    // Both: SageMaker's own id wins. Characters that would break Custom-Attributes go.
    assert_eq!(
        request_id(&[
            ("X-Amzn-Trace-Id", trace),
            ("X-Amzn-SageMaker-Inference-Id", "id;top_k=1"),
        ])?,
        "idtop_k1"
    );
    let generated = request_id(&[])?;
    assert!(generated.len() > 8, "{generated}");
    assert_ne!(generated, request_id(&[])?, "generated ids differ");
    Ok(())
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            Value::Summary(_) => None,
        })
}

fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let reply = request(addr, "GET", "/metrics", &[], b"")?;
    anyhow::ensure!(reply.status == 200, "/metrics answered {}", reply.status);
    anyhow::ensure!(
        reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "content type {}",
        reply.header("content-type")
    );
    let text = String::from_utf8(reply.body)?;
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?)
}

#[test]
fn metrics_count_known_traffic_exactly_and_scrapes_stay_fast_under_load() -> Result<()> {
    let server = ready_server(&[])?;
    let addr = server.addr;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let post = |content_type: &str, body: &[u8]| -> Result<u16> {
        Ok(request(
            addr,
            "POST",
            "/invocations",
            &[("Content-Type", content_type)],
            body,
        )?
        .status)
    };
    // Known traffic: 3 single images, one list of 2, 2 undecodable images, 1 unknown type.
    for _ in 0..3 {
        assert_eq!(post("image/jpeg", &jpg)?, 200);
    }
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &jpg);
    let list = format!(r#"{{"inputs": ["{b64}", "{b64}"]}}"#);
    assert_eq!(post("application/json", list.as_bytes())?, 200);
    for _ in 0..2 {
        assert_eq!(post("image/jpeg", b"not a picture")?, 400);
    }
    assert_eq!(post("text/csv", b"1,2,3")?, 415);

    let metrics = scrape(addr)?;
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(
            sample(&metrics, name, labels),
            Some(value),
            "{name}{labels:?}"
        );
    };
    let ok = [("status", "200"), ("error_type", "none")];
    expect("wick_requests_total", &ok, 4.0);
    let bad = [("status", "400"), ("error_type", "invalid_image")];
    expect("wick_requests_total", &bad, 2.0);
    let unsupported = [("status", "415"), ("error_type", "unsupported_media_type")];
    expect("wick_requests_total", &unsupported, 1.0);
    expect("wick_request_duration_seconds_count", &[], 7.0);
    expect("wick_request_duration_seconds", &[], 7.0);
    // Decoding and preprocessing are timed for every request that reached them, the two
    // undecodable images included (their records fail there); only the 4 good ones queue.
    expect("wick_decode_duration_seconds_count", &[], 6.0);
    expect("wick_preprocess_duration_seconds_count", &[], 6.0);
    expect("wick_queue_duration_seconds_count", &[], 4.0);
    expect("wick_inference_duration_seconds_count", &[], 4.0);
    // One forward pass per request (sent one at a time): 1 + 1 + 1 + 2 images.
    expect("wick_batch_size_images_count", &[], 4.0);
    expect("wick_batch_size_images_sum", &[], 5.0);
    expect("wick_queue_depth_images", &[], 0.0);
    expect("wick_model_ready", &[], 1.0);
    expect("wick_healthy", &[], 1.0);
    expect("wick_workers_alive", &[], 1.0);
    // The scrape's own connection is open.
    let connections = sample(&metrics, "wick_open_connections", &[]).unwrap_or(0.0);
    assert!(connections >= 1.0, "open connections {connections}");
    let rss = sample(&metrics, "wick_process_resident_memory_bytes", &[]).unwrap_or(0.0);
    assert!(rss > 20e6 && rss < 1e9, "RSS {rss}");
    for name in ["wick_model_load_seconds", "wick_model_warmup_seconds"] {
        let seconds = sample(&metrics, name, &[]).unwrap_or(0.0);
        assert!(seconds > 0.0 && seconds < 60.0, "{name} {seconds}");
    }

    // Scrapes while inference saturates both cores: fast, and never logged at info.
    let load = start_clients(addr, 6, 60)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        scrape(addr)?;
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(join_clients(load)?, 60);
    assert!(
        slowest < Duration::from_millis(250),
        "slowest scrape under load: {slowest:?}"
    );
    let after = scrape(addr)?;
    assert_eq!(sample(&after, "wick_requests_total", &ok), Some(64.0));
    let scrape_lines: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("scrape"))
        .collect();
    assert!(scrape_lines.is_empty(), "scrapes logged: {scrape_lines:?}");
    Ok(())
}
