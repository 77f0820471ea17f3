//! Squeeze-excitation: a per-channel gate computed from the pooled map (two 1x1 convolutions
//! with biases), as MobileNetV3 (ReLU, hard sigmoid) and EfficientNet (SiLU, sigmoid) use it
//! between a block's depthwise and projection convolutions.

use candle_core::Tensor;

use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::{global_avg_pool, Conv, ConvSpec};
use crate::model::weights::Weights;

/// Sizes and activations of one squeeze-excitation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeSpec {
    /// Channels of the gated map.
    pub(crate) channels: usize,
    /// Channels between the two convolutions.
    pub(crate) squeeze: usize,
    /// After the reduce convolution.
    pub(crate) activation: Activation,
    /// After the expand convolution: the gate.
    pub(crate) gate: Activation,
}

/// The loaded gate: `xs * gate(expand(act(reduce(mean(xs)))))`.
pub(crate) struct SqueezeExcitation {
    reduce: Conv,
    expand: Conv,
}

impl SqueezeExcitation {
    /// Loads the reduce and expand convolutions `(reduce, expand)` (each with a bias).
    pub(crate) fn load(
        w: &Weights,
        (reduce, expand): (&str, &str),
        spec: SeSpec,
    ) -> Result<Self, ModelError> {
        let with_bias = |spec: ConvSpec| ConvSpec {
            has_bias: true,
            ..spec
        };
        let reduce_spec = ConvSpec::new(spec.channels, spec.squeeze, 1, 1).act(spec.activation);
        let expand_spec = ConvSpec::new(spec.squeeze, spec.channels, 1, 1).act(spec.gate);
        Ok(SqueezeExcitation {
            reduce: Conv::load(w, reduce, None, with_bias(reduce_spec))?,
            expand: Conv::load(w, expand, None, with_bias(expand_spec))?,
        })
    }

    /// `(n, h, w, c)` -> `(n, 1, 1, c)`: each image's channel factors, for
    /// `Conv::forward_gated` to apply inside the projection that follows.
    pub(crate) fn gate(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, _, c) = xs.dims4()?;
        let pooled = global_avg_pool(xs)?.reshape((n, 1, 1, c))?;
        self.expand.forward(&self.reduce.forward(&pooled)?)
    }
}

/// The tail of an inverted-residual block: `project(ys)`, gated by `se` when the block has
/// one, plus `skip` when given (the gate is applied inside the projection, see
/// `Conv::forward_gated`).
pub(crate) fn project(
    se: Option<&SqueezeExcitation>,
    project: &Conv,
    ys: &Tensor,
    skip: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    match (se, skip) {
        (Some(se), skip) => project.forward_gated(ys, &se.gate(ys)?, skip),
        (None, Some(skip)) => project.forward_add(ys, skip),
        (None, None) => project.forward(ys),
    }
}
