//! One loaded model whatever its task: [`Model`] reads the package's `task`, loads the matching
//! network, and gives serving and `wick predict` a single two-step interface: [`Model::prepare`]
//! (per image, on any thread) then [`Model::predict`] (a batch, on an inference thread).

use std::path::Path;
use std::sync::Arc;

use image::RgbImage;

use super::classify::classifier::Classifier;
use super::detect::detector::{Detector, Letterboxed};
use super::error::ModelError;
use super::output::{DetectOptions, Output, ScoreFunction};
use super::package::{Package, Task};
use super::precision::{self, Precision};
use super::preprocess::{preprocess, to_batch};
use super::segment::segmenter::Segmenter;
use super::segment::streamed::StreamedImage;

/// An image made ready for [`Model::predict`].
#[derive(Debug, Clone)]
pub enum Input {
    /// Classification: the evaluation transform already applied (CHW, normalised).
    Tensor(Vec<f32>),
    /// Segmentation and detection: the decoded image itself; the model resizes or tiles it
    /// and maps its answer back to this image's pixels. Shared so a caller can keep it for an
    /// overlay.
    Image(Arc<RgbImage>),
    /// Detection, when the caller keeps only the image's size: the image letterboxed to the
    /// network's input at 8 bits, so a queued request holds 0.7 MB instead of a 1080p photo's
    /// 6.2 MB ([`Model::prepare_sized`]).
    Letterboxed(Arc<Letterboxed>),
    /// Segmentation of an image too large to decode whole: read row by row, its label map
    /// written row by row to the image's sink (the answer is [`Output::Streamed`]).
    Streamed(Arc<StreamedImage>),
}

/// Per-image settings of a request; each task reads the ones that concern it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceOptions {
    /// Classification: classes returned per image.
    pub top_k: usize,
    /// Classification: how logits become scores (`function_to_apply`).
    pub scores: ScoreFunction,
    /// Segmentation: the binary model's threshold (model default when `None`).
    pub(crate) mask_threshold: Option<f32>,
    /// Detection: confidence, IoU, box count and class filter.
    pub detect: DetectOptions,
}

impl Default for InferenceOptions {
    fn default() -> Self {
        InferenceOptions {
            top_k: 5,
            scores: ScoreFunction::Default,
            mask_threshold: None,
            detect: DetectOptions::default(),
        }
    }
}

/// A loaded model of any task.
pub enum Model {
    /// Image classification.
    Classifier(Classifier),
    /// Semantic segmentation.
    Segmenter(Segmenter),
    /// Object detection.
    Detector(Detector),
}

impl Model {
    /// Loads the package in `dir`, choosing the network by its `config.json` `task`, its
    /// dense layers in `precision` if given, else in `config.json`'s `precision` (default f32).
    pub(crate) fn load(dir: &Path, precision: Option<Precision>) -> Result<Self, ModelError> {
        let config = Package::open(dir)?.config;
        let requested = precision.or(config.precision).unwrap_or_default();
        let effective = precision::effective(requested);
        if effective != Precision::F32 {
            tracing::info!(precision = %effective, "dense convolutions multiply in bf16, sum in f32");
        }
        precision::while_loading(effective, || match config.task {
            Task::Classification => Ok(Model::Classifier(Classifier::load(dir)?)),
            Task::Segmentation => Ok(Model::Segmenter(Segmenter::load(dir)?)),
            Task::Detection => Ok(Model::Detector(Detector::load(dir)?)),
        })
    }

    /// What the model does.
    pub(crate) fn task(&self) -> Task {
        match self {
            Model::Classifier(_) => Task::Classification,
            Model::Segmenter(_) => Task::Segmentation,
            Model::Detector(_) => Task::Detection,
        }
    }

    /// Class names, by class index.
    pub(crate) fn labels(&self) -> &[String] {
        match self {
            Model::Classifier(c) => c.labels(),
            Model::Segmenter(s) => s.labels(),
            Model::Detector(d) => d.labels(),
        }
    }

    /// A segmentation model with one foreground class, thresholded rather than argmaxed.
    pub(crate) fn is_binary(&self) -> bool {
        match self {
            Model::Classifier(_) => false,
            Model::Segmenter(s) => s.is_binary(),
            Model::Detector(_) => false,
        }
    }

