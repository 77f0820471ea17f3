//! Image classification: the networks (one file per architecture family, listed in
//! `registry.rs`), what they share (`network.rs`, the `linear.rs` head), and the loaded
//! [`Classifier`] that ranks classes. ResNet, EfficientNet-Lite and MobileNetV3 trunks also
//! serve the segmentation networks (`crate::model::segment`).

pub(crate) mod classifier;
mod densenet;
pub(crate) mod efficientnet_lite;
pub(crate) mod linear;
mod mobilenet_v2;
pub(crate) mod mobilenet_v3;
pub(crate) mod network;
pub(crate) mod registry;
pub(crate) mod resnet;
pub(crate) mod vit;

pub use classifier::Classifier;
pub use network::{Backbone, BuildArgs, Network};
pub use registry::{build, supported};
