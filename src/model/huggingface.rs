//! Hugging Face folders as model packages: a `config.json` naming its class in `architectures`
//! (as `huggingface_hub.snapshot_download` or `save_pretrained` leave it) is rewritten into
//! wick's fields before the package reads it: the class picks wick's architecture and task from
//! [`ARCHITECTURES`], and `preprocessor_config.json` becomes the `pretrained_cfg` transform.
//! Labels come from `id2label`, which wick reads as it is.
//!
//! Adding a family is a row in [`ARCHITECTURES`] naming the registry entry that builds it
//! from the Hugging Face keys.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// One Hugging Face class wick serves.
#[derive(Debug)]
pub(crate) struct HfArchitecture {
    /// As `config.json`'s `architectures` spells it.
    pub(crate) class: &'static str,
    /// The package task (`classification`, `segmentation`, `detection`).
    pub(crate) task: &'static str,
    /// The architecture name in the task's registry, from the config's own fields (a family
    /// whose builder reads its sizes from the config has one name; SegFormer has one per MiT
    /// variant).
    pub(crate) architecture: fn(&Map<String, Value>) -> Result<&'static str, HfError>,
}

/// Every Hugging Face class wick serves.
pub(crate) const ARCHITECTURES: &[HfArchitecture] = &[
    HfArchitecture {
        class: "ViTForImageClassification",
        task: "classification",
        architecture: vit_architecture,
    },
    HfArchitecture {
        class: "ConvNextForImageClassification",
        task: "classification",
        architecture: convnext_architecture,
    },
    HfArchitecture {
        class: "SegformerForSemanticSegmentation",
        task: "segmentation",
        architecture: segformer_architecture,
    },
];

/// ViT's builder reads `hidden_size` and the rest from the config.
fn vit_architecture(_: &Map<String, Value>) -> Result<&'static str, HfError> {
    Ok(crate::model::classify::vit::HF_NAME)
}

/// ConvNeXt's builder reads `hidden_sizes`, `depths` and the rest from the config.
fn convnext_architecture(_: &Map<String, Value>) -> Result<&'static str, HfError> {
    Ok(crate::model::classify::convnext::HF_NAME)
}

/// The `segformer_bN` whose MiT sizes the config gives (`hidden_sizes`, `depths`,
/// `decoder_hidden_size`, with transformers' defaults, B0's, where absent); the fields every MiT
/// shares must have their usual values.
fn segformer_architecture(config: &Map<String, Value>) -> Result<&'static str, HfError> {
    let list = |field: &str, default: [u64; 4]| -> Value {
        config.get(field).cloned().unwrap_or_else(|| json!(default))
    };
    for (field, usual) in [
        ("num_attention_heads", [1, 2, 5, 8]),
        ("sr_ratios", [8, 4, 2, 1]),
        ("patch_sizes", [7, 3, 3, 3]),
        ("strides", [4, 2, 2, 2]),
        ("mlp_ratios", [4, 4, 4, 4]),
    ] {
        let value = list(field, usual);
        if value != json!(usual) {
            return Err(HfError::Config {
                field,
                message: format!("wick's SegFormer runs the MiT value {usual:?}"),
                value: value.to_string(),
            });
        }
    }
    for (field, usual) in [("hidden_act", "gelu"), ("num_channels", "3")] {
        let value = config.get(field).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if value.as_deref().is_some_and(|v| v != usual) {
            return Err(HfError::Config {
                field,
                message: format!("wick's SegFormer needs {usual}"),
                value: value.unwrap_or_default(),
            });
        }
    }
    let as_sizes = |value: &Value| -> Option<[usize; 4]> {
        let v: Vec<usize> = serde_json::from_value(value.clone()).ok()?;
        v.try_into().ok()
    };
    let widths = list("hidden_sizes", [32, 64, 160, 256]);
    let depths = list("depths", [2, 2, 2, 2]);
    let decoder = config
        .get("decoder_hidden_size")
        .cloned()
        .unwrap_or_else(|| json!(256));
    let found = match (as_sizes(&widths), as_sizes(&depths), decoder.as_u64()) {
        (Some(w), Some(d), Some(c)) => {
            crate::model::segment::segformer::variant_named(w, d, c as usize)
        }
        _ => None,
    };
    found.ok_or_else(|| HfError::Config {
        field: "hidden_sizes",
        message: "hidden_sizes, depths and decoder_hidden_size must be those of MiT-B0 ... B5"
            .into(),
        value: format!("{widths}, {depths}, {decoder}"),
    })
}

const PROCESSOR_FILE: &str = "preprocessor_config.json";
/// PIL's resampling codes, as `preprocessor_config.json`'s `resample` holds them.
const PIL_BILINEAR: u64 = 2;
const PIL_BICUBIC: u64 = 3;

