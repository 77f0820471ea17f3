//! The wire formats of `/invocations`, without HTTP: the request media types and how a body
//! becomes records (`media.rs`, `payload.rs` (in memory or spooled), `body.rs`, `lines.rs`,
//! `npy.rs`, `request.rs`), the per-request options (`options.rs`), each record's answer
//! (`respond.rs`) and a request's answer put together (`assemble.rs`). What a request can get
//! wrong is one [`error::CodecError`]. Used by `serve` (which adds HTTP) and `wick predict`
//! (which reads files); it knows no axum.

pub(crate) mod assemble;
pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod lines;
pub(crate) mod media;
pub(crate) mod npy;
pub(crate) mod options;
pub(crate) mod payload;
pub(crate) mod request;
pub(crate) mod respond;
