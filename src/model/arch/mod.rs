//! The architecture registry: which network names wick knows and how each is built from a
//! checkpoint. Adding an architecture means adding one file and one line to [`REGISTRY`].

mod densenet;
mod efficientnet_lite;
mod mobilenet_v2;
mod resnet;

use candle_core::{Module, Tensor};

use super::layers::{to_nhwc, Linear};
use super::weights::Weights;
use super::ModelError;

/// A network without its classifier: normalised images in, pooled features out.
pub trait Backbone: Send + Sync {
    /// `(n, h, w, 3)` NHWC, normalised -> `(n, num_features)`.
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
}

/// A classification network: a backbone and a linear head.
pub struct Network {
    /// Feature extractor.
    pub backbone: Box<dyn Backbone>,
    /// `num_features -> num_classes`.
    pub classifier: Linear,
}

impl Network {
    /// `(n, 3, h, w)` normalised images -> `(n, num_features)` pooled features.
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.backbone.forward_features(&to_nhwc(xs)?)
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
}

/// One family of architectures.
struct Family {
    /// The names this family builds.
    names: &'static [&'static str],
    build: fn(&BuildArgs<'_>) -> Result<Network, ModelError>,
}

const REGISTRY: &[Family] = &[
    Family {
        names: resnet::NAMES,
        build: resnet::build,
    },
    Family {
        names: efficientnet_lite::NAMES,
        build: efficientnet_lite::build,
    },
    Family {
        names: mobilenet_v2::NAMES,
        build: mobilenet_v2::build,
    },
    Family {
        names: densenet::NAMES,
        build: densenet::build,
    },
];

/// Every architecture name wick can build.
pub fn supported() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|f| f.names.iter().copied())
        .collect()
}

/// Builds the network called `args.name` from `args.weights`.
pub fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let family = REGISTRY
        .iter()
        .find(|f| f.names.contains(&args.name))
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: args.name.to_string(),
            supported: supported().join(", "),
        })?;
    (family.build)(args)
}
