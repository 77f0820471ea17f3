//! Command-line interface: every subcommand, flag and environment variable, with the help
//! text users see in `wick --help`. Raw values only; commands validate what they use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::artifacts::ArtifactUri;
use crate::model::Precision;

/// wick: a SageMaker-compatible serving and training container for image models.
#[derive(Debug, Parser)]
#[command(name = "wick", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, env = "WICK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The command line to parse, given the process's own (`std::env::args_os()`). Run through a
/// link named `serve` or `train` (the image puts both on `PATH` as links to `wick`, and
/// SageMaker or `--entrypoint serve` may run them by name), the name is the subcommand:
/// `serve --help` parses as `wick serve --help`. Any other name leaves the arguments as given.
pub fn args_for_invocation(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let invoked_as = args
        .first()
        .and_then(|program| Path::new(program).file_name())
        .and_then(|name| name.to_str());
    if let Some(command @ ("serve" | "train")) = invoked_as {
        let command = OsString::from(command);
        // Help and errors then read `wick serve ...`, the command that is really running.
        args[0] = OsString::from("wick");
        args.insert(1, command);
    }
    args
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (CloudWatch Logs Insights can query the fields).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the SageMaker hosting contract: `GET /ping`, `POST /invocations`,
    /// `GET /execution-parameters` on port 8080 (`SAGEMAKER_BIND_TO_PORT`).
    Serve(ServeArgs),
    /// Run image files offline through the same pipeline `wick serve` uses (classification,
    /// segmentation or detection, as the package says); prints one JSON line per image.
    Predict(PredictArgs),
    /// Rewrite a model package with `model.safetensors` weights (memory-mapped, fast to load).
    Convert(ConvertArgs),
    /// Measure inference and preprocessing speed on this machine.
    Bench(BenchArgs),
    /// Check that a model package loads, then write the `model.tar.gz` a SageMaker Model
    /// expects (files at the archive root) and optionally upload it to S3.
    Package(PackageArgs),
    /// Fine-tune on a frozen pretrained network under SageMaker's training contract (`docker
    /// run IMAGE train`): a new classification head, or a segmentation decoder or head
    /// (`task=segmentation`); reads `/opt/ml/input`, writes a model package to `/opt/ml/model`
    /// and reports to `/opt/ml/output`.
    Train(TrainArgs),
}

/// `wick predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model package directory (config.json + weights).
    #[arg(long, env = "SM_MODEL_DIR", default_value = "/opt/ml/model")]
    pub model_dir: PathBuf,
    /// How many classes to report per image, best first.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Images larger than this many pixels are refused before decoding (decompression bombs).
    #[arg(long, env = "WICK_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// `bf16`: dense convolutions multiply in bf16 (see `wick serve --precision`); default:
    /// config.json's `precision`, else f32.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Request options in Custom-Attributes syntax, as `wick serve` reads them, e.g.
    /// `threshold=0.4;classes=cat,dog`, `format=sagemaker`, `mask_format=rle`, `output=overlay`.
    #[arg(long, default_value = "")]
    pub options: String,
    /// Also write a picture per image here: the label map (segmentation; the overlay with
    /// `output=overlay`) or the photo with its boxes (detection), as `<file stem>.png`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `wick convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source package directory (any supported weights format).
    pub src: PathBuf,
    /// Destination directory; created if missing, must not already hold a config.json.
    pub dest: PathBuf,
}

