//! The base model of a segmentation job and the package written from it.
//!
//! The `model` channel (or `base_model`) holds either a wick segmentation package, whose
//! encoder stays frozen and whose decoder trains from its own weights (the final classifier
//! re-initialised when the class count changes), or an EfficientNet-Lite classification
//! package, whose trunk becomes the frozen encoder of a new `lraspp_[tf_]efficientnet_liteN`
//! network. The written package holds every base tensor the network reads plus the trained
//! decoder, and is loaded back with the model core and checked against the trainer.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;

use crate::model::classify::efficientnet_lite::trunk_tensors_timm;
use crate::model::package::{Package, PackageConfig, PretrainedCfg, Task};
use crate::model::segment::segmenter::Segmenter;
use crate::model::segment::{self, Decoder, SegmentationArgs, SegmentationNetwork, Trainable};
use crate::model::weights::Weights;
use crate::train::hyperparams::HyperparameterError;
use crate::train::package::{self as written, MAX_RELOAD_DIFFERENCE, WEIGHTS_FILE};
/// Training resolution without `image_size` and without a package input size.
pub(crate) const DEFAULT_SIZE: (usize, usize) = (320, 320);

/// A loaded base model.
pub struct BaseModel {
    /// Architecture of the network trained and written.
    pub architecture: String,
    /// What trains.
    pub decoder: Decoder,
    /// The frozen tensors (and, for a segmentation package, its decoder's), by key.
    pub(crate) tensors: HashMap<String, Tensor>,
    /// The base package's config.
    pub(crate) config: PackageConfig,
    /// Whether the base is a segmentation package.
    pub(crate) is_segmentation: bool,
    /// A segmentation base's labels (binary: `[background, foreground]`).
    pub(crate) labels: Option<Vec<String>>,
    /// A segmentation base's output channels.
    pub(crate) out_channels: Option<usize>,
    /// Normalisation.
    pub mean: [f32; 3],
    /// See [`BaseModel::mean`].
    pub std: [f32; 3],
    /// The package's input size, if it declares one.
    pub(crate) input_size: Option<(usize, usize)>,
    /// The base weights file name, for provenance.
    pub(crate) source: String,
    /// The base weights file's size in bytes (part of a checkpoint's key).
    pub(crate) weights_size: u64,
}

/// A base package as read, before it becomes a [`BaseModel`].
struct Loaded {
    package: Package,
    weights: Weights,
    mean: [f32; 3],
    std: [f32; 3],
    input_size: Option<(usize, usize)>,
    source: String,
    weights_size: u64,
}

impl BaseModel {
    /// Loads the package in `dir`, to train `trainable` of its decoder.
    pub fn load(dir: &Path, trainable: Trainable) -> Result<Self> {
        let package = Package::open(dir)
            .with_context(|| format!("loading the base model package in `{}`", dir.display()))?;
        let weights = Weights::load(&package.weights_path)?;
        let pre = package.preprocess_config()?;
        let base = Loaded {
            input_size: package
                .config
                .pretrained_cfg
                .input_size
                .as_ref()
                .and_then(|s| (s.len() == 3).then(|| (s[1], s[2]))),
            source: package
                .weights_path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            weights_size: std::fs::metadata(&package.weights_path).map_or(0, |m| m.len()),
            mean: pre.mean,
            std: pre.std,
            package,
            weights,
        };
        match base.package.config.task {
            Task::Segmentation => Self::segmentation(base, trainable),
            Task::Classification => Self::new_lraspp(dir, base, trainable),
            Task::Detection => bail!(
                "the base model in `{}` is a detection model; segmentation trains on a \
                 segmentation package or an EfficientNet-Lite classification package",
                dir.display()
            ),
        }
    }

    /// A segmentation package: its encoder frozen, its decoder trained from its own weights.
    fn segmentation(base: Loaded, trainable: Trainable) -> Result<Self> {
        let package = &base.package;
        let out_channels = package.num_classes();
        let network = segment::build(&SegmentationArgs {
            name: &package.config.architecture,
            weights: &base.weights,
            out_channels,
        })?;
        let segmenter = Segmenter::from_package(package, &base.weights)?;
        let tensors = base
            .weights
            .names()
            .map(|n| {
                let shape = base.weights.shape(n).unwrap_or_default().to_vec();
                Ok((n.to_string(), base.weights.get(n, &shape)?))
            })
            .collect::<Result<HashMap<String, Tensor>>>()?;
        Ok(BaseModel {
            architecture: package.config.architecture.clone(),
            decoder: network.trained(trainable),
            tensors,
            labels: Some(segmenter.labels().to_vec()),
            out_channels: Some(out_channels),
            config: base.package.config,
            is_segmentation: true,
            mean: base.mean,
            std: base.std,
            input_size: base.input_size,
            source: base.source,
            weights_size: base.weights_size,
        })
    }

