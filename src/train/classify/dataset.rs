//! Labelled images from a channel directory: one sub-folder per class (images may sit in
//! nested folders below it), or a manifest at the top of the channel (CSV `path,label` lines,
//! or JSON lines `{"path": ..., "label": ...}`). Then the split: the `validation` channel when
//! there is one, otherwise a seeded stratified split of the training images.
//!
//! Only file names are read here; an image that cannot be decoded is found (and counted) by
//! the feature pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::train::images::{has_extension, visible_entries, walk, ValidationSource};
use crate::train::rng::{Rng, Stream};
/// File extensions treated as manifests.
const MANIFEST_EXTENSIONS: &[&str] = &["csv", "jsonl", "manifest"];

/// What a channel can get wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DatasetError {
    /// The channel directory or a file in it cannot be read.
    #[error("channel `{channel}`: cannot read `{path}`: {cause}")]
    Io {
        /// The channel name.
        channel: String,
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The channel directory does not exist.
    #[error("channel `{channel}`: `{dir}` does not exist")]
    Missing {
        /// The channel name.
        channel: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// No image at all.
    #[error(
        "channel `{channel}` (`{dir}`) holds no images; expected one sub-folder per class with \
         .jpg/.png/... files inside, or a manifest (.csv with `path,label` lines, or .jsonl)"
    )]
    Empty {
        /// The channel name.
        channel: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// A classifier needs two classes at least.
    #[error("channel `training` has a single class ({label:?}); at least 2 classes are needed")]
    OneClass {
        /// The only class found.
        label: String,
    },
    /// A validation class has no training images.
    #[error("channel `validation` has class {label:?}, which the training channel lacks (training classes: {known:?})")]
    UnknownClass {
        /// The class.
        label: String,
        /// The training classes.
        known: Vec<String>,
    },
    /// A manifest line cannot be used.
    #[error("manifest `{path}` line {line}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Two manifests at the top of a channel.
    #[error("channel `{channel}` has several manifests ({found:?}); keep one")]
    AmbiguousManifest {
        /// The channel name.
        channel: String,
        /// The files.
        found: Vec<PathBuf>,
    },
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The image file.
    pub(crate) path: PathBuf,
    /// Index into [`Dataset::labels`].
    pub(crate) class: usize,
}

/// The training and validation images with their classes.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// Class names, sorted; the head's output order.
    pub(crate) labels: Vec<String>,
    /// Training images, sorted by class then path.
    pub(crate) train: Vec<Sample>,
    /// Validation images, sorted by class then path.
    pub(crate) val: Vec<Sample>,
    /// Where `val` came from.
    pub(crate) validation: ValidationSource,
}

/// How to build the dataset.
pub(crate) struct DatasetSpec<'a> {
    /// The `training` channel directory.
    pub(crate) training: &'a Path,
    /// The `validation` channel directory, if the job has one.
    pub(crate) validation: Option<&'a Path>,
    /// Share of each class held out when there is no validation channel.
    pub(crate) validation_fraction: f64,
    /// Seed of the split.
    pub(crate) seed: u64,
}

