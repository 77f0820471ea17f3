//! What a model answers for one image, whatever its task: ranked classes, a label map at the
//! image's own size, or labelled boxes in its own pixel coordinates. The serving and offline
//! paths encode these; the networks produce them.

use serde::Serialize;

/// One class and its probability, the Hugging Face `image-classification` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Class name.
    pub label: String,
    /// Softmax probability (sigmoid for multi-label models).
    pub score: f32,
}

/// One image's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Classification: the best classes, best first.
    Classes(Vec<Prediction>),
    /// Semantic segmentation: a class per pixel of the original image.
    Segmentation(LabelMap),
    /// Object detection: boxes sorted by score, best first.
    Detections(Vec<Detection>),
}

/// A class index per pixel, row-major, at the size of the image that was segmented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    /// Width in pixels (the original image's).
    pub width: u32,
    /// Height in pixels (the original image's).
    pub height: u32,
    /// `width * height` class indices, row by row. A binary model uses 0 and 1.
    pub classes: Vec<u8>,
}

impl LabelMap {
    /// Pixels per class index, for `num_classes` classes (indices beyond are not counted).
    pub fn pixel_counts(&self, num_classes: usize) -> Vec<u64> {
        let mut counts = vec![0u64; num_classes];
        for &c in &self.classes {
            if let Some(count) = counts.get_mut(usize::from(c)) {
                *count += 1;
            }
        }
        counts
    }
}

/// One detected object, in the original image's pixel coordinates, clipped to the image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Index into the model's labels.
    pub class_id: usize,
    /// Class name.
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// Left edge, pixels from the image's left.
    pub xmin: f32,
    /// Top edge, pixels from the image's top.
    pub ymin: f32,
    /// Right edge.
    pub xmax: f32,
    /// Bottom edge.
    pub ymax: f32,
}

/// Per-request detection settings (JSON `parameters` or Custom-Attributes).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectOptions {
    /// Minimum confidence kept (`threshold`).
    pub threshold: f32,
    /// IoU above which a lower-scored box of the same class is suppressed (`iou`).
    pub iou: f32,
    /// Most boxes returned (`max_detections`).
    pub max_detections: usize,
    /// Only these class indices, when set (`classes`).
    pub classes: Option<Vec<usize>>,
}

impl Default for DetectOptions {
    /// Ultralytics' serving defaults.
    fn default() -> Self {
        DetectOptions {
            threshold: 0.25,
            iou: 0.45,
            max_detections: 300,
            classes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_counts_cover_every_pixel_once() {
        let map = LabelMap {
            width: 3,
            height: 2,
            classes: vec![0, 1, 1, 2, 0, 0],
        };
        assert_eq!(map.pixel_counts(3), vec![3, 2, 1]);
        // An index beyond the classes asked for is not counted (and does not panic).
        assert_eq!(map.pixel_counts(2), vec![3, 2]);
    }
}
