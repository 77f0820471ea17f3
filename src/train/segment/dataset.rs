//! The segmentation dataset: images and their annotation PNGs paired by stem across two
//! channels (SageMaker's built-in semantic segmentation layout: `train` + `train_annotation`,
//! optionally `validation` + `validation_annotation`), every annotation checked against its
//! image and the classes, then the split.
//!
//! Class values: an annotation value is a class index; `ignore_index` (255 by default, VOC's
//! "void") is left out of loss and metrics. The building-mask convention stores a binary mask
//! as 0/255, where 255 collides with the ignore value. The rule: in a 2-class job whose
//! annotations contain no 1 at all, 255 is the foreground (class 1); as soon as one annotation
//! contains a 1, 255 is the ignore value everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::annotation::{self, AnnotationError};
use crate::train::images::{has_extension, walk, ValidationSource, IMAGE_EXTENSIONS};
use crate::train::rng::{Rng, Stream};

/// What the segmentation channels can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A channel directory is missing or unreadable.
    #[error("channel `{channel}`: cannot read `{path}`: {cause}")]
    Io {
        /// The channel.
        channel: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A required channel does not exist.
    #[error("channel `{channel}`: `{dir}` does not exist; segmentation needs the channels `train` and `train_annotation`")]
    Missing {
        /// The channel.
        channel: &'static str,
        /// Its directory.
        dir: PathBuf,
    },
    /// No image in the channel.
    #[error("channel `{channel}` (`{dir}`) holds no images (.jpg/.png/...)")]
    Empty {
        /// The channel.
        channel: &'static str,
        /// Its directory.
        dir: PathBuf,
    },
    /// An image has no annotation with the same stem.
    #[error("image `{image}` has no annotation: expected `{expected}` in channel `{channel}`")]
    NoAnnotation {
        /// The image.
        image: PathBuf,
        /// The annotation path looked for.
        expected: PathBuf,
        /// The annotation channel.
        channel: &'static str,
    },
    /// An annotation has no image with the same stem.
    #[error("annotation `{annotation}` has no image with the same name in channel `{channel}`")]
    NoImage {
        /// The annotation.
        annotation: PathBuf,
        /// The image channel.
        channel: &'static str,
    },
    /// Two images share a stem.
    #[error("images `{first}` and `{second}` have the same name; each needs its own annotation")]
    DuplicateStem {
        /// One image.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The image cannot be read.
    #[error("image `{path}`: {cause}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },
    /// The annotation's size differs from the image's.
    #[error("annotation `{annotation}` is {annotation_w}x{annotation_h} but its image `{image}` is {image_w}x{image_h}; they must be the same size")]
    SizeMismatch {
        /// The annotation.
        annotation: PathBuf,
        /// Its width.
        annotation_w: u32,
        /// Its height.
        annotation_h: u32,
        /// The image.
        image: PathBuf,
        /// Its width.
        image_w: u32,
        /// Its height.
        image_h: u32,
    },
    /// A bad annotation file.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// A value that is no class and not the ignore value.
    #[error("annotation `{path}` has the value {value}, but the job has {classes} classes {labels:?} (values 0 to {max}){ignore}")]
    OutOfRange {
        /// The annotation.
        path: PathBuf,
        /// The value.
        value: u8,
        /// Number of classes.
        classes: usize,
        /// Their names.
        labels: Vec<String>,
        /// `classes - 1`.
        max: usize,
        /// How the ignore value is set.
        ignore: String,
    },
    /// No `label_map`/`classes` and nothing to default to.
    #[error("the annotations hold the classes 0 to {max_value}; set the hyperparameter `label_map` (e.g. {{\"0\": \"background\", \"1\": \"cat\"}}) or `classes` (e.g. `background,cat`) to name them{base}")]
    NoLabels {
        /// Largest class value found.
        max_value: u8,
        /// A note on the base package's labels.
        base: String,
    },
}

/// One image and its annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The image file.
    pub(crate) image: PathBuf,
    /// The annotation PNG.
    pub(crate) annotation: PathBuf,
}

/// How annotation values become training targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueMap {
    /// Number of classes.
    pub(crate) classes: usize,
    /// The value excluded from loss and metrics.
    pub(crate) ignore: Option<u8>,
    /// The 0/255 rule is in force: 255 means class 1.
    pub foreground_255: bool,
}

