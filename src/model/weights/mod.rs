//! TEMPORARY stub of the weights API (replaced by the weights branch at merge).
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// Stub.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Missing.
    #[error("missing tensor `{name}`")]
    Missing { name: String },
    /// Shape.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Stub.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    synthesize_missing: bool,
}

impl Weights {
    /// Stub.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            synthesize_missing: false,
        }
    }
    /// Stub.
    pub fn synthetic() -> Self {
        Self {
            tensors: HashMap::new(),
            synthesize_missing: true,
        }
    }
    /// Stub.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    /// Stub.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
    /// Stub.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        match self.tensors.get(name) {
            Some(t) if t.dims() == shape => Ok(t.clone()),
            Some(t) => Err(WeightsError::Shape {
                name: name.into(),
                expected: shape.into(),
                found: t.dims().into(),
            }),
            None if self.synthesize_missing => Ok(synthesize(name, shape)),
            None => Err(WeightsError::Missing { name: name.into() }),
        }
    }
}

/// Stub formula.
pub fn synthesize(name: &str, shape: &[usize]) -> Tensor {
    let mut seed: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x100000001b3);
    }
    let numel: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let fan_in = if shape.len() <= 1 {
        numel
    } else {
        numel / shape[0].max(1)
    };
    let v: Vec<f32> = (0..numel)
        .map(|i| {
            let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / 16777216.0;
            let s = 2.0 * u - 1.0;
            let v = if leaf == "running_var" {
                0.5 + u
            } else if leaf == "running_mean" || leaf == "bias" {
                0.1 * s
            } else if leaf == "weight" && shape.len() == 1 {
                1.0 + 0.25 * s
            } else if name == "input" {
                s
            } else {
                s * (3.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
}