impl Dataset {
    /// Reads the channels and splits the images.
    pub(crate) fn load(spec: &DatasetSpec<'_>) -> Result<Self, DatasetError> {
        let training = scan("training", spec.training)?;
        let labels: Vec<String> = training
            .iter()
            .map(|(_, l)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if labels.len() < 2 {
            return Err(DatasetError::OneClass {
                label: labels.into_iter().next().unwrap_or_default(),
            });
        }
        let index: BTreeMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let to_samples = |pairs: Vec<(PathBuf, String)>| -> Result<Vec<Sample>, DatasetError> {
            pairs
                .into_iter()
                .map(|(path, label)| match index.get(label.as_str()) {
                    Some(&class) => Ok(Sample { path, class }),
                    None => Err(DatasetError::UnknownClass {
                        label,
                        known: labels.clone(),
                    }),
                })
                .collect()
        };
        let all = to_samples(training)?;
        let (train, val, validation) = match spec.validation {
            Some(dir) => (
                all,
                to_samples(scan("validation", dir)?)?,
                ValidationSource::Channel,
            ),
            None if spec.validation_fraction > 0.0 => {
                let (train, val) = split(all, labels.len(), spec);
                (train, val, ValidationSource::Split)
            }
            None => (all, Vec::new(), ValidationSource::None),
        };
        Ok(Dataset {
            labels,
            train,
            val,
            validation,
        })
    }
}

/// Stratified split: in each class, a seeded shuffle, then `round(n * fraction)` images held
/// out, at least one when the class has two or more and never the class's last image.
fn split(all: Vec<Sample>, classes: usize, spec: &DatasetSpec<'_>) -> (Vec<Sample>, Vec<Sample>) {
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); classes];
    for s in all {
        by_class[s.class].push(s);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (class, mut samples) in by_class.into_iter().enumerate() {
        let n = samples.len();
        let wanted = (n as f64 * spec.validation_fraction).round() as usize;
        let held_out = wanted.max(usize::from(n >= 2)).min(n.saturating_sub(1));
        Rng::for_stream(spec.seed, Stream::Split, &[class as u64]).shuffle(&mut samples);
        let kept = samples.split_off(held_out);
        val.extend(samples);
        train.extend(kept);
    }
    let order = |a: &Sample, b: &Sample| a.class.cmp(&b.class).then_with(|| a.path.cmp(&b.path));
    train.sort_by(order);
    val.sort_by(order);
    (train, val)
}

/// `(image path, label)` pairs of a channel, sorted by label then path.
fn scan(channel: &str, dir: &Path) -> Result<Vec<(PathBuf, String)>, DatasetError> {
    let io = |path: &Path, cause| DatasetError::Io {
        channel: channel.into(),
        path: path.to_path_buf(),
        cause,
    };
    if !dir.exists() {
        return Err(DatasetError::Missing {
            channel: channel.into(),
            dir: dir.to_path_buf(),
        });
    }
    let mut class_dirs = Vec::new();
    let mut manifests = Vec::new();
    for entry in visible_entries(dir).map_err(|e| io(dir, e))? {
        if entry.is_dir() {
            class_dirs.push(entry);
        } else if has_extension(&entry, MANIFEST_EXTENSIONS) {
            manifests.push(entry);
        }
    }
    let mut pairs = match manifests.as_slice() {
        [] => {
            let mut pairs = Vec::new();
            for class_dir in class_dirs {
                let label = class_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut images = Vec::new();
                walk(&class_dir, &mut images).map_err(|(p, e)| io(&p, e))?;
                pairs.extend(images.into_iter().map(|p| (p, label.clone())));
            }
            pairs
        }
        [manifest] => read_manifest(manifest).map_err(|e| match e {
            ManifestError::Io(cause) => io(manifest, cause),
            ManifestError::Line(line, message) => DatasetError::Manifest {
                path: manifest.clone(),
                line,
                message,
            },
        })?,
        _ => {
            return Err(DatasetError::AmbiguousManifest {
                channel: channel.into(),
                found: manifests,
            })
        }
    };
    if pairs.is_empty() {
        return Err(DatasetError::Empty {
            channel: channel.into(),
            dir: dir.to_path_buf(),
        });
    }
    pairs.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(pairs)
}

enum ManifestError {
    Io(std::io::Error),
    Line(usize, String),
}

/// A CSV (`path,label`, optional header) or JSON-lines (`{"path", "label"}`) manifest. Relative
/// paths are relative to the manifest's folder. Missing files are not an error here: they
/// count as unreadable images in the feature pass.
fn read_manifest(path: &Path) -> Result<Vec<(PathBuf, String)>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(ManifestError::Io)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, label) = if line.starts_with('{') {
            json_line(line).map_err(|m| ManifestError::Line(i + 1, m))?
        } else {
            // The label is after the last comma, so a path may contain commas.
            let Some((file, label)) = line.rsplit_once(',') else {
                return Err(ManifestError::Line(
                    i + 1,
                    format!("expected `path,label` (given: {line:?})"),
                ));
            };
            let unquote = |s: &str| s.trim().trim_matches('"').to_string();
            let (file, label) = (unquote(file), unquote(label));
            if pairs.is_empty() && file.eq_ignore_ascii_case("path") {
                continue; // the header
            }
            (file, label)
        };
        if file.is_empty() || label.is_empty() {
            return Err(ManifestError::Line(
                i + 1,
                format!("empty path or label (given: {line:?})"),
            ));
        }
        pairs.push((base.join(file), label));
    }
    Ok(pairs)
}

