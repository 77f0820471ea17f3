//! torchvision's LR-ASPP head (`torchvision.models.segmentation.lraspp.LRASPPHead`, inter
//! channels 128) on two trunks:
//! - `lraspp_mobilenet_v3_large`: torchvision's own model, dilated MobileNetV3-Large under
//!   `backbone.*` (low = `features.4`, 40 channels at stride 8; high = `features.16`, 960
//!   channels at stride 16);
//! - `lraspp_efficientnet_lite{0..4}` and `lraspp_tf_efficientnet_lite{0..4}`: wick's own
//!   pairing of the same head with an EfficientNet-Lite trunk under `backbone.*` (timm key
//!   names; the `tf_` variants use TF "same" padding and BN eps 1e-3 like timm's
//!   `tf_efficientnet_lite*`): low = the output of stage `blocks.2` (stride 8), high = the
//!   output of the last stage `blocks.6` (stride 32), no head convolution.
//!
//! The head: `classifier.cbr` (1x1 to 128 + BN + ReLU) on the high features, gated by
//! `classifier.scale` (global pool, 1x1 conv, sigmoid), resized to the low features, then
//! `classifier.high_classifier` + `classifier.low_classifier` (on the low features); the sum is
//! resized to the input. Every resize is bilinear with `align_corners=False`.
//!
//! `wick train` fits the head through its trainable twin,
//! `crate::train::segment::decoder::lraspp`; the keys both read are defined here.

use candle_core::Tensor;

use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::ops::resize;
use crate::model::classify::efficientnet_lite::LiteTrunk;
use crate::model::classify::mobilenet_v3::{Keys, MobileNetV3, Size, HIGH_CHANNELS, LOW_CHANNELS};
use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::scale_channels;
use crate::model::layers::{global_avg_pool, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;

pub(super) const NAMES: &[&str] = &[
    "lraspp_mobilenet_v3_large",
    "lraspp_efficientnet_lite0",
    "lraspp_efficientnet_lite1",
    "lraspp_efficientnet_lite2",
    "lraspp_efficientnet_lite3",
    "lraspp_efficientnet_lite4",
    "lraspp_tf_efficientnet_lite0",
    "lraspp_tf_efficientnet_lite1",
    "lraspp_tf_efficientnet_lite2",
    "lraspp_tf_efficientnet_lite3",
    "lraspp_tf_efficientnet_lite4",
];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Channels of the head's hidden features (torchvision's `inter_channels`).
pub(crate) const INTER_CHANNELS: usize = 128;

// Checkpoint keys of the head, defined once for both twins: this network and the trainable
// one (`crate::train::segment::decoder::lraspp`).
/// `cbr`: the 1x1 convolution and batch norm on the high features.
pub(crate) const CBR_KEYS: (&str, &str) = ("classifier.cbr.0", "classifier.cbr.1");
/// The `scale` gate's 1x1 convolution.
pub(crate) const SCALE_KEY: &str = "classifier.scale.1";
/// The classifier of the low features.
pub(crate) const LOW_CLASSIFIER_KEY: &str = "classifier.low_classifier";
/// The classifier of the gated high features.
pub(crate) const HIGH_CLASSIFIER_KEY: &str = "classifier.high_classifier";
/// The Lite stage whose output is the low (stride 8) features.
const LITE_LOW_STAGE: usize = 2;

enum Trunk {
    MobileNet(MobileNetV3),
    Lite(LiteTrunk),
}

impl Trunk {
    /// `(low, high)` features.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Trunk::MobileNet(net) => {
                let f = net.forward(xs)?;
                Ok((f.low, f.high))
            }
            Trunk::Lite(trunk) => {
                let f = trunk.forward(xs, LITE_LOW_STAGE)?;
                Ok((f.low, f.high))
            }
        }
    }
}

struct LrAspp {
    trunk: Trunk,
    low_channels: usize,
    high_channels: usize,
    cbr: Conv,
    scale: Conv,
    low_classifier: Conv,
    high_classifier: Conv,
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let (trunk, low_channels, high_channels) = if args.name == "lraspp_mobilenet_v3_large" {
        let net = MobileNetV3::load(w, ("backbone.", Keys::Torchvision), Size::Large, true)?;
        (Trunk::MobileNet(net), LOW_CHANNELS, HIGH_CHANNELS)
    } else {
        let trunk = LiteTrunk::load_prefixed(w, "backbone.", args.name)?;
        let (low, high) = (trunk.stage_channels(LITE_LOW_STAGE), trunk.channels());
        (Trunk::Lite(trunk), low, high)
    };
    let cbr = Conv::load(
        w,
        CBR_KEYS.0,
        Some(BatchNorm {
            prefix: CBR_KEYS.1,
            eps: 1e-5,
        }),
        ConvSpec::new(high_channels, INTER_CHANNELS, 1, 1).act(Activation::Relu),
    )?;
    let scale = Conv::load(
        w,
        SCALE_KEY,
        None,
        ConvSpec::new(high_channels, INTER_CHANNELS, 1, 1).act(Activation::Sigmoid),
    )?;
    let head = |name: &str, c_in: usize| {
        Conv::load(
            w,
            name,
            None,
            ConvSpec {
                has_bias: true,
                ..ConvSpec::new(c_in, args.out_channels, 1, 1)
            },
        )
    };
    Ok(Box::new(LrAspp {
        trunk,
        low_channels,
        high_channels,
        cbr,
        scale,
        low_classifier: head(LOW_CLASSIFIER_KEY, low_channels)?,
        high_classifier: head(HIGH_CLASSIFIER_KEY, INTER_CHANNELS)?,
    }))
}

impl LrAspp {
    /// `classifier.cbr` on the deep features, gated by `classifier.scale`: the input of
    /// `high_classifier` before its resize.
    fn gated(&self, high: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, _, c) = high.dims4()?;
        let pooled = global_avg_pool(high)?.reshape((n, 1, 1, c))?;
        let gate = self.scale.forward(&pooled)?;
        scale_channels(&self.cbr.forward(high)?, &gate)
    }
}

impl SegmentationNetwork for LrAspp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, h, w, _) = xs.dims4()?;
        let (low, high) = self.trunk.forward(xs)?;
        let ys = self.gated(&high)?;
        let (_, low_h, low_w, _) = low.dims4()?;
        let ys = resize(&ys, (low_h, low_w), false)?;
        let high = self.high_classifier.forward(&ys)?;
        let logits = self.low_classifier.forward_add(&low, &high)?;
        resize(&logits, (h, w), false)
    }

    fn out_channels(&self) -> usize {
        self.low_classifier.c_out()
    }

    fn size_multiple(&self) -> usize {
        1
    }

    fn decoder(&self) -> Decoder {
        Decoder::LrAspp {
            low_channels: self.low_channels,
            high_channels: self.high_channels,
        }
    }

    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let (low, high) = self.trunk.forward(xs)?;
        Ok(vec![low, high])
    }

    fn head(&self) -> Decoder {
        Decoder::LrAsppClassifiers {
            low_channels: self.low_channels,
        }
    }

    fn head_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let (low, high) = self.trunk.forward(xs)?;
        Ok(vec![low, self.gated(&high)?])
    }
}
