//! The wire formats of `/invocations`, without HTTP: the request media types and how a body
//! becomes images (`media.rs`, `body.rs`, `request.rs`, `npy.rs`), the per-request options
//! (`options.rs`), and the answers each task gives in each format (`respond.rs`). What a
//! request can get wrong is one [`error::CodecError`]. Used by `serve` (which adds HTTP) and
//! `wick predict` (which reads files); it knows no axum.

pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod media;
pub(crate) mod npy;
pub(crate) mod options;
pub(crate) mod request;
pub(crate) mod respond;
