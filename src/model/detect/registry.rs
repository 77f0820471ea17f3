//! The detection registry: which detection architectures wick knows, one line per file (see
//! `crate::model::registry`). Adding one is a file exporting `FAMILY` and a line here.

use super::network::{Builder, DetectionArgs, DetectionNetwork};
use super::{checkpoint, darknet, yolo11, yolov8};
use crate::model::error::ModelError;
use crate::model::registry::{self, Family};

const REGISTRY: &[Family<Builder>] = &[
    yolov8::FAMILY,
    yolo11::FAMILY,
    checkpoint::FAMILY,
    darknet::network::FAMILY,
];

/// Builds the detection network called `args.name`.
pub(crate) fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    (registry::builder(REGISTRY, args.name)?)(args)
}
