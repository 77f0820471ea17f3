//! Object detection: the networks (YOLOv8 and YOLO11 from ultralytics checkpoints, with what they
//! share in `ultralytics.rs` and `ultralytics_detect.rs`, YOLO11's attention in `psa.rs` and the
//! recognition of an ultralytics `.pt` in `checkpoint.rs`; darknet cfg + weights networks such as
//! Tiny YOLOv2; listed in `registry.rs`), what all share (`network.rs`), and the loaded
//! [`Detector`] with the pipeline around them: letterbox (`letterbox.rs`, resizing as OpenCV does
//! in `cv_resize.rs`), class-aware NMS (`nms.rs`), default dataset labels (`labels.rs`).

pub(crate) mod checkpoint;
pub mod cv_resize;
pub mod darknet;
pub(crate) mod detector;
pub(crate) mod labels;
pub mod letterbox;
pub(crate) mod network;
pub(crate) mod nms;
mod psa;
pub(crate) mod registry;
pub(crate) mod ultralytics;
pub(crate) mod ultralytics_detect;
pub(crate) mod yolo11;
pub(crate) mod yolov8;

pub use detector::{Detector, Letterboxed};
