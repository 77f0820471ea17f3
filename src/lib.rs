//! wick: a SageMaker-compatible serving and training container for image models.
//!
//! The crate is one library plus a thin binary (`src/main.rs`). The [`model`] layer is
//! synchronous and knows nothing of HTTP, async runtimes, AWS or the commands; the commands
//! ([`serve`], [`train`], [`predict`], [`convert`], [`bench`], [`package_cmd`]) drive it. The
//! wire formats (request bodies, options, answers) are the crate-private `codec` module, shared
//! by `serve` and `predict`; [`render`] draws pictures (overlays, boxes, training curves). Only
//! [`serve`] knows axum; [`artifacts`] turns local paths and S3 URIs into a local package
//! directory and is the only module that knows AWS. `docs/architecture.md` has the map.
//!
//! **The public API** is what the two users outside the library need, and nothing else:
//! - the binary (`src/main.rs`): [`cli`] (the parsed command line), [`telemetry`], and each
//!   command's `run`;
//! - the integration tests (`tests/it`) and `examples/`: [`serve::app`] with its state and the
//!   `Predictor` seam, the model layer's loaders, networks, registries and outputs
//!   ([`model`]), [`artifacts`], the VOC colours of [`render`], and the pieces of
//!   `wick train` the training tests drive directly ([`train::rng`], [`train::segment`]).
//!
//! Everything else is `pub(crate)`: compile the binary and the tests to see what must stay
//! public.

pub mod artifacts;
pub mod bench;
pub mod cli;
pub(crate) mod codec;
pub mod convert;
pub mod model;
pub mod package_cmd;
pub mod predict;
pub(crate) mod progress;
pub mod render;
pub mod serve;
pub mod telemetry;
pub mod train;
