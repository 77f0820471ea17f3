//! The model package: a directory holding `config.json` and one weights file, possibly nested
//! (SageMaker's uncompressed S3 layouts add folders). `config.json` is a superset of the timm
//! hub config, so a directory downloaded from a timm model repository loads unchanged; a
//! Hugging Face folder's `config.json` is first rewritten into these fields (`huggingface.rs`),
//! and so is a segmentation_models_pytorch `save_pretrained` folder's (`smp_config.rs`). See
//! `docs/model-package.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::huggingface::{self, HfError};
use super::precision::Precision;
use super::preprocess::{Interpolation, PreprocessConfig, ResizeMode};
use super::smp_config::{self, SmpConfigError};

/// The canvas a YOLOv8 detector letterboxes an image onto (`letterbox` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Letterbox {
    /// As ultralytics' predictor (`LetterBox(auto=True)`): the resized image padded only to the
    /// next multiple of 32, e.g. 640x384 for a 16:9 photo.
    #[default]
    Rect,
    /// The whole input size (ultralytics' `auto=False`, as in exported models).
    Square,
}

/// File names wick treats as weights, by extension.
const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "pth", "pt", "bin", "weights"];
/// Directory levels searched below the package root; SageMaker nests one or two.
const MAX_SEARCH_DEPTH: usize = 4;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What a package directory can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error (in the message, so it is not printed twice as a source).
        cause: std::io::Error,
    },
    /// `config.json` is not valid JSON or has a field of the wrong type.
    #[error("`{path}` is not a valid model config: {cause}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What serde found wrong.
        cause: serde_json::Error,
    },
    /// No `config.json` at or below the directory, and no lone `.pt` to read one from.
    #[error(
        "no config.json found in `{dir}` (searched {MAX_SEARCH_DEPTH} levels deep), and no single \
         ultralytics .pt that would stand in for one"
    )]
    NoConfig {
        /// The package directory.
        dir: PathBuf,
    },
    /// More than one `config.json` below the directory.
    #[error("several config.json files below `{dir}`: {found:?}; keep one model per directory")]
    AmbiguousConfig {
        /// The package directory.
        dir: PathBuf,
        /// The files found.
        found: Vec<PathBuf>,
    },
    /// No weights file next to (or below) the config.
    #[error("no weights file (.safetensors, .pth, .pt, .bin, darknet .weights) found in `{dir}`")]
    NoWeights {
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// Several weights files and no `weights` field to choose one.
    #[error(
        "several weights files in `{dir}`: {found:?}; name one in config.json's `weights` field"
    )]
    AmbiguousWeights {
        /// Where they were found.
        dir: PathBuf,
        /// The files.
        found: Vec<PathBuf>,
    },
    /// A segmentation_models_pytorch config names a model wick does not run.
    #[error(transparent)]
    Smp(#[from] SmpConfigError),
    /// A Hugging Face folder wick cannot serve.
    #[error(transparent)]
    HuggingFace(#[from] HfError),
    /// A config field holds a value wick cannot use.
    #[error("config.json field `{field}`: {message} (given: {value})")]
    InvalidField {
        /// The field, e.g. `pretrained_cfg.crop_pct`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
        /// The value found.
        value: String,
    },
}

/// The model's task, from `config.json`'s `task` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One label per image (or several with `multi_label`).
    #[default]
    Classification,
    /// A class per pixel.
    Segmentation,
    /// Labelled boxes.
    Detection,
}

/// timm's `pretrained_cfg`: the evaluation transform the weights were trained with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PretrainedCfg {
    /// `[channels, height, width]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) input_size: Option<Vec<usize>>,
    /// Per-channel mean of the `/255` pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mean: Option<Vec<f32>>,
    /// Per-channel standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) std: Option<Vec<f32>>,
    /// Fraction of the resized image kept by the center crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) crop_pct: Option<f32>,
    /// `bilinear` or `bicubic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interpolation: Option<String>,
    /// wick's own field: `keep_aspect` (timm's, the default) or `squash` (Hugging Face's image
    /// processors: resized to `input_size / crop_pct` whatever the aspect ratio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resize_mode: Option<ResizeMode>,
    /// Anything else timm writes (tag, first_conv, ...), kept on rewrite.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

