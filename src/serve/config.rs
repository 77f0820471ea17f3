//! `ServeConfig`: the validated, resolved settings of `wick serve`, from the command line and
//! SageMaker's environment variables (aliases and batch-mode defaults applied here, once).

use crate::model::Precision;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::artifacts::{ArchiveLimits, ArtifactUri};
use crate::cli::ServeArgs;
use crate::codec::media::ResponseFormat;
use crate::codec::options::RecordErrors;

const MIB: u64 = 1024 * 1024;
/// SageMaker batch transform caps `MaxConcurrentTransforms x MaxPayloadInMB` at 100.
const BATCH_CONCURRENCY_PAYLOAD_PRODUCT: u64 = 100;

/// Everything `wick serve` needs, validated.
#[derive(Debug, Clone, Serialize)]
pub struct ServeConfig {
    /// Where the model package comes from (a local directory by default).
    pub(crate) model_uri: String,
    /// The same, parsed.
    #[serde(skip)]
    pub(crate) model_location: ArtifactUri,
    /// Caps for unpacking a model archive.
    #[serde(skip)]
    pub(crate) archive_limits: ArchiveLimits,
    /// Listening port.
    pub(crate) port: u16,
    /// Inference worker threads.
    pub(crate) workers: usize,
    /// Per-request deadline.
    #[serde(rename = "timeout_secs", serialize_with = "secs")]
    pub(crate) timeout: Duration,
    /// Largest request body in bytes (`u64::MAX`: no cap).
    pub(crate) max_payload_bytes: u64,
    /// Bodies larger than this are spooled to a temporary file.
    pub(crate) spool_threshold_bytes: u64,
    /// What a failed record does to its request, unless the request says.
    pub(crate) record_errors: RecordErrors,
    /// Response format for a missing or wildcard Accept.
    pub(crate) default_response: ResponseFormat,
    /// Images that may wait for inference.
    pub(crate) queue_capacity: usize,
    /// Most images per forward pass.
    pub(crate) max_batch_size: usize,
    /// Classes per image by default.
    pub(crate) default_top_k: usize,
    /// Decompression-bomb guard.
    pub(crate) max_image_pixels: u64,
    /// Segmentation: PNG/TIFF images over `max_image_pixels` and up to this are streamed.
    pub(crate) max_streamed_image_pixels: u64,
    /// Whether SageMaker batch transform runs this container.
    pub(crate) is_batch: bool,
    /// `BatchStrategy` for /execution-parameters.
    pub(crate) batch_strategy: String,
    /// `MaxConcurrentTransforms` for /execution-parameters.
    pub(crate) max_concurrent_transforms: usize,
    /// Whether `/` (the try-it page) and `/openapi.json` are served.
    pub(crate) ui: bool,
    /// Drain deadline after SIGTERM.
    #[serde(rename = "shutdown_grace_secs", serialize_with = "secs")]
    pub(crate) shutdown_grace: Duration,
    /// Time to receive a request's headers (and keep-alive idle limit).
    #[serde(rename = "header_read_timeout_secs", serialize_with = "secs")]
    pub(crate) header_read_timeout: Duration,
    /// Longest pause inside a request body.
    #[serde(rename = "body_read_timeout_secs", serialize_with = "secs")]
    pub(crate) body_read_timeout: Duration,
    /// Largest request line plus headers.
    pub(crate) max_header_bytes: usize,
    /// The dense convolutions' number format, over `config.json`'s (`model::precision`).
    pub(crate) precision: Option<Precision>,
    /// Whether each request prints a CloudWatch embedded-metric-format line.
    pub(crate) emf: bool,
    /// Test-only slow-model fault injection.
    #[serde(rename = "fault_inference_delay_ms", serialize_with = "optional_ms")]
    pub(crate) fault_inference_delay: Option<Duration>,
    /// Testing only: an inference worker dies after this many batches.
    pub(crate) fault_worker_exit_after: Option<u64>,
}

/// Durations in the startup log read as the flags that set them (`"timeout_secs": 60`), not
/// as serde's `{"secs": 60, "nanos": 0}`.
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn optional_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_millis()),
        None => s.serialize_none(),
    }
}

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("environment variable `{name}` must be a whole number (given: {v:?})"),
        },
        _ => Ok(None),
    }
}

