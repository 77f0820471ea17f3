//! torchvision DeepLabV3's `classifier` after its three dense dilated 3x3 branches, as trained
//! on `[encoder output, atrous 12, atrous 24, atrous 36]`: the trainable twin of the model
//! core's `crate::model::segment::deeplabv3`, with the checkpoint keys defined there: the ASPP's 1x1 branch, pooling
//! branch and projection (`classifier.0.*`), `classifier.1` (dense 3x3) + `classifier.2` (BN)
//! + ReLU, and `classifier.4` (1x1 with bias to the classes).
//!
//! The dilated branches over 2048 channels (~45 GFLOP per 320x320 image for ResNet, more than
//! everything trained here together) stay frozen: their outputs are cached once per image.

use candle_core::Tensor;

use super::aspp::{self, ASPP_CHANNELS};
use super::params::{Params, Specs};
use super::FeatureBatch;
use crate::model::segment::deeplabv3::{ASPP_KEY as ASPP, CLASSIFIER_KEY, CONV_KEYS};

/// The trained tensors for `channels` encoder channels and `k` outputs.
pub(super) fn specs(specs: &mut Specs, channels: usize, k: usize) {
    aspp::specs(specs, ASPP, channels);
    specs.conv(CONV_KEYS.0, ASPP_CHANNELS, ASPP_CHANNELS, 3);
    specs.batch_norm(CONV_KEYS.1, ASPP_CHANNELS);
    specs.classifier(CLASSIFIER_KEY, k, ASPP_CHANNELS);
}

/// `(b, encoder pixels, k)` logits.
pub(super) fn forward(p: &Params, batch: &FeatureBatch) -> candle_core::Result<Tensor> {
    let [x, a12, a24, a36] = batch.maps.as_slice() else {
        candle_core::bail!("DeepLabV3 reads the encoder output and three dilated branches")
    };
    let size = batch.sizes[0];
    let context = aspp::project(p, ASPP, x, &[a12.clone(), a24.clone(), a36.clone()])?;
    let y = p.conv3x3_bn_relu(&context, size, CONV_KEYS.0, CONV_KEYS.1)?;
    p.conv1x1_bias(&y, CLASSIFIER_KEY)
}
