//! Object detection: the networks (YOLOv8 from ultralytics checkpoints, darknet cfg + weights
//! networks such as Tiny YOLOv2; listed in `registry.rs`), what they share (`network.rs`), and
//! the loaded [`Detector`] with the pipeline around them: letterbox (`letterbox.rs`, resizing as
//! OpenCV does in `cv_resize.rs`), class-aware
//! NMS (`nms.rs`), default dataset labels (`labels.rs`).

pub mod cv_resize;
pub mod darknet;
pub(crate) mod detector;
pub(crate) mod labels;
pub mod letterbox;
pub(crate) mod network;
pub(crate) mod nms;
pub(crate) mod registry;
pub(crate) mod yolov8;

pub use detector::Detector;
