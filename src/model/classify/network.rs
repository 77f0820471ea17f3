//! What a classification network is: a [`Backbone`] (normalised images to pooled features)
//! and a [`Linear`] head, and what its builder gets ([`BuildArgs`]). The architectures are in
//! this folder, one file each, listed in `registry.rs`.

use std::collections::BTreeMap;

use candle_core::{Module, Tensor};

use super::linear::Linear;
use crate::model::error::ModelError;
use crate::model::layers::to_nhwc;
use crate::model::pools::per_image;
use crate::model::weights::Weights;

/// A network without its classifier: normalised images in, pooled features out.
pub trait Backbone: Send + Sync {
    /// `(n, h, w, 3)` NHWC, normalised -> `(n, num_features)`, or `(n, pooled)` when the
    /// network has a [`Backbone::forward_pooled`] step.
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor>;

    /// `(n, pooled)` -> `(n, num_features)`: layers between the pooling and the classifier
    /// (MobileNetV3's 960 -> 1280 hidden layer), run on the whole batch after the images'
    /// [`Backbone::forward_features`] so their weights are read once per batch, not once per
    /// image. None by default.
    fn forward_pooled(&self, pooled: Tensor) -> candle_core::Result<Tensor> {
        Ok(pooled)
    }

    /// The checkpoint tensors that store a linear head `(classes, num_features)` trained on
    /// these features, for a checkpoint whose head is under `key`: `{key}.weight` and
    /// `{key}.bias`, unless the network splits its features over several heads (DeiT
    /// distilled).
    fn checkpoint_head(
        &self,
        key: &str,
        weight: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{key}.weight"), weight.clone()),
            (format!("{key}.bias"), bias.clone()),
        ])
    }
}

/// A classification network: a backbone and a linear head.
pub struct Network {
    /// Feature extractor.
    pub(crate) backbone: Box<dyn Backbone>,
    /// `num_features -> num_classes`.
    pub(crate) classifier: Linear,
    /// Checkpoint prefix of `classifier` (`fc`, `classifier`, `_fc`, `classifier.1`): its
    /// tensors are `{key}.weight` and `{key}.bias`. `wick train` writes a new head under it.
    pub(crate) classifier_key: &'static str,
}

impl Network {
    /// `(n, 3, h, w)` normalised images -> `(n, num_features)` pooled features.
    ///
    /// A batch runs image by image on the per-image pools (`crate::model::pools`), or whole on
    /// the global pool when there is one image or one core.
    pub(crate) fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let per_image = per_image(xs.dim(0)?, |i| {
            self.backbone
                .forward_features(&to_nhwc(&xs.narrow(0, i, 1)?)?)
        });
        let pooled = match per_image {
            Some(features) => features?,
            None => self.backbone.forward_features(&to_nhwc(xs)?)?,
        };
        self.backbone.forward_pooled(pooled)
    }

    /// The checkpoint tensors storing a new head `(classes, num_features)` (`wick train`):
    /// they replace the ones under `classifier_key` (and a distilled network's second head).
    pub(crate) fn head_tensors(
        &self,
        weight: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Vec<(String, Tensor)>> {
        self.backbone
            .checkpoint_head(self.classifier_key, weight, bias)
    }

    /// `(n, 3, h, w)` normalised images -> `(n, num_classes)` logits.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.classifier.forward(&self.features(xs)?)
    }
}

/// What a builder gets: the architecture name as configured, the checkpoint, the head size.
pub struct BuildArgs<'a> {
    /// e.g. `resnet50`, `efficientnet_lite0`.
    pub name: &'a str,
    /// The checkpoint's tensors.
    pub weights: &'a Weights,
    /// Outputs of the classifier.
    pub num_classes: usize,
    /// `config.json`'s fields beyond wick's own: the hyper-parameters a checkpoint's shapes do
    /// not carry (a Hugging Face config's `num_attention_heads`, `layer_norm_eps`, ...).
    pub config: &'a BTreeMap<String, serde_json::Value>,
}

/// How a classification architecture is built.
pub(crate) type Builder = fn(&BuildArgs<'_>) -> Result<Network, ModelError>;
