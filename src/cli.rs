//! Command-line interface: every subcommand, flag and environment variable, with the help
//! text users see in `wick --help`. Raw values only; commands validate what they use.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Fine-tune a new classification head on a frozen pretrained backbone under SageMaker's
    /// training contract (`docker run IMAGE train`): reads `/opt/ml/input`, writes a model
    /// package to `/opt/ml/model` and reports to `/opt/ml/output`.
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
