//! ResNet-18/34/50/101/152 with torchvision key names (timm's `resnet*` use the same keys):
//! `conv1`, `bn1`, `layer{1..4}.{i}.{conv,bn}{1,2,3}`, `layer*.0.downsample.{0,1}`, `fc`.
//! Bottlenecks stride in the 3x3 convolution (torchvision's "ResNet v1.5"). The trunk also
//! serves the segmentation networks: dilated last stages and the layer1 output.
// Based on https://github.com/pytorch/vision/blob/v0.20.0/torchvision/models/resnet.py

use candle_core::Tensor;

use super::linear::Linear;
use super::network::{Backbone, BuildArgs, Builder, Network};
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, ConvGeometry, Padding};
use crate::model::layers::{global_avg_pool, max_pool, BatchNorm, Conv, ConvSpec};
use crate::model::registry::Family;
use crate::model::weights::Weights;

pub(super) const NAMES: &[&str] = &["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];
/// This file's architectures, for the classification registry (`registry.rs`).
pub(super) const FAMILY: Family<Builder> = Family {
    names: NAMES,
    build,
};

const BN_EPS: f64 = 1e-5;
/// Checkpoint prefix of the final linear layer.
const CLASSIFIER_KEY: &str = "fc";

struct Block {
    /// Every convolution of the main path; the last one adds the shortcut before its ReLU.
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

/// How the last two stages trade stride for dilation (atrous convolution) in segmentation
/// backbones, keeping the feature map at 1/8 or 1/16 of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dilation {
    /// The classification network: every stage strides, output stride 32.
    None,
    /// torchvision `replace_stride_with_dilation=[False, True, True]` (output stride 8):
    /// layer3 and layer4 keep stride 1; each stage's first block keeps the previous dilation,
    /// the others use 2 (layer3) and 4 (layer4).
    TorchvisionStride8,
    /// segmentation_models_pytorch `make_dilated(16)`: every convolution of layer4 gets
    /// stride 1 and dilation 2 (padding 2 for 3x3), the first block included.
    SmpStride16,
}

/// The convolutional trunk of a ResNet: stem, max pool and the four stages.
pub(crate) struct ResNetTrunk {
    stem: Conv,
    blocks: Vec<Block>,
    /// Blocks `..stage_ends[i]` form layers 1..=i+1 (DeepLabV3+ taps layer1; U-Net and FPN
    /// every stage).
    stage_ends: [usize; 4],
    /// Output channels of layer1 .. layer4.
    stage_channels: [usize; 4],
}

/// The trunk's outputs: layer1 (stride 4) and layer4.
pub(crate) struct TrunkFeatures {
    /// layer1 output, stride 4.
    pub(crate) layer1: Tensor,
    /// layer4 output.
    pub(crate) last: Tensor,
}

impl ResNetTrunk {
    /// Loads `{prefix}conv1`, `{prefix}bn1`, `{prefix}layer{1..4}.*` of ResNet `name`
    /// (`resnet18` .. `resnet152`); `prefix` is empty or ends with a dot.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        name: &str,
        dilation: Dilation,
    ) -> Result<Self, ModelError> {
        let (is_bottleneck, depths): (bool, [usize; 4]) = match name {
            "resnet18" => (false, [2, 2, 2, 2]),
            "resnet34" => (false, [3, 4, 6, 3]),
            "resnet50" => (true, [3, 4, 6, 3]),
            "resnet101" => (true, [3, 4, 23, 3]),
            _ => (true, [3, 8, 36, 3]),
        };
        let bn = format!("{prefix}bn1");
        let stem = Conv::load(
            w,
            &format!("{prefix}conv1"),
            Some(BatchNorm {
                prefix: &bn,
                eps: BN_EPS,
            }),
            ConvSpec::new(3, 64, 7, 2).act(Activation::Relu),
        )?;
        let mut blocks = Vec::new();
        let mut c_in = 64;
        let mut stage_ends = [0; 4];
        let mut stage_channels = [0; 4];
        for (stage, (&depth, width)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
            for i in 0..depth {
                let geometry = block_geometry(dilation, stage, i);
                let block_prefix = format!("{prefix}layer{}.{i}", stage + 1);
                let (block, c_out) =
                    load_block(w, &block_prefix, (c_in, width), geometry, is_bottleneck)?;
                blocks.push(block);
                c_in = c_out;
            }
            stage_ends[stage] = blocks.len();
            stage_channels[stage] = c_in;
        }
        Ok(ResNetTrunk {
            stem,
            blocks,
            stage_ends,
            stage_channels,
        })
    }

    /// Channels of the layer4 output.
    pub(crate) fn channels(&self) -> usize {
        self.stage_channels[3]
    }

    /// Channels of the layer1 output.
    pub(crate) fn layer1_channels(&self) -> usize {
        self.stage_channels[0]
    }

    /// Output channels of the stem (64) and of layer1 .. layer4, the order of
    /// [`ResNetTrunk::forward_stages`].
    pub(crate) fn stage_channels(&self) -> [usize; 5] {
        let [a, b, c, d] = self.stage_channels;
        [64, a, b, c, d]
    }

    /// `(n, h, w, 3)` NHWC -> layer1 and layer4 outputs.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<TrunkFeatures> {
        let mut stages = self.forward_stages(xs)?;
        let last = stages.pop().expect("five stages");
        Ok(TrunkFeatures {
            layer1: stages.swap_remove(1),
            last,
        })
    }

    /// `(n, h, w, 3)` NHWC -> the outputs of the stem's ReLU (stride 2, before the max pool)
    /// and of layer1 .. layer4: the features smp's ResNet encoders hand their decoders.
    pub(crate) fn forward_stages(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let stem = self.stem.forward(xs)?;
        let mut xs = max_pool(&stem, ConvGeometry::square(3, 2, 1))?;
        let mut stages = vec![stem];
        for (i, block) in self.blocks.iter().enumerate() {
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
            if self.stage_ends.contains(&(i + 1)) {
                stages.push(xs.clone());
            }
        }
        Ok(stages)
    }
}