fn json_line(line: &str) -> Result<(String, String), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let text = |key: &str| match value.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match (text("path"), text("label")) {
        (Some(p), Some(l)) => Ok((p, l)),
        _ => Err(format!(
            "expected an object with string fields `path` and `label` (given: {line})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Result;

    fn touch(path: &Path) -> Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(path, b"not decoded here")?;
        Ok(())
    }

    fn spec(dir: &Path, fraction: f64) -> DatasetSpec<'_> {
        DatasetSpec {
            training: dir,
            validation: None,
            validation_fraction: fraction,
            seed: 3,
        }
    }

    #[test]
    fn class_folders_nested_files_and_a_stratified_split() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for i in 0..10 {
            touch(&dir.path().join(format!("cat/2024/{i}.JPG")))?;
        }
        for i in 0..5 {
            touch(&dir.path().join(format!("dog/{i}.png")))?;
        }
        touch(&dir.path().join("dog/notes.txt"))?;
        touch(&dir.path().join("cat/.hidden.png"))?;
        let data = Dataset::load(&spec(dir.path(), 0.2))?;
        assert_eq!(data.labels, ["cat", "dog"]);
        assert_eq!(data.validation, ValidationSource::Split);
        let per_class = |s: &[Sample], c| s.iter().filter(|x| x.class == c).count();
        assert_eq!((per_class(&data.val, 0), per_class(&data.val, 1)), (2, 1));
        assert_eq!(
            (per_class(&data.train, 0), per_class(&data.train, 1)),
            (8, 4)
        );
        // Same seed, same split; no image in both.
        let again = Dataset::load(&spec(dir.path(), 0.2))?;
        assert_eq!(again.val, data.val);
        assert!(data.val.iter().all(|v| !data.train.contains(v)));
        let none = Dataset::load(&spec(dir.path(), 0.0))?;
        assert_eq!((none.train.len(), none.val.len()), (15, 0));
        Ok(())
    }

    #[test]
    fn manifests_csv_and_json_lines() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("train.csv"),
            "path,label\nimg/a.jpg,cat\n\"img/b, c.jpg\",dog\n/abs/d.jpg,dog\n",
        )?;
        let data = Dataset::load(&spec(dir.path(), 0.0))?;
        assert_eq!(data.labels, ["cat", "dog"]);
        assert_eq!(data.train[0].path, dir.path().join("img/a.jpg"));
        assert_eq!(data.train[1].path, Path::new("/abs/d.jpg"));
        assert_eq!(data.train[2].path, dir.path().join("img/b, c.jpg"));

        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("m.jsonl"),
            "{\"path\": \"a.png\", \"label\": \"x\"}\n{\"path\": \"b.png\", \"label\": 7}\n",
        )?;
        assert_eq!(Dataset::load(&spec(dir.path(), 0.0))?.labels, ["7", "x"]);
        std::fs::write(dir.path().join("m.jsonl"), "{\"file\": \"a.png\"}\n")?;
        let err = Dataset::load(&spec(dir.path(), 0.0))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("line 1") && e.contains("`path` and `label`")));
        Ok(())
    }

    #[test]
    fn empty_single_class_and_unknown_validation_class_are_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let err = Dataset::load(&spec(dir.path(), 0.2))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("holds no images")), "empty");
        touch(&dir.path().join("cat/a.png"))?;
        let err = Dataset::load(&spec(dir.path(), 0.2))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("single class")), "one class");
        touch(&dir.path().join("dog/a.png"))?;
        let val = tempfile::tempdir()?;
        touch(&val.path().join("bird/a.png"))?;
        let err = Dataset::load(&DatasetSpec {
            validation: Some(val.path()),
            ..spec(dir.path(), 0.2)
        })
        .err()
        .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("\"bird\"")), "unknown class");
        let missing = Dataset::load(&spec(&dir.path().join("nope"), 0.2)).err();
        assert!(matches!(missing, Some(DatasetError::Missing { .. })));
        Ok(())
    }
}