/// `config.json` of a model package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PackageConfig {
    /// Network name, e.g. `resnet50`, `efficientnet_lite0`.
    pub(crate) architecture: String,
    /// Outputs of the classifier; inferred from the labels when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) num_classes: Option<usize>,
    /// Class names in output order (timm's field: a list, or an `{index: name}` map, which is
    /// read into index order).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "label_names_in_order"
    )]
    pub(crate) label_names: Option<Vec<String>>,
    /// Class names by index (Hugging Face's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id2label: Option<BTreeMap<String, String>>,
    /// The evaluation transform.
    #[serde(default)]
    pub(crate) pretrained_cfg: PretrainedCfg,
    /// `classification` (default), `segmentation` or `detection`.
    #[serde(default)]
    pub(crate) task: Task,
    /// Weights file name, relative to the config; default: the single weights file found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) weights: Option<String>,
    /// Independent sigmoid scores instead of a softmax over classes.
    #[serde(default)]
    pub(crate) multi_label: bool,
    /// Darknet detectors: the `.cfg` file next to the `.weights`, relative to the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) darknet_cfg: Option<String>,
    /// YOLOv8 detectors: the canvas an image is letterboxed onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) letterbox: Option<Letterbox>,
    /// `bf16` runs the dense convolutions in bf16 where the CPU can (`model::precision`);
    /// default f32. A serve or predict flag overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) precision: Option<Precision>,
    /// Other timm fields (`num_features`, `global_pool`, ...), kept on rewrite.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

/// A package directory, resolved: its config, where its weights are, its labels.
#[derive(Debug, Clone)]
pub struct Package {
    /// The parsed `config.json`.
    pub(crate) config: PackageConfig,
    /// The directory holding `config.json`.
    pub(crate) config_dir: PathBuf,
    /// The weights file.
    pub(crate) weights_path: PathBuf,
    /// One name per class, in output order.
    pub(crate) labels: Vec<String>,
}

impl Package {
    /// Finds and reads the package in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PackageError> {
        let config_path = match find_config(dir) {
            Err(PackageError::NoConfig { dir: searched }) => {
                return checkpoint_only(dir)?.ok_or(PackageError::NoConfig { dir: searched })
            }
            found => found?,
        };
        let config_dir = config_path.parent().unwrap_or(dir).to_path_buf();
        let text = read_to_string(&config_path)?;
        let invalid = |cause| PackageError::Config {
            path: config_path.clone(),
            cause,
        };
        let mut json: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
        if smp_config::is_smp(&json) {
            json = smp_config::translate(&json)?;
        }
        if let Some(fields) = json.as_object_mut() {
            if huggingface::is_hugging_face(fields) {
                huggingface::translate(fields, &config_dir)?;
            }
        }
        let config: PackageConfig = serde_json::from_value(json).map_err(invalid)?;
        let weights_path = match &config.weights {
            Some(name) => {
                let path = config_dir.join(name);
                if !path.is_file() {
                    return Err(PackageError::InvalidField {
                        field: "weights",
                        message: format!("no such file in `{}`", config_dir.display()),
                        value: name.clone(),
                    });
                }
                path
            }
            None => find_weights(&config_dir)?,
        };
        let labels = resolve_labels(&config, &config_dir)?;
        Ok(Package {
            config,
            config_dir,
            weights_path,
            labels,
        })
    }

    /// Number of classes: `num_classes`, or the number of labels.
    pub(crate) fn num_classes(&self) -> usize {
        self.config.num_classes.unwrap_or(self.labels.len())
    }

    /// The evaluation transform from `pretrained_cfg`, with timm's defaults filled in.
    pub(crate) fn preprocess_config(&self) -> Result<PreprocessConfig, PackageError> {
        preprocess_config(&self.config.pretrained_cfg)
    }
}

