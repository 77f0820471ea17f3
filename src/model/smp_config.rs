//! segmentation_models_pytorch's `config.json` (what `model.save_pretrained(dir)` writes next
//! to `model.safetensors`: `_model_class` and every constructor argument) read as a wick
//! package config. The class and encoder give the architecture (`Unet` + `resnet34` is
//! `unet_resnet34`, `FPN` + `efficientnet-b0` is `fpn_efficientnet_b0`: wick's names use
//! underscores), `classes` the number of outputs; every other argument must have the value
//! wick implements (smp's default) or be one that does not change the eval-mode network
//! (`encoder_weights`, dropouts, `aux_params`), and is refused by name otherwise;
//! `encoder_weights` "advprop" only sets the input normalisation (mean and std 0.5). The package
//! runs smp's way: images up to 1024 pixels a side in one pass, zero-padded after
//! normalisation to a multiple of 32 (`segmentation.tile_size` 1024, `padding` "zeros").
//! See `docs/model-package.md`.

use serde_json::{json, Map, Value};

/// The key smp's `save_pretrained` adds to name the model class.
const CLASS_KEY: &str = "_model_class";
/// The ResNet encoders (torchvision key names under `encoder.`), which every class takes.
const RESNETS: &[&str] = &["resnet34", "resnet50"];
/// U-Net's and FPN's encoders: the ResNets and EfficientNet-B0, as smp's lukemelas port
/// (`efficientnet-b0`) and as timm's (`timm-efficientnet-b0`). DeepLabV3+ dilates its
/// encoder's last stage, which wick implements for the ResNets only.
const UNET_FPN_ENCODERS: &[&str] = &[
    "resnet34",
    "resnet50",
    "efficientnet-b0",
    "timm-efficientnet-b0",
];
/// Tile side of an smp package: smp users run whole images; 1024 keeps a ResNet-50 U-Net's
/// activations near 2 GB.
const SMP_TILE_SIZE: usize = 1024;
/// Keys wick itself reads from `config.json`, kept as they are.
const WICK_KEYS: &[&str] = &[
    "label_names",
    "id2label",
    "weights",
    "segmentation",
    "pretrained_cfg",
];

/// An smp config wick cannot run.
#[derive(Debug, thiserror::Error)]
#[error(
    "config.json of a segmentation_models_pytorch `{class}`: field `{field}`: {message} (given: {value})"
)]
pub struct SmpConfigError {
    /// `_model_class`, e.g. `Unet`.
    class: String,
    /// The constructor argument.
    field: String,
    /// What wick accepts.
    message: String,
    /// The value found, as JSON.
    value: String,
}

/// What an argument may hold.
#[derive(Clone, Copy)]
enum Rule {
    /// smp's default, the only value wick implements (as JSON text).
    Only(&'static str),
    /// One of these values (as JSON text).
    OneOf(&'static [&'static str]),
    /// Anything: the argument does not change the network in eval mode.
    Any,
}

/// Arguments of every class wick reads, beside `encoder_name` and `classes`.
const COMMON: &[(&str, Rule)] = &[
    ("encoder_depth", Rule::Only("5")),
    ("encoder_weights", Rule::Any),
    ("in_channels", Rule::Only("3")),
    ("activation", Rule::OneOf(&["null", "\"identity\""])),
    ("aux_params", Rule::Any),
];
const UNET: &[(&str, Rule)] = &[
    ("decoder_use_norm", Rule::OneOf(&["true", "\"batchnorm\""])),
    (
        "decoder_use_batchnorm",
        Rule::OneOf(&["true", "\"batchnorm\""]),
    ),
    ("decoder_channels", Rule::Only("[256,128,64,32,16]")),
    ("decoder_attention_type", Rule::Only("null")),
    ("decoder_interpolation", Rule::Only("\"nearest\"")),
];
const FPN: &[(&str, Rule)] = &[
    ("decoder_pyramid_channels", Rule::Only("256")),
    ("decoder_segmentation_channels", Rule::Only("128")),
    ("decoder_merge_policy", Rule::Only("\"add\"")),
    ("decoder_dropout", Rule::Any),
    ("decoder_interpolation", Rule::Only("\"nearest\"")),
    ("upsampling", Rule::Only("4")),
];
const DEEPLABV3PLUS: &[(&str, Rule)] = &[
    ("encoder_output_stride", Rule::Only("16")),
    ("decoder_channels", Rule::Only("256")),
    ("decoder_atrous_rates", Rule::Only("[12,24,36]")),
    ("decoder_aspp_separable", Rule::Only("true")),
    ("decoder_aspp_dropout", Rule::Any),
    ("upsampling", Rule::Only("4")),
];

/// A class's constructor arguments and what each may hold.
type Arguments = &'static [(&'static str, Rule)];

/// `(smp class, wick architecture prefix, its arguments, its encoders)`.
const CLASSES: &[(&str, &str, Arguments, &[&str])] = &[
    ("Unet", "unet", UNET, UNET_FPN_ENCODERS),
    ("FPN", "fpn", FPN, UNET_FPN_ENCODERS),
    ("DeepLabV3Plus", "deeplabv3plus", DEEPLABV3PLUS, RESNETS),
];

