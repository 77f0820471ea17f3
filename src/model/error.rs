//! Everything that can go wrong building or running a network, one enum for the model layer.

use super::package::PackageError;
use super::preprocess::PreprocessError;
use super::weights::WeightsError;

/// Everything that can go wrong building or running a network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor is missing, mis-shaped, or the checkpoint cannot be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The configured architecture is not one wick implements.
    #[error("unknown architecture `{name}`; supported: {supported}")]
    UnknownArchitecture {
        /// The name given.
        name: String,
        /// Comma-separated list of the supported names.
        supported: String,
    },
    /// The checkpoint describes a layer wick does not implement (e.g. a grouped convolution).
    #[error("unsupported layer: {0}")]
    Unsupported(String),
    /// The package directory or its `config.json` is unusable.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// An image could not be decoded or transformed.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// A per-request option (detection `threshold`, `iou`, ...) is out of range.
    #[error("option `{field}`: {message} (given: {value})")]
    InvalidOption {
        /// The option's name as clients spell it.
        field: &'static str,
        /// The accepted range.
        message: String,
        /// The value given.
        value: String,
    },
    /// Writing an answer as it was computed (a streamed label map) failed.
    #[error("writing the answer: {0}")]
    Output(#[from] std::io::Error),
    /// A tensor operation failed (shapes that do not fit together, an input too small).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
