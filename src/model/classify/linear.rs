//! The linear classifier every classification network ends with, `y = x W^T + b`, loaded from
//! `{key}.weight` / `{key}.bias` or built from the tensors `wick train` produced. It runs as a
//! 1x1 convolution over one pixel per image, so the head shares the packed dense kernel and
//! its thread team instead of a general matrix product that re-packs the weights per call.

use candle_core::{Module, Tensor};

use crate::model::error::ModelError;
use crate::model::kernels::Activation;
use crate::model::layers::Conv;
use crate::model::weights::Weights;

/// A fully connected layer, `y = x W^T + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    conv: Conv,
    c_in: usize,
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
        Ok(Self::from_tensors(&weight, &bias)?)
    }

    /// Builds a layer from an `(out, in)` weight and an `(out)` bias.
    pub(crate) fn from_tensors(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let (c_out, c_in) = weight.dims2()?;
        let bias = bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        if bias.len() != c_out {
            candle_core::bail!("linear layer: {} biases for {c_out} outputs", bias.len())
        }
        let weight = weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Linear {
            conv: Conv::pointwise(&weight, bias, c_in, Activation::Identity),
            c_in,
        })
    }

    /// Input features.
    pub(crate) fn c_in(&self) -> usize {
        self.c_in
    }

    /// Output features (classes).
    #[cfg(test)]
    pub(crate) fn c_out(&self) -> usize {
        self.conv.c_out()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c_in) = xs.dims2()?;
        let pixels = xs.contiguous()?.reshape((n, 1, 1, c_in))?;
        self.conv.forward(&pixels)?.reshape((n, self.conv.c_out()))
    }
}