/// `wick bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark this model package instead of synthetic-weight architectures.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Architectures to run with synthetic weights (ignored with --model-dir); classification,
    /// segmentation or detection names (e.g. `deeplabv3plus_resnet50,yolo11n`; detectors run
    /// at 640x640).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "efficientnet_lite0,resnet50"
    )]
    pub architectures: Vec<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch_sizes: Vec<usize>,
    /// Input height and width for synthetic-weight architectures.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Timed iterations per configuration (after warm-up).
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// `bf16`: load every network with its dense convolutions in bf16 (see `wick serve
    /// --precision`; f32 where the CPU has no AVX512-BF16); default f32.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// JPEG or PNG to time decoding + preprocessing on; default: a generated 1920x1080 JPEG.
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// `wick serve`. Every setting is a flag and an environment variable; SageMaker's own names are
/// honoured (`SAGEMAKER_*`, `SM_MODEL_DIR`), and the scikit example's `MODEL_SERVER_WORKERS` /
/// `MODEL_SERVER_TIMEOUT` are accepted as aliases.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model package directory (config.json + weights; a `model.tar.gz` found there alone is
    /// unpacked). Ignored when --model-uri is given.
    #[arg(long, env = "SM_MODEL_DIR", default_value = "/opt/ml/model")]
    pub model_dir: PathBuf,
    /// Where to fetch the model from instead: a local directory or `.tar.gz`, `s3://bucket/prefix/`
    /// or `s3://bucket/key.tar.gz` (credentials, region and endpoint from the standard AWS chain).
    #[arg(long, env = "WICK_MODEL_URI")]
    pub model_uri: Option<String>,
    /// Most bytes a model archive may unpack to (a tar bomb is refused past it).
    #[arg(long, env = "WICK_MAX_UNPACKED_BYTES", default_value_t = 32 << 30)]
    pub max_unpacked_bytes: u64,
    /// Most entries (files, directories, links) a model archive may hold.
    #[arg(long, env = "WICK_MAX_ARCHIVE_ENTRIES", default_value_t = 100_000)]
    pub max_archive_entries: u64,
    /// TCP port to listen on (all interfaces).
    #[arg(long, env = "SAGEMAKER_BIND_TO_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Inference worker threads, each running whole batches on all cores [default: 1; alias
    /// MODEL_SERVER_WORKERS].
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds a request may take before it is answered with 504 [default: 60, or 3600 with
    /// SAGEMAKER_BATCH=true; aliases MODEL_SERVER_TIMEOUT, SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS].
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT")]
    pub timeout_secs: Option<u64>,
    /// Largest request body, in MiB (0: no cap, SageMaker's value for whole-file batch jobs).
    #[arg(long, env = "SAGEMAKER_MAX_PAYLOAD_IN_MB", default_value_t = 6)]
    pub max_payload_mb: u64,
    /// Request bodies larger than this many MiB are spooled to a temporary file in $TMPDIR
    /// instead of memory.
    #[arg(long, env = "WICK_SPOOL_THRESHOLD_MB", default_value_t = 16)]
    pub spool_threshold_mb: u64,
    /// What a failed record (an undecodable image, a bad option) of a list, JSON lines or
    /// `.npy` batch does: `continue` (an error object in its place) or `fail` (the whole
    /// request fails). A request can choose with `on_record_error=` in Custom-Attributes.
    #[arg(long, env = "WICK_ON_RECORD_ERROR", default_value = "continue")]
    pub on_record_error: String,
    /// Response type when the request's Accept is missing or `*/*`.
    #[arg(
        long,
        env = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
        default_value = "application/json"
    )]
    pub default_accept: String,
    /// Images waiting for inference before new requests are refused with 429.
    #[arg(long, env = "WICK_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// Most images one forward pass takes when requests queue up (dynamic batching).
    #[arg(long, env = "WICK_MAX_BATCH_SIZE", default_value_t = 8)]
    pub max_batch_size: usize,
    /// Classes returned per image unless the request asks otherwise.
    #[arg(long, env = "WICK_DEFAULT_TOP_K", default_value_t = 5)]
    pub default_top_k: usize,
    /// Images larger than this many pixels are refused with 413 before decoding.
    #[arg(long, env = "WICK_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Segmentation only: PNG and TIFF images over --max-image-pixels, up to this many
    /// pixels, are read row by row and answered with a label map PNG written row by row (a
    /// raw image body, `Accept: image/png`); 0 turns this off.
    #[arg(
        long,
        env = "WICK_MAX_STREAMED_IMAGE_PIXELS",
        default_value_t = 1_000_000_000
    )]
    pub max_streamed_image_pixels: u64,
    /// Batch transform mode (`SAGEMAKER_BATCH`, set by SageMaker; any case of true/1).
    #[arg(long, env = "SAGEMAKER_BATCH", default_value = "false")]
    pub batch: String,
    /// `BatchStrategy` reported by /execution-parameters (MULTI_RECORD, SINGLE_RECORD, or the
    /// SDK local mode's MultiRecord / SingleRecord).
    #[arg(long, env = "SAGEMAKER_BATCH_STRATEGY", default_value = "MULTI_RECORD")]
    pub batch_strategy: String,
    /// `MaxConcurrentTransforms` reported by /execution-parameters [default: what the queue
    /// and the payload limit allow, with MaxConcurrentTransforms x MaxPayloadInMB <= 100].
    #[arg(long, env = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")]
    pub max_concurrent_transforms: Option<usize>,
    /// Seconds to finish in-flight requests after SIGTERM before exiting anyway (SageMaker
    /// sends SIGKILL 30 s after SIGTERM).
    #[arg(long, env = "WICK_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
    /// `bf16`: dense convolutions multiply in bf16 and sum in f32 (CPUs with AVX512-BF16;
    /// others run f32 and log why). Overrides config.json's `precision`; default f32.
    #[arg(long, env = "WICK_PRECISION")]
    pub precision: Option<Precision>,
    /// Seconds to receive a request's headers; also how long an idle keep-alive connection
    /// waits for its next request before it is closed.
    #[arg(long, env = "WICK_HEADER_READ_TIMEOUT_SECS", default_value_t = 60)]
    pub header_read_timeout_secs: u64,
    /// Longest pause, in seconds, inside a request body before the request is answered 408.
    #[arg(long, env = "WICK_BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub body_read_timeout_secs: u64,
    /// Largest request line plus headers, in bytes; larger ones are answered 431.
    #[arg(long, env = "WICK_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Also print one CloudWatch embedded-metric-format line per request on stdout (metrics
    /// without SageMaker's detailed observability); `true` or `false`.
    #[arg(long, env = "WICK_EMF", default_value = "false")]
    pub emf: String,
    /// Serve the try-it page at `/` and the API description at `/openapi.json` (`false` turns
    /// both off; SageMaker only ever calls /ping and /invocations).
    #[arg(long, env = "WICK_UI", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ui: bool,
    /// Testing only: sleep this long in every inference (slow-model fault injection).
    #[arg(long, env = "WICK_FAULT_INFERENCE_DELAY_MS", hide = true)]
    pub fault_inference_delay_ms: Option<u64>,
    /// Testing only: an inference worker thread exits after this many batches (crash fault
    /// injection: /ping must turn 503).
    #[arg(long, env = "WICK_FAULT_WORKER_EXIT_AFTER", hide = true)]
    pub fault_worker_exit_after: Option<u64>,
}

