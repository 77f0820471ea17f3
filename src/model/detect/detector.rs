//! A loaded object detector: network, labels and input size from one package, and the whole
//! pipeline for one image (letterbox, forward, decode, threshold, class-aware NMS, boxes mapped
//! back to the original pixels).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::darknet::cfg::package_cfg;
use super::darknet::weights::load_weights;
use super::labels::COCO;
use super::letterbox::{self, Placement};
use super::network::{DetectionArgs, DetectionNetwork};
use super::nms::suppress;
use super::registry;
use super::{yolo11, yolov8};
use crate::model::error::ModelError;
use crate::model::layers::to_nhwc;
use crate::model::output::{DetectOptions, Detection};
use crate::model::package::{Letterbox, Package, PackageError, Task};
use crate::model::weights::Weights;

/// Families whose named scales [`Detector::synthetic`] builds; the first name of each takes its
/// sizes from a checkpoint, so it has no synthetic form.
const SYNTHETIC_FAMILIES: [&[&str]; 2] = [yolov8::NAMES, yolo11::NAMES];

/// Most boxes a request may ask for.
pub(crate) const MAX_DETECTIONS_LIMIT: usize = 10_000;

/// A detection model ready to run.
pub struct Detector {
    network: Box<dyn DetectionNetwork>,
    labels: Vec<String>,
    architecture: String,
    input_size: (usize, usize),
    letterbox: Letterbox,
}

impl Detector {
    /// Loads the package in `dir` (see `docs/model-package.md`, "Detection packages").
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let started = Instant::now();
        let package = Package::open(dir)?;
        let weights = match package_cfg(&package)? {
            Some(cfg) => load_weights(&cfg, &package.weights_path)?,
            None => Weights::load(&package.weights_path)?,
        };
        let detector = Self::from_package(&package, &weights)?;
        tracing::info!(
            architecture = %detector.architecture,
            weights = %package.weights_path.display(),
            classes = detector.labels.len(),
            input_height = detector.input_size.0,
            input_width = detector.input_size.1,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(detector)
    }

    /// Builds the detector a package describes from already loaded weights (for darknet
    /// packages, the tensors [`load_weights`] names; the layer list is read from the
    /// package's `.cfg`).
    pub fn from_package(package: &Package, weights: &Weights) -> Result<Self, ModelError> {
        let config = &package.config;
        if config.task != Task::Detection {
            return Err(ModelError::Unsupported(format!(
                "config.json `task` is {:?}; a detector needs `detection`",
                config.task
            )));
        }
        let name = config.architecture.as_str();
        let declared_classes = config
            .num_classes
            .or((!package.labels.is_empty()).then_some(package.labels.len()));
        let network = registry::build(&DetectionArgs {
            name,
            weights,
            package,
            num_classes: declared_classes,
        })?;
        let (num_classes, default_size) = (network.num_classes(), network.default_input_size());
        let labels = resolve_labels(package, weights, network.dataset_labels(), num_classes)?;
        let input_size = match config.pretrained_cfg.input_size.as_deref() {
            None => default_size,
            Some(&[3, h, w]) if h > 0 && w > 0 && h % 32 == 0 && w % 32 == 0 => (h, w),
            Some(other) => {
                return Err(ModelError::Package(PackageError::InvalidField {
                    field: "pretrained_cfg.input_size",
                    message: "expected [3, height, width] with sizes multiples of 32".into(),
                    value: format!("{other:?}"),
                }))
            }
        };
        Ok(Detector {
            network,
            labels,
            architecture: config.architecture.clone(),
            input_size,
            letterbox: config.letterbox.unwrap_or_default(),
        })
    }

    /// Whether [`Detector::synthetic`] builds `architecture`.
    pub(crate) fn has_synthetic(architecture: &str) -> bool {
        SYNTHETIC_FAMILIES
            .iter()
            .any(|names| names[1..].contains(&architecture))
    }

    /// A YOLOv8 or YOLO11 scale (`yolov8n` ... `yolo11x`) with synthetic weights, 80 COCO
    /// classes and a 640x640 input: for benchmarks, where only the cost matters.
    pub(crate) fn synthetic(architecture: &str) -> Result<Self, ModelError> {
        let weights = Weights::synthetic();
        let network = if yolov8::NAMES[1..].contains(&architecture) {
            yolov8::load(architecture, &weights, COCO.len())?
        } else if yolo11::NAMES[1..].contains(&architecture) {
            yolo11::load(architecture, &weights, COCO.len())?
        } else {
            let scales: Vec<&str> = SYNTHETIC_FAMILIES
                .iter()
                .flat_map(|n| &n[1..])
                .copied()
                .collect();
            return Err(ModelError::UnknownArchitecture {
                name: architecture.to_string(),
                supported: scales.join(", "),
            });
        };
        Ok(Detector {
            network: Box::new(network),
            labels: COCO.iter().map(|s| s.to_string()).collect(),
            architecture: architecture.to_string(),
            input_size: (640, 640),
            letterbox: Letterbox::default(),
        })
    }

