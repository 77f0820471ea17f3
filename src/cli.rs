//! Command-line interface: every subcommand, flag and environment variable, with the help
//! text users see in `wick --help`. Raw values only; commands validate what they use.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::artifacts::ArtifactUri;

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
    /// Classify image files offline with the same pipeline `wick serve` uses; prints one JSON
    /// line per image.
    Predict(PredictArgs),
    /// Rewrite a model package with `model.safetensors` weights (memory-mapped, fast to load).
    Convert(ConvertArgs),
    /// Measure inference and preprocessing speed on this machine.
    Bench(BenchArgs),
    /// Check that a model package loads, then write the `model.tar.gz` a SageMaker Model
    /// expects (files at the archive root) and optionally upload it to S3.
    Package(PackageArgs),
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
    /// Architectures to run with synthetic weights (ignored with --model-dir).
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
    /// JPEG or PNG to time decoding + preprocessing on; default: a generated 1920x1080 JPEG.
    #[arg(long)]
    pub image: Option<PathBuf>,
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
