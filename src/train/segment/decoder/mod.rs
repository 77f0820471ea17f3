//! The trainable decoders, written with Candle autograd on cached encoder features (see
//! [`Decoder`] for what each variant trains and reads): LR-ASPP's whole head or its two
//! classifiers (`lraspp.rs`), DeepLabV3's classifier after its dilated branches
//! (`deeplabv3.rs`), DeepLabV3+'s whole decoder and head (`deeplabv3plus.rs`, with the ASPP
//! pieces in `aspp.rs`), or a final 1x1 convolution alone. Features are `(batch, pixels,
//! channels)`: a 1x1 convolution is a matrix product; depthwise and dense 3x3 convolutions are
//! custom ops with their own backward (`depthwise.rs`, `im2col.rs`); bilinear resizes are
//! products with interpolation matrices (`resize.rs`). Tensors, their initialisation and the
//! shared layers are in `params.rs`.
//!
//! Each decoder here is the trainable twin of an inference decoder in `crate::model::segment`
//! (`lraspp.rs`, `deeplabv3.rs`, `deeplabv3plus.rs`, `aspp.rs` there): the variables carry
//! the checkpoint keys that network loads, defined once on the model side and imported here,
//! and [`TrainableDecoder::tensors`] exports them with the convolutions' 4-D shapes.

pub(crate) mod aspp;
pub(crate) mod deeplabv3;
pub(crate) mod deeplabv3plus;
mod depthwise;
mod geometry;
#[cfg(test)]
mod gradcheck;
mod im2col;
pub(crate) mod lraspp;
mod params;
mod pixels;
mod resize;

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::model::segment::Decoder;
use crate::model::weights::Weights;
use params::{Params, Specs};
use resize::upsample_logits;

/// Encoder features of a batch: one `(batch, h * w, channels)` tensor per input the decoder
/// reads, in the order its [`Decoder`] variant lists them, with its `(h, w)`.
#[derive(Debug, Clone)]
pub struct FeatureBatch {
    /// The tensors.
    pub(crate) maps: Vec<Tensor>,
    /// Their spatial sizes.
    pub(crate) sizes: Vec<(usize, usize)>,
}

impl FeatureBatch {
    /// The batch of `(n, h, w, c)` NHWC maps, as the frozen part of a network returns them.
    pub fn from_nhwc(maps: &[Tensor]) -> candle_core::Result<Self> {
        let mut batch = FeatureBatch {
            maps: Vec::with_capacity(maps.len()),
            sizes: Vec::with_capacity(maps.len()),
        };
        for map in maps {
            let (n, h, w, c) = map.dims4()?;
            batch.maps.push(map.reshape((n, h * w, c))?);
            batch.sizes.push((h, w));
        }
        Ok(batch)
    }
}

/// A decoder being trained.
pub struct TrainableDecoder {
    kind: Decoder,
    out_channels: usize,
    params: Params,
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
        let k = out_channels;
        let mut specs = Specs::default();
        match kind {
            Decoder::LrAspp {
                low_channels,
                high_channels,
            } => lraspp::specs(&mut specs, low_channels, high_channels, k),
            Decoder::LrAsppClassifiers { low_channels } => {
                lraspp::classifier_specs(&mut specs, low_channels, k);
            }
            Decoder::DeepLabV3 { channels } => deeplabv3::specs(&mut specs, channels, k),
            Decoder::DeepLabV3Plus {
                high_channels,
                low_channels,
            } => deeplabv3plus::specs(&mut specs, high_channels, low_channels, k),
            Decoder::FinalConv { key, channels, .. } => specs.classifier(key, k, channels),
            Decoder::FinalConv3x3 { key, channels } => {
                specs.conv(key, k, channels, 3);
                specs.bias(key, k, channels * 9);
            }
        }
        Ok(TrainableDecoder {
            kind,
            out_channels,
            params: specs.build(base, seed, dtype)?,
        })
    }

    /// Output channels.
    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The trained variables, for the optimizer, in a fixed order.
    pub(crate) fn vars(&self) -> Vec<Var> {
        self.params.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The trained variables' keys, in the order of [`Self::vars`].
    pub(crate) fn var_keys(&self) -> Vec<String> {
        self.params.vars.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Every tensor the serving network loads for this decoder, by key, with its checkpoint
    /// shape (copies).
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (key, var) in &self.params.vars {
            out.insert(key.clone(), var.as_tensor().to_dtype(DType::F32)?.copy()?);
        }
        for (key, t) in &self.params.frozen {
            out.insert(key.clone(), t.to_dtype(DType::F32)?.copy()?);
        }
        Ok(out)
    }

    /// Sets every trained tensor from `tensors` (as [`Self::tensors`] returns them).
    pub(crate) fn load(&self, tensors: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (key, var) in &self.params.vars {
            let t = tensors
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{key}`")))?;
            if t.dims() != var.dims() {
                candle_core::bail!("tensor `{key}` is {:?}, not {:?}", t.dims(), var.dims())
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Logits `(batch, out_channels, out_h, out_w)` for the batch's features.
    pub fn forward(
        &self,
        batch: &FeatureBatch,
        out: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        if batch.maps.len() != batch.sizes.len() || batch.maps.is_empty() {
            candle_core::bail!("a feature batch needs one size per map")
        }
        let p = &self.params;
        // Every decoder's logits are at the size of its first feature map except DeepLabV3+'s
        // (layer1, the second); torchvision resizes with align_corners=False, smp with True.
        let (small, size, align_corners) = match self.kind {
            Decoder::LrAspp { .. } => (lraspp::forward(p, batch)?, batch.sizes[0], false),
            Decoder::LrAsppClassifiers { .. } => (
                lraspp::forward_classifiers(p, batch)?,
                batch.sizes[0],
                false,
            ),
            Decoder::DeepLabV3 { .. } => (deeplabv3::forward(p, batch)?, batch.sizes[0], false),
            Decoder::DeepLabV3Plus { .. } => {
                let size = *batch.sizes.get(1).unwrap_or(&batch.sizes[0]);
                (deeplabv3plus::forward(p, batch)?, size, true)
            }
            Decoder::FinalConv {
                key, align_corners, ..
            } => {
                let [x] = batch.maps.as_slice() else {
                    candle_core::bail!("a final convolution reads one feature map")
                };
                (p.conv1x1_bias(x, key)?, batch.sizes[0], align_corners)
            }
            Decoder::FinalConv3x3 { key, .. } => {
                let [x] = batch.maps.as_slice() else {
                    candle_core::bail!("a final convolution reads one feature map")
                };
                let size = batch.sizes[0];
                (p.conv3x3_bias(x, size, key)?, size, true)
            }
        };
        upsample_logits(&small, size, out, align_corners)
    }
}

/// Per-pixel argmax (or `logit > 0` for one channel) of `(b, k, h, w)` logits: `(b, h, w)`.
pub(crate) fn predict(logits: &Tensor) -> candle_core::Result<Vec<u8>> {
    let k = logits.dim(1)?;
    let classes = if k == 1 {
        logits.flatten_all()?.gt(0.0)?.to_dtype(DType::U8)?
    } else {
        logits.argmax(1)?.to_dtype(DType::U8)?.flatten_all()?
    };
    classes.flatten_all()?.to_vec1::<u8>()
}

#[cfg(test)]
mod tests;
