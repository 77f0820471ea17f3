//! torchvision DeepLabV3 (`deeplabv3_resnet50`, `deeplabv3_resnet101`,
//! `deeplabv3_mobilenet_v3_large`): a dilated backbone under `backbone.*` (ResNet at output
//! stride 8, MobileNetV3-Large at 16), then `classifier.*` = ASPP (rates 12, 24, 36, dense
//! branches), a 3x3 conv + BN + ReLU, and a 1x1 conv to the classes; logits are resized to
//! the input with `align_corners=False`. `aux_classifier.*` (training only) is never read.
//!
//! `wick train` fits the classifier after the dilated branches through its trainable twin,
//! `crate::train::segment::decoder::deeplabv3`; the keys both read are defined here.

use candle_core::Tensor;

use super::aspp::{Aspp, Conv3x3, ASPP_CHANNELS};
use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::ops::resize;
use crate::model::classify::mobilenet_v3::{Keys, MobileNetV3, Size, HIGH_CHANNELS};
use crate::model::classify::resnet::{Dilation, ResNetTrunk};
use crate::model::error::ModelError;
use crate::model::layers::{Conv, ConvSpec};
use crate::model::registry::Family;

// Checkpoint keys of the classifier, defined once for both twins: this network and the
// trainable one (`crate::train::segment::decoder::deeplabv3`).
/// The ASPP (dense dilated branches).
pub(crate) const ASPP_KEY: &str = "classifier.0";
/// The 3x3 after the ASPP: `(convolution, batch norm)`.
pub(crate) const CONV_KEYS: (&str, &str) = ("classifier.1", "classifier.2");
/// The final 1x1 convolution to the classes.
pub(crate) const CLASSIFIER_KEY: &str = "classifier.4";
/// The ASPP's dilation rates.
const RATES: [usize; 3] = [12, 24, 36];

pub(super) const NAMES: &[&str] = &[
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

enum Backbone {
    ResNet(ResNetTrunk),
    MobileNet(MobileNetV3),
}

struct DeepLabV3 {
    backbone: Backbone,
    /// Channels of the encoder output.
    channels: usize,
    aspp: Aspp,
    conv: Conv3x3,
    classifier: Conv,
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let (backbone, channels) = match args.name {
        "deeplabv3_mobilenet_v3_large" => (
            Backbone::MobileNet(MobileNetV3::load(
                w,
                ("backbone.", Keys::Torchvision),
                Size::Large,
                true,
            )?),
            HIGH_CHANNELS,
        ),
        name => {
            let resnet = name.trim_start_matches("deeplabv3_");
            let trunk = ResNetTrunk::load(w, "backbone.", resnet, Dilation::TorchvisionStride8)?;
            let channels = trunk.channels();
            (Backbone::ResNet(trunk), channels)
        }
    };
    let aspp = Aspp::load(w, ASPP_KEY, channels, RATES, false)?;
    let conv = Conv3x3::load(
        w,
        CONV_KEYS.0,
        CONV_KEYS.1,
        (ASPP_CHANNELS, ASPP_CHANNELS, 1),
        false,
    )?;
    let classifier = Conv::load(
        w,
        CLASSIFIER_KEY,
        None,
        ConvSpec {
            has_bias: true,
            ..ConvSpec::new(ASPP_CHANNELS, args.out_channels, 1, 1)
        },
    )?;
    Ok(Box::new(DeepLabV3 {
        backbone,
        channels,
        aspp,
        conv,
        classifier,
    }))
}

impl DeepLabV3 {
    /// The encoder output (the ASPP's input).
    fn encoder(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match &self.backbone {
            Backbone::ResNet(trunk) => Ok(trunk.forward(xs)?.last),
            Backbone::MobileNet(net) => Ok(net.forward(xs)?.high),
        }
    }

    /// The input of the final 1x1 classifier (`classifier.3`, after the ReLU).
    fn penultimate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(&self.aspp.forward(&self.encoder(xs)?)?)
    }
}

impl SegmentationNetwork for DeepLabV3 {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, h, w, _) = xs.dims4()?;
        let ys = self.penultimate(xs)?;
        resize(&self.classifier.forward(&ys)?, (h, w), false)
    }

    fn decoder(&self) -> Decoder {
        Decoder::DeepLabV3 {
            channels: self.channels,
        }
    }

    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        // The dense dilated branches (~45 GFLOP per 320x320 image for ResNet) stay frozen:
        // their outputs are cached with the encoder output.
        let features = self.encoder(xs)?;
        let mut out = vec![features.clone()];
        out.extend(self.aspp.atrous_outputs(&features)?);
        Ok(out)
    }

    fn head(&self) -> Decoder {
        Decoder::FinalConv {
            key: CLASSIFIER_KEY,
            channels: ASPP_CHANNELS,
            align_corners: false,
        }
    }

    fn head_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![self.penultimate(xs)?])
    }

    fn out_channels(&self) -> usize {
        self.classifier.c_out()
    }

    fn size_multiple(&self) -> usize {
        1
    }
}
