//! Pictures and compact encodings of model outputs and training runs: label-map and mask PNGs,
//! the VOC palette, mask overlays, boxes with their labels drawn on the input, COCO run-length
//! encoding, and training curves. One canvas and one bitmap font (`canvas.rs`, `font.rs`) draw
//! every picture. Used by `codec` (answers), `wick predict` and `wick train`; knows nothing of
//! HTTP or training.

mod boxes;
pub(crate) mod canvas;
mod encode;
mod font;
mod overlay;
mod palette;
pub(crate) mod plot;
mod rle;

pub(crate) use boxes::draw_detections;
pub(crate) use encode::{
    class_mask_png, encode_jpeg, encode_png, label_map_png, LabelMapPngStream, RenderError,
};
pub(crate) use overlay::overlay_mask;
pub(crate) use overlay::training_overlay;
pub use palette::{class_color, voc_palette};
pub(crate) use rle::coco_rle;
