//! The classification registry: which classification architectures wick knows, one line per
//! file (see `crate::model::registry`). Adding one is a file exporting `FAMILY` and a line here.

use super::network::{BuildArgs, Builder, Network};
use super::{
    convnext, densenet, efficientnet, efficientnet_lite, mobilenet_v2, mobilenet_v3, resnet, vit,
};
use crate::model::error::ModelError;
use crate::model::registry::{self, Family};

const REGISTRY: &[Family<Builder>] = &[
    resnet::FAMILY,
    efficientnet_lite::FAMILY,
    efficientnet::FAMILY,
    mobilenet_v2::FAMILY,
    mobilenet_v3::FAMILY,
    densenet::FAMILY,
    vit::FAMILY,
    convnext::FAMILY,
];

/// Every classification architecture name wick can build.
pub fn supported() -> Vec<&'static str> {
    registry::supported(REGISTRY)
}

/// Builds the network called `args.name` from `args.weights`.
pub fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    (registry::builder(REGISTRY, args.name)?)(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Weights;

    /// `wick train` writes the new head under this key; it must be the one the builder reads.
    #[test]
    fn each_family_names_its_classifier_key() -> Result<(), ModelError> {
        let weights = Weights::synthetic();
        for (name, key) in [
            ("resnet18", "fc"),
            ("mobilenet_v2", "classifier.1"),
            ("mobilenet_v3_large", "classifier.3"),
            ("mobilenet_v3_small", "classifier.3"),
            ("mobilenetv3_large_100", "classifier"),
            ("densenet121", "classifier"),
            // Synthetic weights have no `_conv_stem.weight`, so this is the timm flavour.
            ("efficientnet_lite0", "classifier"),
            ("tf_efficientnet_lite0", "classifier"),
            // Without timm's `conv_stem.weight`, the torchvision flavour.
            ("efficientnet_b0", "classifier.1"),
            ("efficientnet_v2_s", "classifier.1"),
            ("tf_efficientnet_b0", "classifier"),
            ("tf_efficientnetv2_s", "classifier"),
            ("efficientnetv2_rw_s", "classifier"),
            ("vit_tiny_patch16_224", "head"),
            ("deit_tiny_patch16_224", "head"),
            ("deit_tiny_distilled_patch16_224", "head"),
            (vit::HF_NAME, "classifier"),
            ("convnext_atto", "head.fc"),
            (convnext::HF_NAME, "classifier"),
        ] {
            let network = build(&BuildArgs {
                name,
                weights: &weights,
                num_classes: 3,
                config: &Default::default(),
            })?;
            assert_eq!(network.classifier_key, key, "{name}");
            assert_eq!(network.classifier.c_out(), 3, "{name}");
        }
        Ok(())
    }
}
