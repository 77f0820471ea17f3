//! The model layer: packages, weights, preprocessing and the networks themselves.
//! Synchronous and runtime-free: no tokio, no axum, no AWS in here.

pub mod preprocess;
pub mod weights;
