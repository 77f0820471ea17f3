//! The frozen encoder pass: every image (and, with `augment=true`, its mirror image) resized to
//! the training resolution, run once through the frozen part of the network with the model
//! core's NHWC kernels, and its feature maps cached with the label map resized to the same
//! resolution (nearest neighbour, as `F.interpolate(mode="nearest")`). The decoder then trains
//! for many epochs on the cache alone.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use fast_image_resize::{self as fr, FilterType, ResizeAlg, ResizeOptions};
use image::RgbImage;
use rayon::prelude::*;

use super::dataset::{Sample, ValueMap};
use super::decoder::FeatureBatch;
use super::{annotation, memory};
use crate::model::preprocess::{decode, DecodeLimits};
use crate::model::segment::{SegmentationNetwork, Trainable};
use crate::train::progress::Progress;
use crate::train::stop::StopFlag;

/// Images decoded and encoded together.
const ENCODER_BATCH: usize = 4;

/// The training resolution and normalisation.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    /// `(height, width)` every image is resized to.
    pub size: (usize, usize),
    /// Per-channel mean of the `/255` pixels.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// Cached features and targets of a list of items (image, mirrored or not).
#[derive(Debug, Clone, Default)]
pub(crate) struct FeatureCache {
    /// Per decoder input: `(h, w, channels)`.
    pub(crate) shapes: Vec<(usize, usize, usize)>,
    /// Per decoder input: every item's `h * w * channels` values, item after item.
    pub(crate) maps: Vec<Vec<f32>>,
    /// Every item's `height * width` targets (class or `IGNORED`), item after item.
    pub(crate) targets: Vec<u8>,
    /// Number of items.
    pub(crate) len: usize,
}

impl FeatureCache {
    /// The features of `items` as a batch.
    pub(crate) fn batch(&self, items: &[usize]) -> candle_core::Result<FeatureBatch> {
        let mut maps = Vec::with_capacity(self.maps.len());
        let mut sizes = Vec::with_capacity(self.maps.len());
        for (values, &(h, w, c)) in self.maps.iter().zip(&self.shapes) {
            let per = h * w * c;
            let mut data = Vec::with_capacity(per * items.len());
            for &i in items {
                data.extend_from_slice(&values[i * per..(i + 1) * per]);
            }
            maps.push(Tensor::from_vec(
                data,
                (items.len(), h * w, c),
                &Device::Cpu,
            )?);
            sizes.push((h, w));
        }
        Ok(FeatureBatch { maps, sizes })
    }

    /// The targets of `items`, concatenated.
    pub(crate) fn targets(&self, items: &[usize], pixels: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(pixels * items.len());
        for &i in items {
            out.extend_from_slice(&self.targets[i * pixels..(i + 1) * pixels]);
        }
        out
    }
}

/// An image resized (bilinear, like the serving path) and normalised: `h * w * 3` NHWC values.
pub fn normalise(image: &RgbImage, spec: &InputSpec) -> Result<Vec<f32>> {
    let (h, w) = spec.size;
    let resized = if image.dimensions() == (w as u32, h as u32) {
        image.clone()
    } else {
        let mut dst = fr::images::Image::new(w as u32, h as u32, fr::PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        fr::Resizer::new().resize(image, &mut dst, &options)?;
        RgbImage::from_raw(w as u32, h as u32, dst.into_vec()).context("resized buffer size")?
    };
    Ok(resized
        .pixels()
        .flat_map(|p| (0..3).map(move |c| (f32::from(p[c]) / 255.0 - spec.mean[c]) / spec.std[c]))
        .collect())
}

/// Nearest-neighbour resize of `values` (`src_w x src_h`) to `(h, w)`, PyTorch's `nearest`.
pub(crate) fn resize_nearest(
    values: &[u8],
    (src_w, src_h): (u32, u32),
    (h, w): (usize, usize),
) -> Vec<u8> {
    let (sw, sh) = (src_w as usize, src_h as usize);
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let sy = (y * sh / h).min(sh - 1);
        for x in 0..w {
            let sx = (x * sw / w).min(sw - 1);
            out.push(values[sy * sw + sx]);
        }
    }
    out
}

