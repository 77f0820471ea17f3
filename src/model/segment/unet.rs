//! segmentation_models_pytorch 0.6.0 `Unet(encoder_name="resnet34" | "resnet50" |
//! "efficientnet-b0" | "timm-efficientnet-b0")` (encoders in `smp_encoder.rs`) with its
//! defaults (encoder depth 5, decoder channels 256/128/64/32/16, batch norm in the decoder, no
//! attention, nearest upsampling, no centre block). Keys: `encoder.*` (the encoder's
//! own names), `decoder.blocks.{0..4}.conv{1,2}.{0,1}` (3x3 convolution without bias + batch norm,
//! then ReLU), `segmentation_head.0` (3x3 convolution with bias, no upsampling).
//!
//! Each decoder block doubles its input by nearest-neighbour upsampling (smp interpolates to
//! the skip's size, exactly twice the input's when the sides are multiples of 32), concatenates
//! the encoder features of that stride (16, 8, 4, 2: ResNet's layer3, layer2, layer1 and stem;
//! none for the last block, at full resolution) and runs its two convolutions.
// Based on segmentation_models_pytorch 0.6.0 decoders/unet/{model,decoder}.py (read, not copied).

use candle_core::Tensor;

use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::smp_encoder::SmpEncoder;
use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::{upsample_nearest, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &[
    "unet_resnet34",
    "unet_resnet50",
    "unet_efficientnet_b0",
    "unet_timm_efficientnet_b0",
];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// smp's default `decoder_channels`, one per decoder block.
pub(crate) const DECODER_CHANNELS: [usize; 5] = [256, 128, 64, 32, 16];
/// The final 3x3 convolution to the classes.
pub(crate) const HEAD_KEY: &str = "segmentation_head.0";
/// The encoder's output stride; inputs must be multiples of it.
const OUTPUT_STRIDE: usize = 32;

/// One decoder block: `conv1` over the upsampled input and the skip, then `conv2`.
struct UnetBlock {
    conv1: Conv,
    conv2: Conv,
}

struct Unet {
    encoder: SmpEncoder,
    blocks: Vec<UnetBlock>,
    head: Conv,
}

/// `decoder.blocks.{i}.{name}`: smp's `Conv2dReLU` (convolution without bias, batch norm,
/// ReLU), folded into one convolution.
fn conv_bn_relu(
    w: &Weights,
    prefix: &str,
    (c_in, c_out): (usize, usize),
) -> Result<Conv, ModelError> {
    let bn = format!("{prefix}.1");
    Conv::load(
        w,
        &format!("{prefix}.0"),
        Some(BatchNorm {
            prefix: &bn,
            eps: 1e-5,
        }),
        ConvSpec::new(c_in, c_out, 3, 1).act(Activation::Relu),
    )
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let encoder = SmpEncoder::load(w, "encoder.", args.name.trim_start_matches("unet_"))?;
    let [s2, s4, s8, s16, s32] = encoder.stage_channels();
    let skips = [s16, s8, s4, s2, 0];
    let mut c_in = s32;
    let mut blocks = Vec::with_capacity(DECODER_CHANNELS.len());
    for (i, (&skip, &c_out)) in skips.iter().zip(&DECODER_CHANNELS).enumerate() {
        let prefix = format!("decoder.blocks.{i}");
        blocks.push(UnetBlock {
            conv1: conv_bn_relu(w, &format!("{prefix}.conv1"), (c_in + skip, c_out))?,
            conv2: conv_bn_relu(w, &format!("{prefix}.conv2"), (c_out, c_out))?,
        });
        c_in = c_out;
    }
    let head = Conv::load(
        w,
        HEAD_KEY,
        None,
        ConvSpec {
            has_bias: true,
            ..ConvSpec::new(c_in, args.out_channels, 3, 1)
        },
    )?;
    Ok(Box::new(Unet {
        encoder,
        blocks,
        head,
    }))
}

/// Inputs must be multiples of the encoder's stride, so each upsampled map meets its skip.
pub(super) fn check_size(xs: &Tensor, architecture: &str) -> candle_core::Result<()> {
    let (_, h, w, _) = xs.dims4()?;
    if h % OUTPUT_STRIDE != 0 || w % OUTPUT_STRIDE != 0 {
        candle_core::bail!(
            "{architecture} needs an input height and width divisible by {OUTPUT_STRIDE}, got {h}x{w}"
        )
    }
    Ok(())
}

impl Unet {
    /// The input of the segmentation head: the last decoder block's output, full resolution.
    fn penultimate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        check_size(xs, "U-Net")?;
        let mut stages = self.encoder.forward_stages(xs)?;
        let mut x = stages.pop().expect("five encoder stages");
        for block in &self.blocks {
            let up = upsample_nearest(&x, 2)?;
            let joined = match stages.pop() {
                Some(skip) => Tensor::cat(&[up, skip], 3)?,
                None => up,
            };
            x = block.conv2.forward(&block.conv1.forward(&joined)?)?;
        }
        Ok(x)
    }
}

impl SegmentationNetwork for Unet {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.penultimate(xs)?)
    }

    fn decoder(&self) -> Decoder {
        self.head()
    }

    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.head_features(xs)
    }

    fn head(&self) -> Decoder {
        Decoder::FinalConv3x3 {
            key: HEAD_KEY,
            channels: DECODER_CHANNELS[DECODER_CHANNELS.len() - 1],
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
