//! Checkpoint loading: safetensors and PyTorch state dicts, without executing pickle code.
//!
//! [`Weights::load`] recognises the format by its magic bytes, memory-maps
//! the file once, and converts every floating-point tensor to a dense f32
//! CPU tensor under its state-dict name (DataParallel `module.` prefixes
//! removed). Integer tensors such as `num_batches_tracked` are dropped.
//! Corrupt input of any kind is an error naming the file, never a panic,
//! and nothing is allocated beyond a small multiple of the file size.

mod error;
mod gather;
mod module_tree;
mod pickle;
mod pth;
mod state_dict;
mod synthetic;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_handmade;
mod ultralytics;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use error::WeightsError;
pub use synthetic::synthesize;
pub(crate) use ultralytics::UltralyticsModel;

/// Named f32 CPU tensors from a checkpoint, or synthesized on demand.
#[derive(Clone)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    synthesize_missing: bool,
    origin: Option<PathBuf>,
    class_names: Option<Vec<String>>,
    ultralytics: Option<UltralyticsModel>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("tensors", &self.tensors.len())
            .field("synthesize_missing", &self.synthesize_missing)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The file formats [`Weights::load`] tells apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    TorchZip,
    TorchLegacy,
}

fn detect(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(Format::TorchZip)
    } else if bytes.first() == Some(&0x80) {
        // PROTO: legacy files are a run of pickles.
        Some(Format::TorchLegacy)
    } else if bytes.get(8) == Some(&b'{') {
        // A u64 header length, then the JSON header.
        Some(Format::Safetensors)
    } else {
        None
    }
}

/// Maps `file` read-only. The only unsafe code in the module.
fn map_file(path: &Path, file: &File) -> Result<memmap2::Mmap, WeightsError> {
    // SAFETY: the map is only read, and only while `Weights::load` runs: every
    // tensor is copied out before it returns and the map is dropped. The
    // remaining hazard, another process truncating or rewriting the file
    // during that window, is the one every mmap-based loader accepts for
    // checkpoints, which are written once and then only read.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(file) };
    map.map_err(|source| WeightsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn load_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|source| {
        WeightsError::Safetensors {
            path: path.to_owned(),
            source,
        }
    })?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        use safetensors::Dtype as D;
        let float = match view.dtype() {
            D::F32 => gather::Float::F32,
            D::F16 => gather::Float::F16,
            D::BF16 => gather::Float::Bf16,
            D::F64 => gather::Float::F64,
            _ => continue,
        };
        let data = gather::convert(view.data(), float, float.size());
        let tensor = Tensor::from_vec(data, view.shape(), &Device::Cpu).map_err(|source| {
            WeightsError::Tensor {
                name: name.to_owned(),
                source,
            }
        })?;
        out.push((name.to_owned(), tensor));
    }
    Ok(out)
}

