//! torchvision's LR-ASPP head (`classifier.*`, inter channels 128) as trained: the whole head
//! on the trunk's `[low, high]` features, or (`trainable=head`) its two classifiers on `[low,
//! gated]`, where `gated` is the frozen `cbr` branch times the `scale` gate. The trainable
//! twin of the model core's `crate::model::segment::lraspp`, with the checkpoint keys and
//! channels defined there.

use candle_core::Tensor;

use super::params::{Params, Specs};
use super::pixels::matmul_pixels;
use super::resize::kron_resize;
use super::FeatureBatch;
use crate::model::segment::lraspp::{
    CBR_KEYS, HIGH_CLASSIFIER_KEY, INTER_CHANNELS as INTER, LOW_CLASSIFIER_KEY, SCALE_KEY,
};

/// The whole head. The order fixes the seeded draws of fresh weights.
pub(super) fn specs(specs: &mut Specs, low: usize, high: usize, k: usize) {
    specs.conv(CBR_KEYS.0, INTER, high, 1);
    specs.batch_norm(CBR_KEYS.1, INTER);
    specs.conv(SCALE_KEY, INTER, high, 1);
    classifier_specs(specs, low, k);
}

/// The two classifiers.
pub(super) fn classifier_specs(specs: &mut Specs, low: usize, k: usize) {
    specs.classifier(LOW_CLASSIFIER_KEY, k, low);
    specs.classifier(HIGH_CLASSIFIER_KEY, k, INTER);
}

/// `cbr` (1x1 conv, BN, ReLU) on the deep features, times the `scale` gate (global average
/// pool, 1x1 conv, sigmoid: one factor per image and channel).
fn gated(p: &Params, high: &Tensor) -> candle_core::Result<Tensor> {
    let x = p.bn_relu(&p.conv1x1(high, CBR_KEYS.0)?, CBR_KEYS.1)?;
    let pooled = high.mean_keepdim(1)?;
    let gate = candle_nn::ops::sigmoid(&matmul_pixels(&pooled, &p.matrix(SCALE_KEY, None)?)?)?;
    x.broadcast_mul(&gate)
}

/// Logits at the low features' size from `low` and the gated branch at `gated_size`.
fn classify(
    p: &Params,
    low: &Tensor,
    low_size: (usize, usize),
    gated: &Tensor,
    gated_size: (usize, usize),
) -> candle_core::Result<Tensor> {
    let resize = kron_resize(gated_size, low_size, false, p.dtype())?;
    let x = resize.broadcast_matmul(gated)?;
    let from_high = p.conv1x1_bias(&x, HIGH_CLASSIFIER_KEY)?;
    let from_low = p.conv1x1_bias(low, LOW_CLASSIFIER_KEY)?;
    from_high + from_low
}

/// The whole head: `(b, low pixels, k)` logits.
pub(super) fn forward(p: &Params, batch: &FeatureBatch) -> candle_core::Result<Tensor> {
    let [low, high] = batch.maps.as_slice() else {
        candle_core::bail!("LR-ASPP reads two feature maps")
    };
    classify(p, low, batch.sizes[0], &gated(p, high)?, batch.sizes[1])
}

/// The classifiers only: `(b, low pixels, k)` logits.
pub(super) fn forward_classifiers(p: &Params, batch: &FeatureBatch) -> candle_core::Result<Tensor> {
    let [low, gated] = batch.maps.as_slice() else {
        candle_core::bail!("LR-ASPP's classifiers read two feature maps")
    };
    classify(p, low, batch.sizes[0], gated, batch.sizes[1])
}