/// Target value of an ignored pixel.
pub const IGNORED: u8 = u8::MAX;

impl ValueMap {
    /// An annotation value as a class index, or [`IGNORED`].
    pub fn target(&self, value: u8) -> u8 {
        if self.foreground_255 && value == 255 {
            1
        } else if Some(value) == self.ignore || usize::from(value) >= self.classes {
            IGNORED
        } else {
            value
        }
    }
}

/// The paired, checked samples with their classes.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Class names in index order.
    pub(crate) labels: Vec<String>,
    /// Training pairs.
    pub(crate) train: Vec<Sample>,
    /// Validation pairs.
    pub(crate) val: Vec<Sample>,
    /// Where `val` came from.
    pub(crate) validation: ValidationSource,
    /// Value → target.
    pub values: ValueMap,
}

/// Where the data is and how to name and split it.
pub struct DatasetSpec<'a> {
    /// `train` and `train_annotation`.
    pub train: (&'a Path, &'a Path),
    /// `validation` and `validation_annotation`, when the job has them.
    pub validation: Option<(&'a Path, &'a Path)>,
    /// Class names from `label_map` / `classes`.
    pub labels: Option<&'a [String]>,
    /// The base package's labels, used when the annotations' values fit them exactly.
    pub base_labels: Option<&'a [String]>,
    /// `ignore_index`.
    pub ignore: Option<u8>,
    /// Held-out share without a validation channel.
    pub validation_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
}

impl Dataset {
    /// Pairs, checks and splits.
    pub fn load(spec: &DatasetSpec<'_>) -> Result<Self, DatasetError> {
        let mut train = pair(("train", spec.train.0), ("train_annotation", spec.train.1))?;
        let mut val = match spec.validation {
            Some((images, annotations)) => pair(
                ("validation", images),
                ("validation_annotation", annotations),
            )?,
            None => Vec::new(),
        };
        let all: Vec<&Sample> = train.iter().chain(&val).collect();
        let seen = all
            .par_iter()
            .map(|s| check_pair(s))
            .collect::<Result<Vec<[bool; 256]>, _>>()?;
        let mut present = [false; 256];
        for s in &seen {
            for (p, v) in present.iter_mut().zip(s) {
                *p |= v;
            }
        }
        let labels = class_names(spec, &present)?;
        let foreground_255 =
            labels.len() == 2 && spec.ignore == Some(255) && present[255] && !present[1];
        let values = ValueMap {
            classes: labels.len(),
            ignore: spec.ignore,
            foreground_255,
        };
        for (sample, seen) in all.iter().zip(&seen) {
            let bad = (0..256).find(|&v| {
                seen[v]
                    && v >= labels.len()
                    && Some(v as u8) != spec.ignore
                    && !(foreground_255 && v == 255)
            });
            if let Some(value) = bad {
                return Err(DatasetError::OutOfRange {
                    path: sample.annotation.clone(),
                    value: value as u8,
                    classes: labels.len(),
                    labels: labels.clone(),
                    max: labels.len() - 1,
                    ignore: match spec.ignore {
                        Some(i) => format!("; {i} is the ignore value (`ignore_index`)"),
                        None => "; `ignore_index` is off".into(),
                    },
                });
            }
        }
        let validation = split(spec, &mut train, &mut val);
        Ok(Dataset {
            labels,
            train,
            val,
            validation,
            values,
        })
    }
}

/// The class names: `label_map`/`classes`, else the base package's when they match the
/// largest class value in the annotations (`present`: which values occur), else an error
/// asking for them.
fn class_names(spec: &DatasetSpec<'_>, present: &[bool; 256]) -> Result<Vec<String>, DatasetError> {
    let non_ignored = |v: usize| present[v] && Some(v as u8) != spec.ignore;
    let max_value = (0..256).rev().find(|&v| non_ignored(v)).unwrap_or(0);
    match (spec.labels, spec.base_labels) {
        (Some(labels), _) => Ok(labels.to_vec()),
        (None, Some(base)) if base.len() == max_value + 1 && base.len() >= 2 => Ok(base.to_vec()),
        (None, base) => Err(DatasetError::NoLabels {
            max_value: max_value as u8,
            base: match base {
                Some(b) => format!(" (the base package's {} labels do not match)", b.len()),
                None => String::new(),
            },
        }),
    }
}

