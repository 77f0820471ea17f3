//! wick: a SageMaker-compatible serving and training container for image models.
//!
//! The crate is one library plus a thin binary (`src/main.rs`). The [`model`] layer is
//! synchronous and knows nothing of HTTP, async runtimes or AWS; the commands ([`serve`],
//! [`train`], [`predict`], [`convert`], [`bench`], [`package_cmd`]) drive it. Only [`serve`]
//! knows axum; [`artifacts`] turns local paths and S3 URIs into a local package directory and
//! is the only module that knows AWS.

pub mod artifacts;
pub mod bench;
pub mod cli;
pub mod convert;
pub mod model;
pub mod package_cmd;
pub mod predict;
pub mod render;
pub mod serve;
pub mod telemetry;
pub mod train;
