//! The linear classifier every classification network ends with, `y = x W^T + b`, loaded from
//! `{key}.weight` / `{key}.bias` or built from the tensors `wick train` produced.

use candle_core::{Device, Module, Tensor};

use crate::model::error::ModelError;
use crate::model::weights::Weights;

/// A fully connected layer, `y = x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    /// `(in, out)`, transposed once at load so the product reads it row-major.
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Loads `{prefix}.weight` `(out, in)` and `{prefix}.bias` `(out)`.
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        (c_in, c_out): (usize, usize),
    ) -> Result<Self, ModelError> {
        let weight = weights.get(&format!("{prefix}.weight"), &[c_out, c_in])?;
        let bias = weights.get(&format!("{prefix}.bias"), &[c_out])?;
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// Builds a layer from an `(out, in)` weight and an `(out)` bias.
    pub(crate) fn from_tensors(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?.to_device(&Device::Cpu)?,
            bias,
        })
    }

    /// Input features.
    pub(crate) fn c_in(&self) -> usize {
        self.weight_t.dims()[0]
    }

    /// Output features (classes).
    #[cfg(test)]
    pub(crate) fn c_out(&self) -> usize {
        self.weight_t.dims()[1]
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}
