//! The trainable decoders, written with Candle autograd on cached encoder features:
//! torchvision's whole LR-ASPP head, or the final 1x1 convolution of the ASPP decoders (see
//! [`Decoder`]). Features are `(batch, pixels, channels)`: a 1x1 convolution is a matmul, and a
//! bilinear resize is linear, so it is a product with interpolation matrices built from the
//! model core's own sampling plan ([`ResizeAxis`]) — exact and differentiable. The decoder's
//! batch norm stays in eval mode: running statistics frozen, affine weight and bias trained.
//!
//! The variables carry the checkpoint key names the serving network loads; [`Self::tensors`]
//! exports them with the convolutions' 4-D shapes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::model::arch::segmentation::Decoder;
use crate::model::kernels::ResizeAxis;
use crate::model::weights::Weights;
use crate::train::rng::{Rng, Stream};

/// LR-ASPP's hidden channels (torchvision `inter_channels`).
const INTER: usize = 128;
/// Epsilon of the `cbr` batch norm (PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// Encoder features of a batch: one `(batch, h * w, channels)` tensor per input the decoder
/// reads (LR-ASPP: low, high), with its `(h, w)`.
#[derive(Debug, Clone)]
pub struct FeatureBatch {
    /// The tensors.
    pub maps: Vec<Tensor>,
    /// Their spatial sizes.
    pub sizes: Vec<(usize, usize)>,
}

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

/// A decoder being trained.
pub struct TrainableDecoder {
    kind: Decoder,
    out_channels: usize,
    /// Trained tensors by checkpoint key, in a fixed order.
    vars: Vec<(String, Var)>,
    /// Frozen tensors by checkpoint key (batch-norm running statistics).
    frozen: Vec<(String, Tensor)>,
}

/// `{prefix}.{leaf}` keys of LR-ASPP's head.
fn lraspp_key(leaf: &str) -> String {
    format!("classifier.{leaf}")
}