    /// Makes one decoded image ready for [`Model::predict`]. Classification applies its
    /// transform here, so the costly resize runs outside the inference threads.
    pub(crate) fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        match self {
            Model::Classifier(c) => Ok(Input::Tensor(preprocess(&image, c.preprocess_config())?)),
            Model::Segmenter(_) | Model::Detector(_) => Ok(Input::Image(Arc::new(image))),
        }
    }

    /// As [`Model::prepare`], for a caller that needs the image's size back but not its pixels
    /// (no picture to draw on): a detector letterboxes the image here and drops it.
    pub(crate) fn prepare_sized(&self, image: RgbImage) -> Result<Input, ModelError> {
        match self {
            Model::Detector(d) => Ok(Input::Letterboxed(Arc::new(d.letterbox(&image)))),
            Model::Classifier(_) | Model::Segmenter(_) => self.prepare(image),
        }
    }

    /// Runs a batch: one [`Output`] per `(input, options)` pair, in order.
    pub(crate) fn predict(
        &self,
        batch: &[(&Input, &InferenceOptions)],
    ) -> Result<Vec<Output>, ModelError> {
        match self {
            Model::Classifier(c) => classify(c, batch),
            // One image at a time: each is tiled at its own size, and a tile already keeps
            // every core busy.
            Model::Segmenter(s) => batch
                .iter()
                .map(|(input, options)| match input {
                    Input::Streamed(image) => {
                        s.segment_streamed(image, options.mask_threshold)?;
                        let (width, height) = image.dimensions();
                        Ok(Output::Streamed { width, height })
                    }
                    _ => Ok(Output::Segmentation(
                        s.segment(image_of(input)?, options.mask_threshold)?,
                    )),
                })
                .collect(),
            Model::Detector(d) => batch
                .iter()
                .map(|(input, options)| {
                    let boxes = match input {
                        Input::Letterboxed(letterboxed) => {
                            d.detect_letterboxed(letterboxed, &options.detect)?
                        }
                        _ => d.detect(image_of(input)?, &options.detect)?,
                    };
                    Ok(Output::Detections(boxes))
                })
                .collect(),
        }
    }

    /// One inference on a blank image through the real path, so the first request does not
    /// pay for lazy allocations and weight transforms. Classifiers and detectors resize any
    /// image to their one input size; a segmenter warms up at its largest.
    pub(crate) fn warm_up(&self) -> Result<(), ModelError> {
        let (width, height) = match self {
            Model::Segmenter(s) => s.warm_up_size(),
            Model::Classifier(_) | Model::Detector(_) => (64, 48),
        };
        let image = RgbImage::new(width, height);
        let input = self.prepare(image)?;
        self.predict(&[(&input, &InferenceOptions::default())])?;
        Ok(())
    }
}

fn image_of(input: &Input) -> Result<&RgbImage, ModelError> {
    match input {
        Input::Image(image) => Ok(image),
        Input::Tensor(_) => Err(ModelError::Unsupported(
            "segmentation and detection take images, not prepared tensors".into(),
        )),
        Input::Letterboxed(_) => Err(ModelError::Unsupported(
            "only detection takes letterboxed images".into(),
        )),
        Input::Streamed(_) => Err(ModelError::Unsupported(
            "only segmentation reads images row by row".into(),
        )),
    }
}

/// The classifier's batch: stacked tensors through the network once, then each image's
/// logits scored and ranked with its own options.
fn classify(
    classifier: &Classifier,
    batch: &[(&Input, &InferenceOptions)],
) -> Result<Vec<Output>, ModelError> {
    let tensors = batch
        .iter()
        .map(|(input, _)| match input {
            Input::Tensor(t) => Ok(t.as_slice()),
            Input::Image(_) | Input::Letterboxed(_) | Input::Streamed(_) => Err(
                ModelError::Unsupported("a classifier needs prepared tensors, not images".into()),
            ),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let requests: Vec<(usize, ScoreFunction)> = batch
        .iter()
        .map(|(_, options)| (options.top_k, options.scores))
        .collect();
    let ranked = classifier.classify(
        &to_batch(&tensors, classifier.preprocess_config())?,
        &requests,
    )?;
    Ok(ranked.into_iter().map(Output::Classes).collect())
}
