//! The SageMaker training job as files: where every input and output lives under the ML root
//! (`/opt/ml`), the two config files that describe the job (`inputdataconfig.json`,
//! `resourceconfig.json`) and the `output/failure` file. Knows nothing of images or tensors.
//!
//! See `../shared/docs/sagemaker-contract.md` §5 (items 41-48). The `SM_*` variables are set
//! by the SageMaker training toolkit, not by the platform: everything here works from the files
//! alone and treats the variables as overrides of single paths (wired in `cli.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::hyperparams::Hyperparameters;
use super::stop::StopFlag;
use crate::cli::TrainArgs;

/// Name of the required channel holding the labelled training images.
pub(crate) const TRAINING_CHANNEL: &str = "training";
/// Name of the optional channel holding labelled validation images.
pub(crate) const VALIDATION_CHANNEL: &str = "validation";
/// Segmentation: the required channel of training images.
pub(crate) const TRAIN_CHANNEL: &str = "train";
/// Segmentation: the required channel of training annotations.
pub(crate) const TRAIN_ANNOTATION_CHANNEL: &str = "train_annotation";
/// Segmentation: the optional channel of validation annotations (images: `validation`).
pub(crate) const VALIDATION_ANNOTATION_CHANNEL: &str = "validation_annotation";
/// Name of the optional channel holding the backbone's model package.
pub(crate) const MODEL_CHANNEL: &str = "model";

/// SageMaker shows this many characters of `output/failure` as the job's `FailureReason`.
const FAILURE_REASON_CHARS: usize = 1024;

/// What the job's config files can get wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// A config file exists but cannot be read.
    #[error("cannot read `{path}`: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A config file is not the JSON SageMaker writes.
    #[error("`{path}` is not valid: {cause}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde found wrong.
        cause: serde_json::Error,
    },
    /// A channel uses an input mode wick does not read.
    #[error(
        "channel `{channel}` uses TrainingInputMode `{mode}`; wick reads File and FastFile channels"
    )]
    InputMode {
        /// The channel.
        channel: String,
        /// Its mode, e.g. `Pipe`.
        mode: String,
    },
}

/// What a trainer gets from `wick train`'s dispatch: the job's paths and files read once.
pub(crate) struct Job<'a> {
    /// Every path.
    pub(crate) layout: &'a JobLayout,
    /// The hyperparameters, defaults filled in.
    pub(crate) hp: &'a Hyperparameters,
    /// The keys the hyperparameters file set (a trainer's own defaults apply to the others).
    pub(crate) given: &'a BTreeSet<String>,
    /// `inputdataconfig.json`'s channels, `None` without the file.
    pub(crate) channels: Option<&'a Channels>,
    /// The base package: the `model` channel or `base_model`.
    pub(crate) base: &'a Path,
    /// Set by SIGTERM.
    pub(crate) stop: &'a StopFlag,
}

/// Every path of the job, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct JobLayout {
    /// `input/config/hyperparameters.json`.
    pub(crate) hyperparameters: PathBuf,
    /// `input/config/inputdataconfig.json`.
    pub(crate) input_data_config: PathBuf,
    /// `input/config/resourceconfig.json`.
    pub(crate) resource_config: PathBuf,
    /// The `training` channel.
    pub(crate) training_dir: PathBuf,
    /// The `validation` channel.
    pub(crate) validation_dir: PathBuf,
    /// Whether the validation path was given explicitly (`SM_CHANNEL_VALIDATION`), which
    /// makes the channel count even when `inputdataconfig.json` does not name it.
    pub(crate) validation_dir_is_explicit: bool,
    /// Segmentation: the `train` channel.
    pub(crate) train_dir: PathBuf,
    /// Segmentation: the `train_annotation` channel.
    pub(crate) train_annotation_dir: PathBuf,
    /// Segmentation: the `validation_annotation` channel.
    pub(crate) validation_annotation_dir: PathBuf,
    /// Whether `SM_CHANNEL_VALIDATION_ANNOTATION` gave that channel explicitly.
    pub(crate) validation_annotation_dir_is_explicit: bool,
    /// The `model` channel.
    pub(crate) base_model_dir: PathBuf,
    /// Where the trained package goes.
    pub(crate) model_dir: PathBuf,
    /// `output/`, home of the `failure` file.
    pub(crate) output_dir: PathBuf,
    /// `output/data/`: metrics, confusion matrix, curves.
    pub(crate) output_data_dir: PathBuf,
    /// `checkpoints/`.
    pub(crate) checkpoint_dir: PathBuf,
}

