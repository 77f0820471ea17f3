//! Every metric `wick serve` exports, defined here once: names, help texts, labels, buckets.
//! `GET /metrics` renders them in the Prometheus text format (what SageMaker's detailed
//! observability scrapes); with `--emf true` each request also prints one CloudWatch
//! embedded-metric-format line on stdout. Nothing here waits on the inference queue: a scrape
//! reads atomics and `/proc/self/statm`.

use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of a `/metrics` answer (Prometheus text format 0.0.4).
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Seconds, from 1 ms to the longest request timeout SageMaker allows (3600 s).
const LATENCY_BUCKETS_SECS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];
/// Images per forward pass (`--max-batch-size` is at most a few hundred).
const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The labels of `wick_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    /// The `error_type` of the JSON error body; `none` for a success.
    error_type: &'static str,
}

/// How long each stage of one request took; `None` for a stage it did not reach.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StageTimes {
    pub(crate) decode: Option<Duration>,
    pub(crate) preprocess: Option<Duration>,
    pub(crate) queue: Option<Duration>,
    pub(crate) inference: Option<Duration>,
}

/// What a scrape reads from the engine and the process at that moment.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) is_ready: bool,
    pub(crate) is_healthy: bool,
    pub(crate) workers_alive: usize,
    pub(crate) queue_depth_images: usize,
}

/// The server's metrics (cheap to share: every metric is an `Arc` inside).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histogram,
    decode_seconds: Histogram,
    preprocess_seconds: Histogram,
    queue_seconds: Histogram,
    inference_seconds: Histogram,
    batch_size_images: Histogram,
    queue_depth_images: Gauge,
    model_load_seconds: Gauge<f64, AtomicU64>,
    model_warmup_seconds: Gauge<f64, AtomicU64>,
    ready: Gauge,
    healthy: Gauge,
    workers_alive: Gauge,
    resident_memory_bytes: Gauge,
    open_connections: Gauge,
    is_emf: bool,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECS)
}

impl Metrics {
    /// Registers every metric under the `wick_` prefix. `is_emf`: also print one CloudWatch
    /// embedded-metric-format line per request on stdout.
    pub(crate) fn new(is_emf: bool) -> Self {
        let metrics = Metrics {
            registry: Registry::with_prefix("wick"),
            requests: Family::default(),
            request_seconds: latency_histogram(),
            decode_seconds: latency_histogram(),
            preprocess_seconds: latency_histogram(),
            queue_seconds: latency_histogram(),
            inference_seconds: latency_histogram(),
            batch_size_images: Histogram::new(BATCH_SIZE_BUCKETS),
            queue_depth_images: Gauge::default(),
            model_load_seconds: Gauge::default(),
            model_warmup_seconds: Gauge::default(),
            ready: Gauge::default(),
            healthy: Gauge::default(),
            workers_alive: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            open_connections: Gauge::default(),
            is_emf,
        };
        metrics.register_all()
    }

    fn register_all(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "requests",
            "POST /invocations requests answered, by HTTP status and error_type",
            self.requests.clone(),
        );
        let histograms = [
            (
                "request_duration_seconds",
                "Whole /invocations requests, from the handler's start to the answer",
                &self.request_seconds,
            ),
            (
                "decode_duration_seconds",
                "Decoding a request's images",
                &self.decode_seconds,
            ),
            (
                "preprocess_duration_seconds",
                "The model's preparation of a request's images (resize, normalise)",
                &self.preprocess_seconds,
            ),
            (
                "queue_duration_seconds",
                "Waiting in the inference queue",
                &self.queue_seconds,
            ),
            (
                "inference_duration_seconds",
                "The forward pass that carried a request's images",
                &self.inference_seconds,
            ),
            (
                "batch_size_images",
                "Images per forward pass (dynamic batching)",
                &self.batch_size_images,
            ),
        ];
        for (name, help, histogram) in histograms {
            r.register(name, help, histogram.clone());
        }
        let gauges = [
            (
                "queue_depth_images",
                "Images waiting for an inference worker",
                &self.queue_depth_images,
            ),
            (
                "model_ready",
                "1 once the model has loaded and warmed up",
                &self.ready,
            ),
            ("healthy", "1 while /ping answers 200", &self.healthy),
            (
                "workers_alive",
                "Inference worker threads running",
                &self.workers_alive,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory of the wick process",
                &self.resident_memory_bytes,
            ),
            (
                "open_connections",
                "Open HTTP connections",
                &self.open_connections,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "model_load_seconds",
            "Loading the model package (after any download)",
            self.model_load_seconds.clone(),
        );
        r.register(
            "model_warmup_seconds",
            "The warm-up inference before /ping turns 200",
            self.model_warmup_seconds.clone(),
        );
        self
    }

    /// Counts one answered `/invocations` request and its stage times.
    pub(crate) fn observe_request(
        &self,
        status: u16,
        error_type: Option<&'static str>,
        total: Duration,
        stages: &StageTimes,
    ) {
        let error_type = error_type.unwrap_or("none");
        self.requests
            .get_or_create(&RequestLabels { status, error_type })
            .inc();
        self.request_seconds.observe(total.as_secs_f64());
        let pairs = [
            (&self.decode_seconds, stages.decode),
            (&self.preprocess_seconds, stages.preprocess),
            (&self.queue_seconds, stages.queue),
            (&self.inference_seconds, stages.inference),
        ];
        for (histogram, time) in pairs {
            if let Some(time) = time {
                histogram.observe(time.as_secs_f64());
            }
        }
        if self.is_emf {
            let line = emf_line(status, error_type, total, stages);
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }

    /// The histogram a worker records each forward pass's image count in.
    pub(crate) fn batch_size_images(&self) -> Histogram {
        self.batch_size_images.clone()
    }

    /// Records how long loading and warming up took.
    pub(crate) fn set_model_times(&self, load: Duration, warmup: Duration) {
        self.model_load_seconds.set(load.as_secs_f64());
        self.model_warmup_seconds.set(warmup.as_secs_f64());
    }

    /// Counts a connection open until the returned guard drops.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard(self.open_connections.clone())
    }

    /// The text a scrape answers, with the gauges read now.
    pub(crate) fn render(&self, now: Snapshot) -> String {
        self.ready.set(i64::from(now.is_ready));
        self.healthy.set(i64::from(now.is_ready && now.is_healthy));
        self.workers_alive.set(now.workers_alive as i64);
        self.queue_depth_images.set(now.queue_depth_images as i64);
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory_bytes.set(bytes as i64);
        }
        let mut text = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Decrements `wick_open_connections` when the connection ends.
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resident set size from `/proc/self/statm` (pages), `None` off Linux.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // x86-64 and aarch64 Linux as SageMaker runs them: 4 KiB pages.
    Some(pages * 4096)
}

/// One CloudWatch embedded-metric-format line: CloudWatch Logs turns it into metrics in the
/// `wick` namespace, by status, without a scraper. Only the stages the request reached are
/// declared (a declared metric must be present in the line).
fn emf_line(
    status: u16,
    error_type: &str,
    total: Duration,
    stages: &StageTimes,
) -> serde_json::Value {
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut line = serde_json::json!({
        "Status": status.to_string(),
        "ErrorType": error_type,
        "Requests": 1,
    });
    let mut declared = vec![serde_json::json!({"Name": "Requests", "Unit": "Count"})];
    let latencies = [
        ("Latency", Some(total)),
        ("DecodeLatency", stages.decode),
        ("PreprocessLatency", stages.preprocess),
        ("QueueLatency", stages.queue),
        ("InferenceLatency", stages.inference),
    ];
    for (name, time) in latencies {
        if let Some(time) = time {
            line[name] = serde_json::json!(time.as_secs_f64() * 1e3);
            declared.push(serde_json::json!({"Name": name, "Unit": "Milliseconds"}));
        }
    }
    line["_aws"] = serde_json::json!({
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": "wick",
            "Dimensions": [["Status"]],
            "Metrics": declared,
        }],
    });
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_units() {
        let metrics = Metrics::new(false);
        metrics.observe_request(
            200,
            None,
            Duration::from_millis(20),
            &StageTimes {
                decode: Some(Duration::from_millis(3)),
                ..StageTimes::default()
            },
        );
        let text = metrics.render(Snapshot::default());
        for line in [
            "wick_requests_total{status=\"200\",error_type=\"none\"} 1",
            "wick_request_duration_seconds_count 1",
            "wick_decode_duration_seconds_count 1",
            "wick_queue_duration_seconds_count 0",
            "# TYPE wick_batch_size_images histogram",
            "# TYPE wick_open_connections gauge",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn an_emf_line_declares_the_metrics_it_carries() {
        let stages = StageTimes {
            decode: Some(Duration::from_millis(2)),
            ..StageTimes::default()
        };
        let line = emf_line(400, "invalid_image", Duration::from_millis(5), &stages);
        let declared = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "wick");
        assert_eq!(declared["Dimensions"][0][0], "Status");
        assert_eq!(line["Status"], "400");
        assert_eq!(line["ErrorType"], "invalid_image");
        assert_eq!(line["Latency"], 5.0);
        assert_eq!(line["DecodeLatency"], 2.0);
        // Stages the request did not reach are absent, not zero, and not declared.
        assert!(line.get("InferenceLatency").is_none(), "{line}");
        let names: Vec<&str> = declared["Metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["Name"].as_str())
            .collect();
        assert_eq!(names, ["Requests", "Latency", "DecodeLatency"]);
        assert!(line["_aws"]["Timestamp"].as_u64().unwrap_or(0) > 1_600_000_000_000);
    }
}