    /// An EfficientNet-Lite classification package: its trunk becomes the frozen encoder of a
    /// new LR-ASPP network whose head trains from PyTorch's default initialisation.
    fn new_lraspp(dir: &Path, base: Loaded, trainable: Trainable) -> Result<Self> {
        if trainable == Trainable::Head {
            return Err(HyperparameterError::Invalid {
                key: "trainable".into(),
                expected: "`decoder` for a new LR-ASPP network on a classification \
                           package (its head starts untrained; `head` needs a \
                           segmentation package whose decoder is trained)"
                    .into(),
                value: "\"head\"".into(),
            }
            .into());
        }
        let arch = &base.package.config.architecture;
        let trunk = trunk_tensors_timm(&base.weights, arch).with_context(|| {
            format!(
                "wick builds new segmentation networks on EfficientNet-Lite \
                 classification packages only (the base in `{}` is `{arch}`); give a \
                 segmentation package or an EfficientNet-Lite package",
                dir.display()
            )
        })?;
        let tensors = trunk
            .tensors
            .into_iter()
            .map(|(k, v)| (format!("backbone.{k}"), v))
            .collect();
        Ok(BaseModel {
            architecture: format!("lraspp_{}", trunk.trunk),
            decoder: Decoder::LrAspp {
                low_channels: trunk.low_channels,
                high_channels: trunk.high_channels,
            },
            tensors,
            config: base.package.config,
            is_segmentation: false,
            labels: None,
            out_channels: None,
            mean: base.mean,
            std: base.std,
            input_size: base.input_size,
            source: base.source,
            weights_size: base.weights_size,
        })
    }

    /// The base tensors with `decoder` (keys and values) laid over them.
    pub(crate) fn merged(&self, decoder: &HashMap<String, Tensor>) -> Weights {
        let mut tensors = self.tensors.clone();
        tensors.extend(decoder.iter().map(|(k, v)| (k.clone(), v.clone())));
        Weights::from_tensors(tensors)
    }

    /// The network with `decoder`'s tensors and `out_channels` outputs.
    pub fn network(
        &self,
        decoder: &HashMap<String, Tensor>,
        out_channels: usize,
    ) -> Result<Box<dyn SegmentationNetwork>> {
        Ok(segment::build(&SegmentationArgs {
            name: &self.architecture,
            weights: &self.merged(decoder),
            out_channels,
        })?)
    }

    /// Writes the package to `dir`: `model.safetensors` and `config.json`.
    pub fn write_package(
        &self,
        dir: &Path,
        decoder: &HashMap<String, Tensor>,
        labels: &[String],
        out_channels: usize,
        size: (usize, usize),
    ) -> Result<()> {
        let mut config = if self.is_segmentation {
            self.config.clone()
        } else {
            PackageConfig {
                architecture: String::new(),
                num_classes: None,
                label_names: None,
                id2label: None,
                pretrained_cfg: PretrainedCfg::default(),
                task: Task::Segmentation,
                weights: None,
                multi_label: false,
                darknet_cfg: None,
                letterbox: None,
                precision: None,
                extra: Default::default(),
            }
        };
        config.architecture = self.architecture.clone();
        config.num_classes = Some(out_channels);
        // A one-output package names its foreground only; the model core adds `background`.
        config.label_names = Some(match labels {
            [_, foreground] if out_channels == 1 => vec![foreground.clone()],
            _ => labels.to_vec(),
        });
        config.id2label = None;
        config.task = Task::Segmentation;
        config.weights = Some(WEIGHTS_FILE.into());
        config.multi_label = false;
        config.pretrained_cfg.input_size = Some(vec![3, size.0, size.1]);
        config.pretrained_cfg.mean = Some(self.mean.to_vec());
        config.pretrained_cfg.std = Some(self.std.to_vec());
        config.pretrained_cfg.extra.remove("num_classes");
        // Served images are resized to the scale the decoder was trained at.
        let mut section = match config.extra.remove("segmentation") {
            Some(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        section.insert(
            "resize_shorter_side".into(),
            serde_json::json!(size.0.min(size.1)),
        );
        config
            .extra
            .insert("segmentation".into(), serde_json::Value::Object(section));
        config.extra.insert(
            "fine_tuned_from".into(),
            serde_json::Value::String(self.source.clone()),
        );
        written::write(dir, &self.merged(decoder), &config)
    }
}

/// Loads the package in `dir` as `wick serve` does and checks that its logits on `probe`
/// (`(1, 3, h, w)` normalised) equal the trainer's `expected` (`(1, k, h, w)`).
pub fn verify_package(dir: &Path, probe: &Tensor, expected: &Tensor) -> Result<()> {
    let loaded = Segmenter::load(dir)
        .with_context(|| format!("reloading the written package in `{}`", dir.display()))?;
    let got = loaded.logits(probe)?;
    ensure!(
        got.dims() == expected.dims(),
        "the written package in `{}` answers logits of shape {:?}, the trainer {:?}",
        dir.display(),
        got.dims(),
        expected.dims()
    );
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    let difference = (got - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    // Relative to the largest logit: decoder logits can be large.
    ensure!(
        difference <= MAX_RELOAD_DIFFERENCE * scale,
        "the written package in `{}` computes different logits than the trained decoder (max difference {difference:e}); please report this",
        dir.display()
    );
    Ok(())
}
