//! ResNet-18/34/50/101/152 with torchvision key names (timm's `resnet*` use the same keys):
//! `conv1`, `bn1`, `layer{1..4}.{i}.{conv,bn}{1,2,3}`, `layer*.0.downsample.{0,1}`, `fc`.
//! Bottlenecks stride in the 3x3 convolution (torchvision's "ResNet v1.5").
// Based on https://github.com/pytorch/vision/blob/v0.20.0/torchvision/models/resnet.py

use candle_core::Tensor;

use super::{Backbone, BuildArgs, Network};
use crate::model::kernels::{Activation, ConvGeometry};
use crate::model::layers::{global_avg_pool, max_pool, BatchNorm, Conv, ConvSpec, Linear};
use crate::model::weights::Weights;
use crate::model::ModelError;

pub(super) const NAMES: &[&str] = &["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];

const BN_EPS: f64 = 1e-5;
/// Checkpoint prefix of the final linear layer.
const CLASSIFIER_KEY: &str = "fc";

struct Block {
    /// Every convolution of the main path; the last one adds the shortcut before its ReLU.
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

struct ResNet {
    stem: Conv,
    blocks: Vec<Block>,
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let (is_bottleneck, depths): (bool, [usize; 4]) = match args.name {
        "resnet18" => (false, [2, 2, 2, 2]),
        "resnet34" => (false, [3, 4, 6, 3]),
        "resnet50" => (true, [3, 4, 6, 3]),
        "resnet101" => (true, [3, 4, 23, 3]),
        _ => (true, [3, 8, 36, 3]),
    };
    let w = args.weights;
    let bn = |prefix| {
        Some(BatchNorm {
            prefix,
            eps: BN_EPS,
        })
    };
    let stem = Conv::load(
        w,
        "conv1",
        bn("bn1"),
        ConvSpec::new(3, 64, 7, 2).act(Activation::Relu),
    )?;
    let mut blocks = Vec::new();
    let mut c_in = 64;
    for (stage, (&depth, width)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..depth {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{i}", stage + 1);
            let (block, c_out) = load_block(w, &prefix, (c_in, width, stride), is_bottleneck)?;
            blocks.push(block);
            c_in = c_out;
        }
    }
    let classifier = Linear::load(w, CLASSIFIER_KEY, (c_in, args.num_classes))?;
    Ok(Network {
        backbone: Box::new(ResNet { stem, blocks }),
        classifier,
        classifier_key: CLASSIFIER_KEY,
    })
}

/// One basic or bottleneck block; returns it and its output channels.
fn load_block(
    w: &Weights,
    prefix: &str,
    (c_in, width, stride): (usize, usize, usize),
    is_bottleneck: bool,
) -> Result<(Block, usize), ModelError> {
    let conv = |i: usize, spec: ConvSpec| {
        let bn = format!("{prefix}.bn{i}");
        Conv::load(
            w,
            &format!("{prefix}.conv{i}"),
            Some(BatchNorm {
                prefix: &bn,
                eps: BN_EPS,
            }),
            spec.act(Activation::Relu),
        )
    };
    let (convs, c_out) = if is_bottleneck {
        let c_out = width * 4;
        let convs = vec![
            conv(1, ConvSpec::new(c_in, width, 1, 1))?,
            conv(2, ConvSpec::new(width, width, 3, stride))?,
            conv(3, ConvSpec::new(width, c_out, 1, 1))?,
        ];
        (convs, c_out)
    } else {
        let convs = vec![
            conv(1, ConvSpec::new(c_in, width, 3, stride))?,
            conv(2, ConvSpec::new(width, width, 3, 1))?,
        ];
        (convs, width)
    };
    let downsample = if stride != 1 || c_in != c_out {
        let bn = format!("{prefix}.downsample.1");
        let spec = ConvSpec::new(c_in, c_out, 1, stride);
        Some(Conv::load(
            w,
            &format!("{prefix}.downsample.0"),
            Some(BatchNorm {
                prefix: &bn,
                eps: BN_EPS,
            }),
            spec,
        )?)
    } else {
        None
    };
    Ok((Block { convs, downsample }, c_out))
}

impl Backbone for ResNet {
    fn forward_features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = max_pool(&self.stem.forward(xs)?, ConvGeometry::square(3, 2, 1))?;
        for block in &self.blocks {
            let shortcut = match &block.downsample {
                Some(downsample) => downsample.forward(&xs)?,
                None => xs.clone(),
            };
            let (last, rest) = block.convs.split_last().expect("a block has convolutions");
            let mut ys = xs;
            for conv in rest {
                ys = conv.forward(&ys)?;
            }
            xs = last.forward_add(&ys, &shortcut)?;
        }
        global_avg_pool(&xs)
    }
}
