//! The decoder's tensors: which ones a family declares ([`Specs`]), how each starts (the base
//! package's value of the same shape, else PyTorch's default initialisation, seeded), and the
//! store the forward passes read them from ([`Params`]), with the layers every family shares
//! (1x1 convolution, eval-mode batch norm + ReLU, separable and dense 3x3 convolutions).
//!
//! Batch norm stays in eval mode, as in the served network: running statistics frozen (plain
//! tensors), affine weight and bias trained (variables).

use candle_core::{DType, Device, Tensor, Var};

use super::depthwise::depthwise;
use super::im2col::conv3x3;
use super::pixels::matmul_pixels;
use crate::model::weights::Weights;
use crate::train::rng::{Rng, Stream};

/// Epsilon of every decoder batch norm (PyTorch's default, used by torchvision and smp).
const BN_EPS: f64 = 1e-5;

/// One decoder tensor to create.
struct TensorSpec {
    /// Checkpoint key.
    key: String,
    /// Checkpoint shape.
    shape: Vec<usize>,
    /// A constant fresh value, or `None` for PyTorch's uniform(+-1/sqrt(fan_in)).
    init: Option<f32>,
    /// Inputs per output, for the uniform bound.
    fan_in: usize,
    /// Trained (else frozen).
    train: bool,
}

/// The tensors a decoder declares, in a fixed order (the order of the seeded draws).
#[derive(Default)]
pub(super) struct Specs(Vec<TensorSpec>);

impl Specs {
    /// A trained tensor with PyTorch's uniform default.
    fn uniform(&mut self, key: String, shape: Vec<usize>, fan_in: usize) {
        self.0.push(TensorSpec {
            key,
            shape,
            init: None,
            fan_in,
            train: true,
        });
    }

    /// A convolution's weight `{key}.weight` of `(c_out, c_in / groups, k, k)`.
    pub(super) fn conv(&mut self, key: &str, c_out: usize, c_in: usize, k: usize) {
        self.uniform(
            format!("{key}.weight"),
            vec![c_out, c_in, k, k],
            c_in * k * k,
        );
    }

    /// A convolution's bias `{key}.bias` (PyTorch bounds it by the weight's fan-in).
    pub(super) fn bias(&mut self, key: &str, c_out: usize, fan_in: usize) {
        self.uniform(format!("{key}.bias"), vec![c_out], fan_in);
    }

    /// A 1x1 convolution with bias: the class logits.
    pub(super) fn classifier(&mut self, key: &str, c_out: usize, c_in: usize) {
        self.conv(key, c_out, c_in, 1);
        self.bias(key, c_out, c_in);
    }

    /// A depthwise 3x3 convolution's weight `(c, 1, 3, 3)`.
    pub(super) fn depthwise(&mut self, key: &str, c: usize) {
        self.conv(key, c, 1, 3);
    }

    /// A depthwise-separable 3x3 convolution as [`Params::separable_bn_relu`] reads it:
    /// `{key}.0` depthwise over `c_in` channels, then `{key}.1` pointwise to `c_out`.
    pub(super) fn separable(&mut self, key: &str, c_out: usize, c_in: usize) {
        self.depthwise(&format!("{key}.0"), c_in);
        self.conv(&format!("{key}.1"), c_out, c_in, 1);
    }

    /// Batch norm `prefix.*` over `c` channels: affine trained, running statistics frozen.
    pub(super) fn batch_norm(&mut self, prefix: &str, c: usize) {
        for (leaf, value, train) in [
            ("weight", 1.0, true),
            ("bias", 0.0, true),
            ("running_mean", 0.0, false),
            ("running_var", 1.0, false),
        ] {
            self.0.push(TensorSpec {
                key: format!("{prefix}.{leaf}"),
                shape: vec![c],
                init: Some(value),
                fan_in: 0,
                train,
            });
        }
    }

