//! wick: a SageMaker-compatible serving and training container for image models.
//!
//! The crate is one library plus a thin binary (`src/main.rs`). The [`model`] layer is
//! synchronous and knows nothing of HTTP, async runtimes or AWS; the commands ([`predict`],
//! [`convert`], [`bench`], [`train`]) drive it.

pub mod bench;
pub mod cli;
pub mod convert;
pub mod model;
pub mod predict;
pub mod telemetry;
pub mod train;
