//! A loaded object detector: network, labels and input size from one package, and the whole
//! pipeline for one image (letterbox, forward, decode, threshold, class-aware NMS, boxes mapped
//! back to the original pixels).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::arch::darknet::{self, Darknet};
use super::arch::yolov8::{self, YoloV8};
use super::dataset_labels::{COCO, VOC};
use super::layers::to_nhwc;
use super::letterbox::{draw, Placement, PAD_VALUE};
use super::nms::{suppress, Candidate};
use super::output::{DetectOptions, Detection};
use super::package::{Letterbox, Package, Task};
use super::weights::Weights;
use super::ModelError;

/// Most boxes a request may ask for.
pub const MAX_DETECTIONS_LIMIT: usize = 10_000;

enum Network {
    // Boxed: a YOLOv8 holds its layer list inline, a darknet network a few pointers.
    YoloV8(Box<YoloV8>),
    Darknet(Darknet),
}

/// A detection model ready to run.
pub struct Detector {
    network: Network,
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
        let weights = match darknet_cfg(&package)? {
            Some(cfg) => darknet::load_weights(&cfg, &package.weights_path)?,
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
    /// packages, the tensors [`darknet::load_weights`] names; the layer list is read from the
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
        let (network, num_classes, default_size) = if yolov8::NAMES.contains(&name) {
            let net = YoloV8::load(name, weights, declared_classes.unwrap_or(COCO.len()))?;
            let nc = net.dims().num_classes;
            (Network::YoloV8(Box::new(net)), nc, (640, 640))
        } else if darknet::NAMES.contains(&name) {
            let cfg = darknet_cfg(package)?.ok_or(ModelError::Unsupported(
                "a darknet package needs config.json `darknet_cfg` naming its .cfg file".into(),
            ))?;
            let net = Darknet::load(&darknet::Cfg::read(&cfg)?, weights)?;
            let (nc, size) = (net.num_classes(), net.input_size());
            (Network::Darknet(net), nc, size)
        } else {
            let mut supported: Vec<&str> = yolov8::NAMES.to_vec();
            supported.extend(darknet::NAMES);
            return Err(ModelError::UnknownArchitecture {
                name: name.to_string(),
                supported: supported.join(", "),
            });
        };
        let labels = resolve_labels(package, weights, &network, num_classes)?;
        let input_size = match config.pretrained_cfg.input_size.as_deref() {
            None => default_size,
            Some(&[3, h, w]) if h > 0 && w > 0 && h % 32 == 0 && w % 32 == 0 => (h, w),
            Some(other) => {
                return Err(ModelError::Package(
                    super::package::PackageError::InvalidField {
                        field: "pretrained_cfg.input_size",
                        message: "expected [3, height, width] with sizes multiples of 32".into(),
                        value: format!("{other:?}"),
                    },
                ))
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

    /// A YOLOv8 scale (`yolov8n` ... `yolov8x`) with synthetic weights, 80 COCO classes and a
    /// 640x640 input: for benchmarks, where only the cost matters.
    pub fn synthetic(architecture: &str) -> Result<Self, ModelError> {
        if !yolov8::NAMES.contains(&architecture) || architecture == "yolov8" {
            return Err(ModelError::UnknownArchitecture {
                name: architecture.to_string(),
                supported: yolov8::NAMES[1..].join(", "),
            });
        }
        let network = YoloV8::load(architecture, &Weights::synthetic(), COCO.len())?;
        Ok(Detector {
            network: Network::YoloV8(Box::new(network)),
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
    pub fn architecture(&self) -> &str {
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
        let xs = to_nhwc(batch)?;
        Ok(match &self.network {
            Network::YoloV8(net) => net.forward(&xs)?,
            Network::Darknet(net) => net.forward(&xs)?,
        })
    }

    /// Whole pipeline for one image: letterbox, forward, decode, threshold, class-aware NMS,
    /// map to original pixels, clip, sort by score desc, truncate to `max_detections`.
    pub fn detect(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, ModelError> {
        validate(options, self.labels.len())?;
        let original = (image.height() as usize, image.width() as usize);
        // Darknet networks always get their whole input, as darknet and OpenCV give it.
        let (placement, pad) = match (&self.network, self.letterbox) {
            (Network::YoloV8(_), Letterbox::Rect) => (
                Placement::minimal(original, self.input_size, yolov8::MAX_STRIDE),
                PAD_VALUE,
            ),
            (Network::YoloV8(_), Letterbox::Square) => {
                (Placement::new(original, self.input_size), PAD_VALUE)
            }
            (Network::Darknet(_), _) => (
                Placement::new(original, self.input_size),
                darknet::PAD_VALUE,
            ),
        };
        let (h, w) = placement.canvas;
        let pixels = draw(image, &placement, pad);
        let batch = Tensor::from_vec(pixels, (1, 3, h, w), &Device::Cpu)?;
        let raw = self.raw_output(&batch)?;
        let candidates = match &self.network {
            Network::YoloV8(_) => yolov8_candidates(&raw, options.threshold)?,
            Network::Darknet(net) => net.candidates(&raw, options.threshold, (h, w))?,
        };
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

/// Boxes of a YOLOv8 raw output (first image) whose best class beats `threshold`.
fn yolov8_candidates(raw: &Tensor, threshold: f32) -> Result<Vec<Candidate>, ModelError> {
    let raw = raw.get(0)?.to_vec2::<f32>()?;
    let anchors = raw.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for a in 0..anchors {
        let (class_id, score) = raw[4..]
            .iter()
            .map(|row| row[a])
            .enumerate()
            // The first of equal maxima, as torch's max does.
            .fold((0, f32::NEG_INFINITY), |best, (k, s)| {
                if s > best.1 {
                    (k, s)
                } else {
                    best
                }
            });
        if score > threshold {
            let (cx, cy, w, h) = (raw[0][a], raw[1][a], raw[2][a], raw[3][a]);
            out.push(Candidate {
                xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                score,
                class_id,
            });
        }
    }
    Ok(out)
}

/// Rejects options no request should carry, naming the field and the value.
pub fn validate(options: &DetectOptions, num_classes: usize) -> Result<(), ModelError> {
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

/// The darknet `.cfg` of a package, if its config names one.
fn darknet_cfg(package: &Package) -> Result<Option<std::path::PathBuf>, ModelError> {
    let Some(name) = package.config.darknet_cfg.as_deref() else {
        return Ok(None);
    };
    let path = package.config_dir.join(name);
    if !path.is_file() {
        return Err(ModelError::Package(
            super::package::PackageError::InvalidField {
                field: "darknet_cfg",
                message: format!("no such file in `{}`", package.config_dir.display()),
                value: name.to_string(),
            },
        ));
    }
    Ok(Some(path))
}

/// The package's labels, else the checkpoint's own names, else COCO / VOC when the class count
/// matches the architecture's dataset, else `class_<i>`.
fn resolve_labels(
    package: &Package,
    weights: &Weights,
    network: &Network,
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
        let dataset = match network {
            Network::YoloV8(_) => from_dataset(&COCO),
            Network::Darknet(_) => from_dataset(&VOC),
        };
        dataset.unwrap_or_else(|| (0..num_classes).map(|i| format!("class_{i}")).collect())
    };
    if labels.len() != num_classes {
        return Err(ModelError::Unsupported(format!(
            "the package names {} labels but the network has {num_classes} classes",
            labels.len()
        )));
    }
    Ok(labels)
}
