//! Image classification: the networks (one file per architecture family, listed in
//! `registry.rs`), what they share (`network.rs`, the `linear.rs` head, `scaling.rs` channel
//! and depth scaling, `squeeze_excitation.rs`, `pos_embed.rs` ViT position embeddings resampled
//! to another grid), and the loaded [`Classifier`] that ranks classes. ResNet, EfficientNet,
//! EfficientNet-Lite and MobileNetV3 trunks also serve the segmentation networks
//! (`crate::model::segment`).

pub(crate) mod classifier;
pub(crate) mod convnext;
mod densenet;
pub(crate) mod efficientnet;
mod efficientnet_blocks;
pub(crate) mod efficientnet_lite;
pub(crate) mod linear;
mod mobilenet_v2;
pub(crate) mod mobilenet_v3;
pub(crate) mod network;
mod pos_embed;
pub(crate) mod registry;
pub(crate) mod resnet;
mod scaling;
mod squeeze_excitation;
pub(crate) mod vit;
mod vit_dims;

pub use classifier::Classifier;
pub use network::{Backbone, BuildArgs, Network};
pub use registry::{build, supported};
