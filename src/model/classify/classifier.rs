//! A loaded image classifier: network, labels and evaluation transform from one package, and
//! the step from logits to ranked `{label, score}` predictions.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;

use super::network::{BuildArgs, Network};
use super::registry;
use crate::model::error::ModelError;
use crate::model::output::{Prediction, ScoreFunction};
use crate::model::package::{Package, Task};
use crate::model::preprocess::PreprocessConfig;
use crate::model::weights::Weights;

/// A classification model ready to run.
pub struct Classifier {
    network: Network,
    labels: Vec<String>,
    preprocess: PreprocessConfig,
    is_multi_label: bool,
    architecture: String,
}

impl Classifier {
    /// Loads the package in `dir` (see `docs/model-package.md`).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let started = Instant::now();
        let package = Package::open(dir)?;
        let weights = Weights::load(&package.weights_path)?;
        let classifier = Self::from_package(&package, &weights)?;
        tracing::info!(
            architecture = %classifier.architecture,
            weights = %package.weights_path.display(),
            classes = classifier.labels.len(),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(classifier)
    }

    /// Builds the classifier a package describes from already loaded weights.
    pub(crate) fn from_package(package: &Package, weights: &Weights) -> Result<Self, ModelError> {
        if package.config.task != Task::Classification {
            return Err(ModelError::Unsupported(format!(
                "config.json `task` is {:?}; a classifier needs `classification`",
                package.config.task
            )));
        }
        let preprocess = package.preprocess_config()?;
        preprocess.validate()?;
        let network = registry::build(&BuildArgs {
            name: &package.config.architecture,
            weights,
            num_classes: package.num_classes(),
            config: &package.config.extra,
        })?;
        Ok(Classifier {
            network,
            labels: package.labels.clone(),
            preprocess,
            is_multi_label: package.config.multi_label,
            architecture: package.config.architecture.clone(),
        })
    }

    /// The transform images must go through before [`Classifier::classify`].
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Class names in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The configured architecture name.
    pub(crate) fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Gives up the labels and keeps the network (benchmarks, feature extraction).
    pub(crate) fn into_network(self) -> Network {
        self.network
    }

    /// `(n, 3, h, w)` normalised images -> `(n, classes)` logits.
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.network.forward(batch)?)
    }

    /// The `top_k` most likely classes of each image, best first, scored by the image's
    /// function: one `(top_k, function)` per image of `batch`.
    pub fn classify(
        &self,
        batch: &Tensor,
        requests: &[(usize, ScoreFunction)],
    ) -> Result<Vec<Vec<Prediction>>, ModelError> {
        let rows = self.logits(batch)?.to_vec2::<f32>()?;
        if rows.len() != requests.len() {
            return Err(ModelError::Unsupported(format!(
                "{} score requests for a batch of {}",
                requests.len(),
                rows.len()
            )));
        }
        Ok(rows
            .into_iter()
            .zip(requests)
            .map(|(mut row, &(top_k, function))| {
                function.apply(&mut row, self.is_multi_label);
                self.rank(&row, top_k)
            })
            .collect())
    }

    fn rank(&self, scores: &[f32], top_k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // total_cmp: a NaN score must not make the sort panic or reorder arbitrarily.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(top_k)
            .map(|i| Prediction {
                class_id: i,
                label: self.labels[i].clone(),
                score: scores[i],
            })
            .collect()
    }
}
