//! A loaded semantic segmentation model: network, labels and sizing settings from one package,
//! and the whole path from an RGB image to a label map at the image's own size (resize or
//! tile, normalise, run, blend tiles, upsample logits bilinearly, argmax or threshold).

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use fast_image_resize::{self as fr, FilterType, ResizeAlg, ResizeOptions};
use image::RgbImage;

use super::config::{self, SegmentationConfig};
use super::network::{SegmentationArgs, SegmentationNetwork};
use super::registry;
use super::streamed::{downscale, upsample_labels, RowWindow, StreamedImage};
use super::tiling::{run_tiled, TileSettings, WholeImage, TILE_ALIGN};
use crate::model::error::ModelError;
use crate::model::layers::to_nhwc;
use crate::model::output::LabelMap;
use crate::model::package::{Package, PackageError, Task};
use crate::model::preprocess::PreprocessError;
use crate::model::weights::Weights;

/// Most classes a label map can hold (one byte per pixel).
pub(crate) const MAX_CLASSES: usize = 256;

/// A segmentation model ready to run.
pub struct Segmenter {
    network: Box<dyn SegmentationNetwork>,
    labels: Vec<String>,
    config: SegmentationConfig,
    architecture: String,
}

impl Segmenter {
    /// Loads the package in `dir` (see `docs/model-package.md`).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let started = Instant::now();
        let package = Package::open(dir)?;
        let weights = Weights::load(&package.weights_path)?;
        let segmenter = Self::from_package(&package, &weights)?;
        tracing::info!(
            architecture = %segmenter.architecture,
            weights = %package.weights_path.display(),
            classes = segmenter.labels.len(),
            binary = segmenter.is_binary(),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(segmenter)
    }

    /// Builds the segmenter a package describes from already loaded weights. The network has
    /// `num_classes` outputs (or as many as labels); exactly 1 makes a binary model, whose
    /// labels become `[background, <the one label>]` unless two are given.
    pub fn from_package(package: &Package, weights: &Weights) -> Result<Self, ModelError> {
        if package.config.task != Task::Segmentation {
            return Err(ModelError::Unsupported(format!(
                "config.json `task` is {:?}; a segmenter needs \"segmentation\"",
                package.config.task
            )));
        }
        let out_channels = package.num_classes();
        if out_channels == 0 || out_channels > MAX_CLASSES {
            return Err(PackageError::InvalidField {
                field: "num_classes",
                message: format!("a segmentation model has 1 to {MAX_CLASSES} classes"),
                value: out_channels.to_string(),
            }
            .into());
        }
        let config = SegmentationConfig::from_package(package)?;
        let network = registry::build(&SegmentationArgs {
            name: &package.config.architecture,
            weights,
            out_channels,
        })?;
        let labels = match package.labels.as_slice() {
            [foreground] if out_channels == 1 => vec!["background".to_string(), foreground.clone()],
            labels => labels.to_vec(),
        };
        Ok(Segmenter {
            network,
            labels,
            config,
            architecture: package.config.architecture.clone(),
        })
    }

    /// Class id -> name; a binary model has 2: `[background, <foreground>]`.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Whether the network has a single output channel (sigmoid + threshold).
    pub fn is_binary(&self) -> bool {
        self.network.out_channels() == 1
    }

    /// The configured architecture name.
    pub(crate) fn architecture(&self) -> &str {
        &self.architecture
    }

    /// `(width, height)` of the largest input the network runs on at once for a square photo:
    /// one tile, or the configured resize. A warm-up at this size builds every layer's lazily
    /// transformed weights (Winograd's, about 0.5 s for a ResNet-50 encoder at 512x512) before
    /// the first request instead of during it.
    pub(crate) fn warm_up_size(&self) -> (u32, u32) {
        let tile = self.config.tile_size as u32;
        let (w, h) = self.config.working_size(tile, tile);
        (w.min(tile), h.min(tile))
    }

