//! MobileNetV2 (width 1.0) with torchvision key names: `features.0` stem, `features.1..17`
//! inverted residual blocks (`conv.0.0`/`conv.0.1` expand, `conv.1.0`/`conv.1.1` depthwise,
//! `conv.2`/`conv.3` linear projection; the first block has no expansion), `features.18` head,
//! `classifier.1`. ReLU6, BN eps 1e-5, symmetric padding.
// Based on https://github.com/pytorch/vision/blob/v0.20.0/torchvision/models/mobilenetv2.py

use candle_core::Tensor;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::{global_avg_pool, inverted_residual, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;

pub(super) const NAMES: &[&str] = &["mobilenet_v2"];
/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

/// (expand ratio, output channels, repeats, first stride) per stage.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
const STEM: usize = 32;
const HEAD: usize = 1280;
const BN_EPS: f64 = 1e-5;
/// Checkpoint prefix of the final linear layer (`classifier.0` is dropout).
const CLASSIFIER_KEY: &str = "classifier.1";

struct InvertedResidual {
    /// Expand (absent in the first block), depthwise, projection.
    convs: Vec<Conv>,
    has_skip: bool,
}

struct MobileNetV2 {
    stem: Conv,
    blocks: Vec<InvertedResidual>,
    head: Conv,
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let w = args.weights;
    let conv = |name: String, bn: String, spec: ConvSpec| {
        Conv::load(
            w,
            &name,
            Some(BatchNorm {
                prefix: &bn,
                eps: BN_EPS,
            }),
            spec,
        )
    };
    let relu6 = Activation::Relu6;
    let stem = conv(
        "features.0.0".into(),
        "features.0.1".into(),
        ConvSpec::new(3, STEM, 3, 2).act(relu6),
    )?;
    let mut blocks = Vec::new();
    let mut c_in = STEM;
    for &(expand, c_out, repeats, first_stride) in &STAGES {
        for i in 0..repeats {
            let stride = if i == 0 { first_stride } else { 1 };
            let p = format!("features.{}", blocks.len() + 1);
            let mid = c_in * expand;
            let dw = ConvSpec::new(mid, mid, 3, stride).depthwise().act(relu6);
            let project = ConvSpec::new(mid, c_out, 1, 1);
            let convs = if expand == 1 {
                vec![
                    conv(format!("{p}.conv.0.0"), format!("{p}.conv.0.1"), dw)?,
                    conv(format!("{p}.conv.1"), format!("{p}.conv.2"), project)?,
                ]
            } else {
                vec![
                    conv(
                        format!("{p}.conv.0.0"),
                        format!("{p}.conv.0.1"),
                        ConvSpec::new(c_in, mid, 1, 1).act(relu6),
                    )?,
                    conv(format!("{p}.conv.1.0"), format!("{p}.conv.1.1"), dw)?,
                    conv(format!("{p}.conv.2"), format!("{p}.conv.3"), project)?,
                ]
            };
            blocks.push(InvertedResidual {
                convs,
                has_skip: stride == 1 && c_in == c_out,
            });
            c_in = c_out;
        }
    }
    let head = conv(
        "features.18.0".into(),
        "features.18.1".into(),
        ConvSpec::new(c_in, HEAD, 1, 1).act(relu6),
    )?;
    let classifier = Linear::load(w, CLASSIFIER_KEY, (HEAD, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(MobileNetV2 { stem, blocks, head }),
        classifier,
        classifier_key: CLASSIFIER_KEY,
    })
}

impl Backbone for MobileNetV2 {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.stem.forward(xs)?;
        for block in &self.blocks {
            xs = match block.convs.as_slice() {
                [expand, depthwise, project] => {
                    inverted_residual(&xs, (expand, depthwise, project), block.has_skip)?
                }
                [depthwise, project] => {
                    let ys = depthwise.forward(&xs)?;
                    if block.has_skip {
                        project.forward_add(&ys, &xs)?
                    } else {
                        project.forward(&ys)?
                    }
                }
                other => candle_core::bail!("a block of {} convolutions", other.len()),
            };
        }
        global_avg_pool(&self.head.forward(&xs)?)
    }
}
