//! Semantic segmentation: the networks (one file per architecture family, listed in
//! `registry.rs`; ASPP, the MobileNetV3 trunk, smp's U-Net / FPN encoders (`smp_encoder.rs`)
//! and the resizing ops they share), what they share (`network.rs`), and the loaded
//! [`Segmenter`] that turns an image into a label map at its own size (`segmenter.rs`, with
//! `config.rs` and `tiling.rs`; `streamed.rs` for images read and answered row by row).
//!
//! Each decoder exists twice: here for inference, and in `crate::train::segment::decoder` as
//! the trainable twin `wick train` fits. Their checkpoint keys are defined once, here (the
//! `*_KEY` / `*_KEYS` constants of `lraspp.rs`, `deeplabv3.rs`, `deeplabv3plus.rs` and
//! `aspp.rs`), and imported by the twins.

pub(crate) mod aspp;
pub(crate) mod config;
pub(crate) mod deeplabv3;
pub(crate) mod deeplabv3plus;
pub(crate) mod fpn;
pub(crate) mod lraspp;
pub(crate) mod network;
pub(crate) mod ops;
pub(crate) mod registry;
pub(crate) mod segformer;
pub(crate) mod segmenter;
pub(crate) mod smp_encoder;
pub(crate) mod streamed;
pub(crate) mod tiling;
pub(crate) mod unet;

pub use network::{Decoder, SegmentationArgs, SegmentationNetwork, Trainable};
pub use registry::{build, supported};
pub use segmenter::Segmenter;
pub use streamed::StreamedImage;