/// What a Hugging Face folder can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// `architectures` names a class wick does not serve.
    #[error("config.json field `architectures`: {value} is not supported; supported: {supported}")]
    UnknownArchitecture {
        /// The value given.
        value: String,
        /// Every class of [`ARCHITECTURES`].
        supported: String,
    },
    /// A file could not be read or is not JSON.
    #[error("cannot read `{path}`: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },
    /// A `config.json` field wick cannot honour.
    #[error("config.json field `{field}`: {message} (given: {value})")]
    Config {
        /// The field, e.g. `sr_ratios`.
        field: &'static str,
        /// What wick supports.
        message: String,
        /// The value found.
        value: String,
    },
    /// A preprocessing field wick cannot honour.
    #[error("{PROCESSOR_FILE} field `{field}`: {message} (given: {value})")]
    Processor {
        /// The field, e.g. `resample`.
        field: &'static str,
        /// What wick supports.
        message: String,
        /// The value found.
        value: String,
    },
}

/// Whether `config` is a Hugging Face `config.json`: an `architectures` list and no wick
/// `architecture`.
pub(crate) fn is_hugging_face(config: &Map<String, Value>) -> bool {
    config.contains_key("architectures") && !config.contains_key("architecture")
}

/// Adds wick's `architecture`, `task` and `pretrained_cfg` to a Hugging Face `config.json`
/// (its own fields stay: the builder reads `hidden_size` and the rest from them).
pub(crate) fn translate(config: &mut Map<String, Value>, config_dir: &Path) -> Result<(), HfError> {
    let entry = architecture(&config["architectures"])?;
    let name = (entry.architecture)(config)?;
    config.insert("architecture".into(), Value::from(name));
    config.insert("task".into(), Value::from(entry.task));
    let path = config_dir.join(PROCESSOR_FILE);
    let read_error = |cause: String| HfError::Read {
        path: path.clone(),
        cause,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        read_error(format!(
            "{e}; a Hugging Face folder's preprocessing comes from this file"
        ))
    })?;
    let processor: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))?;
    let cfg = pretrained_cfg(&processor)?;
    if entry.task == "segmentation" {
        // Segmentation never crops: the processor's resize is the whole transform.
        if cfg["crop_pct"] != json!(1.0) || cfg["resize_mode"] != json!("squash") {
            return Err(HfError::Processor {
                field: "size",
                message: "a segmentation processor must squash to {\"height\", \"width\"} without cropping".into(),
                value: processor.get("size").cloned().unwrap_or(Value::Null).to_string(),
            });
        }
        let size = &cfg["input_size"];
        config.insert(
            "segmentation".into(),
            json!({"resize_to": [size[1], size[2]]}),
        );
    }
    config.insert("pretrained_cfg".into(), cfg);
    Ok(())
}

