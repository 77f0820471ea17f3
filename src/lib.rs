//! wick: a SageMaker-compatible serving and training container for image models.
//!
//! The crate is one library plus a thin binary (`src/main.rs`). The [`model`] layer is
//! synchronous and knows nothing of HTTP, async runtimes or AWS; the commands ([`serve`],
//! [`predict`], [`convert`], [`bench`]) drive it. Only [`serve`] knows axum and tokio.

pub mod bench;
pub mod cli;
pub mod convert;
pub mod model;
pub mod predict;
pub mod serve;
pub mod telemetry;