/// Where validation comes from: the validation channels, else `validation_fraction` of the
/// training pairs moved to `val` by a seeded shuffle (in their original order), else none.
fn split(
    spec: &DatasetSpec<'_>,
    train: &mut Vec<Sample>,
    val: &mut Vec<Sample>,
) -> ValidationSource {
    if spec.validation.is_some() {
        ValidationSource::Channel
    } else if spec.validation_fraction > 0.0 && train.len() >= 2 {
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::for_stream(spec.seed, Stream::Split, &[]).shuffle(&mut order);
        let held = ((train.len() as f64 * spec.validation_fraction).round() as usize)
            .clamp(1, train.len() - 1);
        let mut held_out: Vec<usize> = order[..held].to_vec();
        held_out.sort_unstable();
        for &i in held_out.iter().rev() {
            val.push(train.remove(i));
        }
        val.reverse();
        ValidationSource::Split
    } else {
        ValidationSource::None
    }
}

/// Image dimensions from the header, and the annotation's values; sizes must agree.
fn check_pair(sample: &Sample) -> Result<[bool; 256], DatasetError> {
    let image_error = |cause: String| DatasetError::Image {
        path: sample.image.clone(),
        cause,
    };
    let (image_w, image_h) = image::ImageReader::open(&sample.image)
        .map_err(|e| image_error(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| image_error(e.to_string()))?
        .into_dimensions()
        .map_err(|e| image_error(e.to_string()))?;
    let a = annotation::read(&sample.annotation)?;
    if (a.width, a.height) != (image_w, image_h) {
        return Err(DatasetError::SizeMismatch {
            annotation: sample.annotation.clone(),
            annotation_w: a.width,
            annotation_h: a.height,
            image: sample.image.clone(),
            image_w,
            image_h,
        });
    }
    Ok(a.present())
}

/// Files of `dir` (recursively) with `extensions`, keyed by their path relative to `dir`
/// without the extension.
fn by_stem(
    channel: &'static str,
    dir: &Path,
    extensions: &[&str],
) -> Result<BTreeMap<PathBuf, PathBuf>, DatasetError> {
    if !dir.is_dir() {
        return Err(DatasetError::Missing {
            channel,
            dir: dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    walk(dir, &mut files).map_err(|(path, cause)| DatasetError::Io {
        channel,
        path,
        cause,
    })?;
    let mut out: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for file in files.into_iter().filter(|f| has_extension(f, extensions)) {
        let stem = file.strip_prefix(dir).unwrap_or(&file).with_extension("");
        if let Some(first) = out.insert(stem, file.clone()) {
            return Err(DatasetError::DuplicateStem {
                first,
                second: file,
            });
        }
    }
    Ok(out)
}

/// Pairs the images of one channel with the annotations of the other.
fn pair(
    (image_channel, images): (&'static str, &Path),
    (annotation_channel, annotations): (&'static str, &Path),
) -> Result<Vec<Sample>, DatasetError> {
    let image_files = by_stem(image_channel, images, IMAGE_EXTENSIONS)?;
    if image_files.is_empty() {
        return Err(DatasetError::Empty {
            channel: image_channel,
            dir: images.to_path_buf(),
        });
    }
    let mut annotation_files = by_stem(annotation_channel, annotations, &["png"])?;
    let mut samples = Vec::with_capacity(image_files.len());
    for (stem, image) in image_files {
        match annotation_files.remove(&stem) {
            Some(annotation) => samples.push(Sample { image, annotation }),
            None => {
                return Err(DatasetError::NoAnnotation {
                    image,
                    expected: annotations.join(stem).with_extension("png"),
                    channel: annotation_channel,
                })
            }
        }
    }
    if let Some(annotation) = annotation_files.into_values().next() {
        return Err(DatasetError::NoImage {
            annotation,
            channel: image_channel,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_255_rule_and_the_ignore_value() {
        let binary = ValueMap {
            classes: 2,
            ignore: Some(255),
            foreground_255: true,
        };
        assert_eq!([0, 255].map(|v| binary.target(v)), [0, 1]);
        let voc = ValueMap {
            classes: 21,
            ignore: Some(255),
            foreground_255: false,
        };
        assert_eq!([0, 20, 255].map(|v| voc.target(v)), [0, 20, IGNORED]);
    }
}
