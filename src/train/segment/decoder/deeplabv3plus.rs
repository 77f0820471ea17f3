//! segmentation_models_pytorch DeepLabV3+'s whole decoder and head, as trained on `[layer4
//! (stride 16), layer1 (stride 4)]`: the trainable twin of the model core's
//! `crate::model::segment::deeplabv3plus`, computed as it serves it, with the checkpoint keys,
//! rates and channels defined there:
//! - `decoder.aspp.0`: the ASPP with depthwise-separable dilated branches (rates 12, 24, 36;
//!   depthwise 3x3 + pointwise 1x1 + BN + ReLU) besides the 1x1, pooling and projection;
//! - `decoder.aspp.1` (separable 3x3) + `decoder.aspp.2` (BN) + ReLU, then x4 bilinear
//!   upsampling with `align_corners=True` (`nn.Upsample`);
//! - `decoder.block1`: layer1 to 48 channels (1x1 + BN + ReLU), concatenated after the context;
//! - `decoder.block2`: separable 3x3 over the 304 channels + BN + ReLU;
//! - `segmentation_head.0`: 1x1 with bias to the classes (its x4 upsampling is the caller's).

use candle_core::Tensor;

use super::aspp::{self, ASPP_CHANNELS};
use super::params::{Params, Specs};
use super::resize::resize_maps;
use super::FeatureBatch;
use crate::model::segment::aspp::atrous_keys;
use crate::model::segment::deeplabv3plus::{
    ASPP_CONV_KEYS, ASPP_KEY as ASPP, BLOCK1_KEYS, BLOCK2_KEYS, HEAD_KEY, HIGHRES_CHANNELS, RATES,
};

/// The trained tensors for layer4 / layer1 channels `high` / `low` and `k` outputs.
pub(super) fn specs(specs: &mut Specs, high: usize, low: usize, k: usize) {
    aspp::specs(specs, ASPP, high);
    for i in 1..=RATES.len() {
        let (conv, bn) = atrous_keys(i);
        specs.separable(&format!("{ASPP}.{conv}"), ASPP_CHANNELS, high);
        specs.batch_norm(&format!("{ASPP}.{bn}"), ASPP_CHANNELS);
    }
    specs.separable(ASPP_CONV_KEYS.0, ASPP_CHANNELS, ASPP_CHANNELS);
    specs.batch_norm(ASPP_CONV_KEYS.1, ASPP_CHANNELS);
    specs.conv(BLOCK1_KEYS.0, HIGHRES_CHANNELS, low, 1);
    specs.batch_norm(BLOCK1_KEYS.1, HIGHRES_CHANNELS);
    let concat = ASPP_CHANNELS + HIGHRES_CHANNELS;
    specs.separable(BLOCK2_KEYS.0, ASPP_CHANNELS, concat);
    specs.batch_norm(BLOCK2_KEYS.1, ASPP_CHANNELS);
    specs.classifier(HEAD_KEY, k, ASPP_CHANNELS);
}

/// `(b, layer1 pixels, k)` logits.
pub(super) fn forward(p: &Params, batch: &FeatureBatch) -> candle_core::Result<Tensor> {
    let [high, low] = batch.maps.as_slice() else {
        candle_core::bail!("DeepLabV3+ reads layer4 and layer1")
    };
    let (high_size, low_size) = (batch.sizes[0], batch.sizes[1]);
    if low_size != (4 * high_size.0, 4 * high_size.1) {
        candle_core::bail!(
            "DeepLabV3+: layer1 is {low_size:?}, not 4x layer4 {high_size:?} (the input must be a multiple of 16)"
        )
    }
    let branch = |i: usize| {
        let (conv, bn) = atrous_keys(i);
        p.separable_bn_relu(
            high,
            high_size,
            RATES[i - 1],
            &format!("{ASPP}.{conv}"),
            &format!("{ASPP}.{bn}"),
        )
    };
    let atrous = [branch(1)?, branch(2)?, branch(3)?];
    let context = aspp::project(p, ASPP, high, &atrous)?;
    let context =
        p.separable_bn_relu(&context, high_size, 1, ASPP_CONV_KEYS.0, ASPP_CONV_KEYS.1)?;
    let context = resize_maps(&context, high_size, low_size, true)?;
    let details = p.bn_relu(&p.conv1x1(low, BLOCK1_KEYS.0)?, BLOCK1_KEYS.1)?;
    let fused = Tensor::cat(&[context, details], 2)?;
    let y = p.separable_bn_relu(&fused, low_size, 1, BLOCK2_KEYS.0, BLOCK2_KEYS.1)?;
    p.conv1x1_bias(&y, HEAD_KEY)
}