impl JobLayout {
    /// Resolves every path from the ML root and the explicit overrides.
    pub(crate) fn resolve(args: &TrainArgs) -> Self {
        let root = &args.ml_root;
        let config = root.join("input/config");
        let data = root.join("input/data");
        let output_dir = args
            .output_dir
            .clone()
            .unwrap_or_else(|| root.join("output"));
        JobLayout {
            hyperparameters: config.join("hyperparameters.json"),
            input_data_config: config.join("inputdataconfig.json"),
            resource_config: config.join("resourceconfig.json"),
            training_dir: args
                .training_dir
                .clone()
                .unwrap_or_else(|| data.join(TRAINING_CHANNEL)),
            validation_dir: args
                .validation_dir
                .clone()
                .unwrap_or_else(|| data.join(VALIDATION_CHANNEL)),
            validation_dir_is_explicit: args.validation_dir.is_some(),
            train_dir: args
                .train_dir
                .clone()
                .unwrap_or_else(|| data.join(TRAIN_CHANNEL)),
            train_annotation_dir: args
                .train_annotation_dir
                .clone()
                .unwrap_or_else(|| data.join(TRAIN_ANNOTATION_CHANNEL)),
            validation_annotation_dir: args
                .validation_annotation_dir
                .clone()
                .unwrap_or_else(|| data.join(VALIDATION_ANNOTATION_CHANNEL)),
            validation_annotation_dir_is_explicit: args.validation_annotation_dir.is_some(),
            base_model_dir: args
                .base_model_dir
                .clone()
                .unwrap_or_else(|| data.join(MODEL_CHANNEL)),
            model_dir: args.model_dir.clone().unwrap_or_else(|| root.join("model")),
            output_data_dir: args
                .output_data_dir
                .clone()
                .unwrap_or_else(|| output_dir.join("data")),
            output_dir,
            checkpoint_dir: args
                .checkpoint_dir
                .clone()
                .unwrap_or_else(|| root.join("checkpoints")),
        }
    }

    /// `output/failure`.
    pub(crate) fn failure_file(&self) -> PathBuf {
        self.output_dir.join("failure")
    }

    /// Removes a `failure` left by an earlier run in the same tree (local runs reuse it), so
    /// the file only ever describes this run.
    pub(crate) fn clear_failure(&self) {
        let path = self.failure_file();
        if path.exists() {
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %err, "cannot remove a stale failure file");
            }
        }
    }

    /// Writes the one-line cause of a failed job to `output/failure`. Best effort: the job is
    /// already failing, and the exit code still says so if the file cannot be written.
    pub(crate) fn write_failure(&self, cause: &str) {
        let path = self.failure_file();
        let line = failure_line(cause);
        let written = std::fs::create_dir_all(&self.output_dir)
            .and_then(|()| std::fs::write(&path, format!("{line}\n")));
        if let Err(err) = written {
            tracing::error!(path = %path.display(), %err, "cannot write the failure file");
        }
    }
}

/// `cause` on one line (SageMaker shows the file as the job's one-line `FailureReason`),
/// cut to the characters SageMaker displays.
pub(crate) fn failure_line(cause: &str) -> String {
    let one_line = cause.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(FAILURE_REASON_CHARS).collect()
}

/// One channel of `inputdataconfig.json` (the fields wick reads).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChannelConfig {
    /// `File`, `FastFile` or `Pipe`.
    #[serde(rename = "TrainingInputMode", default)]
    pub(crate) input_mode: Option<String>,
}

/// `inputdataconfig.json`: channel name → its configuration.
pub(crate) type Channels = BTreeMap<String, ChannelConfig>;