struct ResNet {
    trunk: ResNetTrunk,
}

pub(super) fn build(args: &BuildArgs<'_>) -> Result<Network, ModelError> {
    let trunk = ResNetTrunk::load(args.weights, "", args.name, Dilation::None)?;
    let classifier = Linear::load(
        args.weights,
        CLASSIFIER_KEY,
        (trunk.channels(), args.num_classes),
    )?;
    Ok(Network {
        backbone: Box::new(ResNet { trunk }),
        classifier,
        classifier_key: CLASSIFIER_KEY,
    })
}

/// Stride and dilation of the 3x3 convolutions of block `i` of `stage` (0-based).
#[derive(Debug, Clone, Copy)]
struct BlockGeometry {
    stride: usize,
    dilation: usize,
}

fn block_geometry(dilation: Dilation, stage: usize, i: usize) -> BlockGeometry {
    let strided = stage > 0 && i == 0;
    let plain = BlockGeometry {
        stride: if strided { 2 } else { 1 },
        dilation: 1,
    };
    match (dilation, stage) {
        (Dilation::TorchvisionStride8, 2 | 3) => {
            // torchvision multiplies the running dilation by the replaced stride; the first
            // block of a stage is built with the dilation from before the multiplication.
            let (before, after) = if stage == 2 { (1, 2) } else { (2, 4) };
            BlockGeometry {
                stride: 1,
                dilation: if i == 0 { before } else { after },
            }
        }
        (Dilation::SmpStride16, 3) => BlockGeometry {
            stride: 1,
            dilation: 2,
        },
        _ => plain,
    }
}

/// One basic or bottleneck block; returns it and its output channels.
fn load_block(
    w: &Weights,
    prefix: &str,
    (c_in, width): (usize, usize),
    BlockGeometry { stride, dilation }: BlockGeometry,
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
    // A dilated 3x3 convolution pads by its dilation, keeping the size.
    let conv3x3 = |c_in: usize, c_out: usize, stride: usize| ConvSpec {
        dilation,
        padding: Padding::symmetric(dilation),
        ..ConvSpec::new(c_in, c_out, 3, stride)
    };
    let (convs, c_out) = if is_bottleneck {
        let c_out = width * 4;
        let convs = vec![
            conv(1, ConvSpec::new(c_in, width, 1, 1))?,
            conv(2, conv3x3(width, width, stride))?,
            conv(3, ConvSpec::new(width, c_out, 1, 1))?,
        ];
        (convs, c_out)
    } else {
        let convs = vec![
            conv(1, conv3x3(c_in, width, stride))?,
            conv(2, conv3x3(width, width, 1))?,
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
        global_avg_pool(&self.trunk.forward(xs)?.last)
    }
}