/// Whether `config` is one smp wrote (it names its `_model_class`).
pub(crate) fn is_smp(config: &Value) -> bool {
    config.get(CLASS_KEY).is_some()
}

/// The wick package config an smp `config` describes: `architecture`, `task`
/// ("segmentation"), `num_classes`, the `segmentation` section (smp's sizing, overridable by
/// the config's own section) and wick's own keys (labels, `weights`) as they are.
pub(crate) fn translate(config: &Value) -> Result<Value, SmpConfigError> {
    let class_value = config.get(CLASS_KEY).cloned().unwrap_or(Value::Null);
    let refuse = |class: &str, field: &str, message: String, value: &Value| SmpConfigError {
        class: class.to_string(),
        field: field.to_string(),
        message,
        value: value.to_string(),
    };
    let class = class_value.as_str().unwrap_or_default();
    let Some(&(_, prefix, rules, encoders)) = CLASSES.iter().find(|(name, ..)| *name == class)
    else {
        let names: Vec<&str> = CLASSES.iter().map(|(name, ..)| *name).collect();
        return Err(refuse(
            class,
            CLASS_KEY,
            format!("wick runs {}", names.join(", ")),
            &class_value,
        ));
    };
    let Some(fields) = config.as_object() else {
        return Err(refuse(class, "", "expected a JSON object".into(), config));
    };
    let encoder = fields
        .get("encoder_name")
        .cloned()
        .unwrap_or_else(|| json!("resnet34"));
    if !encoder.as_str().is_some_and(|e| encoders.contains(&e)) {
        let message = format!("wick runs the encoders {}", encoders.join(", "));
        return Err(refuse(class, "encoder_name", message, &encoder));
    }
    let classes = fields.get("classes").cloned().unwrap_or_else(|| json!(1));
    let Some(num_classes) = classes.as_u64().filter(|&n| n > 0) else {
        let message = "must be a positive number of output channels".into();
        return Err(refuse(class, "classes", message, &classes));
    };
    let mut out = Map::new();
    for (key, value) in fields {
        if WICK_KEYS.contains(&key.as_str()) {
            out.insert(key.clone(), value.clone());
            continue;
        }
        if key.starts_with('_') || ["encoder_name", "classes"].contains(&key.as_str()) {
            // smp drops `_`-prefixed keys before calling the constructor.
            continue;
        }
        let rule = COMMON.iter().chain(rules).find(|(name, _)| name == key);
        check_argument(key, value, rule.map(|&(_, rule)| rule))
            .map_err(|message| refuse(class, key, message, value))?;
    }
    let encoder = encoder.as_str().unwrap_or_default().replace('-', "_");
    out.insert("architecture".into(), json!(format!("{prefix}_{encoder}")));
    out.insert("task".into(), json!("segmentation"));
    out.insert("num_classes".into(), json!(num_classes));
    let mut sizing = Map::new();
    sizing.insert("tile_size".into(), json!(SMP_TILE_SIZE));
    sizing.insert("padding".into(), json!("zeros"));
    if let Some(Value::Object(own)) = fields.get("segmentation") {
        sizing.extend(own.clone());
    }
    out.insert("segmentation".into(), Value::Object(sizing));
    if fields.get("encoder_weights") == Some(&json!(ADVPROP)) {
        advprop_normalisation(&mut out);
    }
    Ok(Value::Object(out))
}

/// `encoder_weights` whose pixels smp normalises with mean and std 0.5, not ImageNet's.
const ADVPROP: &str = "advprop";

/// The EfficientNet encoders' `advprop` weights were trained on pixels normalised with mean
/// and std 0.5 (`get_preprocessing_params(encoder, "advprop")`), and a model fine-tuned from
/// them expects the same: that becomes the `pretrained_cfg` mean and std, unless the config
/// gives its own.
fn advprop_normalisation(out: &mut Map<String, Value>) {
    let cfg = out
        .entry("pretrained_cfg")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(cfg) = cfg {
        for key in ["mean", "std"] {
            cfg.entry(key).or_insert_with(|| json!([0.5, 0.5, 0.5]));
        }
    }
}

/// `Ok` when `value` is allowed by `rule`; otherwise what is allowed. An argument wick does not
/// know is allowed only as `null` (smp prunes `None` encoder arguments).
fn check_argument(key: &str, value: &Value, rule: Option<Rule>) -> Result<(), String> {
    let text = value.to_string();
    match rule {
        Some(Rule::Any) => Ok(()),
        Some(Rule::Only(want)) if text == want => Ok(()),
        Some(Rule::Only(want)) => Err(format!("wick implements only {want}")),
        Some(Rule::OneOf(wants)) if wants.contains(&text.as_str()) => Ok(()),
        Some(Rule::OneOf(wants)) => Err(format!("wick implements only {}", wants.join(" or "))),
        None if value.is_null() => Ok(()),
        None => Err(format!(
            "`{key}` is not an argument wick implements for this class"
        )),
    }
}

#[cfg(test)]
mod tests;