    /// Creates every tensor: from `base` when it holds one of the same shape, else fresh.
    pub(super) fn build(
        self,
        base: Option<&Weights>,
        seed: u64,
        dtype: DType,
    ) -> candle_core::Result<Params> {
        let mut rng = Rng::for_stream(seed, Stream::Init, &[1]);
        let mut params = Params::default();
        for TensorSpec {
            key,
            shape,
            init,
            fan_in,
            train,
        } in self.0
        {
            let from_base = base
                .filter(|w| w.shape(&key) == Some(shape.as_slice()))
                .map(|w| w.get(&key, &shape))
                .transpose()
                .map_err(candle_core::Error::wrap)?;
            let tensor = match (from_base, init) {
                (Some(t), _) => t,
                (None, Some(c)) => Tensor::full(c, shape.as_slice(), &Device::Cpu)?,
                (None, None) => {
                    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                    let n: usize = shape.iter().product();
                    let values: Vec<f32> =
                        (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
                    Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
                }
            }
            .to_dtype(dtype)?;
            if train {
                params.vars.push((key, Var::from_tensor(&tensor)?));
            } else {
                params.frozen.push((key, tensor));
            }
        }
        Ok(params)
    }
}

/// The decoder's tensors by checkpoint key.
#[derive(Default)]
pub(super) struct Params {
    /// Trained tensors, in declaration order.
    pub(super) vars: Vec<(String, Var)>,
    /// Frozen tensors (batch-norm running statistics).
    pub(super) frozen: Vec<(String, Tensor)>,
}

impl Params {
    /// The trained tensor `key`.
    pub(super) fn var(&self, key: &str) -> candle_core::Result<&Tensor> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("decoder has no `{key}`")))
    }

    fn frozen(&self, key: &str) -> candle_core::Result<&Tensor> {
        self.frozen
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t)
            .ok_or_else(|| candle_core::Error::Msg(format!("decoder has no `{key}`")))
    }

    /// The dtype the decoder computes in.
    pub(super) fn dtype(&self) -> DType {
        self.vars.first().map_or(DType::F32, |(_, v)| v.dtype())
    }

    /// The `(c_in, c_out)` matrix of the 1x1 convolution `{key}.weight`, or of the input
    /// channels `from..from + len` of it (one branch of a projection over a concatenation).
    pub(super) fn matrix(
        &self,
        key: &str,
        inputs: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let w = self.var(&format!("{key}.weight"))?;
        let (o, i) = (w.dim(0)?, w.dim(1)?);
        let m = w.reshape((o, i))?;
        let m = match inputs {
            // Contiguous, so that its transpose is a layout the matrix product accepts.
            Some((from, len)) => m.narrow(1, from, len)?.contiguous()?,
            None => m,
        };
        m.t()
    }

    /// 1x1 convolution `key` (no bias): `(b, p, c_in)` -> `(b, p, c_out)`.
    pub(super) fn conv1x1(&self, x: &Tensor, key: &str) -> candle_core::Result<Tensor> {
        matmul_pixels(x, &self.matrix(key, None)?)
    }

    /// 1x1 convolution `key` with its bias.
    pub(super) fn conv1x1_bias(&self, x: &Tensor, key: &str) -> candle_core::Result<Tensor> {
        self.conv1x1(x, key)?
            .broadcast_add(self.var(&format!("{key}.bias"))?)
    }

    /// Eval-mode batch norm `prefix` then ReLU: `x * gamma / sqrt(var + eps) + beta - mean *
    /// that`, per channel (the last dimension).
    pub(super) fn bn_relu(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        let inv_std = (self.frozen(&format!("{prefix}.running_var"))? + BN_EPS)?
            .sqrt()?
            .recip()?;
        let scale = (self.var(&format!("{prefix}.weight"))? * &inv_std)?;
        let shift = (self.var(&format!("{prefix}.bias"))?
            - (self.frozen(&format!("{prefix}.running_mean"))? * &scale)?)?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)?.relu()
    }

    /// smp's `SeparableConv2d` `key` (depthwise `{key}.0`, pointwise `{key}.1`) with `dilation`
    /// over the `(h, w)` map `x`, then batch norm `bn` and ReLU.
    pub(super) fn separable_bn_relu(
        &self,
        x: &Tensor,
        size: (usize, usize),
        dilation: usize,
        key: &str,
        bn: &str,
    ) -> candle_core::Result<Tensor> {
        let dw = depthwise(x, size, self.var(&format!("{key}.0.weight"))?, dilation)?;
        self.bn_relu(&self.conv1x1(&dw, &format!("{key}.1"))?, bn)
    }

    /// Dense 3x3 convolution `key` (padding 1) with its bias.
    pub(super) fn conv3x3_bias(
        &self,
        x: &Tensor,
        size: (usize, usize),
        key: &str,
    ) -> candle_core::Result<Tensor> {
        conv3x3(x, size, self.var(&format!("{key}.weight"))?, 1)?
            .broadcast_add(self.var(&format!("{key}.bias"))?)
    }

    /// Dense 3x3 convolution `key` (padding 1, no bias) then batch norm `bn` and ReLU.
    pub(super) fn conv3x3_bn_relu(
        &self,
        x: &Tensor,
        size: (usize, usize),
        key: &str,
        bn: &str,
    ) -> candle_core::Result<Tensor> {
        let y = conv3x3(x, size, self.var(&format!("{key}.weight"))?, 1)?;
        self.bn_relu(&y, bn)
    }
}
