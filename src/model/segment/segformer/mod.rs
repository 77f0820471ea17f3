//! SegFormer (MiT-B0 ... B5) with Hugging Face transformers' key names, as
//! `SegformerForSemanticSegmentation` saves them: the Mix Transformer encoder under
//! `segformer.encoder.` (`encoder.rs`) and the all-MLP decode head under `decode_head.`.
//!
//! The head projects each stage to the decoder width (`linear_c.{i}.proj`, a linear layer per
//! token), resizes all four to the first stage's map (bilinear, `align_corners=False`),
//! concatenates them deepest first, fuses them with a 1x1 convolution + batch norm + ReLU
//! (`linear_fuse`, `batch_norm`) and classifies (`classifier`, 1x1). wick runs the same
//! function with each projection composed into its share of the fuse at load
//! ([`compose_decoder`]). Its logits are at a
//! quarter of the input; like every wick network this one returns them at the input size,
//! resized bilinearly with `align_corners=False` as transformers' `post_process_semantic_segmentation`
//! and its training loss do.
//!
//! `wick train` can fit the classifier (`trainable=head`); the MLP decoder has no trainable
//! twin, so `trainable=decoder` trains the same classifier.
// Based on transformers 5 `models/segformer/modeling_segformer.py` (read, not copied).

mod encoder;

use candle_core::Tensor;

use self::encoder::{MitConfig, MixTransformer};
use super::network::{Builder, Decoder, SegmentationArgs, SegmentationNetwork};
use super::ops::resize;
use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::{BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;

pub(super) const NAMES: &[&str] = &[
    "segformer_b0",
    "segformer_b1",
    "segformer_b2",
    "segformer_b3",
    "segformer_b4",
    "segformer_b5",
];
/// This file's architectures, for the segmentation registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// The encoder's key prefix.
const ENCODER_PREFIX: &str = "segformer.encoder.";
/// The final 1x1 convolution to the classes.
pub(crate) const HEAD_KEY: &str = "decode_head.classifier";

/// Encoder widths of B1 ... B5 (B0 is narrower).
const WIDE: [usize; 4] = [64, 128, 320, 512];

/// The name of the variant with these encoder widths, depths and decoder width (what a
/// Hugging Face `config.json` gives as `hidden_sizes`, `depths`, `decoder_hidden_size`).
pub(crate) fn variant_named(
    widths: [usize; 4],
    depths: [usize; 4],
    decoder_width: usize,
) -> Option<&'static str> {
    NAMES.iter().copied().find(|name| {
        variant(name).is_some_and(|(config, decoder)| {
            (config.widths, config.depths, decoder) == (widths, depths, decoder_width)
        })
    })
}

/// The MiT variant of each name, and the decode head's width (`decoder_hidden_size`).
fn variant(name: &str) -> Option<(MitConfig, usize)> {
    let (widths, depths, decoder) = match name {
        "segformer_b0" => ([32, 64, 160, 256], [2, 2, 2, 2], 256),
        "segformer_b1" => (WIDE, [2, 2, 2, 2], 256),
        "segformer_b2" => (WIDE, [3, 4, 6, 3], 768),
        "segformer_b3" => (WIDE, [3, 4, 18, 3], 768),
        "segformer_b4" => (WIDE, [3, 8, 27, 3], 768),
        "segformer_b5" => (WIDE, [3, 6, 40, 3], 768),
        _ => return None,
    };
    let config = MitConfig {
        widths,
        depths,
        heads: [1, 2, 5, 8],
        reductions: [8, 4, 2, 1],
    };
    Some((config, decoder))
}

struct SegFormer {
    encoder: MixTransformer,
    /// Stage `i`'s projection composed with its slice of the fuse convolution (see
    /// [`compose_decoder`]); stage 0's carries every bias and the ReLU.
    decoder: Vec<Conv>,
    classifier: Conv,
    decoder_width: usize,
}

