//! smp configs as `save_pretrained` writes them: translated, or refused by field.

use serde_json::{json, Value};

use super::translate;

/// The key set segmentation_models_pytorch 0.6.0 writes for `Unet(encoder_name="resnet50",
/// encoder_weights=None, classes=2)`.
fn unet() -> Value {
    json!({
        "_model_class": "Unet",
        "activation": null,
        "aux_params": null,
        "classes": 2,
        "decoder_attention_type": null,
        "decoder_channels": [256, 128, 64, 32, 16],
        "decoder_interpolation": "nearest",
        "decoder_use_norm": "batchnorm",
        "encoder_depth": 5,
        "encoder_name": "resnet50",
        "encoder_weights": null,
        "in_channels": 3
    })
}

fn refusal(mut config: Value, field: &str, value: Value) -> String {
    config[field] = value;
    translate(&config).unwrap_err().to_string()
}

#[test]
fn a_unet_config_becomes_a_segmentation_package_run_in_one_padded_pass() {
    let mut config = unet();
    config["label_names"] = json!(["ground", "roof"]);
    let out = translate(&config).unwrap();
    assert_eq!(out["architecture"], "unet_resnet50");
    assert_eq!(out["task"], "segmentation");
    assert_eq!(out["num_classes"], 2);
    assert_eq!(out["label_names"], json!(["ground", "roof"]));
    assert_eq!(
        out["segmentation"],
        json!({"tile_size": 1024, "padding": "zeros"})
    );
    assert!(
        out.get("decoder_channels").is_none(),
        "smp arguments are consumed"
    );
}

#[test]
fn a_packages_own_segmentation_section_wins() {
    let mut config = unet();
    config["segmentation"] = json!({"tile_size": 512, "threshold": 0.3});
    let out = translate(&config).unwrap();
    assert_eq!(
        out["segmentation"],
        json!({"tile_size": 512, "padding": "zeros", "threshold": 0.3})
    );
}

#[test]
fn fpn_and_deeplabv3plus_defaults_are_accepted() {
    let fpn = json!({
        "_model_class": "FPN", "encoder_name": "resnet34", "encoder_depth": 5,
        "encoder_weights": "imagenet", "decoder_pyramid_channels": 256,
        "decoder_segmentation_channels": 128, "decoder_merge_policy": "add",
        "decoder_dropout": 0.2, "decoder_interpolation": "nearest", "in_channels": 3,
        "classes": 1, "activation": null, "upsampling": 4, "aux_params": null
    });
    assert_eq!(translate(&fpn).unwrap()["architecture"], "fpn_resnet34");
    let dlv3p = json!({
        "_model_class": "DeepLabV3Plus", "encoder_name": "resnet50",
        "encoder_output_stride": 16, "decoder_channels": 256,
        "decoder_atrous_rates": [12, 24, 36], "decoder_aspp_separable": true,
        "decoder_aspp_dropout": 0.5, "classes": 3, "upsampling": 4
    });
    let out = translate(&dlv3p).unwrap();
    assert_eq!(out["architecture"], "deeplabv3plus_resnet50");
    assert_eq!(out["num_classes"], 3);
}

#[test]
fn unsupported_arguments_are_refused_by_field_and_value() {
    let err = refusal(unet(), "decoder_attention_type", json!("scse"));
    assert!(
        err.contains("`Unet`")
            && err.contains("decoder_attention_type")
            && err.contains("\"scse\""),
        "{err}"
    );
    let err = refusal(unet(), "in_channels", json!(4));
    assert!(
        err.contains("in_channels") && err.contains("given: 4"),
        "{err}"
    );
    let err = refusal(unet(), "encoder_name", json!("mit_b0"));
    assert!(
        err.contains("encoder_name")
            && err.contains("resnet34, resnet50")
            && err.contains("mit_b0"),
        "{err}"
    );
    let err = refusal(unet(), "decoder_channels", json!([128, 64, 32, 16, 8]));
    assert!(
        err.contains("[256,128,64,32,16]") && err.contains("[128,64,32,16,8]"),
        "{err}"
    );
    let err = refusal(unet(), "_model_class", json!("UnetPlusPlus"));
    assert!(
        err.contains("UnetPlusPlus") && err.contains("Unet, FPN, DeepLabV3Plus"),
        "{err}"
    );
    let err = refusal(unet(), "encoder_output_stride", json!(8));
    assert!(
        err.contains("encoder_output_stride") && err.contains("not an argument"),
        "{err}"
    );
    let err = refusal(unet(), "activation", json!("sigmoid"));
    assert!(
        err.contains("activation") && err.contains("\"sigmoid\""),
        "{err}"
    );
}

#[test]
fn arguments_that_do_not_change_the_eval_network_are_ignored() {
    let mut config = unet();
    config["encoder_weights"] = json!("imagenet");
    config["aux_params"] = json!({"classes": 4, "dropout": 0.5});
    config["some_encoder_kwarg"] = Value::Null;
    assert_eq!(translate(&config).unwrap()["architecture"], "unet_resnet50");
}

#[test]
fn efficientnet_b0_encoders_name_the_architecture_with_underscores() {
    let mut config = unet();
    config["encoder_name"] = json!("efficientnet-b0");
    assert_eq!(
        translate(&config).unwrap()["architecture"],
        "unet_efficientnet_b0"
    );
    config["_model_class"] = json!("FPN");
    config["encoder_name"] = json!("timm-efficientnet-b0");
    for field in [
        "decoder_channels",
        "decoder_attention_type",
        "decoder_use_norm",
    ] {
        config.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(
        translate(&config).unwrap()["architecture"],
        "fpn_timm_efficientnet_b0"
    );
}

#[test]
fn deeplabv3plus_refuses_the_efficientnet_encoders_by_name() {
    let dlv3p = json!({
        "_model_class": "DeepLabV3Plus", "encoder_name": "efficientnet-b0", "classes": 3
    });
    let err = translate(&dlv3p).unwrap_err().to_string();
    assert!(
        err.contains("`DeepLabV3Plus`")
            && err.contains("encoder_name")
            && err.contains("resnet34, resnet50 ")
            && err.contains("\"efficientnet-b0\""),
        "{err}"
    );
    let err = refusal(unet(), "encoder_name", json!("efficientnet-b1"));
    assert!(
        err.contains("efficientnet-b0, timm-efficientnet-b0") && err.contains("efficientnet-b1"),
        "{err}"
    );
}

#[test]
fn advprop_encoder_weights_normalise_with_mean_and_std_one_half() {
    let mut config = unet();
    config["encoder_name"] = json!("efficientnet-b0");
    config["encoder_weights"] = json!("advprop");
    let out = translate(&config).unwrap();
    assert_eq!(
        out["pretrained_cfg"],
        json!({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    );
    config["pretrained_cfg"] = json!({"mean": [0.4, 0.4, 0.4]});
    let out = translate(&config).unwrap();
    assert_eq!(
        out["pretrained_cfg"],
        json!({"mean": [0.4, 0.4, 0.4], "std": [0.5, 0.5, 0.5]})
    );
    config["encoder_weights"] = json!("imagenet");
    config.as_object_mut().unwrap().remove("pretrained_cfg");
    assert!(translate(&config).unwrap().get("pretrained_cfg").is_none());
}