/// The [`ARCHITECTURES`] row of an `architectures` value (a list of one class name).
fn architecture(value: &Value) -> Result<&'static HfArchitecture, HfError> {
    let class = match value.as_array().map(Vec::as_slice) {
        Some([Value::String(class)]) => Some(class.as_str()),
        _ => None,
    };
    ARCHITECTURES
        .iter()
        .find(|a| Some(a.class) == class)
        .ok_or_else(|| HfError::UnknownArchitecture {
            value: value.to_string(),
            supported: ARCHITECTURES
                .iter()
                .map(|a| a.class)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The timm-style `pretrained_cfg` (plus wick's `resize_mode`) equal to an image processor's
/// evaluation transform: resize, optional centre crop, `/255`, normalise.
fn pretrained_cfg(p: &Map<String, Value>) -> Result<Value, HfError> {
    let refuse = |field: &'static str, message: &str, value: &Value| HfError::Processor {
        field,
        message: message.into(),
        value: value.to_string(),
    };
    for field in ["do_resize", "do_rescale", "do_normalize"] {
        if let Some(v) = p.get(field).filter(|v| **v != Value::Bool(true)) {
            return Err(refuse(field, "wick always does this step; must be true", v));
        }
    }
    if let Some(v) = p.get("rescale_factor") {
        if v.as_f64().is_none_or(|f| (f * 255.0 - 1.0).abs() > 1e-6) {
            return Err(refuse("rescale_factor", "must be 1/255", v));
        }
    }
    let interpolation = match p.get("resample") {
        None => "bilinear",
        Some(v) => match v.as_u64() {
            Some(PIL_BILINEAR) => "bilinear",
            Some(PIL_BICUBIC) => "bicubic",
            _ => {
                return Err(refuse(
                    "resample",
                    "supported: 2 (bilinear), 3 (bicubic)",
                    v,
                ))
            }
        },
    };
    let triple = |field: &'static str| -> Result<Value, HfError> {
        match p.get(field) {
            Some(v) if v.as_array().is_some_and(|a| a.len() == 3) => Ok(v.clone()),
            Some(v) => Err(refuse(
                field,
                "expected three numbers, one per RGB channel",
                v,
            )),
            None => Err(refuse(field, "required", &Value::Null)),
        }
    };
    let (input, crop_pct, resize_mode) = geometry(p)?;
    Ok(json!({
        "input_size": [3, input.0, input.1],
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "mean": triple("image_mean")?,
        "std": triple("image_std")?,
        "resize_mode": resize_mode,
    }))
}

/// `size` as a dictionary. Files from the feature-extractor era (facebook/convnext-tiny-224 on
/// the hub) hold a bare integer, which transformers reads per processor: ConvNeXt's as the
/// shortest edge, the others' as a square.
fn size_dict(p: &Map<String, Value>) -> Result<Value, HfError> {
    let size = p.get("size").cloned().unwrap_or(Value::Null);
    let Some(side) = size.as_u64() else {
        return Ok(size);
    };
    let kind = ["image_processor_type", "feature_extractor_type"]
        .iter()
        .find_map(|k| p.get(*k).and_then(Value::as_str));
    match kind {
        Some(kind) if kind.starts_with("ConvNext") => Ok(json!({ "shortest_edge": side })),
        Some(_) => Ok(json!({ "height": side, "width": side })),
        None => Err(HfError::Processor {
            field: "size",
            message: "a bare number needs `image_processor_type` to say what it measures; \
                      write {\"height\", \"width\"} or {\"shortest_edge\"}"
                .into(),
            value: size.to_string(),
        }),
    }
}

/// `((height, width) fed to the network, crop_pct, resize mode)` from `size`,
/// `do_center_crop`, `crop_size` and `crop_pct`.
fn geometry(p: &Map<String, Value>) -> Result<((u64, u64), f64, &'static str), HfError> {
    let size = size_dict(p)?;
    let side = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).filter(|s| *s > 0);
    let crop = p.get("do_center_crop") == Some(&Value::Bool(true));
    let bad_size = |message: &str| HfError::Processor {
        field: "size",
        message: message.into(),
        value: size.to_string(),
    };
    match (
        side(&size, "height"),
        side(&size, "width"),
        side(&size, "shortest_edge"),
    ) {
        // ViT, DeiT: squashed to `size` (then, for DeiT, centre-cropped to `crop_size`).
        (Some(h), Some(w), None) => {
            if !crop {
                return Ok(((h, w), 1.0, "squash"));
            }
            let crop_size = p.get("crop_size").cloned().unwrap_or(Value::Null);
            match (side(&crop_size, "height"), side(&crop_size, "width")) {
                // One fraction for both axes is what `crop_pct` can say.
                (Some(ch), Some(cw)) if ch * w == cw * h && ch <= h => {
                    Ok(((ch, cw), ch as f64 / h as f64, "squash"))
                }
                _ => Err(HfError::Processor {
                    field: "crop_size",
                    message: format!(
                        "must keep the same fraction of both sides of `size` {size}, at most all"
                    ),
                    value: crop_size.to_string(),
                }),
            }
        }
        // ConvNeXt: the shorter side to `shortest_edge / crop_pct`, centre crop (below 384).
        (None, None, Some(s)) => {
            let crop_pct = p
                .get("crop_pct")
                .and_then(Value::as_f64)
                .unwrap_or(224.0 / 256.0);
            if s >= 384 {
                Ok(((s, s), 1.0, "squash"))
            } else {
                Ok(((s, s), crop_pct, "keep_aspect"))
            }
        }
        _ => Err(bad_size(
            "expected {\"height\", \"width\"} or {\"shortest_edge\"} in pixels",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn a_vit_processor_squashes_to_its_size() -> Result<(), HfError> {
        let cfg = pretrained_cfg(&processor(
            r#"{"do_normalize": true, "do_rescale": true, "do_resize": true,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "image_processor_type": "ViTImageProcessor", "resample": 2,
                "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}"#,
        ))?;
        assert_eq!(cfg["input_size"], json!([3, 224, 224]));
        assert_eq!(cfg["resize_mode"], "squash");
        assert_eq!(cfg["crop_pct"], 1.0);
        assert_eq!(cfg["interpolation"], "bilinear");
        Ok(())
    }

    #[test]
    fn a_deit_processor_squashes_then_crops() -> Result<(), HfError> {
        let cfg = pretrained_cfg(&processor(
            r#"{"do_center_crop": true, "crop_size": {"height": 224, "width": 224},
                "size": {"height": 256, "width": 256}, "resample": 3,
                "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#,
        ))?;
        assert_eq!(cfg["input_size"], json!([3, 224, 224]));
        assert_eq!(
            (cfg["crop_pct"].as_f64(), &cfg["resize_mode"]),
            (Some(0.875), &json!("squash"))
        );
        assert_eq!(cfg["interpolation"], "bicubic");
        Ok(())
    }

    /// transformers' `ConvNextImageProcessor`: below 384 the shorter side goes to
    /// `shortest_edge / crop_pct` and the centre is cropped; from 384 the image is squashed.
    #[test]
    fn a_convnext_processor_resizes_the_shorter_side_then_crops() -> Result<(), HfError> {
        let mean_std = r#""image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]"#;
        // facebook/convnext-tiny-224 on the hub: an integer `size`, the feature extractor's name.
        let cfg = pretrained_cfg(&processor(&format!(
            r#"{{"crop_pct": 0.875, "feature_extractor_type": "ConvNextFeatureExtractor",
                "resample": 3, "size": 224, {mean_std}}}"#
        )))?;
        assert_eq!(cfg["input_size"], json!([3, 224, 224]));
        assert_eq!(
            (cfg["crop_pct"].as_f64(), &cfg["resize_mode"]),
            (Some(0.875), &json!("keep_aspect"))
        );
        assert_eq!(cfg["interpolation"], "bicubic");
        let cfg = pretrained_cfg(&processor(&format!(
            r#"{{"crop_pct": null, "image_processor_type": "ConvNextImageProcessor",
                "resample": 3, "size": {{"shortest_edge": 384}}, {mean_std}}}"#
        )))?;
        assert_eq!(cfg["input_size"], json!([3, 384, 384]));
        assert_eq!(
            (cfg["crop_pct"].as_f64(), &cfg["resize_mode"]),
            (Some(1.0), &json!("squash"))
        );
        let cfg = pretrained_cfg(&processor(&format!(
            r#"{{"image_processor_type": "ViTImageProcessor", "size": 32, {mean_std}}}"#
        )))?;
        assert_eq!(
            (&cfg["input_size"], &cfg["resize_mode"]),
            (&json!([3, 32, 32]), &json!("squash"))
        );
        let err = pretrained_cfg(&processor(&format!(r#"{{"size": 224, {mean_std}}}"#)))
            .expect_err("unknown meaning")
            .to_string();
        assert!(err.contains("`size`") && err.contains("224"), "{err}");
        Ok(())
    }

    #[test]
    fn refusals_name_the_field_and_value() {
        let err = |text: &str| {
            pretrained_cfg(&processor(text))
                .expect_err("refused")
                .to_string()
        };
        let msg = err(r#"{"resample": 1, "size": {"height": 8, "width": 8}}"#);
        assert!(
            msg.contains("`resample`") && msg.contains("given: 1"),
            "{msg}"
        );
        let msg =
            err(r#"{"size": {"longest_edge": 8}, "image_mean": [0,0,0], "image_std": [1,1,1]}"#);
        assert!(
            msg.contains("`size`") && msg.contains("longest_edge"),
            "{msg}"
        );
        let msg = err(r#"{"do_normalize": false}"#);
        assert!(
            msg.contains("`do_normalize`") && msg.contains("false"),
            "{msg}"
        );
        let msg = err(r#"{"size": {"height": 8, "width": 8}, "image_mean": [0.5]}"#);
        assert!(
            msg.contains("`image_mean`") && msg.contains("[0.5]"),
            "{msg}"
        );

        let err = architecture(&json!(["SwinForImageClassification"]))
            .expect_err("unknown class")
            .to_string();
        assert!(
            err.contains("SwinForImageClassification") && err.contains("ViTForImageClassification"),
            "{err}"
        );
    }

    /// Every row names an architecture its task's registry builds (from a config with the
    /// library's defaults).
    #[test]
    fn every_row_is_registered() -> Result<(), HfError> {
        for row in ARCHITECTURES {
            let name = (row.architecture)(&Map::new())?;
            let supported = match row.task {
                "classification" => crate::model::classify::supported(),
                "segmentation" => crate::model::segment::supported(),
                other => panic!("{row:?}: add the {other} registry here"),
            };
            assert!(supported.contains(&name), "{row:?}: {name}");
        }
        Ok(())
    }

    #[test]
    fn a_segformer_config_picks_its_mit_variant() -> Result<(), HfError> {
        let config =
            |text: &str| -> Map<String, Value> { serde_json::from_str(text).expect("json") };
        assert_eq!(segformer_architecture(&config("{}"))?, "segformer_b0");
        let b2 = config(
            r#"{"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768}"#,
        );
        assert_eq!(segformer_architecture(&b2)?, "segformer_b2");
        for (text, field) in [
            (r#"{"depths": [2, 2, 2, 3]}"#, "hidden_sizes"),
            (r#"{"sr_ratios": [4, 2, 1, 1]}"#, "sr_ratios"),
            (r#"{"hidden_act": "relu"}"#, "hidden_act"),
        ] {
            let err = segformer_architecture(&config(text))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        Ok(())
    }
}