fn build(args: &SegmentationArgs<'_>) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let Some((config, decoder_width)) = variant(args.name) else {
        return Err(ModelError::Unsupported(format!(
            "unknown SegFormer variant `{}`; expected one of {NAMES:?}",
            args.name
        )));
    };
    let w = args.weights;
    let encoder = MixTransformer::load(w, ENCODER_PREFIX, &config)?;
    let projections = config
        .widths
        .iter()
        .enumerate()
        .map(|(i, &width)| {
            Conv::load_linear(
                w,
                &format!("decode_head.linear_c.{i}.proj"),
                (width, decoder_width),
                Activation::Identity,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fuse = Conv::load(
        w,
        "decode_head.linear_fuse",
        Some(BatchNorm {
            prefix: "decode_head.batch_norm",
            eps: 1e-5,
        }),
        ConvSpec::new(4 * decoder_width, decoder_width, 1, 1).act(Activation::Relu),
    )?;
    let classifier = Conv::load(
        w,
        HEAD_KEY,
        None,
        ConvSpec {
            has_bias: true,
            ..ConvSpec::new(decoder_width, args.out_channels, 1, 1)
        },
    )?;
    Ok(Box::new(SegFormer {
        encoder,
        decoder: compose_decoder(&projections, &fuse)?,
        classifier,
        decoder_width,
    }))
}

/// The head's projections folded into the fuse convolution, one layer per stage.
///
/// The head computes `relu(F [up(P3 s3 + b3); ..; P0 s0 + b0] + f)` with `F` the fuse weight
/// (batch norm folded in) over the concatenation, deepest stage first. Both products and the
/// bilinear resize are linear per channel and the resize keeps constants (its weights sum to
/// one), so this equals `relu(sum_i up(F_i P_i s_i) + f + sum_i F_i b_i)` with `F_i` the
/// fuse's columns for stage `i`: each stage goes straight to the decoder width at its own
/// resolution, and the fuse's 4x-wide product over the full map (half of SegFormer-B0's
/// work, most of B2's) disappears. The composition runs in f64 at load.
fn compose_decoder(projections: &[Conv], fuse: &Conv) -> Result<Vec<Conv>, ModelError> {
    let not_pointwise = || ModelError::Unsupported("SegFormer's decode head is not 1x1".into());
    let (f, f_bias) = fuse.pointwise_matrix().ok_or_else(not_pointwise)?;
    let width = fuse.c_out();
    let stages = projections.len();
    let mut bias: Vec<f64> = f_bias.iter().map(|b| f64::from(*b)).collect();
    let mut composed = Vec::with_capacity(stages);
    for (i, projection) in projections.iter().enumerate() {
        let (p, p_bias) = projection.pointwise_matrix().ok_or_else(not_pointwise)?;
        let c_in = p.len() / width;
        // The concatenation puts stage i at rows (stages - 1 - i) * width of F.
        let rows = &f[(stages - 1 - i) * width * width..][..width * width];
        // (c_out, c_in) row-major, as `Conv::pointwise` takes it.
        let mut weight = vec![0.0f32; width * c_in];
        for a in 0..c_in {
            for o in 0..width {
                let sum: f64 = (0..width)
                    .map(|m| f64::from(p[a * width + m]) * f64::from(rows[m * width + o]))
                    .sum();
                weight[o * c_in + a] = sum as f32;
            }
        }
        for (o, b) in bias.iter_mut().enumerate() {
            *b += (0..width)
                .map(|m| f64::from(p_bias[m]) * f64::from(rows[m * width + o]))
                .sum::<f64>();
        }
        composed.push((weight, c_in));
    }
    let bias: Vec<f32> = bias.iter().map(|b| *b as f32).collect();
    Ok(composed
        .into_iter()
        .enumerate()
        .map(|(i, (weight, c_in))| match i {
            0 => Conv::pointwise(&weight, bias.clone(), c_in, Activation::Relu),
            _ => Conv::pointwise(&weight, vec![0.0; width], c_in, Activation::Identity),
        })
        .collect())
}

impl SegFormer {
    /// The classifier's input: the fused decoder features at a quarter of the input size.
    fn penultimate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let stages = self.encoder.forward(xs)?;
        let (_, h, w, _) = stages[0].dims4()?;
        // The deeper stages at the first one's size, summed; stage 0 adds them in its
        // product's output pass, with the bias and the ReLU.
        let mut deeper: Option<Tensor> = None;
        for (stage, layer) in stages.iter().zip(&self.decoder).skip(1) {
            let up = resize(&layer.forward(stage)?, (h, w), false)?;
            deeper = Some(match deeper {
                None => up,
                Some(sum) => (sum + up)?,
            });
        }
        match deeper {
            Some(deeper) => self.decoder[0].forward_add(&stages[0], &deeper),
            None => self.decoder[0].forward(&stages[0]),
        }
    }
}

impl SegmentationNetwork for SegFormer {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, h, w, _) = xs.dims4()?;
        let logits = self.classifier.forward(&self.penultimate(xs)?)?;
        resize(&logits, (h, w), false)
    }

    fn out_channels(&self) -> usize {
        self.classifier.c_out()
    }

    fn size_multiple(&self) -> usize {
        1
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
            channels: self.decoder_width,
            align_corners: false,
        }
    }

    fn head_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![self.penultimate(xs)?])
    }
}