    /// Class names in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The configured architecture name.
    pub(crate) fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The letterboxed input size `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// `(n, 3, H, W)` letterboxed RGB in [0, 1] -> the raw head output: YOLOv8
    /// `(n, 4 + nc, anchors)` exactly as ultralytics' `model(x)[0]` in eval mode (box centre,
    /// size in input pixels, class probabilities); Tiny YOLOv2 the region layer output
    /// `(n, anchors * (5 + nc), h, w)` as darknet/OpenCV give it (sigmoid x, y and objectness,
    /// softmax classes, raw w and h).
    pub fn raw_output(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.network.raw_output(&to_nhwc(batch)?)?)
    }

    /// Whole pipeline for one image: letterbox, forward, decode, threshold, class-aware NMS,
    /// map to original pixels, clip, sort by score desc, truncate to `max_detections`.
    pub fn detect(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, ModelError> {
        self.detect_letterboxed(&self.letterbox(image), options)
    }

    /// The first step of [`Detector::detect`] on its own: `wick serve` runs it while decoding
    /// a request, so a queued request holds the small 8-bit letterbox instead of its photo.
    pub fn letterbox(&self, image: &RgbImage) -> Letterboxed {
        let original = (image.height() as usize, image.width() as usize);
        let (placement, pad) = self
            .network
            .placement(original, self.input_size, self.letterbox);
        Letterboxed {
            resized: letterbox::resize(image, &placement),
            placement,
            pad,
        }
    }

    /// [`Detector::detect`] from the letterbox of [`Detector::letterbox`].
    pub fn detect_letterboxed(
        &self,
        input: &Letterboxed,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, ModelError> {
        validate(options, self.labels.len())?;
        let Letterboxed {
            resized,
            placement,
            pad,
        } = input;
        let (h, w) = placement.canvas;
        let pixels = letterbox::canvas(resized, placement, *pad);
        let batch = Tensor::from_vec(pixels, (1, 3, h, w), &Device::Cpu)?;
        let raw = self.raw_output(&batch)?;
        let candidates = self.network.candidates(&raw, options.threshold, (h, w))?;
        let kept = suppress(
            candidates,
            options.threshold,
            options.iou,
            options.classes.as_deref(),
            options.max_detections,
        );
        Ok(kept
            .into_iter()
            .map(|c| {
                let [xmin, ymin, xmax, ymax] = placement.to_original(c.xyxy);
                Detection {
                    class_id: c.class_id,
                    label: self.labels[c.class_id].clone(),
                    score: c.score,
                    xmin,
                    ymin,
                    xmax,
                    ymax,
                }
            })
            .collect())
    }
}

/// An image letterboxed for a detector, before the network: its pixels resized (8-bit RGB),
/// where they go on the canvas and the padding around them.
#[derive(Debug, Clone)]
pub struct Letterboxed {
    resized: Vec<u8>,
    placement: Placement,
    pad: f32,
}

impl Letterboxed {
    /// The original image's `(width, height)`.
    pub fn original_size(&self) -> (u32, u32) {
        let (h, w) = self.placement.original;
        (w as u32, h as u32)
    }
}

/// Rejects options no request should carry, naming the field and the value.
pub(crate) fn validate(options: &DetectOptions, num_classes: usize) -> Result<(), ModelError> {
    let invalid = |field: &'static str, message: &str, value: String| ModelError::InvalidOption {
        field,
        message: message.to_string(),
        value,
    };
    let unit = |field, v: f32| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(invalid(field, "must be a number in [0, 1]", v.to_string()))
        }
    };
    unit("threshold", options.threshold)?;
    unit("iou", options.iou)?;
    if options.max_detections == 0 || options.max_detections > MAX_DETECTIONS_LIMIT {
        return Err(invalid(
            "max_detections",
            &format!("must be between 1 and {MAX_DETECTIONS_LIMIT}"),
            options.max_detections.to_string(),
        ));
    }
    if let Some(bad) = options
        .classes
        .iter()
        .flatten()
        .find(|&&c| c >= num_classes)
    {
        return Err(invalid(
            "classes",
            &format!("class ids must be below {num_classes}"),
            bad.to_string(),
        ));
    }
    Ok(())
}

/// The package's labels, else the checkpoint's own names, else the architecture's dataset
/// labels (COCO, VOC) when the class count matches, else `class_<i>`.
fn resolve_labels(
    package: &Package,
    weights: &Weights,
    dataset: &[&str],
    num_classes: usize,
) -> Result<Vec<String>, ModelError> {
    let from_dataset = |names: &[&str]| -> Option<Vec<String>> {
        (names.len() == num_classes).then(|| names.iter().map(|s| s.to_string()).collect())
    };
    let labels = if !package.labels.is_empty() {
        package.labels.clone()
    } else if let Some(names) = weights.class_names() {
        names.to_vec()
    } else {
        from_dataset(dataset)
            .unwrap_or_else(|| (0..num_classes).map(|i| format!("class_{i}")).collect())
    };
    if labels.len() != num_classes {
        return Err(ModelError::Unsupported(format!(
            "the package names {} labels but the network has {num_classes} classes",
            labels.len()
        )));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letterbox_made_ahead_gives_the_boxes_of_the_whole_pipeline() {
        let detector = Detector::synthetic("yolov8n").expect("a synthetic YOLOv8n");
        // Not a multiple of the stride either way, so the placement pads both sides.
        let image = RgbImage::from_fn(451, 300, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
        });
        let options = DetectOptions {
            threshold: 0.01,
            ..DetectOptions::default()
        };
        let whole = detector.detect(&image, &options).expect("detects");
        let letterboxed = detector.letterbox(&image);
        assert_eq!(letterboxed.original_size(), (451, 300));
        drop(image);
        let ahead = detector
            .detect_letterboxed(&letterboxed, &options)
            .expect("detects");
        assert!(!whole.is_empty(), "the test needs boxes to compare");
        assert_eq!(whole, ahead);
    }
}
