//! The model layer: packages, weights, preprocessing and the networks of the three tasks
//! (`classify/`, `segment/`, `detect/`), each registered the same way (`registry.rs`).
//! Synchronous and runtime-free: no tokio, no axum, no AWS, and no import from the commands.
//!
//! This file only declares the modules and re-exports what callers use most; files inside
//! `model/` import from the defining module, never through these re-exports.

pub(crate) mod atomic_file;
pub mod classify;
pub mod detect;
pub(crate) mod error;
pub mod huggingface;
pub mod kernels;
pub mod layers;
pub(crate) mod output;
pub mod package;
pub(crate) mod pools;
pub mod precision;
pub mod preprocess;
pub(crate) mod registry;
pub mod segment;
pub mod smp_config;
pub(crate) mod task;
pub mod weights;

pub use classify::Classifier;
pub use detect::Detector;
pub use error::ModelError;
pub use output::{DetectOptions, Detection, LabelMap, Output, Prediction, ScoreFunction};
pub use precision::Precision;
pub use segment::Segmenter;
pub use task::{InferenceOptions, Input, Model};
