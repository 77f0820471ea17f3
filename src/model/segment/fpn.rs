//! segmentation_models_pytorch 0.6.0 `FPN(encoder_name="resnet34" | "resnet50" |
//! "efficientnet-b0" | "timm-efficientnet-b0")` (encoders in `smp_encoder.rs`) with its
//! defaults (encoder depth 5, pyramid 256 and segmentation 128 channels, merge "add", nearest
//! top-down upsampling, dropout (identity in eval), head upsampling 4). Keys: `encoder.*`
//! (the encoder's own names), `decoder.p5` (1x1 with bias on the stride-32 features, ResNet's
//! layer4), `decoder.p{4,3,2}.skip_conv` (1x1 with bias on the stride 16 / 8 / 4 features),
//! `decoder.seg_blocks.{0..3}.block.{j}.block.{0,1}` (3x3 convolution without bias +
//! `GroupNorm(32)`, then ReLU and, in the blocks that upsample, x2 bilinear with
//! `align_corners=True`), `segmentation_head.0` (1x1 with bias, then x4 bilinear with
//! `align_corners=True`).
// Based on segmentation_models_pytorch 0.6.0 decoders/fpn/{model,decoder}.py (read, not copied).

use candle_core::Tensor;

use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::ops::{resize, GroupNormRelu};
use super::smp_encoder::SmpEncoder;
use super::unet::check_size;
use crate::model::error::ModelError;
use crate::model::layers::{upsample_nearest, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &[
    "fpn_resnet34",
    "fpn_resnet50",
    "fpn_efficientnet_b0",
    "fpn_timm_efficientnet_b0",
];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// smp's default `decoder_pyramid_channels`.
pub(crate) const PYRAMID_CHANNELS: usize = 256;
/// smp's default `decoder_segmentation_channels`.
pub(crate) const SEGMENTATION_CHANNELS: usize = 128;
/// The final 1x1 convolution to the classes.
pub(crate) const HEAD_KEY: &str = "segmentation_head.0";
/// `nn.GroupNorm(32, ...)` in every segmentation block.
const GROUPS: usize = 32;
/// x2 upsamplings of the segmentation blocks of p5, p4, p3, p2: all meet at stride 4.
const UPSAMPLES: [usize; 4] = [3, 2, 1, 0];

/// smp's `Conv3x3GNReLU`: 3x3 convolution, group norm, ReLU, and maybe a x2 upsampling.
struct ConvGnRelu {
    conv: Conv,
    norm: GroupNormRelu,
    upsample: bool,
}

impl ConvGnRelu {
    fn load(
        w: &Weights,
        prefix: &str,
        (c_in, c_out): (usize, usize),
        upsample: bool,
    ) -> Result<Self, ModelError> {
        Ok(ConvGnRelu {
            conv: Conv::load(
                w,
                &format!("{prefix}.0"),
                None,
                ConvSpec::new(c_in, c_out, 3, 1),
            )?,
            norm: GroupNormRelu::load(w, &format!("{prefix}.1"), c_out, GROUPS)?,
            upsample,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let ys = self.norm.forward(&self.conv.forward(xs)?)?;
        if self.upsample {
            upsample_bilinear(&ys, 2)
        } else {
            Ok(ys)
        }
    }
}

struct Fpn {
    encoder: SmpEncoder,
    /// `decoder.p5`, then the skip convolutions of p4, p3, p2.
    lateral: [Conv; 4],
    seg_blocks: Vec<Vec<ConvGnRelu>>,
    head: Conv,
}

/// A 1x1 convolution with bias.
fn conv1x1(w: &Weights, key: &str, (c_in, c_out): (usize, usize)) -> Result<Conv, ModelError> {
    Conv::load(
        w,
        key,
        None,
        ConvSpec {
            has_bias: true,
            ..ConvSpec::new(c_in, c_out, 1, 1)
        },
    )
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let encoder = SmpEncoder::load(w, "encoder.", args.name.trim_start_matches("fpn_"))?;
    let [_, s4, s8, s16, s32] = encoder.stage_channels();
    let lateral = [
        conv1x1(w, "decoder.p5", (s32, PYRAMID_CHANNELS))?,
        conv1x1(w, "decoder.p4.skip_conv", (s16, PYRAMID_CHANNELS))?,
        conv1x1(w, "decoder.p3.skip_conv", (s8, PYRAMID_CHANNELS))?,
        conv1x1(w, "decoder.p2.skip_conv", (s4, PYRAMID_CHANNELS))?,
    ];
    let mut seg_blocks = Vec::with_capacity(UPSAMPLES.len());
    for (i, &upsamples) in UPSAMPLES.iter().enumerate() {
        let mut block = Vec::new();
        for j in 0..upsamples.max(1) {
            let c_in = if j == 0 {
                PYRAMID_CHANNELS
            } else {
                SEGMENTATION_CHANNELS
            };
            block.push(ConvGnRelu::load(
                w,
                &format!("decoder.seg_blocks.{i}.block.{j}.block"),
                (c_in, SEGMENTATION_CHANNELS),
                upsamples > 0,
            )?);
        }
        seg_blocks.push(block);
    }
    let head = conv1x1(w, HEAD_KEY, (SEGMENTATION_CHANNELS, args.out_channels))?;
    Ok(Box::new(Fpn {
        encoder,
        lateral,
        seg_blocks,
        head,
    }))
}

/// `F.interpolate(scale_factor=factor, mode="bilinear", align_corners=True)`.
fn upsample_bilinear(xs: &Tensor, factor: usize) -> candle_core::Result<Tensor> {
    let (_, h, w, _) = xs.dims4()?;
    resize(xs, (factor * h, factor * w), true)
}

impl Fpn {
    /// The input of the segmentation head: the sum of the four segmentation blocks, stride 4.
    fn penultimate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        check_size(xs, "FPN")?;
        let stages = self.encoder.forward_stages(xs)?;
        // Top-down: p5 from the stride-32 features, then each level is its skip's 1x1 plus the level above
        // upsampled x2 (nearest).
        let mut pyramid = vec![self.lateral[0].forward(&stages[4])?];
        for (lateral, skip) in self.lateral[1..].iter().zip(stages[1..4].iter().rev()) {
            let above = upsample_nearest(pyramid.last().expect("p5 is there"), 2)?;
            pyramid.push(lateral.forward_add(skip, &above)?);
        }
        let mut merged: Option<Tensor> = None;
        for (level, block) in pyramid.iter().zip(&self.seg_blocks) {
            let mut ys = level.clone();
            for layer in block {
                ys = layer.forward(&ys)?;
            }
            merged = Some(match merged {
                Some(sum) => (sum + ys)?,
                None => ys,
            });
        }
        Ok(merged.expect("four pyramid levels"))
    }
}

impl SegmentationNetwork for Fpn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        upsample_bilinear(&self.head.forward(&self.penultimate(xs)?)?, 4)
    }

    fn decoder(&self) -> Decoder {
        self.head()
    }

    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.head_features(xs)
    }

    fn head(&self) -> Decoder {
        Decoder::FinalConv {
            key: HEAD_KEY,
            channels: SEGMENTATION_CHANNELS,
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
        32
    }
}
