//! What a detection network is ([`DetectionNetwork`]: a letterboxed image to raw head output,
//! and that output to candidate boxes) and what its builder gets ([`DetectionArgs`]). The
//! architectures are in this folder, listed in `registry.rs`; [`Detector`] runs the rest of the
//! pipeline (letterbox, NMS, boxes back to the original pixels) the same way for all of them.
//!
//! [`Detector`]: super::detector::Detector

use candle_core::Tensor;

use super::letterbox::Placement;
use super::nms::Candidate;
use crate::model::error::ModelError;
use crate::model::package::{Letterbox, Package};
use crate::model::weights::Weights;

/// A network from a letterboxed image to detection candidates.
pub(crate) trait DetectionNetwork: Send + Sync {
    /// `(n, H, W, 3)` NHWC letterboxed RGB in [0, 1] -> the raw head output (see
    /// [`Detector::raw_output`](super::detector::Detector::raw_output)).
    fn raw_output(&self, xs: &Tensor) -> candle_core::Result<Tensor>;

    /// Classes the network scores.
    fn num_classes(&self) -> usize;

    /// The input `(height, width)` when the package sets none.
    fn default_input_size(&self) -> (usize, usize);

    /// Where an `original` `(height, width)` image goes on the network's canvas for an
    /// `input_size` input, and the value padding takes.
    fn placement(
        &self,
        original: (usize, usize),
        input_size: (usize, usize),
        letterbox: Letterbox,
    ) -> (Placement, f32);

    /// The boxes of a raw output (first image) whose score beats `threshold`, in the pixels of
    /// a `canvas` `(height, width)` input.
    fn candidates(
        &self,
        raw: &Tensor,
        threshold: f32,
        canvas: (usize, usize),
    ) -> Result<Vec<Candidate>, ModelError>;

    /// Class names of the dataset the architecture's public checkpoints are trained on, used
    /// when a package names none and the class count matches.
    fn dataset_labels(&self) -> &'static [&'static str];
}

/// What a builder gets.
pub(crate) struct DetectionArgs<'a> {
    /// e.g. `yolov8n`, `tiny_yolov2`.
    pub(crate) name: &'a str,
    /// The checkpoint's tensors.
    pub(crate) weights: &'a Weights,
    /// The package (a darknet network reads its `.cfg` from it).
    pub(crate) package: &'a Package,
    /// Classes the package declares (`num_classes`, else its labels), if any.
    pub(crate) num_classes: Option<usize>,
}

/// How a detection architecture is built.
pub(crate) type Builder = fn(&DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError>;
