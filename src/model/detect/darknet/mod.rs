//! Darknet detectors described by a `.cfg` file and a `.weights` file: the cfg parser
//! (`cfg.rs`), the weights reader (`weights.rs`), and the network with the region layer's
//! decoding (`network.rs`).

pub(crate) mod cfg;
pub(crate) mod network;
#[cfg(test)]
mod tests;
pub(crate) mod weights;

pub use cfg::{Cfg, Layer, Region};
pub use network::{Darknet, NAMES, PAD_VALUE};
pub use weights::{load_weights, weights_from_bytes};
