//! What a model answers for one image, whatever its task: ranked classes, a label map at the
//! image's own size, or labelled boxes in its own pixel coordinates. The serving and offline
//! paths encode these; the networks produce them.

use serde::Serialize;

/// One class and its probability, the Hugging Face `image-classification` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Index into the model's labels (answers in label order use it; JSON does not show it).
    #[serde(skip)]
    pub class_id: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability (sigmoid for multi-label models), or what the request's
    /// [`ScoreFunction`] made of the logit.
    pub score: f32,
}

/// How a classifier's logits become scores: Hugging Face's `function_to_apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreFunction {
    /// The model's own: sigmoid for a multi-label model, softmax otherwise.
    #[default]
    Default,
    /// Softmax over the classes (they sum to 1).
    Softmax,
    /// An independent sigmoid per class.
    Sigmoid,
    /// The raw logits.
    None,
}

impl ScoreFunction {
    /// Turns one image's logits into scores in place; `is_multi_label` resolves `Default`.
    pub fn apply(self, logits: &mut [f32], is_multi_label: bool) {
        let function = match self {
            ScoreFunction::Default if is_multi_label => ScoreFunction::Sigmoid,
            ScoreFunction::Default => ScoreFunction::Softmax,
            other => other,
        };
        match function {
            ScoreFunction::Sigmoid => {
                for x in logits.iter_mut() {
                    *x = 1.0 / (1.0 + (-*x).exp());
                }
            }
            ScoreFunction::Softmax | ScoreFunction::Default => {
                // Shifted by the maximum so large logits do not overflow exp.
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in logits.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in logits.iter_mut() {
                    *x /= sum;
                }
            }
            ScoreFunction::None => {}
        }
    }
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
    /// Semantic segmentation of an [`Input::Streamed`](super::task::Input) image: the label
    /// map went to the input's sink as it was computed.
    Streamed {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
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

    #[test]
    fn score_functions_match_their_definitions() {
        let logits = [2.0f32, 0.0, -1.0];
        let run = |f: ScoreFunction, multi| {
            let mut row = logits;
            f.apply(&mut row, multi);
            row
        };
        let softmax = run(ScoreFunction::Softmax, true);
        let total: f32 = logits.iter().map(|x| x.exp()).sum();
        for (s, x) in softmax.iter().zip(logits) {
            assert!((s - x.exp() / total).abs() < 1e-6, "{softmax:?}");
        }
        let sigmoid = run(ScoreFunction::Sigmoid, false);
        assert!((sigmoid[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        assert_eq!(run(ScoreFunction::None, false), logits);
        assert_eq!(run(ScoreFunction::Default, false), softmax);
        assert_eq!(run(ScoreFunction::Default, true), sigmoid);
    }
}
