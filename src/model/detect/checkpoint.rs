//! The `ultralytics` architecture: the network an ultralytics `.pt` describes, recognised from
//! the model class and yaml layer list pickled in it (YOLOv8 or YOLO11 `DetectionModel`s), so a
//! folder holding only the `.pt` needs no `config.json`. Anything else ultralytics saves
//! (segmentation, pose, oriented boxes, classification, RT-DETR, YOLO12, ...) is refused naming
//! what the checkpoint holds.

use super::network::{Builder, DetectionArgs, DetectionNetwork};
use super::{yolo11, yolov8};
use crate::model::error::ModelError;
use crate::model::registry::Family;
use crate::model::weights::UltralyticsModel;

/// The architecture name of a package whose network is whatever its checkpoint describes (what
/// a folder without `config.json` gets, see `model/package.rs`).
pub(crate) const FROM_CHECKPOINT: &str = "ultralytics";
/// This file's architecture, for the detection registry (`registry.rs`).
pub(crate) const FAMILY: Family<Builder> = Family {
    names: &[FROM_CHECKPOINT],
    build,
};

/// The family of a pickled ultralytics model: `yolov8` or `yolo11` (sizes from the tensors).
pub(crate) fn family_of(model: &UltralyticsModel) -> Result<&'static str, ModelError> {
    let what = || match &model.yaml_file {
        Some(yaml) => format!("an ultralytics {} built from {yaml}", model.class),
        None => format!("an ultralytics {}", model.class),
    };
    let head = model.layers.last().map_or("none", String::as_str);
    if model.class != "DetectionModel" || head != "Detect" {
        return Err(ModelError::Unsupported(format!(
            "the checkpoint holds {} whose output layer is `{head}`; wick runs ultralytics \
             DetectionModel checkpoints with a `Detect` head (YOLOv8, YOLO11)",
            what()
        )));
    }
    let has = |name: &str| model.layers.iter().any(|l| l == name);
    if has("C3k2") && has("C2PSA") {
        Ok("yolo11")
    } else if has("C2f") && !has("C3k2") {
        Ok("yolov8")
    } else {
        let mut kinds: Vec<&str> = model.layers.iter().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds.dedup();
        Err(ModelError::Unsupported(format!(
            "the checkpoint holds {} with layers {kinds:?}; wick runs YOLOv8 (C2f) and YOLO11 \
             (C3k2 + C2PSA) detectors",
            what()
        )))
    }
}

fn build(args: &DetectionArgs<'_>) -> Result<Box<dyn DetectionNetwork>, ModelError> {
    let Some(model) = args.weights.ultralytics() else {
        return Err(ModelError::Unsupported(format!(
            "`{}` holds no pickled ultralytics model (a plain state dict or another library's \
             file); add a config.json naming the `architecture` (e.g. yolo11n, yolov8n)",
            args.package.weights_path.display()
        )));
    };
    let classes = args.num_classes.unwrap_or(super::labels::COCO.len());
    let mut network = match family_of(model)? {
        "yolo11" => yolo11::load("yolo11", args.weights, classes)?,
        _ => yolov8::load("yolov8", args.weights, classes)?,
    };
    if let Some(size) = model.image_size {
        network.set_input_size(size);
    }
    Ok(Box::new(network))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(class: &str, layers: &[&str]) -> UltralyticsModel {
        UltralyticsModel {
            class: class.into(),
            yaml_file: Some("custom.yaml".into()),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            image_size: None,
        }
    }

    #[test]
    fn the_layer_list_tells_yolov8_from_yolo11() {
        let v8 = model(
            "DetectionModel",
            &["Conv", "C2f", "SPPF", "Concat", "Detect"],
        );
        assert_eq!(family_of(&v8).unwrap(), "yolov8");
        let v11 = model(
            "DetectionModel",
            &["Conv", "C3k2", "SPPF", "C2PSA", "Detect"],
        );
        assert_eq!(family_of(&v11).unwrap(), "yolo11");
    }

    #[test]
    fn other_ultralytics_models_are_refused_naming_what_they_are() {
        let seg = model("SegmentationModel", &["Conv", "C3k2", "C2PSA", "Segment"]);
        let e = family_of(&seg).unwrap_err().to_string();
        assert!(
            e.contains("SegmentationModel") && e.contains("`Segment`"),
            "{e}"
        );
        let v12 = model("DetectionModel", &["Conv", "C3k2", "A2C2f", "Detect"]);
        let e = family_of(&v12).unwrap_err().to_string();
        assert!(e.contains("A2C2f") && e.contains("custom.yaml"), "{e}");
    }
}