/// Removes DataParallel / DistributedDataParallel wrapping from a name.
fn normalise_name(name: &str) -> &str {
    let mut name = name;
    while let Some(rest) = name.strip_prefix("module.") {
        name = rest;
    }
    name
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Weights {
    /// Loads a checkpoint: safetensors, or a PyTorch state dict (`.pth`,
    /// `.pt`, `.bin`) in the zip or the legacy format. The format is read
    /// from the file's first bytes; the extension is ignored.
    pub(crate) fn load(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(WeightsError::Empty {
                path: path.to_owned(),
            });
        }
        let map = map_file(path, &file)?;
        Self::from_bytes(path, &map)
    }

    /// Parses checkpoint `bytes`; `path` only names the file in errors.
    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, WeightsError> {
        let mut module = pth::ModuleFacts::default();
        let mut torch = |loaded: pth::Loaded| {
            module = loaded.module;
            loaded.tensors
        };
        let loaded = match detect(bytes) {
            Some(Format::Safetensors) => load_safetensors(path, bytes)?,
            Some(Format::TorchZip) => torch(pth::load_zip(path, bytes)?),
            Some(Format::TorchLegacy) => torch(pth::load_legacy(path, bytes)?),
            None => {
                let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
                return Err(WeightsError::UnknownFormat {
                    path: path.to_owned(),
                    head,
                });
            }
        };
        if loaded.is_empty() {
            return Err(WeightsError::NoTensors {
                path: path.to_owned(),
                detail: "only non-float tensors, if any".into(),
            });
        }
        let mut tensors = BTreeMap::new();
        for (name, tensor) in loaded {
            let name = normalise_name(&name).to_owned();
            if tensors.contains_key(&name) {
                return Err(WeightsError::DuplicateName {
                    path: path.to_owned(),
                    name,
                });
            }
            tensors.insert(name, tensor);
        }
        Ok(Weights {
            tensors,
            synthesize_missing: false,
            origin: Some(path.to_owned()),
            class_names: module.class_names,
            ultralytics: module.ultralytics,
        })
    }

    /// Wraps tensors built in memory. Names are kept as given; [`Weights::get`]
    /// converts to f32, CPU, contiguous on the way out.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Weights {
            tensors: tensors.into_iter().collect(),
            synthesize_missing: false,
            origin: None,
            class_names: None,
            ultralytics: None,
        }
    }

    /// No tensors at all: every [`Weights::get`] returns [`synthesize`]d
    /// values, for parity tests and benchmarks without a checkpoint.
    pub fn synthetic() -> Self {
        Weights {
            tensors: BTreeMap::new(),
            synthesize_missing: true,
            origin: None,
            class_names: None,
            ultralytics: None,
        }
    }

    /// Class names stored in the checkpoint itself (a pickled ultralytics model's `names`).
    pub(crate) fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// The model an ultralytics checkpoint describes (a pickled `DetectionModel` and its kin).
    pub(crate) fn ultralytics(&self) -> Option<&UltralyticsModel> {
        self.ultralytics.as_ref()
    }

    /// Whether a tensor of this name was really loaded (never true for names
    /// that would only be synthesized).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names of the present tensors, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape of a present tensor.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(Tensor::dims)
    }

    /// Number of present tensors.
    pub(crate) fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is present (true for [`Weights::synthetic`]).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether absent names are synthesized rather than reported missing.
    #[cfg(test)]
    pub(crate) fn synthesizes_missing(&self) -> bool {
        self.synthesize_missing
    }

    /// The tensor `name` as an f32, CPU, contiguous tensor of exactly
    /// `shape`. A present tensor of another shape is an error even for
    /// synthetic weights; an absent one is synthesized or an error with a
    /// "did you mean" hint.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        let Some(t) = self.tensors.get(name) else {
            if self.synthesize_missing {
                return Ok(synthesize(name, shape));
            }
            return Err(WeightsError::Missing {
                name: name.to_owned(),
                origin: self.origin.clone(),
                hint: self.hint(name),
            });
        };
        if t.dims() != shape {
            return Err(WeightsError::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        normalised(name, t)
    }

    /// A present name that is probably what `name` meant: the same tensor
    /// under an extra or missing prefix, else a near spelling.
    fn hint(&self, name: &str) -> Option<String> {
        let dotted = format!(".{name}");
        let by_prefix = self
            .names()
            .filter(|n| n.ends_with(&dotted) || name.ends_with(&format!(".{n}")))
            .min_by_key(|n| n.len());
        if let Some(n) = by_prefix {
            return Some(n.to_owned());
        }
        let limit = (name.len() / 8).max(2);
        self.names()
            .map(|n| (edit_distance(name, n), n))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, n)| n.to_owned())
    }

    /// Writes every present tensor as f32 under its (normalised) name.
    /// The file appears atomically: it is written beside `path`, then renamed.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), WeightsError> {
        let mut out: HashMap<&str, Tensor> = HashMap::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            out.insert(name, normalised(name, t)?);
        }
        crate::model::atomic_file::write(
            path,
            |tmp| {
                candle_core::safetensors::save(&out, tmp).map_err(|source| WeightsError::Save {
                    path: path.to_owned(),
                    source,
                })
            },
            |source| WeightsError::Io {
                path: path.to_owned(),
                source,
            },
        )
    }
}

/// `t` as f32 on the CPU in row-major layout (no-ops for loaded tensors).
fn normalised(name: &str, t: &Tensor) -> Result<Tensor, WeightsError> {
    let wrap = |source| WeightsError::Tensor {
        name: name.to_owned(),
        source,
    };
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.contiguous())
        .map_err(wrap)
}