impl TrainableDecoder {
    /// The decoder of `kind` with `out_channels` outputs (1 = binary). Each tensor starts from
    /// `base` when it holds one of the same shape (a segmentation package's decoder), else
    /// from PyTorch's default initialisation, seeded.
    pub fn new(
        kind: Decoder,
        out_channels: usize,
        base: Option<&Weights>,
        seed: u64,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let mut rng = Rng::for_stream(seed, Stream::Init, &[1]);
        let mut vars = Vec::new();
        let mut frozen = Vec::new();
        let mut specs: Vec<TensorSpec> = Vec::new();
        let mut add =
            |key: String, shape: Vec<usize>, init: Option<f32>, fan_in: usize, train: bool| {
                specs.push(TensorSpec {
                    key,
                    shape,
                    init,
                    fan_in,
                    train,
                });
            };
        match kind {
            Decoder::LrAspp {
                low_channels,
                high_channels,
            } => {
                let k = out_channels;
                add(
                    lraspp_key("cbr.0.weight"),
                    vec![INTER, high_channels, 1, 1],
                    None,
                    high_channels,
                    true,
                );
                add(lraspp_key("cbr.1.weight"), vec![INTER], Some(1.0), 0, true);
                add(lraspp_key("cbr.1.bias"), vec![INTER], Some(0.0), 0, true);
                add(
                    lraspp_key("cbr.1.running_mean"),
                    vec![INTER],
                    Some(0.0),
                    0,
                    false,
                );
                add(
                    lraspp_key("cbr.1.running_var"),
                    vec![INTER],
                    Some(1.0),
                    0,
                    false,
                );
                add(
                    lraspp_key("scale.1.weight"),
                    vec![INTER, high_channels, 1, 1],
                    None,
                    high_channels,
                    true,
                );
                add(
                    lraspp_key("low_classifier.weight"),
                    vec![k, low_channels, 1, 1],
                    None,
                    low_channels,
                    true,
                );
                add(
                    lraspp_key("low_classifier.bias"),
                    vec![k],
                    None,
                    low_channels,
                    true,
                );
                add(
                    lraspp_key("high_classifier.weight"),
                    vec![k, INTER, 1, 1],
                    None,
                    INTER,
                    true,
                );
                add(
                    lraspp_key("high_classifier.bias"),
                    vec![k],
                    None,
                    INTER,
                    true,
                );
            }
            Decoder::FinalConv { key, channels, .. } => {
                add(
                    format!("{key}.weight"),
                    vec![out_channels, channels, 1, 1],
                    None,
                    channels,
                    true,
                );
                add(
                    format!("{key}.bias"),
                    vec![out_channels],
                    None,
                    channels,
                    true,
                );
            }
        }
        for TensorSpec {
            key,
            shape,
            init,
            fan_in,
            train,
        } in specs
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
                vars.push((key, Var::from_tensor(&tensor)?));
            } else {
                frozen.push((key, tensor));
            }
        }
        Ok(TrainableDecoder {
            kind,
            out_channels,
            vars,
            frozen,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The trained variables, for the optimizer.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Every tensor the serving network loads for this decoder, by key, with its checkpoint
    /// shape (copies).
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (key, var) in &self.vars {
            out.insert(key.clone(), var.as_tensor().to_dtype(DType::F32)?.copy()?);
        }
        for (key, t) in &self.frozen {
            out.insert(key.clone(), t.to_dtype(DType::F32)?.copy()?);
        }
        Ok(out)
    }

    /// Sets every trained tensor from `tensors` (as [`Self::tensors`] returns them).
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (key, var) in &self.vars {
            let t = tensors
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{key}`")))?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn var(&self, key: &str) -> candle_core::Result<&Tensor> {
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

    /// A 1x1 convolution's weight `(out, in, 1, 1)` as the `(in, out)` matrix.
    fn matrix(&self, key: &str) -> candle_core::Result<Tensor> {
        let w = self.var(key)?;
        let (o, i) = (w.dim(0)?, w.dim(1)?);
        w.reshape((o, i))?.t()
    }

    /// Logits `(batch, out_channels, out_h, out_w)` for the batch's features.
    pub fn forward(
        &self,
        batch: &FeatureBatch,
        (out_h, out_w): (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let dtype = self.vars[0].1.dtype();
        let (small, (h, w), align_corners) = match self.kind {
            Decoder::LrAspp { .. } => {
                let [low, high] = batch.maps.as_slice() else {
                    candle_core::bail!("LR-ASPP reads two feature maps")
                };
                let (low_size, high_size) = (batch.sizes[0], batch.sizes[1]);
                // cbr: conv, BN (eval: x * gamma / sqrt(var + eps) + beta - mean * that), ReLU.
                let inv_std = (self.frozen(&lraspp_key("cbr.1.running_var"))? + BN_EPS)?
                    .sqrt()?
                    .recip()?;
                let scale = (self.var(&lraspp_key("cbr.1.weight"))? * &inv_std)?;
                let shift = (self.var(&lraspp_key("cbr.1.bias"))?
                    - (self.frozen(&lraspp_key("cbr.1.running_mean"))? * &scale)?)?;
                let x = high
                    .broadcast_matmul(&self.matrix(&lraspp_key("cbr.0.weight"))?)?
                    .broadcast_mul(&scale)?
                    .broadcast_add(&shift)?
                    .relu()?;
                // scale: global average pool, conv, sigmoid; one gate per image and channel.
                let pooled = high.mean_keepdim(1)?;
                let gate = candle_nn::ops::sigmoid(
                    &pooled.broadcast_matmul(&self.matrix(&lraspp_key("scale.1.weight"))?)?,
                )?;
                let x = x.broadcast_mul(&gate)?;
                let resize = kron_resize(high_size, low_size, false, dtype)?;
                let x = resize.broadcast_matmul(&x)?;
                let from_high = x
                    .broadcast_matmul(&self.matrix(&lraspp_key("high_classifier.weight"))?)?
                    .broadcast_add(self.var(&lraspp_key("high_classifier.bias"))?)?;
                let from_low = low
                    .broadcast_matmul(&self.matrix(&lraspp_key("low_classifier.weight"))?)?
                    .broadcast_add(self.var(&lraspp_key("low_classifier.bias"))?)?;
                ((from_high + from_low)?, low_size, false)
            }
            Decoder::FinalConv {
                key, align_corners, ..
            } => {
                let [x] = batch.maps.as_slice() else {
                    candle_core::bail!("a final convolution reads one feature map")
                };
                let logits = x
                    .broadcast_matmul(&self.matrix(&format!("{key}.weight"))?)?
                    .broadcast_add(self.var(&format!("{key}.bias"))?)?;
                (logits, batch.sizes[0], align_corners)
            }
        };
        // (b, h*w, k) -> (b*k, h, w), then rows and columns resized by two products.
        let (b, _, k) = small.dims3()?;
        let planes = small.transpose(1, 2)?.reshape((b * k, h, w))?;
        let rows = resize_matrix(h, out_h, align_corners, dtype)?;
        let cols = resize_matrix(w, out_w, align_corners, dtype)?.t()?;
        let up = rows.broadcast_matmul(&planes.broadcast_matmul(&cols)?)?;
        up.reshape((b, k, out_h, out_w))
    }
}

/// `(output, input)` matrix of a 1-D bilinear resize, PyTorch's sampling.
pub fn resize_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; output * input];
    for (o, axis) in ResizeAxis::plan(input, output, align_corners)
        .iter()
        .enumerate()
    {
        m[o * input + axis.i0] += axis.w0;
        m[o * input + axis.i1] += axis.w1;
    }
    Tensor::from_vec(m, (output, input), &Device::Cpu)?.to_dtype(dtype)
}

/// `(out_h * out_w, in_h * in_w)` matrix of a 2-D bilinear resize of row-major pixels.
fn kron_resize(
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    align_corners: bool,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let rows = ResizeAxis::plan(in_h, out_h, align_corners);
    let cols = ResizeAxis::plan(in_w, out_w, align_corners);
    let (n_in, n_out) = (in_h * in_w, out_h * out_w);
    let mut m = vec![0f32; n_out * n_in];
    for (oy, ry) in rows.iter().enumerate() {
        for (ox, rx) in cols.iter().enumerate() {
            let row = &mut m[(oy * out_w + ox) * n_in..][..n_in];
            for (iy, wy) in [(ry.i0, ry.w0), (ry.i1, ry.w1)] {
                for (ix, wx) in [(rx.i0, rx.w0), (rx.i1, rx.w1)] {
                    row[iy * in_w + ix] += wy * wx;
                }
            }
        }
    }
    Tensor::from_vec(m, (n_out, n_in), &Device::Cpu)?.to_dtype(dtype)
}

/// Per-pixel argmax (or `logit > 0` for one channel) of `(b, k, h, w)` logits: `(b, h, w)`.
pub fn predict(logits: &Tensor) -> candle_core::Result<Vec<u8>> {
    let k = logits.dim(1)?;
    let classes = if k == 1 {
        logits.flatten_all()?.gt(0.0)?.to_dtype(DType::U8)?
    } else {
        logits.argmax(1)?.to_dtype(DType::U8)?.flatten_all()?
    };
    classes.flatten_all()?.to_vec1::<u8>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::segmentation::data::IGNORED;
    use crate::train::segmentation::loss::{loss, targets};

    fn features(b: usize, sizes: &[(usize, usize, usize)], seed: u64) -> FeatureBatch {
        let mut rng = Rng::for_stream(seed, Stream::Augment, &[]);
        let maps = sizes
            .iter()
            .map(|&(h, w, c)| {
                let v: Vec<f64> = (0..b * h * w * c).map(|_| rng.uniform(-1.0, 1.0)).collect();
                Tensor::from_vec(v, (b, h * w, c), &Device::Cpu).expect("tensor")
            })
            .collect();
        FeatureBatch {
            maps,
            sizes: sizes.iter().map(|&(h, w, _)| (h, w)).collect(),
        }
    }

    /// Every gradient autograd computes, against central finite differences of the loss,
    /// in f64, on a few entries of every trained tensor.
    fn gradient_check(kind: Decoder, k: usize, batch: &FeatureBatch, out: (usize, usize)) {
        let decoder = TrainableDecoder::new(kind, k, None, 3, DType::F64).expect("decoder");
        let pixels = batch.maps[0].dim(0).expect("dim") * out.0 * out.1;
        let classes: Vec<u8> = (0..pixels)
            .map(|i| {
                if i % 7 == 3 {
                    IGNORED
                } else {
                    (i % k.max(2)) as u8
                }
            })
            .collect();
        let t = targets(&classes, k, DType::F64).expect("targets");
        let value = |d: &TrainableDecoder| -> f64 {
            loss(&d.forward(batch, out).expect("forward"), &t)
                .and_then(|l| l.to_scalar::<f64>())
                .expect("loss")
        };
        let grads = loss(&decoder.forward(batch, out).expect("forward"), &t)
            .and_then(|l| l.backward())
            .expect("backward");
        for (key, var) in &decoder.vars {
            let grad = grads
                .get(var)
                .unwrap_or_else(|| panic!("{key}: no gradient"))
                .flatten_all()
                .and_then(|g| g.to_vec1::<f64>())
                .expect("grad");
            let base = var
                .flatten_all()
                .and_then(|v| v.to_vec1::<f64>())
                .expect("values");
            let n = base.len();
            for &i in &[0, n / 3, n / 2, n - 1] {
                let eps = 1e-5;
                let probe = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).expect("tensor");
                    var.set(&t).expect("set");
                    let l = value(&decoder);
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).expect("t"))
                        .expect("reset");
                    l
                };
                let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
                let tolerance = 1e-6 + 1e-4 * numeric.abs();
                assert!(
                    (grad[i] - numeric).abs() <= tolerance,
                    "{key}[{i}]: autograd {} vs finite differences {numeric}",
                    grad[i]
                );
            }
        }
    }

    #[test]
    fn lraspp_gradients_match_finite_differences() {
        let kind = Decoder::LrAspp {
            low_channels: 3,
            high_channels: 5,
        };
        let batch = features(2, &[(4, 6, 3), (2, 3, 5)], 1);
        gradient_check(kind, 3, &batch, (7, 11));
        // Binary: one output, BCE.
        gradient_check(kind, 1, &batch, (8, 12));
    }

    #[test]
    fn final_conv_gradients_match_finite_differences() {
        for align_corners in [false, true] {
            let kind = Decoder::FinalConv {
                key: "head",
                channels: 4,
                align_corners,
            };
            let batch = features(2, &[(3, 5, 4)], 2);
            gradient_check(kind, 3, &batch, (12, 20));
        }
    }

    #[test]
    fn resize_matrices_match_the_model_core_kernel() -> candle_core::Result<()> {
        use crate::model::arch::segmentation::ops::resize;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 5.0, &Device::Cpu)?.reshape((1, 3, 5, 2))?;
        for align in [false, true] {
            let kernel = resize(&x, (7, 4), align)?; // (1, 7, 4, 2) NHWC
            let planes = x.permute((0, 3, 1, 2))?.reshape((2, 3, 5))?;
            let m = resize_matrix(3, 7, align, DType::F32)?.broadcast_matmul(
                &planes.broadcast_matmul(&resize_matrix(5, 4, align, DType::F32)?.t()?)?,
            )?;
            let want = kernel.permute((0, 3, 1, 2))?.reshape((2, 7, 4))?;
            let diff = (m - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "align_corners={align}: {diff}");
            let kron = kron_resize((3, 5), (7, 4), align, DType::F32)?;
            let flat = x.reshape((1, 15, 2))?;
            let diff = (kron.broadcast_matmul(&flat)? - kernel.reshape((1, 28, 2))?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "kron align_corners={align}: {diff}");
        }
        Ok(())
    }
}
