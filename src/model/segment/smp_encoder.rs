//! The encoders of segmentation_models_pytorch 0.6.0's U-Net and FPN (`encoder_depth=5`):
//! what each `encoder_name` builds under `encoder.`, and the five feature maps (strides 2, 4,
//! 8, 16, 32) it hands the decoder. wick names them with underscores (`unet_efficientnet_b0`).
//!
//! - `resnet34`, `resnet50`: torchvision ResNet; the stem's ReLU (before the max pool), then
//!   layer1 .. layer4.
//! - `efficientnet-b0` (`efficientnet_b0`): the lukemelas `efficientnet_pytorch` port smp
//!   vendors (`_conv_stem`, `_bn0`, `_blocks.{0..15}.*`; TF "same" padding, eps 1e-3, swish);
//!   the stem's swish, then blocks 2, 4, 8 and 15 (smp's `out_indexes`). Block 8 is the
//!   *first* block of the 112-channel stage, so the stride-16 map skips that stage's other two
//!   blocks. `_conv_head` / `_bn1` stay in the state dict unused; `_fc` is deleted.
//! - `timm-efficientnet-b0` (`timm_efficientnet_b0`): timm's `efficientnet_b0` (`conv_stem`,
//!   `bn1`, `blocks.{stage}.{i}.*`; PyTorch padding, eps 1e-5); the stem's `bn1` (with its
//!   SiLU), then the ends of stages 1, 2, 4 and 6 (blocks 2, 4, 10 and 15). `conv_head` /
//!   `bn2` stay unused; `classifier` is deleted.
//!
//! Drop-connect (stochastic depth) is the identity in eval mode.
// Based on segmentation_models_pytorch 0.6.0 `encoders/{resnet,efficientnet,
// timm_efficientnet}.py` (read, not copied).

use candle_core::Tensor;

use crate::model::classify::efficientnet::{EfficientNetTrunk, TrunkKeys};
use crate::model::classify::resnet::{Dilation, ResNetTrunk};
use crate::model::error::ModelError;
use crate::model::weights::Weights;

/// wick's names of the encoders, the suffixes of `unet_*` and `fpn_*`.
pub(crate) const ENCODERS: &[&str] = &[
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "timm_efficientnet_b0",
];

/// smp's `out_indexes` of `efficientnet-b0`: the blocks whose outputs are the stride 4, 8, 16
/// and 32 features.
const LUKEMELAS_B0_TAPS: [usize; 4] = [2, 4, 8, 15];
/// The last blocks of timm `efficientnet_b0`'s stages 1, 2, 4 and 6 (smp runs `blocks[0:2]`,
/// `blocks[2]`, `blocks[3:5]`, `blocks[5:7]`, stages of 1, 2, 2, 3, 3, 4 and 1 blocks).
const TIMM_B0_TAPS: [usize; 4] = [2, 4, 10, 15];

/// A loaded encoder.
pub(crate) enum SmpEncoder {
    ResNet(ResNetTrunk),
    EfficientNet {
        trunk: EfficientNetTrunk,
        /// The blocks whose outputs are the stride 4 .. 32 features.
        taps: [usize; 4],
    },
}

impl SmpEncoder {
    /// Loads the encoder wick calls `name` (one of [`ENCODERS`]) under `prefix`.
    pub(crate) fn load(w: &Weights, prefix: &str, name: &str) -> Result<Self, ModelError> {
        let efficientnet = |keys, taps: [usize; 4]| -> Result<Self, ModelError> {
            let trunk = EfficientNetTrunk::load(w, prefix, "efficientnet_b0", keys)?;
            if let Some(&missing) = taps.iter().find(|&&i| trunk.block_channels(i).is_none()) {
                return Err(ModelError::Unsupported(format!(
                    "encoder `{name}`: no block {missing} to take features from"
                )));
            }
            Ok(SmpEncoder::EfficientNet { trunk, taps })
        };
        match name {
            "resnet34" | "resnet50" => Ok(SmpEncoder::ResNet(ResNetTrunk::load(
                w,
                prefix,
                name,
                Dilation::None,
            )?)),
            "efficientnet_b0" => efficientnet(TrunkKeys::Lukemelas, LUKEMELAS_B0_TAPS),
            "timm_efficientnet_b0" => efficientnet(TrunkKeys::Timm, TIMM_B0_TAPS),
            _ => Err(ModelError::Unsupported(format!(
                "segmentation_models_pytorch encoder `{name}`: wick runs {}",
                ENCODERS.join(", ")
            ))),
        }
    }

    /// Channels of the five features of [`SmpEncoder::forward_stages`], stride 2 first.
    pub(crate) fn stage_channels(&self) -> [usize; 5] {
        match self {
            SmpEncoder::ResNet(trunk) => trunk.stage_channels(),
            SmpEncoder::EfficientNet { trunk, taps } => {
                let tap = |i: usize| trunk.block_channels(taps[i]).expect("checked at load");
                [trunk.stem_channels(), tap(0), tap(1), tap(2), tap(3)]
            }
        }
    }

    /// `(n, h, w, 3)` NHWC -> the features at strides 2, 4, 8, 16 and 32.
    pub(crate) fn forward_stages(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            SmpEncoder::ResNet(trunk) => trunk.forward_stages(xs),
            SmpEncoder::EfficientNet { trunk, taps } => trunk.forward_taps(xs, taps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// smp's `out_channels` of both B0 encoders: `[3, 32, 24, 40, 112, 320]` (the input first).
    #[test]
    fn efficientnet_b0_features_have_smps_channels() -> Result<(), ModelError> {
        let w = Weights::synthetic();
        for name in ["efficientnet_b0", "timm_efficientnet_b0"] {
            let encoder = SmpEncoder::load(&w, "encoder.", name)?;
            assert_eq!(encoder.stage_channels(), [32, 24, 40, 112, 320], "{name}");
        }
        let err = SmpEncoder::load(&w, "encoder.", "efficientnet_b7")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("efficientnet_b7") && err.contains("timm_efficientnet_b0"));
        Ok(())
    }

    #[test]
    fn efficientnet_b0_features_are_at_strides_2_to_32() -> candle_core::Result<()> {
        let w = Weights::synthetic();
        let encoder = SmpEncoder::load(&w, "encoder.", "efficientnet_b0").expect("synthetic");
        let xs = Tensor::zeros(
            (1, 64, 96, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let sizes: Vec<(usize, usize, usize)> = encoder
            .forward_stages(&xs)?
            .iter()
            .map(|t| t.dims4().map(|(_, h, w, c)| (h, w, c)))
            .collect::<candle_core::Result<_>>()?;
        let want = [
            (32, 48, 32),
            (16, 24, 24),
            (8, 12, 40),
            (4, 6, 112),
            (2, 3, 320),
        ];
        assert_eq!(sizes, want);
        Ok(())
    }
}
