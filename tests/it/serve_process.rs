//! `wick serve` as SageMaker runs it: the real binary on an ephemeral port
//! (`SAGEMAKER_BIND_TO_PORT=0`) with the real EfficientNet-Lite0 package, driven over TCP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::http::{request, Connection};
use crate::support::{fixture, lite0_package};

/// A running `wick serve` process, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Every line of its stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server and waits until it listens (not until it is ready).
    pub(crate) fn start(model_dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
            .args(["--log-format", "json", "serve", "--model-dir"])
            .arg(model_dir)
            .env("SAGEMAKER_BIND_TO_PORT", "0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let log_writer = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let address = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("address").and_then(|a| a.as_str()).map(String::from));
                if let Some(address) = address {
                    let _ = tx.send(address);
                }
                log_writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
            let log = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
            format!("the server never logged its address; its log:\n{log}")
        })?;
        let port = address
            .rsplit(':')
            .next()
            .context("address without port")?
            .parse::<u16>()?;
        Ok(Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        })
    }

    /// Polls /ping until 200.
    pub(crate) fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(reply) = request(self.addr, "GET", "/ping", &[], b"") {
                if reply.status == 200 {
                    return Ok(());
                }
                assert_eq!(reply.status, 503, "/ping is 503 until ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the server did not become ready")
    }

    /// The log lines written so far.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the server did not exit within {timeout:?}")
    }

    /// Peak resident memory of the process, from /proc.
    pub(crate) fn peak_rss_mb(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM")?
            .parse()?;
        Ok(kb / 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn ready_server(env: &[(&str, &str)]) -> Result<Server> {
    let server = Server::start(&lite0_package()?, env)?;
    server.wait_ready()?;
    Ok(server)
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A version-1 `.npy` file of uint8 data.
fn npy_u8(shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

pub(crate) fn top1(predictions: &serde_json::Value) -> &str {
    predictions[0]["label"].as_str().unwrap_or_default()
}

/// `clients` keep-alive connections sending `chelsea.jpg` `requests` times in all, every reply
/// checked (200, top-1 "Egyptian cat"). Each handle yields how many its client sent.
pub(crate) fn start_clients(
    addr: SocketAddr,
    clients: usize,
    requests: usize,
) -> Result<Vec<JoinHandle<Result<usize>>>> {
    let jpg = Arc::new(std::fs::read(fixture("chelsea.jpg"))?);
    Ok((0..clients)
        .map(|client| {
            let jpg = Arc::clone(&jpg);
            let count = requests / clients + usize::from(client < requests % clients);
            std::thread::spawn(move || -> Result<usize> {
                let mut connection = Connection::open(addr)?;
                for _ in 0..count {
                    let reply = connection.send(
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
                    anyhow::ensure!(top1(&reply.json()?) == "Egyptian cat", "wrong answer");
                }
                Ok(count)
            })
        })
        .collect())
}

/// Waits for the clients; the total number of correct replies.
pub(crate) fn join_clients(clients: Vec<JoinHandle<Result<usize>>>) -> Result<usize> {
    let mut total = 0;
    for client in clients {
        total += client
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(total)
}

#[test]
fn every_request_form_classifies_the_cat() -> Result<()> {
    let server = ready_server(&[])?;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let png = std::fs::read(fixture("chelsea.png"))?;
    let pixels = image::load_from_memory(&png)?.to_rgb8();
    let (w, h) = pixels.dimensions();

    for (content_type, body) in [
        ("image/jpeg", jpg.clone()),
        ("image/png", png.clone()),
        ("application/x-image", jpg.clone()),
        ("image/x-image", png.clone()),
        ("application/octet-stream", jpg.clone()),
        (
            "application/json",
            format!(r#"{{"inputs": "{}"}}"#, b64(&jpg)).into_bytes(),
        ),
        (
            "application/x-npy",
            npy_u8(&format!("({},)", jpg.len()), &jpg),
        ),
        (
            "application/x-npy",
            npy_u8(&format!("({h}, {w}, 3)"), pixels.as_raw()),
        ),
    ] {
        let reply = request(
            server.addr,
            "POST",
            "/invocations",
            &[("Content-Type", content_type), ("Accept", "*/*")],
            &body,
        )?;
        assert_eq!(
            reply.status,
            200,
            "{content_type}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("content-type"), "application/json");
        let predictions = reply.json()?;
        assert_eq!(
            top1(&predictions),
            "Egyptian cat",
            "{content_type}: {predictions}"
        );
        assert_eq!(
            predictions.as_array().map(Vec::len),
            Some(5),
            "default top_k is 5"
        );
        let attributes = reply.header("x-amzn-sagemaker-custom-attributes");
        assert!(
            attributes.contains("request_id=") && attributes.contains("inference_ms="),
            "{attributes}"
        );
    }

    // A list in, a list out; parameters.top_k; JSON Lines by Accept.
    let list = format!(
        r#"{{"inputs": ["{}", "{}"], "parameters": {{"top_k": 2}}}}"#,
        b64(&jpg),
        b64(&png)
    );
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[("Content-Type", "application/json")],
        list.as_bytes(),
    )?;
    let results = reply.json()?;
    assert_eq!(results.as_array().map(Vec::len), Some(2));
    assert!(results
        .as_array()
        .into_iter()
        .flatten()
        .all(|r| top1(r) == "Egyptian cat" && r.as_array().map(Vec::len) == Some(2)));
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/jsonlines"),
        ],
        list.as_bytes(),
    )?;
    assert_eq!(reply.header("content-type"), "application/jsonlines");
    let lines: Vec<serde_json::Value> = String::from_utf8(reply.body)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "one line per image");

    // Options in Custom-Attributes; every SageMaker header and unknown ones are ignored.
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/jpeg"),
            ("X-Amzn-SageMaker-Custom-Attributes", "trace=abc;top_k=3"),
            ("X-Amzn-SageMaker-Target-Model", "m.tar.gz"),
            ("X-Amzn-SageMaker-Target-Variant", "v1"),
            ("X-Amzn-SageMaker-Inference-Id", "id-1"),
            ("X-Amzn-SageMaker-Enable-Explanations", "`false`"),
            ("X-Random", "1"),
        ],
        &jpg,
    )?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()?.as_array().map(Vec::len), Some(3));
    Ok(())
}

#[test]
fn errors_are_json_with_the_right_status_and_keep_the_connection() -> Result<()> {
    let server = ready_server(&[("WICK_MAX_IMAGE_PIXELS", "100000")])?;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let small = {
        let img = image::load_from_memory(&jpg)?.resize_exact(
            200,
            150,
            image::imageops::FilterType::Triangle,
        );
        let mut out = std::io::Cursor::new(Vec::new());
        img.to_rgb8().write_to(&mut out, image::ImageFormat::Jpeg)?;
        out.into_inner()
    };
    let long_attributes = "a".repeat(1025);
    // (headers, body, expected status, expected error_type)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("Content-Type", "image/jpeg")],
            jpg[..jpg.len() / 2].to_vec(),
            400,
            "invalid_image",
        ),
        (
            vec![("Content-Type", "text/csv")],
            b"a,b".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            vec![
                ("Content-Type", "image/jpeg"),
                ("Accept", "application/xml"),
            ],
            small.clone(),
            406,
            "not_acceptable",
        ),
        (
            vec![("Content-Type", "application/json")],
            b"{\"inputs\": \"***\"}".to_vec(),
            400,
            "validation",
        ),
        (
            vec![("Content-Type", "application/json")],
            b"{not json".to_vec(),
            400,
            "validation",
        ),
        (
            vec![
                ("Content-Type", "image/jpeg"),
                ("X-Amzn-SageMaker-Custom-Attributes", &long_attributes),
            ],
            small.clone(),
            400,
            "validation",
        ),
        (
            vec![("Content-Type", "image/jpeg")],
            jpg.clone(),
            413,
            "image_too_large",
        ),
        (
            vec![("Content-Type", "image/jpeg")],
            Vec::new(),
            400,
            "validation",
        ),
    ];
    let mut connection = Connection::open(server.addr)?;
    for (headers, body, status, error_type) in cases {
        let reply = connection.send("POST", "/invocations", &headers, &body)?;
        assert_eq!(
            reply.status,
            status,
            "{headers:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let json = reply.json()?;
        assert_eq!(json["error_type"], error_type, "{json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()) && reply.body.len() < 2048);
    }
    // An oversized body gets a JSON 413, and the same connection still serves the next request.
    let big = vec![0u8; 6 * 1024 * 1024 + 1];
    let reply = connection.send(
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &big,
    )?;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()?["error_type"], "payload_too_large");
    let reply = connection.send(
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &small,
    )?;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = connection.send("GET", "/models", &[], b"")?;
    assert_eq!(
        (reply.status, reply.json()?["error_type"].clone()),
        (404, "not_found".into())
    );
    // A body of exactly the limit is read in full (it is not an image, so 400, not 413).
    let reply = connection.send(
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &big[1..],
    )?;
    assert_eq!(reply.status, 400);
    Ok(())
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_zero() -> Result<()> {
    let mut server = ready_server(&[("WICK_FAULT_INFERENCE_DELAY_MS", "1500")])?;
    let addr = server.addr;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let in_flight = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/invocations",
            &[("Content-Type", "image/jpeg")],
            &jpg,
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let signalled = Instant::now();
    server.signal("TERM")?;
    let reply = in_flight
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    assert_eq!(reply.status, 200, "the in-flight request completes");
    assert_eq!(top1(&reply.json()?), "Egyptian cat");
    let status = server.wait_exit(Duration::from_secs(25))?;
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        signalled.elapsed()
    );
    Ok(())
}

