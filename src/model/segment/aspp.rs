//! Atrous Spatial Pyramid Pooling, the context module of DeepLabV3 and DeepLabV3+: a 1x1
//! branch, three dilated 3x3 branches (dense in torchvision, depthwise-separable in
//! segmentation_models_pytorch), and an image-pooling branch, concatenated and projected to
//! 256 channels. Keys (under `prefix`): `convs.0.{0,1}`, `convs.{1,2,3}.{0,1}` (separable:
//! `convs.{i}.0.{0,1}` depthwise + pointwise, `convs.{i}.1` norm), `convs.4.{1,2}`,
//! `project.{0,1}`. Dropout is the identity in eval mode. The trainable twin of the parts
//! `wick train` fits is `crate::train::segment::decoder::aspp`; the keys both read are defined
//! here.

use candle_core::Tensor;

use super::ops::broadcast_pixels;
use crate::model::error::ModelError;
use crate::model::kernels::{Activation, Padding};
use crate::model::layers::{global_avg_pool, BatchNorm, Conv, ConvSpec};
use crate::model::weights::Weights;

/// Output channels of every branch and of the projection.
pub(crate) const ASPP_CHANNELS: usize = 256;

// Checkpoint keys under the module's prefix: `(convolution, batch norm)`. Defined once for
// both twins: this network and the trainable one (`crate::train::segment::decoder::aspp`).
/// The 1x1 branch.
pub(crate) const BRANCH_1X1_KEYS: (&str, &str) = ("convs.0.0", "convs.0.1");
/// The image-pooling branch (`convs.4.0` is the pooling itself).
pub(crate) const POOLING_KEYS: (&str, &str) = ("convs.4.1", "convs.4.2");
/// The projection of the five concatenated branches.
pub(crate) const PROJECT_KEYS: (&str, &str) = ("project.0", "project.1");

/// The keys of dilated branch `branch` (1 to 3): `(convolution, batch norm)`.
pub(crate) fn atrous_keys(branch: usize) -> (String, String) {
    (format!("convs.{branch}.0"), format!("convs.{branch}.1"))
}
const BN_EPS: f64 = 1e-5;

/// A 3x3 convolution, optionally depthwise-separable (depthwise, then a pointwise convolution
/// that carries the folded norm and the activation).
pub(crate) enum Conv3x3 {
    Dense(Conv),
    Separable { depthwise: Conv, pointwise: Conv },
}

impl Conv3x3 {
    /// Loads a 3x3 (dilated) convolution followed by batch norm `bn` and ReLU. `conv` is the
    /// dense convolution's key, or the `SeparableConv2d` module's (children `.0` and `.1`).
    pub(crate) fn load(
        w: &Weights,
        conv: &str,
        bn: &str,
        (c_in, c_out, dilation): (usize, usize, usize),
        separable: bool,
    ) -> Result<Self, ModelError> {
        let bn = Some(BatchNorm {
            prefix: bn,
            eps: BN_EPS,
        });
        let spec = ConvSpec {
            dilation,
            padding: Padding::symmetric(dilation),
            ..ConvSpec::new(c_in, c_in, 3, 1)
        };
        if separable {
            let depthwise = Conv::load(w, &format!("{conv}.0"), None, spec.depthwise())?;
            let pointwise = Conv::load(
                w,
                &format!("{conv}.1"),
                bn,
                ConvSpec::new(c_in, c_out, 1, 1).act(Activation::Relu),
            )?;
            Ok(Conv3x3::Separable {
                depthwise,
                pointwise,
            })
        } else {
            let spec = ConvSpec { c_out, ..spec }.act(Activation::Relu);
            Ok(Conv3x3::Dense(Conv::load(w, conv, bn, spec)?))
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Conv3x3::Dense(conv) => conv.forward(xs),
            Conv3x3::Separable {
                depthwise,
                pointwise,
            } => pointwise.forward(&depthwise.forward(xs)?),
        }
    }
}

/// The ASPP module.
pub(crate) struct Aspp {
    branch_1x1: Conv,
    atrous: Vec<Conv3x3>,
    pooling: Conv,
    project: Conv,
}

impl Aspp {
    /// Loads the module under `prefix` (no trailing dot) for `c_in` input channels.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        c_in: usize,
        rates: [usize; 3],
        separable: bool,
    ) -> Result<Self, ModelError> {
        let conv_bn = |conv: &str, bn: &str, spec: ConvSpec| {
            let bn = format!("{prefix}.{bn}");
            Conv::load(
                w,
                &format!("{prefix}.{conv}"),
                Some(BatchNorm {
                    prefix: &bn,
                    eps: BN_EPS,
                }),
                spec.act(Activation::Relu),
            )
        };
        let branch_1x1 = conv_bn(
            BRANCH_1X1_KEYS.0,
            BRANCH_1X1_KEYS.1,
            ConvSpec::new(c_in, ASPP_CHANNELS, 1, 1),
        )?;
        let atrous = rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| {
                let (conv, bn) = atrous_keys(i + 1);
                Conv3x3::load(
                    w,
                    &format!("{prefix}.{conv}"),
                    &format!("{prefix}.{bn}"),
                    (c_in, ASPP_CHANNELS, rate),
                    separable,
                )
            })
            .collect::<Result<_, _>>()?;
        let pooling = conv_bn(
            POOLING_KEYS.0,
            POOLING_KEYS.1,
            ConvSpec::new(c_in, ASPP_CHANNELS, 1, 1),
        )?;
        let project = conv_bn(
            PROJECT_KEYS.0,
            PROJECT_KEYS.1,
            ConvSpec::new(5 * ASPP_CHANNELS, ASPP_CHANNELS, 1, 1),
        )?;
        Ok(Aspp {
            branch_1x1,
            atrous,
            pooling,
            project,
        })
    }

    /// The three dilated branches' outputs (after batch norm and ReLU), `(n, h, w, 256)` each:
    /// what `wick train` caches when it trains the rest of a dense ASPP.
    pub(crate) fn atrous_outputs(&self, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.atrous.iter().map(|conv| conv.forward(xs)).collect()
    }

    /// `(n, h, w, c_in)` -> `(n, h, w, 256)`.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = xs.dims4()?;
        let mut branches = vec![self.branch_1x1.forward(xs)?];
        branches.extend(self.atrous_outputs(xs)?);
        let pooled = global_avg_pool(xs)?.reshape((n, 1, 1, c))?;
        branches.push(broadcast_pixels(&self.pooling.forward(&pooled)?, (h, w))?);
        self.project.forward(&Tensor::cat(&branches, 3)?)
    }
}
