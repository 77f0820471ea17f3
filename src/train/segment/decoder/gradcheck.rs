//! Test support for the decoder's gradients: autograd against central finite differences of
//! the same scalar, in f64, on a few entries of every variable.

use candle_core::{DType, Device, Tensor, Var};

use crate::train::rng::{Rng, Stream};

/// A tensor of `shape` uniform in [-1, 1), from `seed`.
pub(super) fn random(shape: &[usize], seed: u64, dtype: DType) -> candle_core::Result<Tensor> {
    let mut rng = Rng::for_stream(seed, Stream::Augment, &[]);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Checks `d f / d var` of every `(name, var)` at four entries (first, a third, half, last)
/// against `(f(v + eps) - f(v - eps)) / 2 eps`.
pub(super) fn check_gradients(
    f: &dyn Fn() -> candle_core::Result<Tensor>,
    vars: &[(&str, &Var)],
) -> candle_core::Result<()> {
    let grads = f()?.backward()?;
    let eps = 1e-5;
    for (name, var) in vars {
        let grad = grads
            .get(var)
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.flatten_all()?.to_vec1::<f64>()?;
        let n = base.len();
        for i in [0, n / 3, n / 2, n - 1] {
            let value = |delta: f64| -> candle_core::Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                let l = f()?.to_scalar::<f64>();
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
                l
            };
            let numeric = (value(eps)? - value(-eps)?) / (2.0 * eps);
            let tolerance = 1e-6 + 1e-4 * numeric.abs();
            if (grad[i] - numeric).abs() > tolerance {
                candle_core::bail!(
                    "{name}[{i}]: autograd {} vs finite differences {numeric}",
                    grad[i]
                )
            }
        }
    }
    Ok(())
}
