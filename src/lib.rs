//! wick: a SageMaker-compatible serving and training container for image models.
//!
//! The crate is one library plus a thin binary (`src/main.rs`). The [`model`] layer is
//! synchronous and knows nothing of HTTP, async runtimes or AWS.

pub mod model;