    /// The binary threshold from the package (`segmentation.threshold`, default 0.5).
    pub fn default_threshold(&self) -> f32 {
        self.config.threshold
    }

    /// `(n, 3, h, w)` normalised NCHW -> `(n, out_channels, h, w)` logits at the input
    /// resolution, what PyTorch's `model(x)["out"]` (torchvision) / `model(x)` (smp) gives.
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        let (_, _, h, w) = batch.dims4()?;
        let multiple = self.network.size_multiple();
        if h % multiple != 0 || w % multiple != 0 {
            return Err(ModelError::Unsupported(format!(
                "`{}` needs input height and width divisible by {multiple}; got {h}x{w}",
                self.architecture
            )));
        }
        let logits = self.network.forward(&to_nhwc(batch)?)?;
        Ok(logits.permute((0, 3, 1, 2))?.contiguous()?)
    }

    /// The whole pipeline for one image: resize (`segmentation.resize_to` or
    /// `resize_shorter_side`) or tile,
    /// normalise, run, upsample the logits bilinearly to the ORIGINAL size, then argmax (or
    /// sigmoid > threshold for a binary model: 0/1). `threshold` overrides the package's.
    pub fn segment(
        &self,
        image: &RgbImage,
        threshold: Option<f32>,
    ) -> Result<LabelMap, ModelError> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(PreprocessError::NoPixels { width, height }.into());
        }
        let working = self.working_image(image)?;
        let labeler = self.labeler(threshold)?;
        let (w, h) = (width as usize, height as usize);
        let mut classes = vec![0u8; w * h];
        if working.dimensions() == image.dimensions() {
            let channels = self.network.out_channels();
            run_tiled(
                self.network.as_ref(),
                &mut WholeImage(&working),
                &self.tile_settings(),
                &mut |y, row| {
                    for (x, px) in row.chunks_exact(channels).enumerate() {
                        classes[y * w + x] = labeler.label(px);
                    }
                    Ok(())
                },
            )?;
        } else {
            let logits = self.working_logits(&working)?;
            let working_size = (working.width() as usize, working.height() as usize);
            upsample_labels(&logits, working_size, (w, h), &labeler, &mut |y, row| {
                classes[y * w..][..w].copy_from_slice(row);
                Ok(())
            })?;
        }
        Ok(LabelMap {
            width,
            height,
            classes,
        })
    }

    /// Segments an image read row by row and writes its label map row by row: memory holds
    /// one tile row of pixels and logits (full resolution), or the working image and its
    /// logits (`resize_shorter_side`), never the whole image or map.
    pub(crate) fn segment_streamed(
        &self,
        image: &StreamedImage,
        threshold: Option<f32>,
    ) -> Result<(), ModelError> {
        let labeler = self.labeler(threshold)?;
        let (width, height) = image.dimensions();
        let (w, h) = (width as usize, height as usize);
        let mut rows = image.take_rows()?;
        let mut sink = image.sink()?;
        let working = self.config.working_size(width, height);
        if working == (width, height) {
            let channels = self.network.out_channels();
            let mut labels = vec![0u8; w];
            let mut window = RowWindow::new(&mut *rows, self.config.tile_size + TILE_ALIGN);
            return run_tiled(
                self.network.as_ref(),
                &mut window,
                &self.tile_settings(),
                &mut |_, row| {
                    for (label, px) in labels.iter_mut().zip(row.chunks_exact(channels)) {
                        *label = labeler.label(px);
                    }
                    sink.write_row(&labels).map_err(ModelError::from)
                },
            );
        }
        let working = downscale(&mut *rows, working)?;
        let logits = self.working_logits(&working)?;
        let working_size = (working.width() as usize, working.height() as usize);
        upsample_labels(&logits, working_size, (w, h), &labeler, &mut |_, row| {
            sink.write_row(row).map_err(ModelError::from)
        })
    }

    /// How logits become classes: argmax, or a binary model's threshold (`threshold`
    /// overrides the package's).
    fn labeler(&self, threshold: Option<f32>) -> Result<Labeler, ModelError> {
        let threshold = match threshold {
            Some(t) => config::check_threshold("threshold", t)?,
            None => self.config.threshold,
        };
        Ok(Labeler {
            channels: self.network.out_channels(),
            // sigmoid(x) > t  <=>  x > ln(t / (1 - t)): no exp per pixel.
            logit_threshold: (threshold / (1.0 - threshold)).ln(),
        })
    }

    fn tile_settings(&self) -> TileSettings {
        TileSettings {
            tile_size: self.config.tile_size,
            tile_overlap: self.config.tile_overlap,
            mean: self.config.mean,
            std: self.config.std,
            padding: self.config.padding,
        }
    }

    /// The logits of a (small) working image, all in memory.
    fn working_logits(&self, working: &RgbImage) -> Result<Vec<f32>, ModelError> {
        let (ww, wh) = (working.width() as usize, working.height() as usize);
        let channels = self.network.out_channels();
        let mut logits = vec![0.0f32; ww * wh * channels];
        run_tiled(
            self.network.as_ref(),
            &mut WholeImage(working),
            &self.tile_settings(),
            &mut |y, row| {
                logits[y * ww * channels..][..ww * channels].copy_from_slice(row);
                Ok(())
            },
        )?;
        Ok(logits)
    }

    /// The image the network sees: the original, or resized (bilinear, antialiased like PIL)
    /// to `resize_to` or so its shorter side is `resize_shorter_side`.
    fn working_image<'a>(&self, image: &'a RgbImage) -> Result<Cow<'a, RgbImage>, ModelError> {
        let (new_w, new_h) = self.config.working_size(image.width(), image.height());
        if (new_w, new_h) == image.dimensions() {
            return Ok(Cow::Borrowed(image));
        }
        let mut dst = fr::images::Image::new(new_w, new_h, fr::PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        fr::Resizer::new()
            .resize(image, &mut dst, &options)
            .map_err(PreprocessError::from)?;
        let resized = RgbImage::from_raw(new_w, new_h, dst.into_vec())
            .ok_or_else(|| ModelError::Unsupported("resized image buffer size".into()))?;
        Ok(Cow::Owned(resized))
    }
}

