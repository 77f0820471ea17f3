//! Darknet's `.weights` files, read into named tensors (the names of
//! [`Cfg::tensor_layout`]).
//!
//! `.weights`: three i32 (major, minor, revision), then `seen` as u64 when
//! `major * 10 + minor >= 2` (u32 before), then for every convolutional layer in order: its
//! biases (the batch norm's beta when `batch_normalize=1`), then for batch-normalized layers the
//! scales (gamma), rolling means and rolling variances, then the weights `(filters, c_in, k, k)`,
//! all little-endian f32. Nothing else: the file must end exactly there.
// Format read from pjreddie/darknet src/parser.c and OpenCV's darknet importer (not copied).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::cfg::{bad, Cfg};
use crate::model::error::ModelError;
use crate::model::weights::Weights;

/// Reads a `.weights` file for the network `cfg_path` describes, as named tensors.
pub fn load_weights(cfg_path: &Path, weights_path: &Path) -> Result<Weights, ModelError> {
    let cfg = Cfg::read(cfg_path)?;
    let bytes = std::fs::read(weights_path)
        .map_err(|e| bad(format!("cannot read `{}`: {e}", weights_path.display())))?;
    weights_from_bytes(&cfg, &bytes)
}

/// Parses `.weights` bytes for `cfg`; every size is checked, so a short or long file is an
/// error naming what is missing, never a panic.
pub fn weights_from_bytes(cfg: &Cfg, bytes: &[u8]) -> Result<Weights, ModelError> {
    let werr = |m: String| ModelError::Unsupported(format!("darknet weights: {m}"));
    let header = |i: usize| -> Result<i32, ModelError> {
        let b = bytes.get(i * 4..i * 4 + 4).ok_or_else(|| {
            werr(format!(
                "file of {} bytes ends inside the header",
                bytes.len()
            ))
        })?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (major, minor) = (header(0)?, header(1)?);
    let seen_bytes = if major * 10 + minor >= 2 && major < 1000 && minor < 1000 {
        8
    } else {
        4
    };
    let mut pos = 12 + seen_bytes;
    if bytes.len() < pos {
        return Err(werr(format!(
            "file of {} bytes ends inside the header",
            bytes.len()
        )));
    }
    let mut tensors = HashMap::new();
    for (name, shape) in cfg.tensor_layout() {
        let n: usize = shape.iter().product();
        let end = pos + n * 4;
        let Some(chunk) = bytes.get(pos..end) else {
            return Err(werr(format!(
                "truncated: `{name}` needs {n} floats at byte {pos}, the file has {} bytes",
                bytes.len()
            )));
        };
        let values: Vec<f32> = chunk
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        pos = end;
    }
    if pos != bytes.len() {
        return Err(werr(format!(
            "{} bytes left over after the last layer: the file does not match the cfg",
            bytes.len() - pos
        )));
    }
    Ok(Weights::from_tensors(tensors))
}
