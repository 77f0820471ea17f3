//! The segmentation registry: which segmentation architectures wick knows, one line per file
//! (see `crate::model::registry`). Adding one is a file exporting `FAMILY` and a line here.

use super::network::{Builder, SegmentationArgs, SegmentationNetwork};
use super::{deeplabv3, deeplabv3plus, fpn, lraspp, segformer, unet};
use crate::model::error::ModelError;
use crate::model::registry::{self, Family};

const REGISTRY: &[Family<Builder>] = &[
    deeplabv3::FAMILY,
    lraspp::FAMILY,
    deeplabv3plus::FAMILY,
    unet::FAMILY,
    fpn::FAMILY,
    segformer::FAMILY,
];

/// Every segmentation architecture name wick can build.
pub fn supported() -> Vec<&'static str> {
    registry::supported(REGISTRY)
}

/// Builds the segmentation network called `args.name`.
pub fn build(args: &SegmentationArgs<'_>) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    (registry::builder(REGISTRY, args.name)?)(args)
}