/// Turns one pixel's logits into its class.
pub(crate) struct Labeler {
    channels: usize,
    logit_threshold: f32,
}

impl Labeler {
    pub(crate) fn label(&self, px: &[f32]) -> u8 {
        if self.channels == 1 {
            u8::from(px[0] > self.logit_threshold)
        } else {
            argmax(px) as u8
        }
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`), NaN never wins.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.3, 0.3, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.0]), 1);
        assert_eq!(argmax(&[2.0]), 0);
    }

    /// The warm-up runs at the largest size a request will: a whole tile at the image's own
    /// resolution, the configured resize (capped at a tile) otherwise.
    #[test]
    fn warm_up_runs_at_the_largest_input_the_network_sees() {
        let cases = [
            (serde_json::json!({}), (512, 512)),
            (serde_json::json!({"tile_size": 256}), (256, 256)),
            (serde_json::json!({"resize_to": [300, 200]}), (200, 300)),
            (serde_json::json!({"resize_shorter_side": 320}), (320, 320)),
            (
                serde_json::json!({"resize_to": [1024, 384], "tile_size": 512}),
                (384, 512),
            ),
        ];
        for (section, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let config = serde_json::json!({
                "architecture": "lraspp_mobilenet_v3_large",
                "task": "segmentation",
                "label_names": ["background", "cat"],
                "segmentation": section,
            });
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
            let package = Package::open(dir.path()).unwrap();
            let segmenter = Segmenter::from_package(&package, &Weights::synthetic()).unwrap();
            assert_eq!(segmenter.warm_up_size(), want, "{section}");
        }
    }
}