/// A folder with no `config.json` and one ultralytics `.pt`: a detection package whose network,
/// class names and input size the checkpoint describes (architecture `ultralytics`, see
/// `model/detect/checkpoint.rs`). `None` when the folder holds anything else.
fn checkpoint_only(dir: &Path) -> Result<Option<Package>, PackageError> {
    let Ok(weights_path) = find_weights(dir) else {
        return Ok(None);
    };
    if weights_path.extension().is_none_or(|e| e != "pt") {
        return Ok(None);
    }
    let config = serde_json::json!({"architecture": "ultralytics", "task": "detection"});
    let config: PackageConfig =
        serde_json::from_value(config).map_err(|cause| PackageError::Config {
            path: dir.join("config.json"),
            cause,
        })?;
    Ok(Some(Package {
        config,
        config_dir: weights_path.parent().unwrap_or(dir).to_path_buf(),
        weights_path,
        labels: Vec::new(),
    }))
}

/// The evaluation transform described by a `pretrained_cfg`, validated.
pub(crate) fn preprocess_config(cfg: &PretrainedCfg) -> Result<PreprocessConfig, PackageError> {
    let (input_height, input_width) = match cfg.input_size.as_deref() {
        None => (224, 224),
        Some(&[3, h, w]) if h > 0 && w > 0 => (h, w),
        Some(other) => {
            return Err(PackageError::InvalidField {
                field: "pretrained_cfg.input_size",
                message: "expected [3, height, width] with positive sizes".into(),
                value: format!("{other:?}"),
            })
        }
    };
    let triple = |field: &'static str, v: &Option<Vec<f32>>, default: [f32; 3]| match v.as_deref() {
        None => Ok(default),
        Some(&[a, b, c]) => Ok([a, b, c]),
        Some(other) => Err(PackageError::InvalidField {
            field,
            message: "expected three numbers, one per RGB channel".into(),
            value: format!("{other:?}"),
        }),
    };
    let mean = triple("pretrained_cfg.mean", &cfg.mean, IMAGENET_MEAN)?;
    let std = triple("pretrained_cfg.std", &cfg.std, IMAGENET_STD)?;
    if std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
        return Err(PackageError::InvalidField {
            field: "pretrained_cfg.std",
            message: "every value must be positive".into(),
            value: format!("{std:?}"),
        });
    }
    let crop_pct = cfg.crop_pct.unwrap_or(0.875);
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(PackageError::InvalidField {
            field: "pretrained_cfg.crop_pct",
            message: "must be in (0, 1]".into(),
            value: crop_pct.to_string(),
        });
    }
    let interpolation = match cfg.interpolation.as_deref() {
        None | Some("bilinear") => Interpolation::Bilinear,
        Some("bicubic") => Interpolation::Bicubic,
        Some(other) => {
            return Err(PackageError::InvalidField {
                field: "pretrained_cfg.interpolation",
                message: "supported: bilinear, bicubic".into(),
                value: other.to_string(),
            })
        }
    };
    Ok(PreprocessConfig {
        input_height,
        input_width,
        crop_pct,
        interpolation,
        mean,
        std,
        resize_mode: resize_mode(cfg)?,
    })
}

/// wick's `resize_mode` when given, else timm's `crop_mode`: `squash` resizes both sides to
/// `input / crop_pct` (timm's ConvNeXt and EfficientNetV2 at 384 and above evaluate so),
/// `center` (timm's default) keeps the aspect ratio. `border` (fit the longer side, pad) is not
/// implemented and is refused rather than run as `center`.
fn resize_mode(cfg: &PretrainedCfg) -> Result<ResizeMode, PackageError> {
    if let Some(mode) = cfg.resize_mode {
        return Ok(mode);
    }
    match cfg.extra.get("crop_mode") {
        None | Some(serde_json::Value::Null) => Ok(ResizeMode::KeepAspect),
        Some(v) if v == "center" => Ok(ResizeMode::KeepAspect),
        Some(v) if v == "squash" => Ok(ResizeMode::Squash),
        Some(other) => Err(PackageError::InvalidField {
            field: "pretrained_cfg.crop_mode",
            message: "supported: center, squash".into(),
            value: other.to_string(),
        }),
    }
}