/// One item ready for the encoder: normalised pixels and targets.
fn prepare(
    sample: &Sample,
    mirrored: bool,
    spec: &InputSpec,
    values: &ValueMap,
) -> Result<(Vec<f32>, Vec<u8>)> {
    let bytes = std::fs::read(&sample.image)
        .with_context(|| format!("reading image `{}`", sample.image.display()))?;
    let mut image = decode(&bytes, &DecodeLimits::default())
        .with_context(|| format!("decoding image `{}`", sample.image.display()))?;
    let a = annotation::read(&sample.annotation)?;
    let mut labels = resize_nearest(&a.values, (a.width, a.height), spec.size);
    if mirrored {
        image::imageops::flip_horizontal_in_place(&mut image);
        for row in labels.chunks_exact_mut(spec.size.1) {
            row.reverse();
        }
    }
    for v in &mut labels {
        *v = values.target(*v);
    }
    Ok((normalise(&image, spec)?, labels))
}

/// Runs the frozen part of `network` (what is left when `trainable` of it trains) over
/// `samples` (each twice, plain then mirrored, with `augment`). `None` when a stop was
/// requested.
pub(crate) fn encode(
    (network, trainable): (&dyn SegmentationNetwork, Trainable),
    samples: &[Sample],
    augment: bool,
    spec: &InputSpec,
    values: &ValueMap,
    stop: &StopFlag,
    label: &'static str,
) -> Result<Option<FeatureCache>> {
    let items: Vec<(&Sample, bool)> = samples
        .iter()
        .flat_map(|s| {
            let variants: &[bool] = if augment { &[false, true] } else { &[false] };
            variants.iter().map(move |&m| (s, m))
        })
        .collect();
    let (h, w) = spec.size;
    let mut cache = FeatureCache::default();
    let mut progress = Progress::new(label, "images", items.len(), 0);
    for chunk in items.chunks(ENCODER_BATCH) {
        if stop.is_set() {
            progress.finish();
            return Ok(None);
        }
        let prepared = chunk
            .par_iter()
            .map(|(s, m)| prepare(s, *m, spec, values))
            .collect::<Result<Vec<_>>>()?;
        let mut pixels = Vec::with_capacity(chunk.len() * h * w * 3);
        for (x, labels) in &prepared {
            pixels.extend_from_slice(x);
            cache.targets.extend_from_slice(labels);
        }
        let batch = Tensor::from_vec(pixels, (chunk.len(), h, w, 3), &Device::Cpu)?;
        let outputs = network.features_for(&batch, trainable)?;
        if cache.shapes.is_empty() {
            for o in &outputs {
                let (_, fh, fw, c) = o.dims4()?;
                cache.shapes.push((fh, fw, c));
            }
            cache.maps = vec![Vec::new(); outputs.len()];
            let floats: usize = cache.shapes.iter().map(|(fh, fw, c)| fh * fw * c).sum();
            memory::check(floats * 4 + h * w, items.len(), spec.size)?;
        }
        for (store, o) in cache.maps.iter_mut().zip(&outputs) {
            store.extend(o.flatten_all()?.to_vec1::<f32>()?);
        }
        cache.len += chunk.len();
        progress.advance(chunk.len());
    }
    progress.finish();
    Ok(Some(cache))
}

/// Reads and decodes an image for the overlays.
pub(crate) fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    Ok(decode(&bytes, &DecodeLimits::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_resize_follows_pytorch() {
        // 4 -> 2 takes indices 0 and 2; 2 -> 4 repeats each.
        assert_eq!(resize_nearest(&[0, 1, 2, 3], (4, 1), (1, 2)), [0, 2]);
        assert_eq!(resize_nearest(&[5, 6], (2, 1), (1, 4)), [5, 5, 6, 6]);
    }
}
