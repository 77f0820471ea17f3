//! The frozen backbone: a wick model package loaded as is (its head is ignored), and the
//! trained model package written back from it: every backbone tensor of the input checkpoint
//! under its own name plus the new head under the architecture's classifier key, and a
//! `config.json` with the new labels and the backbone's preprocessing. The written package is
//! loaded back and checked before the job reports success.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Module, Tensor};

use crate::model::classify::classifier::Classifier;
use crate::model::classify::linear::Linear;
use crate::model::classify::network::{BuildArgs, Network};
use crate::model::classify::registry;
use crate::model::package::{Package, PackageConfig, Task};
use crate::model::preprocess::PreprocessConfig;
use crate::model::weights::Weights;
use crate::train::package::{self as written, MAX_RELOAD_DIFFERENCE, WEIGHTS_FILE};

/// A loaded backbone and what is needed to write a package around a new head.
pub(crate) struct Backbone {
    network: Network,
    package: Package,
    weights: Weights,
    preprocess: PreprocessConfig,
}

/// The new head, as a checkpoint stores a linear layer.
#[derive(Debug, Clone)]
pub(crate) struct HeadTensors {
    /// `(classes, features)`.
    pub(crate) weight: Tensor,
    /// `(classes)`.
    pub(crate) bias: Tensor,
}

impl Backbone {
    /// Loads the package in `dir` (any wick model package).
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let package = Package::open(dir).map_err(|e| {
            let hint = if has_archive(dir) {
                " (it holds a .tar.gz: give the channel the uncompressed package)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "loading the backbone's model package in `{}`{hint}",
                dir.display()
            ))
        })?;
        ensure!(
            package.config.task == Task::Classification,
            "the backbone package in `{}` is a {:?} model; wick trains classification heads",
            dir.display(),
            package.config.task
        );
        let weights = Weights::load(&package.weights_path)?;
        let preprocess = package.preprocess_config()?;
        preprocess.validate()?;
        let network = registry::build(&BuildArgs {
            name: &package.config.architecture,
            weights: &weights,
            num_classes: package.num_classes(),
            config: &package.config.extra,
        })
        .with_context(|| format!("building the backbone from `{}`", dir.display()))?;
        Ok(Backbone {
            network,
            package,
            weights,
            preprocess,
        })
    }

    /// The network's architecture name.
    pub(crate) fn architecture(&self) -> &str {
        &self.package.config.architecture
    }

    /// The weights file the backbone came from.
    pub(crate) fn weights_path(&self) -> &Path {
        &self.package.weights_path
    }

    /// Width of the pooled features (the head's input).
    pub(crate) fn num_features(&self) -> usize {
        self.network.classifier.c_in()
    }

    /// The evaluation transform of the backbone's package.
    pub(crate) fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// `(n, 3, h, w)` normalised images -> `(n, num_features)`.
    pub(crate) fn features(&self, batch: &Tensor) -> candle_core::Result<Tensor> {
        self.network.features(batch)
    }

    /// Writes the trained package to `dir`: `config.json` + `model.safetensors`.
    pub(crate) fn write_package(
        &self,
        dir: &Path,
        labels: &[String],
        head: &HeadTensors,
    ) -> Result<()> {
        // Usually `{classifier_key}.weight` and `.bias`; a DeiT distilled network's two heads.
        let new_head = self.network.head_tensors(&head.weight, &head.bias)?;
        let mut tensors = HashMap::with_capacity(self.weights.len());
        for name in self.weights.names() {
            if new_head.iter().any(|(replaced, _)| replaced == name) {
                continue;
            }
            let shape = self.weights.shape(name).unwrap_or_default().to_vec();
            tensors.insert(name.to_string(), self.weights.get(name, &shape)?);
        }
        tensors.extend(new_head);
        written::write(
            dir,
            &Weights::from_tensors(tensors),
            &self.package_config(labels),
        )
    }

    /// The backbone's config with the new classes: its preprocessing and other fields kept,
    /// labels replaced, weights pointing at the new file.
    fn package_config(&self, labels: &[String]) -> PackageConfig {
        let mut config = self.package.config.clone();
        config.num_classes = Some(labels.len());
        config.label_names = Some(labels.to_vec());
        config.id2label = None;
        config.weights = Some(WEIGHTS_FILE.into());
        config.multi_label = false;
        config.task = Task::Classification;
        // timm copies the class count into pretrained_cfg too; a stale 1000 there would mislead.
        config.pretrained_cfg.extra.remove("num_classes");
        // Provenance only (wick does not read it): the backbone checkpoint's file name.
        let base = self.package.weights_path.file_name().unwrap_or_default();
        config.extra.insert(
            "fine_tuned_from".into(),
            serde_json::Value::String(base.to_string_lossy().into_owned()),
        );
        config
    }

    /// Loads the written package the way `wick predict` / `wick serve` do and checks that it
    /// computes what the trained head computes on `probe` (`(n, 3, h, w)` normalised images).
    pub(crate) fn verify_package(
        &self,
        dir: &Path,
        head: &HeadTensors,
        probe: &Tensor,
    ) -> Result<()> {
        let loaded = Classifier::load(dir)
            .with_context(|| format!("reloading the written package in `{}`", dir.display()))?;
        let linear = Linear::from_tensors(&head.weight, &head.bias)?;
        let expected = linear.forward(&self.features(probe)?)?;
        let difference = (loaded.logits(probe)? - expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        ensure!(
            difference <= MAX_RELOAD_DIFFERENCE,
            "the written package in `{}` computes different logits than the trained head (max difference {difference:e}); please report this",
            dir.display()
        );
        Ok(())
    }
}

/// Whether `dir` holds a `.tar.gz` (a channel pointed at `model.tar.gz` rather than a package).
fn has_archive(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| PathBuf::from(e.file_name()))
            .any(|p| p.to_string_lossy().ends_with(".tar.gz"))
    })
}