#[test]
fn a_slow_model_is_cut_off_with_504_and_the_server_stays_up() -> Result<()> {
    let server = ready_server(&[
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1"),
        ("WICK_FAULT_INFERENCE_DELAY_MS", "2500"),
    ])?;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let started = Instant::now();
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &jpg,
    )?;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()?["error_type"], "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(request(server.addr, "GET", "/ping", &[], b"")?.status, 200);
    Ok(())
}

#[test]
fn sixteen_concurrent_clients_all_get_correct_answers() -> Result<()> {
    let server = ready_server(&[])?;
    assert_eq!(join_clients(start_clients(server.addr, 16, 200)?)?, 200);
    // One model copy: the whole process stays far below two copies of model + activations.
    let peak = server.peak_rss_mb()?;
    assert!(peak < 400, "peak RSS {peak} MB");
    Ok(())
}

#[test]
fn sagemaker_environment_settings_take_effect() -> Result<()> {
    let server = ready_server(&[
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20"),
        (
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
            "application/jsonlines",
        ),
        ("SAGEMAKER_BATCH", "True"),
        ("MODEL_SERVER_WORKERS", "2"),
    ])?;
    let params = request(server.addr, "GET", "/execution-parameters", &[], b"")?.json()?;
    assert_eq!(params["MaxPayloadInMB"], 20);
    assert_eq!(params["BatchStrategy"], "MULTI_RECORD");
    let concurrency = params["MaxConcurrentTransforms"].as_u64().unwrap_or(0);
    assert!(concurrency >= 1 && concurrency * 20 <= 100, "{params}");
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &jpg,
    )?;
    assert_eq!(reply.header("content-type"), "application/jsonlines");
    // A 19 MiB body is within the raised limit (read in full; not an image, so 400 not 413).
    let reply = request(
        server.addr,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &vec![0u8; 19 << 20],
    )?;
    assert_eq!(reply.status, 400);
    Ok(())
}