/// `wick package`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Model package directory (config.json + weights + labels); loaded once as a check.
    pub model_dir: PathBuf,
    /// Archive to write, e.g. `model.tar.gz` (replaced atomically if it exists).
    pub output: PathBuf,
    /// Also upload the archive to `s3://bucket/key.tar.gz`, or to `s3://bucket/prefix/` under
    /// its file name. Credentials, region and endpoint come from the standard AWS chain
    /// (`AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL_S3`, instance roles).
    #[arg(long, env = "WICK_PACKAGE_UPLOAD", value_name = "S3_URI")]
    pub upload: Option<ArtifactUri>,
}

/// `wick train`. Every path defaults to its place under `--ml-root`; the `SM_*` variables the
/// SageMaker training toolkit sets override single paths, but plain bring-your-own-container
/// jobs do not get them and none is required.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The SageMaker directory tree: `input/config/*.json`, `input/data/<channel>/`, `model/`,
    /// `output/`, `checkpoints/`. Point it at a local copy (e.g. `local_test/test_dir`) to run
    /// a job outside SageMaker.
    #[arg(long, env = "WICK_ML_ROOT", default_value = "/opt/ml")]
    pub ml_root: PathBuf,
    /// Where the trained model package is written [default: ML_ROOT/model].
    #[arg(long, env = "SM_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// The `training` channel [default: ML_ROOT/input/data/training].
    #[arg(long, env = "SM_CHANNEL_TRAINING")]
    pub training_dir: Option<PathBuf>,
    /// The `validation` channel; used when set even if inputdataconfig.json does not name it
    /// [default: ML_ROOT/input/data/validation].
    #[arg(long, env = "SM_CHANNEL_VALIDATION")]
    pub validation_dir: Option<PathBuf>,
    /// Segmentation: the `train` channel of images [default: ML_ROOT/input/data/train].
    #[arg(long, env = "SM_CHANNEL_TRAIN")]
    pub train_dir: Option<PathBuf>,
    /// Segmentation: the `train_annotation` channel of PNG label maps
    /// [default: ML_ROOT/input/data/train_annotation].
    #[arg(long, env = "SM_CHANNEL_TRAIN_ANNOTATION")]
    pub train_annotation_dir: Option<PathBuf>,
    /// Segmentation: the `validation_annotation` channel
    /// [default: ML_ROOT/input/data/validation_annotation].
    #[arg(long, env = "SM_CHANNEL_VALIDATION_ANNOTATION")]
    pub validation_annotation_dir: Option<PathBuf>,
    /// The `model` channel holding the backbone's model package (the `base_model`
    /// hyperparameter takes precedence) [default: ML_ROOT/input/data/model].
    #[arg(long, env = "SM_CHANNEL_MODEL")]
    pub base_model_dir: Option<PathBuf>,
    /// Where `failure` is written [default: ML_ROOT/output].
    #[arg(long, env = "SM_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,
    /// Where metrics.json, the confusion matrix and the curves are written
    /// [default: OUTPUT_DIR/data].
    #[arg(long, env = "SM_OUTPUT_DATA_DIR")]
    pub output_data_dir: Option<PathBuf>,
    /// Checkpoints, written after every epoch and resumed from when present (managed spot
    /// training syncs this directory with S3) [default: ML_ROOT/checkpoints].
    #[arg(long, env = "WICK_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Extra arguments (SageMaker's `ContainerArguments`) are accepted and ignored, with a
    /// warning.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra_args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(args: &[&str]) -> Vec<String> {
        args_for_invocation(args.iter().map(OsString::from))
            .into_iter()
            .map(|arg| arg.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn a_link_named_serve_or_train_runs_that_subcommand() {
        assert_eq!(
            invocation(&["/usr/local/bin/serve", "--help"]),
            ["wick", "serve", "--help"]
        );
        assert_eq!(invocation(&["train"]), ["wick", "train"]);
        let cli = Cli::parse_from(args_for_invocation(
            ["/usr/local/bin/train"].map(OsString::from),
        ));
        assert!(matches!(cli.command, Command::Train(_)));
        let cli = Cli::parse_from(args_for_invocation(
            ["serve", "--log-format", "json"].map(OsString::from),
        ));
        assert!(matches!(cli.command, Command::Serve(_)));
        assert_eq!(cli.log_format, LogFormat::Json);
    }

    #[test]
    fn wick_under_its_own_or_any_other_name_keeps_its_arguments() {
        for args in [
            &["/usr/local/bin/wick", "serve"][..],
            &["wick", "train", "--help"],
            &["./server", "predict"],
            &["serve.sh", "bench"],
            &[],
        ] {
            assert_eq!(invocation(args), args);
        }
    }
}
