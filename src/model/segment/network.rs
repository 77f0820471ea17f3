//! What a segmentation network is ([`SegmentationNetwork`]: an image to per-pixel logits),
//! what `wick train` trains in it ([`Decoder`], [`Trainable`]) and what its builder gets
//! ([`SegmentationArgs`]). The architectures are in this folder, listed in `registry.rs`.
//!
//! Every network takes a normalised `(n, h, w, 3)` NHWC batch and returns `(n, h, w, classes)`
//! NHWC logits at the input resolution, upsampled inside the network exactly as the reference
//! implementation does (torchvision: `F.interpolate(align_corners=False)`;
//! segmentation_models_pytorch: `nn.Upsample(align_corners=True)`).

use candle_core::Tensor;

use crate::model::error::ModelError;
use crate::model::weights::Weights;

/// A network from image to per-pixel logits.
pub trait SegmentationNetwork: Send + Sync {
    /// `(n, h, w, 3)` normalised NHWC -> `(n, h, w, out_channels)` logits.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor>;

    /// Output channels: classes, or 1 for a binary model.
    fn out_channels(&self) -> usize;

    /// Input height and width must be multiples of this (segmentation_models_pytorch's
    /// decoders need the output stride, 16; torchvision's take any size: 1).
    fn size_multiple(&self) -> usize;

    /// The part `wick train` trains with `trainable=decoder` (the default) on top of
    /// [`SegmentationNetwork::frozen_features`].
    fn decoder(&self) -> Decoder;

    /// `(n, h, w, 3)` normalised NHWC -> the NHWC outputs of the frozen part that
    /// [`SegmentationNetwork::decoder`] reads, in the order its [`Decoder`] variant lists them.
    fn frozen_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>>;

    /// The part `wick train` trains with `trainable=head`: the final convolution(s). The
    /// default, for a network whose whole decoder is its final convolution, is
    /// [`SegmentationNetwork::decoder`].
    fn head(&self) -> Decoder {
        self.decoder()
    }

    /// The inputs of [`SegmentationNetwork::head`], as
    /// [`SegmentationNetwork::frozen_features`] for the decoder.
    fn head_features(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.frozen_features(xs)
    }
}

impl dyn SegmentationNetwork + '_ {
    /// What trains for the hyperparameter `trainable`.
    pub(crate) fn trained(&self, trainable: Trainable) -> Decoder {
        match trainable {
            Trainable::Decoder => self.decoder(),
            Trainable::Head => self.head(),
        }
    }

    /// The frozen features [`Self::trained`] reads for the same `trainable`.
    pub fn features_for(
        &self,
        xs: &Tensor,
        trainable: Trainable,
    ) -> candle_core::Result<Vec<Tensor>> {
        match trainable {
            Trainable::Decoder => self.frozen_features(xs),
            Trainable::Head => self.head_features(xs),
        }
    }
}

/// How much of a segmentation network `wick train` trains (the hyperparameter `trainable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Everything after the frozen features: the decoder and the final convolution(s).
    #[default]
    Decoder,
    /// Only the final convolution(s) that produce the class logits, for jobs with few images.
    Head,
}

/// What `wick train` trains in a segmentation network, and the checkpoint keys it writes.
/// Each variant names the frozen feature maps it reads, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// torchvision's whole LR-ASPP head under `classifier.` (`cbr.0`, `cbr.1` batch norm,
    /// `scale.1`, `low_classifier`, `high_classifier`). Reads `[low, high]` trunk features.
    LrAspp {
        /// Channels of the stride-8 features.
        low_channels: usize,
        /// Channels of the deepest features.
        high_channels: usize,
    },
    /// LR-ASPP's two classifiers only (`classifier.low_classifier`, `high_classifier`).
    /// Reads `[low, gated]`: the trunk's low features and the gated `cbr` branch (128
    /// channels at the deep features' size, before its resize).
    LrAsppClassifiers {
        /// Channels of the stride-8 features.
        low_channels: usize,
    },
    /// torchvision DeepLabV3's `classifier` after its three dense dilated 3x3 branches: the
    /// ASPP 1x1 branch, the pooling branch's convolution, the projection, `classifier.1`
    /// (3x3 + BN + ReLU) and `classifier.4`. Reads `[encoder output, atrous 12, atrous 24,
    /// atrous 36]` (the branches after their batch norm and ReLU, 256 channels each).
    DeepLabV3 {
        /// Channels of the encoder output (ResNet 2048, MobileNetV3 960).
        channels: usize,
    },
    /// segmentation_models_pytorch DeepLabV3+'s whole decoder (`decoder.aspp.*`,
    /// `decoder.block1`, `decoder.block2`) and `segmentation_head.0`. Reads `[layer4
    /// (stride 16), layer1 (stride 4)]`.
    DeepLabV3Plus {
        /// Channels of layer4 (ResNet-50 2048, ResNet-34 512).
        high_channels: usize,
        /// Channels of layer1 (ResNet-50 256, ResNet-34 64).
        low_channels: usize,
    },
    /// Only the final 3x3 convolution with bias (padding 1) on the features before it, which
    /// are at the input resolution (smp U-Net's `segmentation_head.0`). Reads `[its input]`.
    FinalConv3x3 {
        /// Checkpoint key of the convolution.
        key: &'static str,
        /// Its input channels.
        channels: usize,
    },
    /// Only the final 1x1 convolution (`{key}.weight`, `{key}.bias`) on the features before it,
    /// followed by a bilinear resize to the input. Reads `[its input]`.
    FinalConv {
        /// Checkpoint key of the convolution.
        key: &'static str,
        /// Its input channels.
        channels: usize,
        /// The resize's `align_corners` (torchvision: false; smp: true).
        align_corners: bool,
    },
}

/// What a builder gets.
pub struct SegmentationArgs<'a> {
    /// e.g. `deeplabv3_resnet50`.
    pub name: &'a str,
    /// The checkpoint's tensors.
    pub weights: &'a Weights,
    /// Output channels of the final convolution.
    pub out_channels: usize,
}

/// How a segmentation architecture is built.
pub(crate) type Builder =
    fn(&SegmentationArgs<'_>) -> Result<Box<dyn SegmentationNetwork>, ModelError>;
