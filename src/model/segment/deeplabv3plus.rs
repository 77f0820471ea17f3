//! segmentation_models_pytorch 0.6.0 `DeepLabV3Plus(encoder_name="resnet50" | "resnet34")`
//! with its defaults (encoder depth 5, output stride 16, decoder channels 256, atrous rates
//! 12/24/36, separable ASPP). Keys: `encoder.*` (torchvision ResNet names, layer4 dilated by
//! 2 with stride 1), `decoder.aspp.0` (ASPP), `decoder.aspp.{1,2}` (separable 3x3 + BN),
//! `decoder.block1.{0,1}` (layer1 to 48 channels), `decoder.block2.{0,1}` (separable 3x3 over
//! the concatenation + BN), `segmentation_head.0` (1x1 conv with bias). Both upsamplings are
//! x4 bilinear with `align_corners=True` (`nn.Upsample`); ASPP's pooling branch is a 1x1 map,
//! where the mode does not matter.
//!
//! `wick train` fits the decoder and head through their trainable twin,
//! `crate::train::segment::decoder::deeplabv3plus`; the keys both read are defined here.

use candle_core::Tensor;

use super::aspp::{Aspp, Conv3x3, ASPP_CHANNELS};
use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::ops::resize;
use crate::model::classify::resnet::{Dilation, ResNetTrunk};
use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::{BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;

pub(super) const NAMES: &[&str] = &["deeplabv3plus_resnet50", "deeplabv3plus_resnet34"];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// Channels of the projected layer1 features ("proposed by the authors").
pub(crate) const HIGHRES_CHANNELS: usize = 48;
/// The ASPP's dilation rates.
pub(crate) const RATES: [usize; 3] = [12, 24, 36];

// Checkpoint keys of the decoder and head, defined once for both twins: this network and the
// trainable one (`crate::train::segment::decoder::deeplabv3plus`).
/// The ASPP (depthwise-separable dilated branches).
pub(crate) const ASPP_KEY: &str = "decoder.aspp.0";
/// The separable 3x3 after the ASPP: `(convolution, batch norm)`.
pub(crate) const ASPP_CONV_KEYS: (&str, &str) = ("decoder.aspp.1", "decoder.aspp.2");
/// layer1 projected to [`HIGHRES_CHANNELS`]: `(convolution, batch norm)`.
pub(crate) const BLOCK1_KEYS: (&str, &str) = ("decoder.block1.0", "decoder.block1.1");
/// The separable 3x3 over the concatenation: `(convolution, batch norm)`.
pub(crate) const BLOCK2_KEYS: (&str, &str) = ("decoder.block2.0", "decoder.block2.1");
/// The final 1x1 convolution to the classes.
pub(crate) const HEAD_KEY: &str = "segmentation_head.0";
/// The encoder's output stride; inputs must be multiples of it.
const OUTPUT_STRIDE: usize = 16;

struct DeepLabV3Plus {
    encoder: ResNetTrunk,
    aspp: Aspp,
    aspp_conv: Conv3x3,
    block1: Conv,
    block2: Conv3x3,
    head: Conv,
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let resnet = args.name.trim_start_matches("deeplabv3plus_");
    let encoder = ResNetTrunk::load(w, "encoder.", resnet, Dilation::SmpStride16)?;
    let aspp = Aspp::load(w, ASPP_KEY, encoder.channels(), RATES, true)?;
    let aspp_conv = Conv3x3::load(
        w,
        ASPP_CONV_KEYS.0,
        ASPP_CONV_KEYS.1,
        (ASPP_CHANNELS, ASPP_CHANNELS, 1),
        true,
    )?;
    let block1 = Conv::load(
        w,
        BLOCK1_KEYS.0,
        Some(BatchNorm {
            prefix: BLOCK1_KEYS.1,
            eps: 1e-5,
        }),
        ConvSpec::new(encoder.layer1_channels(), HIGHRES_CHANNELS, 1, 1).act(Activation::Relu),
    )?;
    let block2 = Conv3x3::load(
        w,
        BLOCK2_KEYS.0,
        BLOCK2_KEYS.1,
        (ASPP_CHANNELS + HIGHRES_CHANNELS, ASPP_CHANNELS, 1),
        true,
    )?;
    let head = Conv::load(
        w,
        HEAD_KEY,
        None,
        ConvSpec {
            has_bias: true,
            ..ConvSpec::new(ASPP_CHANNELS, args.out_channels, 1, 1)
        },
    )?;
    Ok(Box::new(DeepLabV3Plus {
        encoder,
        aspp,
        aspp_conv,
        block1,
        block2,
        head,
    }))
}

/// `nn.Upsample(scale_factor=4)`: the output size is the input size times 4.
fn upsample_x4(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (_, h, w, _) = xs.dims4()?;
    resize(xs, (4 * h, 4 * w), true)
}

/// Inputs must be multiples of the output stride, for the x4 upsampling to meet layer1.
fn check_size(xs: &Tensor) -> candle_core::Result<()> {
    let (_, h, w, _) = xs.dims4()?;
    if h % OUTPUT_STRIDE != 0 || w % OUTPUT_STRIDE != 0 {
        candle_core::bail!(
            "DeepLabV3+ needs an input height and width divisible by {OUTPUT_STRIDE}, got {h}x{w}"
        )
    }
    Ok(())
}

impl DeepLabV3Plus {
    /// The input of the segmentation head (`decoder.block2`'s output), at stride 4.
    fn penultimate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        check_size(xs)?;
        let features = self.encoder.forward(xs)?;
        let context = self
            .aspp_conv
            .forward(&self.aspp.forward(&features.last)?)?;
        let context = upsample_x4(&context)?;
        let details = self.block1.forward(&features.layer1)?;
        self.block2.forward(&Tensor::cat(&[context, details], 3)?)
    }
}

impl SegmentationNetwork for DeepLabV3Plus {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        upsample_x4(&self.head.forward(&self.penultimate(xs)?)?)
    }

    fn decoder(&self) -> Decoder {
        Decoder::DeepLabV3Plus {
            high_channels: self.encoder.channels(),
            low_channels: self.encoder.layer1_channels(),
        }
    }

    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        check_size(xs)?;
        let features = self.encoder.forward(xs)?;
        Ok(vec![features.last, features.layer1])
    }

    fn head(&self) -> Decoder {
        Decoder::FinalConv {
            key: HEAD_KEY,
            channels: ASPP_CHANNELS,
            align_corners: true,
        }
    }

    fn head_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![self.penultimate(xs)?])
    }

    fn out_channels(&self) -> usize {
        self.head.c_out()
    }

    fn size_multiple(&self) -> usize {
        OUTPUT_STRIDE
    }
}
