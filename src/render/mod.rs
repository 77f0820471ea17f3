//! Turning model outputs into pictures and compact encodings: label-map and mask PNGs, the VOC
//! palette, mask overlays, boxes with their labels drawn on the input, COCO run-length
//! encoding. Shared by `wick serve` and `wick predict`; knows nothing of HTTP.

mod boxes;
mod encode;
mod font;
mod overlay;
mod palette;
mod rle;

pub use boxes::draw_detections;
pub use encode::{class_mask_png, encode_jpeg, encode_png, label_map_png, RenderError};
pub use overlay::overlay_mask;
pub use palette::{class_color, voc_palette};
pub use rle::{coco_rle, CocoRle};