fn read_to_string(path: &Path) -> Result<String, PackageError> {
    std::fs::read_to_string(path).map_err(|cause| PackageError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Files below `dir` (breadth-first, up to [`MAX_SEARCH_DEPTH`] levels) accepted by `keep`.
fn find_files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>, PackageError> {
    let mut found = Vec::new();
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..MAX_SEARCH_DEPTH {
        let mut next = Vec::new();
        for d in level {
            let entries = std::fs::read_dir(&d).map_err(|cause| PackageError::Io {
                path: d.clone(),
                cause,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|cause| PackageError::Io {
                        path: d.clone(),
                        cause,
                    })?
                    .path();
                let is_hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if is_hidden {
                    continue;
                }
                if path.is_dir() {
                    next.push(path);
                } else if keep(&path) {
                    found.push(path);
                }
            }
        }
        // The shallowest match wins: a package may ship an older copy in a sub-folder.
        if !found.is_empty() || next.is_empty() {
            break;
        }
        level = next;
    }
    found.sort();
    Ok(found)
}

fn find_config(dir: &Path) -> Result<PathBuf, PackageError> {
    if !dir.is_dir() {
        return Err(PackageError::Io {
            path: dir.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut found = find_files(dir, &|p| p.file_name().is_some_and(|n| n == "config.json"))?;
    match found.len() {
        0 => Err(PackageError::NoConfig {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(PackageError::AmbiguousConfig {
            dir: dir.to_path_buf(),
            found,
        }),
    }
}

fn find_weights(dir: &Path) -> Result<PathBuf, PackageError> {
    let is_weights = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e))
    };
    let mut found = find_files(dir, &is_weights)?;
    // timm's and transformers' hub writers save the same weights twice, as `model.safetensors`
    // and `pytorch_model.bin`: the safetensors one is the same model, read without pickle.
    let is_named = |p: &Path, name: &str| p.file_name().is_some_and(|n| n == name);
    let twins = found.len() == 2
        && found.iter().any(|p| is_named(p, "model.safetensors"))
        && found.iter().any(|p| is_named(p, "pytorch_model.bin"))
        && found[0].parent() == found[1].parent();
    if twins {
        found.retain(|p| is_named(p, "model.safetensors"));
    }
    match found.len() {
        0 => Err(PackageError::NoWeights {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(PackageError::AmbiguousWeights {
            dir: dir.to_path_buf(),
            found,
        }),
    }
}

/// `label_names` as a list, or as an `{index: name}` map with every index `0..n` once.
fn label_names_in_order<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        ByIndex(BTreeMap<String, String>),
    }
    let names = match Option::<Names>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Names::List(list)) => list,
        Some(Names::ByIndex(map)) => {
            let mut names = vec![None; map.len()];
            for (key, name) in map {
                let slot = key
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| names.get_mut(i))
                    .filter(|slot| slot.is_none());
                let Some(slot) = slot else {
                    return Err(serde::de::Error::custom(format!(
                        "label_names: keys must be the class indices 0..{}, each once; got `{key}`",
                        names.len()
                    )));
                };
                *slot = Some(name);
            }
            names.into_iter().flatten().collect()
        }
    };
    Ok(Some(names))
}

/// Labels from `label_names`, else `id2label`, else `labels.txt`, else `class_<i>`.
fn resolve_labels(config: &PackageConfig, config_dir: &Path) -> Result<Vec<String>, PackageError> {
    let labels = if let Some(names) = &config.label_names {
        names.clone()
    } else if let Some(map) = &config.id2label {
        let mut labels = vec![None; map.len()];
        for (key, label) in map {
            let index = key
                .parse::<usize>()
                .ok()
                .filter(|i| *i < map.len())
                .ok_or_else(|| PackageError::InvalidField {
                    field: "id2label",
                    message: format!("keys must be the class indices 0..{}", map.len()),
                    value: key.clone(),
                })?;
            labels[index] = Some(label.clone());
        }
        labels.into_iter().flatten().collect()
    } else if config_dir.join("labels.txt").is_file() {
        let text = read_to_string(&config_dir.join("labels.txt"))?;
        text.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else if config.task == Task::Detection {
        // A detector may take its names from the checkpoint or its dataset; it decides.
        return Ok(Vec::new());
    } else {
        let n = config.num_classes.ok_or(PackageError::InvalidField {
            field: "num_classes",
            message: "needed when no labels are given (label_names, id2label or labels.txt)".into(),
            value: "missing".into(),
        })?;
        (0..n).map(|i| format!("class_{i}")).collect()
    };
    if let Some(n) = config.num_classes {
        if n != labels.len() {
            return Err(PackageError::InvalidField {
                field: "num_classes",
                message: format!("the package has {} labels", labels.len()),
                value: n.to_string(),
            });
        }
    }
    if labels.is_empty() {
        return Err(PackageError::InvalidField {
            field: "label_names",
            message: "a classifier needs at least one class".into(),
            value: "[]".into(),
        });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_timm_hub_config_loads_with_its_preprocessing() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet50", "num_classes": 2, "num_features": 2048,
                "label_names": ["cat", "dog"],
                "pretrained_cfg": {"tag": "a1_in1k", "input_size": [3, 288, 256], "interpolation": "bicubic",
                                   "crop_pct": 0.95, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}"#,
        );
        write(dir.path(), "model.safetensors", "");
        let package = Package::open(dir.path()).expect("opens");
        assert_eq!(package.labels, vec!["cat", "dog"]);
        assert_eq!(package.config.task, Task::Classification);
        assert!(package.weights_path.ends_with("model.safetensors"));
        let p = package.preprocess_config().expect("valid");
        assert_eq!(
            (p.input_height, p.input_width, p.crop_pct),
            (288, 256, 0.95)
        );
        assert_eq!(p.interpolation, Interpolation::Bicubic);
        assert_eq!(p.std, [0.25; 3]);
        // Unknown timm fields survive a rewrite.
        let rewritten = serde_json::to_string(&package.config).expect("serialises");
        assert!(
            rewritten.contains("num_features") && rewritten.contains("a1_in1k"),
            "{rewritten}"
        );
    }

    /// The `config.json` timm 1.0.31's hub writer (`save_config_for_hf`) gives
    /// `efficientnet_b2.ra_in1k`: it evaluates at `input_size` 256 with `crop_pct` 0.875, as
    /// `timm.data.resolve_data_config` does; `test_input_size` 288 / `test_crop_pct` 1.0 are
    /// for a separate higher-resolution test and must not be picked up.
    #[test]
    fn a_timm_efficientnet_b2_folder_evaluates_at_its_input_size_not_its_test_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "efficientnet_b2", "num_classes": 1000, "num_features": 1408,
                "global_pool": "avg", "model_args": {"in_chans": 3, "num_classes": 1000, "global_pool": "avg"},
                "pretrained_cfg": {"tag": "ra_in1k", "custom_load": false, "input_size": [3, 256, 256],
                  "test_input_size": [3, 288, 288], "fixed_input_size": false, "interpolation": "bicubic",
                  "crop_pct": 0.875, "test_crop_pct": 1.0, "crop_mode": "center",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
                  "pool_size": [8, 8], "first_conv": "conv_stem", "classifier": "classifier",
                  "license": "apache-2.0"}}"#,
        );
        write(dir.path(), "model.safetensors", "");
        write(dir.path(), "pytorch_model.bin", "");
        let package = Package::open(dir.path()).expect("opens");
        assert!(crate::model::classify::supported().contains(&package.config.architecture.as_str()));
        assert_eq!(package.num_classes(), 1000);
        let p = package.preprocess_config().expect("valid");
        assert_eq!(
            (p.input_height, p.input_width, p.crop_pct, p.interpolation),
            (256, 256, 0.875, Interpolation::Bicubic)
        );
    }

    /// timm's `convnext_tiny.fb_in22k_ft_in1k_384` evaluates with `crop_mode` squash: both
    /// sides to 384, nothing cropped.
    #[test]
    fn a_timm_crop_mode_picks_the_resize() {
        let mode = |extra: &str| {
            let cfg: PretrainedCfg = serde_json::from_str(&format!(
                r#"{{"input_size": [3, 384, 384], "crop_pct": 1.0 {extra}}}"#
            ))
            .expect("json");
            preprocess_config(&cfg).map(|p| p.resize_mode)
        };
        assert_eq!(
            mode(r#", "crop_mode": "squash""#).ok(),
            Some(ResizeMode::Squash)
        );
        assert_eq!(
            mode(r#", "crop_mode": "center""#).ok(),
            Some(ResizeMode::KeepAspect)
        );
        assert_eq!(mode("").ok(), Some(ResizeMode::KeepAspect));
        assert_eq!(
            mode(r#", "crop_mode": "squash", "resize_mode": "keep_aspect""#).ok(),
            Some(ResizeMode::KeepAspect),
            "wick's own field wins"
        );
        let err = mode(r#", "crop_mode": "border""#)
            .expect_err("border")
            .to_string();
        assert!(
            err.contains("pretrained_cfg.crop_mode") && err.contains("border"),
            "{err}"
        );
    }

    #[test]
    fn nested_layouts_and_labels_txt_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "model/v1/config.json",
            r#"{"architecture": "resnet18"}"#,
        );
        write(dir.path(), "model/v1/labels.txt", "mask\nno_mask\n");
        write(dir.path(), "model/v1/weights/net.pth", "");
        let package = Package::open(dir.path()).expect("opens");
        assert_eq!(package.labels, vec!["mask", "no_mask"]);
        assert_eq!(package.num_classes(), 2);
        assert!(package.weights_path.ends_with("weights/net.pth"));
    }

    #[test]
    fn id2label_is_ordered_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "id2label": {"1": "b", "0": "a", "10": "k", "2": "c", "3": "d", "4": "e", "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}}"#,
        );
        write(dir.path(), "w.pt", "");
        let labels = Package::open(dir.path()).expect("opens").labels;
        assert_eq!(
            labels,
            vec!["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
        );
    }

    /// timm's hub writer: both weight formats side by side, `label_names` as an index map.
    #[test]
    fn a_timm_hub_folder_with_both_weight_files_takes_the_safetensors() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "num_classes": 3, "label_names": {"2": "c", "0": "a", "1": "b"}}"#,
        );
        write(dir.path(), "model.safetensors", "");
        write(dir.path(), "pytorch_model.bin", "");
        let package = Package::open(dir.path()).expect("opens");
        assert_eq!(package.labels, vec!["a", "b", "c"]);
        assert!(
            package.weights_path.ends_with("model.safetensors"),
            "{package:?}"
        );

        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "label_names": {"0": "a", "2": "c"}}"#,
        );
        let err = Package::open(dir.path())
            .expect_err("a gap in the indices")
            .to_string();
        assert!(err.contains("label_names") && err.contains("`2`"), "{err}");

        // Any other pair is still ambiguous.
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "num_classes": 3}"#,
        );
        write(dir.path(), "other.pth", "");
        let err = Package::open(dir.path())
            .expect_err("three files")
            .to_string();
        assert!(err.contains("several weights files"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "num_classes": 3, "label_names": ["a", "b"]}"#,
        );
        write(dir.path(), "a.pth", "");
        let err = Package::open(dir.path())
            .expect_err("label count mismatch")
            .to_string();
        assert!(
            err.contains("num_classes") && err.contains("2 labels") && err.contains('3'),
            "{err}"
        );

        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "num_classes": 2}"#,
        );
        write(dir.path(), "b.pth", "");
        let err = Package::open(dir.path())
            .expect_err("two weights")
            .to_string();
        assert!(
            err.contains("several weights files") && err.contains("`weights`"),
            "{err}"
        );

        write(
            dir.path(),
            "config.json",
            r#"{"architecture": "resnet18", "num_classes": 2, "weights": "c.pth"}"#,
        );
        let err = Package::open(dir.path())
            .expect_err("missing named weights")
            .to_string();
        assert!(err.contains("`weights`") && err.contains("c.pth"), "{err}");

        write(dir.path(), "config.json", r#"{"architecture": 5}"#);
        let err = Package::open(dir.path()).expect_err("bad json").to_string();
        assert!(err.contains("not a valid model config"), "{err}");

        let empty = tempfile::tempdir().expect("tempdir");
        let err = Package::open(empty.path())
            .expect_err("no config")
            .to_string();
        assert!(err.contains("no config.json"), "{err}");

        let cfg = PretrainedCfg {
            crop_pct: Some(1.5),
            ..Default::default()
        };
        let err = preprocess_config(&cfg).expect_err("crop_pct").to_string();
        assert!(
            err.contains("pretrained_cfg.crop_pct") && err.contains("1.5"),
            "{err}"
        );
    }
}
