//! torchvision LR-ASPP (`lraspp_mobilenet_v3_large`): dilated MobileNetV3-Large under
//! `backbone.*`; `classifier.cbr` (1x1 to 128 + BN + ReLU) on the stride-16 features, gated by
//! `classifier.scale` (global pool, 1x1 conv, sigmoid), resized to the stride-8 features, then
//! `classifier.high_classifier` + `classifier.low_classifier` (on the stride-8 features); the
//! sum is resized to the input. Every resize is bilinear with `align_corners=False`.

use candle_core::Tensor;

use super::ops::{resize, scale_channels};
use super::{SegmentationArgs, SegmentationNetwork};
use crate::model::arch::mobilenet_v3::{MobileNetV3Large, HIGH_CHANNELS, LOW_CHANNELS};
use crate::model::kernels::Activation;
use crate::model::layers::{global_avg_pool, BatchNorm, Conv, ConvSpec};
use crate::model::ModelError;

pub(super) const NAMES: &[&str] = &["lraspp_mobilenet_v3_large"];

const INTER_CHANNELS: usize = 128;

struct LrAspp {
    backbone: MobileNetV3Large,
    cbr: Conv,
    scale: Conv,
    low_classifier: Conv,
    high_classifier: Conv,
}

pub(super) fn build(
    args: &SegmentationArgs<'_>,
) -> Result<Box<dyn SegmentationNetwork>, ModelError> {
    let w = args.weights;
    let backbone = MobileNetV3Large::load(w, "backbone.", true)?;
    let cbr = Conv::load(
        w,
        "classifier.cbr.0",
        Some(BatchNorm {
            prefix: "classifier.cbr.1",
            eps: 1e-5,
        }),
        ConvSpec::new(HIGH_CHANNELS, INTER_CHANNELS, 1, 1).act(Activation::Relu),
    )?;
    let scale = Conv::load(
        w,
        "classifier.scale.1",
        None,
        ConvSpec::new(HIGH_CHANNELS, INTER_CHANNELS, 1, 1).act(Activation::Sigmoid),
    )?;
    let head = |name: &str, c_in: usize| {
        Conv::load(
            w,
            name,
            None,
            ConvSpec {
                has_bias: true,
                ..ConvSpec::new(c_in, args.out_channels, 1, 1)
            },
        )
    };
    Ok(Box::new(LrAspp {
        backbone,
        cbr,
        scale,
        low_classifier: head("classifier.low_classifier", LOW_CHANNELS)?,
        high_classifier: head("classifier.high_classifier", INTER_CHANNELS)?,
    }))
}

impl SegmentationNetwork for LrAspp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (_, h, w, _) = xs.dims4()?;
        let features = self.backbone.forward(xs)?;
        let (n, _, _, c) = features.high.dims4()?;
        let pooled = global_avg_pool(&features.high)?.reshape((n, 1, 1, c))?;
        let gate = self.scale.forward(&pooled)?;
        let ys = scale_channels(&self.cbr.forward(&features.high)?, &gate)?;
        let (_, low_h, low_w, _) = features.low.dims4()?;
        let ys = resize(&ys, (low_h, low_w), false)?;
        let high = self.high_classifier.forward(&ys)?;
        let logits = self.low_classifier.forward_add(&features.low, &high)?;
        resize(&logits, (h, w), false)
    }

    fn out_channels(&self) -> usize {
        self.low_classifier.c_out()
    }

    fn size_multiple(&self) -> usize {
        1
    }
}
