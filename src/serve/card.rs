//! What `GET /model/metadata` says about the loaded model (IBM MAX's shape), read once from
//! the package's `config.json` when the model loads.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::model::package::{Package, Task};

/// What `GET /model/metadata` says about the model, from its package's `config.json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ModelCard {
    /// `id` in config.json, else timm's `pretrained_cfg.hf_hub_id`, else the architecture.
    pub(crate) id: String,
    /// `name` in config.json, else the architecture.
    pub(crate) name: String,
    /// `description` in config.json, else the architecture, task and class count.
    pub(crate) description: String,
    /// MAX's model type: `Image Classification`, `Image Segmentation` or `Object Detection`.
    #[serde(rename = "type")]
    pub(crate) model_type: String,
    /// `license` in config.json (or its `pretrained_cfg`), else `unspecified`.
    pub(crate) license: String,
}

impl ModelCard {
    /// The card of the package in `dir`; `None` when its config cannot be read.
    pub(crate) fn read(dir: &Path) -> Option<Self> {
        let package = Package::open(dir).ok()?;
        let config = &package.config;
        let text = |map: &std::collections::BTreeMap<String, Value>, key: &str| {
            map.get(key).and_then(Value::as_str).map(str::to_string)
        };
        let pretrained = &config.pretrained_cfg.extra;
        let architecture = config.architecture.clone();
        Some(ModelCard {
            id: text(&config.extra, "id")
                .or_else(|| text(pretrained, "hf_hub_id"))
                .unwrap_or_else(|| architecture.clone()),
            name: text(&config.extra, "name").unwrap_or_else(|| architecture.clone()),
            description: text(&config.extra, "description")
                .unwrap_or_else(|| describe(&architecture, config.task, package.labels.len())),
            model_type: max_type(config.task).to_string(),
            license: text(&config.extra, "license")
                .or_else(|| text(pretrained, "license"))
                .unwrap_or_else(|| "unspecified".into()),
        })
    }

    /// A card from what any loaded model knows (its task and classes).
    pub(crate) fn generic(task: Task, classes: usize) -> Self {
        ModelCard {
            id: "wick-model".into(),
            name: "wick model".into(),
            description: describe("an image", task, classes),
            model_type: max_type(task).to_string(),
            license: "unspecified".into(),
        }
    }
}

fn describe(architecture: &str, task: Task, classes: usize) -> String {
    let task = match task {
        Task::Classification => "classification",
        Task::Segmentation => "segmentation",
        Task::Detection => "detection",
    };
    format!("{architecture} {task} model with {classes} classes, served by wick")
}

fn max_type(task: Task) -> &'static str {
    match task {
        Task::Classification => "Image Classification",
        Task::Segmentation => "Image Segmentation",
        Task::Detection => "Object Detection",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_reads_the_packages_fields_or_says_what_it_knows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |config: &str| {
            std::fs::write(dir.path().join("config.json"), config).expect("config");
            std::fs::write(dir.path().join("model.safetensors"), b"").expect("weights");
        };
        write(
            r#"{"architecture": "resnet18", "label_names": ["a", "b"], "name": "Roofs", "license": "Apache-2.0", "pretrained_cfg": {"hf_hub_id": "timm/resnet18.a1_in1k"}}"#,
        );
        let card = ModelCard::read(dir.path()).expect("card");
        assert_eq!(
            (card.id.as_str(), card.name.as_str(), card.license.as_str()),
            ("timm/resnet18.a1_in1k", "Roofs", "Apache-2.0")
        );
        assert_eq!(card.model_type, "Image Classification");
        write(r#"{"architecture": "yolov8", "task": "detection", "label_names": ["cat"]}"#);
        let card = ModelCard::read(dir.path()).expect("card");
        assert_eq!(
            (card.id.as_str(), card.license.as_str()),
            ("yolov8", "unspecified")
        );
        assert_eq!(
            card.description,
            "yolov8 detection model with 1 classes, served by wick"
        );
        assert_eq!(card.model_type, "Object Detection");
    }
}