impl ServeConfig {
    /// Resolves aliases and defaults and checks every limit.
    pub fn from_args(args: &ServeArgs) -> Result<Self> {
        let workers = match args.workers {
            Some(w) => w as u64,
            None => env_number("MODEL_SERVER_WORKERS")?.unwrap_or(1),
        };
        if !(1..=64).contains(&workers) {
            bail!("`workers` (SAGEMAKER_MODEL_SERVER_WORKERS) must be between 1 and 64 (given: {workers})");
        }
        let is_batch = matches!(
            args.batch.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes"
        );
        let timeout_secs = match args.timeout_secs {
            Some(t) => Some(t),
            None => match env_number("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS")? {
                Some(t) => Some(t),
                None => env_number("MODEL_SERVER_TIMEOUT")?,
            },
        }
        .unwrap_or(if is_batch { 3600 } else { 60 });
        if timeout_secs == 0 {
            bail!("`timeout-secs` (SAGEMAKER_MODEL_SERVER_TIMEOUT) must be at least 1 (given: 0)");
        }
        if args.max_payload_mb > 1024 {
            bail!("`max-payload-mb` (SAGEMAKER_MAX_PAYLOAD_IN_MB) must be between 0 (no cap) and 1024 (given: {})", args.max_payload_mb);
        }
        let record_errors = RecordErrors::parse(&args.on_record_error).ok_or_else(|| {
            anyhow::anyhow!(
                "`on-record-error` (WICK_ON_RECORD_ERROR) must be continue or fail (given: {:?})",
                args.on_record_error
            )
        })?;
        let default_response = ResponseFormat::from_media_type(&args.default_accept).ok_or_else(|| {
            anyhow::anyhow!(
                "`default-accept` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) must be application/json or application/jsonlines (given: {:?})",
                args.default_accept
            )
        })?;
        if args.max_batch_size == 0 || args.queue_capacity == 0 || args.default_top_k == 0 {
            bail!(
                "`max-batch-size`, `queue-capacity` and `default-top-k` must be at least 1 (given: {}, {}, {})",
                args.max_batch_size,
                args.queue_capacity,
                args.default_top_k
            );
        }
        let emf = match args.emf.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" | "" => false,
            other => bail!("`emf` (WICK_EMF) must be true or false (given: {other:?})"),
        };
        if args.header_read_timeout_secs == 0 || args.body_read_timeout_secs == 0 {
            bail!(
                "`header-read-timeout-secs` (WICK_HEADER_READ_TIMEOUT_SECS) and `body-read-timeout-secs` (WICK_BODY_READ_TIMEOUT_SECS) must be at least 1 (given: {}, {})",
                args.header_read_timeout_secs,
                args.body_read_timeout_secs
            );
        }
        // Below 8 KiB ordinary requests (trace ids, 1024 characters of Custom-Attributes) fail.
        if !(8192..=1 << 20).contains(&args.max_header_bytes) {
            bail!(
                "`max-header-bytes` (WICK_MAX_HEADER_BYTES) must be between 8192 and 1048576 (given: {})",
                args.max_header_bytes
            );
        }
        let batch_strategy = match args.batch_strategy.as_str() {
            s @ ("MULTI_RECORD" | "SINGLE_RECORD" | "MultiRecord" | "SingleRecord") => s.to_string(),
            other => bail!(
                "`batch-strategy` (SAGEMAKER_BATCH_STRATEGY) must be MULTI_RECORD or SINGLE_RECORD (given: {other:?})"
            ),
        };
        let product_cap =
            (BATCH_CONCURRENCY_PAYLOAD_PRODUCT / args.max_payload_mb.max(1)).max(1) as usize;
        let max_concurrent_transforms = match args.max_concurrent_transforms {
            Some(0) => bail!("`max-concurrent-transforms` must be at least 1 (given: 0)"),
            Some(n) => n,
            // As many requests as can be queued at once, within SageMaker's product cap.
            None => (workers as usize * args.max_batch_size)
                .min(args.queue_capacity)
                .min(product_cap),
        };
        let model_location = match &args.model_uri {
            Some(uri) => uri
                .parse::<ArtifactUri>()
                .map_err(|e| anyhow::anyhow!("`model-uri` (WICK_MODEL_URI): {e}"))?,
            None => ArtifactUri::Local(args.model_dir.clone()),
        };
        Ok(ServeConfig {
            model_uri: model_location.to_string(),
            model_location,
            archive_limits: ArchiveLimits {
                max_bytes: args.max_unpacked_bytes,
                max_entries: args.max_archive_entries,
            },
            port: args.port,
            workers: workers as usize,
            timeout: Duration::from_secs(timeout_secs),
            max_payload_bytes: match args.max_payload_mb {
                0 => u64::MAX,
                mb => mb * MIB,
            },
            spool_threshold_bytes: args.spool_threshold_mb.saturating_mul(MIB),
            record_errors,
            default_response,
            queue_capacity: args.queue_capacity,
            max_batch_size: args.max_batch_size,
            default_top_k: args.default_top_k,
            max_image_pixels: args.max_image_pixels,
            max_streamed_image_pixels: args.max_streamed_image_pixels,
            is_batch,
            batch_strategy,
            max_concurrent_transforms,
            ui: args.ui,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs.min(28)),
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(args.body_read_timeout_secs),
            max_header_bytes: args.max_header_bytes,
            precision: args.precision,
            emf,
            fault_inference_delay: args.fault_inference_delay_ms.map(Duration::from_millis),
            fault_worker_exit_after: args.fault_worker_exit_after,
        })
    }

    /// `MaxPayloadInMB` as /execution-parameters reports it (0: no cap).
    pub(crate) fn max_payload_mb(&self) -> u64 {
        match self.max_payload_bytes {
            u64::MAX => 0,
            bytes => bytes / MIB,
        }
    }
}
