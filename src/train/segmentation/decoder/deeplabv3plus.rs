//! segmentation_models_pytorch DeepLabV3+'s whole decoder and head, as trained on `[layer4
//! (stride 16), layer1 (stride 4)]`, computed as the model core's
//! `arch/segmentation/deeplabv3plus.rs` serves it:
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

const ASPP: &str = "decoder.aspp.0";
/// The ASPP's dilation rates.
const RATES: [usize; 3] = [12, 24, 36];
/// Channels of the projected layer1 features.
const HIGHRES_CHANNELS: usize = 48;

/// The trained tensors for layer4 / layer1 channels `high` / `low` and `k` outputs.
pub(super) fn specs(specs: &mut Specs, high: usize, low: usize, k: usize) {
    aspp::specs(specs, ASPP, high);
    for i in 1..=RATES.len() {
        specs.depthwise(&format!("{ASPP}.convs.{i}.0.0"), high);
        specs.conv(&format!("{ASPP}.convs.{i}.0.1"), ASPP_CHANNELS, high, 1);
        specs.batch_norm(&format!("{ASPP}.convs.{i}.1"), ASPP_CHANNELS);
    }
    specs.depthwise("decoder.aspp.1.0", ASPP_CHANNELS);
    specs.conv("decoder.aspp.1.1", ASPP_CHANNELS, ASPP_CHANNELS, 1);
    specs.batch_norm("decoder.aspp.2", ASPP_CHANNELS);
    specs.conv("decoder.block1.0", HIGHRES_CHANNELS, low, 1);
    specs.batch_norm("decoder.block1.1", HIGHRES_CHANNELS);
    let concat = ASPP_CHANNELS + HIGHRES_CHANNELS;
    specs.depthwise("decoder.block2.0.0", concat);
    specs.conv("decoder.block2.0.1", ASPP_CHANNELS, concat, 1);
    specs.batch_norm("decoder.block2.1", ASPP_CHANNELS);
    specs.classifier("segmentation_head.0", k, ASPP_CHANNELS);
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
        p.separable_bn_relu(
            high,
            high_size,
            RATES[i - 1],
            &format!("{ASPP}.convs.{i}.0"),
            &format!("{ASPP}.convs.{i}.1"),
        )
    };
    let atrous = [branch(1)?, branch(2)?, branch(3)?];
    let context = aspp::project(p, ASPP, high, &atrous)?;
    let context =
        p.separable_bn_relu(&context, high_size, 1, "decoder.aspp.1", "decoder.aspp.2")?;
    let context = resize_maps(&context, high_size, low_size, true)?;
    let details = p.bn_relu(&p.conv1x1(low, "decoder.block1.0")?, "decoder.block1.1")?;
    let fused = Tensor::cat(&[context, details], 2)?;
    let y = p.separable_bn_relu(&fused, low_size, 1, "decoder.block2.0", "decoder.block2.1")?;
    p.conv1x1_bias(&y, "segmentation_head.0")
}