/// The channels SageMaker provides: `inputdataconfig.json`, or `None` when the file is absent
/// (a local run), in which case the channel directories that exist are used.
pub(crate) fn read_channels(layout: &JobLayout) -> Result<Option<Channels>, JobError> {
    let path = &layout.input_data_config;
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let channels: Channels = serde_json::from_str(&text).map_err(|cause| JobError::Json {
        path: path.clone(),
        cause,
    })?;
    for (name, channel) in &channels {
        if let Some(mode) = &channel.input_mode {
            if mode.eq_ignore_ascii_case("pipe") {
                return Err(JobError::InputMode {
                    channel: name.clone(),
                    mode: mode.clone(),
                });
            }
        }
    }
    Ok(Some(channels))
}

/// `resourceconfig.json`: the hosts of the job.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ResourceConfig {
    /// This container's host name, e.g. `algo-1`.
    pub(crate) current_host: String,
    /// Every host, sorted; the first is the leader.
    pub(crate) hosts: Vec<String>,
}

impl ResourceConfig {
    /// Whether this host writes the model (the only host, or `hosts[0]`).
    pub(crate) fn is_leader(&self) -> bool {
        self.hosts.first().is_none_or(|h| *h == self.current_host)
    }
}

/// Reads `resourceconfig.json`; a missing or empty file (the scikit example's test_dir ships an
/// empty one) means a single host.
pub(crate) fn read_resources(layout: &JobLayout) -> Result<Option<ResourceConfig>, JobError> {
    let path = &layout.resource_config;
    match read_optional(path)? {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|cause| JobError::Json {
                    path: path.clone(),
                    cause,
                })
        }
        _ => Ok(None),
    }
}

/// The file's text, or `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, JobError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(JobError::Io {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> JobLayout {
        JobLayout::resolve(&TrainArgs {
            ml_root: root.to_path_buf(),
            model_dir: None,
            training_dir: None,
            validation_dir: None,
            train_dir: None,
            train_annotation_dir: None,
            validation_annotation_dir: None,
            base_model_dir: None,
            output_dir: None,
            output_data_dir: None,
            checkpoint_dir: None,
            extra_args: Vec::new(),
        })
    }

    #[test]
    fn paths_default_to_the_sagemaker_tree() {
        let l = layout(Path::new("/opt/ml"));
        assert_eq!(l.training_dir, Path::new("/opt/ml/input/data/training"));
        assert_eq!(l.model_dir, Path::new("/opt/ml/model"));
        assert_eq!(l.output_data_dir, Path::new("/opt/ml/output/data"));
        assert_eq!(l.checkpoint_dir, Path::new("/opt/ml/checkpoints"));
        assert_eq!(l.failure_file(), Path::new("/opt/ml/output/failure"));
        assert!(!l.validation_dir_is_explicit);
    }

    #[test]
    fn failure_line_is_one_line_and_bounded() {
        assert_eq!(failure_line("a\n  b\tc\n"), "a b c");
        assert_eq!(failure_line(&"x".repeat(5000)).len(), FAILURE_REASON_CHARS);
    }

    #[test]
    fn config_files_are_optional_and_pipe_mode_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let l = layout(dir.path());
        assert!(read_channels(&l)?.is_none());
        assert!(read_resources(&l)?.is_none());
        std::fs::create_dir_all(dir.path().join("input/config"))?;
        std::fs::write(&l.resource_config, "")?;
        assert!(read_resources(&l)?.is_none());
        std::fs::write(
            &l.resource_config,
            r#"{"current_host":"algo-2","hosts":["algo-1","algo-2"],"network_interface_name":"eth0"}"#,
        )?;
        assert!(!read_resources(&l)?.map(|r| r.is_leader()).unwrap_or(true));
        std::fs::write(
            &l.input_data_config,
            r#"{"training":{"TrainingInputMode":"File","S3DistributionType":"FullyReplicated"}}"#,
        )?;
        let channels = read_channels(&l)?.unwrap_or_default();
        assert!(channels.contains_key("training"));
        std::fs::write(
            &l.input_data_config,
            r#"{"training":{"TrainingInputMode":"Pipe"}}"#,
        )?;
        let err = read_channels(&l).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("Pipe")));
        Ok(())
    }
}