#[test]
fn bad_settings_and_a_missing_model_exit_non_zero_with_the_reason() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--model-dir", "/nonexistent/model"])
        .env("SAGEMAKER_BIND_TO_PORT", "0")
        .env("SAGEMAKER_MODEL_SERVER_WORKERS", "0")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("SAGEMAKER_MODEL_SERVER_WORKERS"));

    let mut server = Server::start(Path::new("/nonexistent/model"), &[])?;
    let status = server.wait_exit(Duration::from_secs(20))?;
    assert_eq!(
        status.code(),
        Some(1),
        "a model that cannot load ends the process"
    );
    Ok(())
}

#[test]
fn ping_is_empty_fast_under_load_and_connections_stay_open() -> Result<()> {
    let server = ready_server(&[("WICK_FAULT_INFERENCE_DELAY_MS", "300")])?;
    let addr = server.addr;
    // Keep the inference worker saturated with slow requests...
    let load = start_clients(addr, 4, 20)?;
    // ...while /ping keeps answering at once: new connections and a long keep-alive one.
    std::thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let reply = request(addr, "GET", "/ping", &[], b"")?;
        slowest = slowest.max(started.elapsed());
        assert_eq!((reply.status, reply.header("content-length")), (200, "0"));
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest /ping under load: {slowest:?}"
    );
    let mut connection = Connection::open(addr)?;
    for _ in 0..1000 {
        assert_eq!(connection.send("GET", "/ping", &[], b"")?.status, 200);
    }
    assert_eq!(join_clients(load)?, 20);
    // A chunked body without Content-Length (batch transform streaming) is accepted.
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let reply = connection.send_chunked(
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &jpg,
        4096,
    )?;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    Ok(())
}

#[test]
fn unknown_commands_fail_with_usage() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .arg("bogus")
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("Usage"));
    Ok(())
}

/// The TCP port a process listens on, from /proc/net/tcp (state 0A = LISTEN) and its fds.
pub(crate) fn wait_for_port(pid: u32) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(String::from)
            })
            .collect();
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap_or_default();
                return Ok(u16::from_str_radix(port, 16)?);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("process {pid} never listened")
}

#[test]
fn four_workers_share_one_model_copy() -> Result<()> {
    // SageMaker contract item 20 (no per-worker model copies): after loading and warm-up, four
    // workers hold the same memory as one. Under load each worker adds only the activations of
    // the batch it is running; the whole process stays within the 150 MB serving budget.
    let mut idle = Vec::new();
    for workers in ["1", "4"] {
        let server = ready_server(&[("SAGEMAKER_MODEL_SERVER_WORKERS", workers)])?;
        idle.push(server.peak_rss_mb()?);
        assert_eq!(join_clients(start_clients(server.addr, 8, 40)?)?, 40);
        let loaded = server.peak_rss_mb()?;
        assert!(
            loaded < 150,
            "{workers} worker(s): peak RSS under load {loaded} MB"
        );
    }
    assert!(
        (idle[1] as f64) < 1.3 * idle[0] as f64,
        "RSS after warm-up with 1 and 4 workers: {idle:?} MB"
    );
    Ok(())
}

#[test]
fn archive_caps_are_settings_and_a_refused_archive_ends_the_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("model.tar.gz");
    wick::artifacts::archive::pack(&lite0_package()?, &archive)?;
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--model-uri"])
        .arg(&archive)
        .env("SAGEMAKER_BIND_TO_PORT", "0")
        .env("WICK_MAX_ARCHIVE_ENTRIES", "2")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8(out.stderr)?;
    assert!(log.contains("more than 2 entries"), "{log}");
    Ok(())
}
