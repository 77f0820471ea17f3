//! The error type of the weights module: every variant from a file names it.

use std::path::PathBuf;

/// Why weights could not be loaded, looked up or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be opened, mapped or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{}: file is empty", .path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The magic bytes match no supported format.
    #[error(
        "{}: unknown checkpoint format (starts with {head}); expected safetensors, \
         a PyTorch zip checkpoint or a legacy PyTorch checkpoint",
        .path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The first bytes, in hex.
        head: String,
    },
    /// The file ends before the data it describes.
    #[error("{}: truncated checkpoint: {detail}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        detail: String,
    },
    /// A pickle is malformed.
    #[error("{}: malformed {part} pickle at byte {offset}: {reason}", .path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Which pickle of the file.
        part: String,
        /// Offset of the failing opcode (within the zip record for zip files).
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// The structure is inconsistent (bad tensor arguments, missing records...).
    #[error("{}: corrupt checkpoint: {detail}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Well-formed, but uses something this loader does not handle.
    #[error("{}: unsupported checkpoint: {detail}", .path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        detail: String,
    },
    /// The file starts like a zip archive but is not a readable one.
    #[error("{}: not a readable zip archive: {source}", .path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// The zip reader's error.
        source: zip::result::ZipError,
    },
    /// A record inside the zip archive could not be read (e.g. bad CRC).
    #[error("{}: cannot read zip record `{record}`: {source}", .path.display())]
    ZipRecord {
        /// The file.
        path: PathBuf,
        /// The record's name inside the archive.
        record: String,
        /// The read error.
        source: std::io::Error,
    },
    /// A zip archive without the pickle that makes it a PyTorch checkpoint.
    #[error("{}: zip archive has no data.pkl, so it is not a PyTorch checkpoint", .path.display())]
    MissingDataPkl {
        /// The file.
        path: PathBuf,
    },
    /// A tensor view reaches past the end of its storage.
    #[error(
        "{}: tensor `{tensor}` needs {needed} elements of its storage, which holds {available}",
        .path.display()
    )]
    StorageTooShort {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Storage elements the view reaches.
        needed: u64,
        /// Storage elements present.
        available: u64,
    },
    /// The safetensors crate rejected the file.
    #[error("{}: invalid safetensors file: {source}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: safetensors::SafeTensorError,
    },
    /// The file parsed but holds no floating-point tensors.
    #[error("{}: no float tensors found: the file holds {detail}", .path.display())]
    NoTensors {
        /// The file.
        path: PathBuf,
        /// What the file holds instead.
        detail: String,
    },
    /// Two tensors end up with the same name once `module.` prefixes are removed.
    #[error("{}: two tensors are named `{name}` once `module.` prefixes are removed", .path.display())]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The clashing name.
        name: String,
    },
    /// [`Weights::get`] asked for a tensor that is not there.
    #[error("weight `{name}` not found{}{}", origin_suffix(.origin), hint_suffix(.hint))]
    Missing {
        /// The requested name.
        name: String,
        /// The file the weights came from, if any.
        origin: Option<PathBuf>,
        /// A present name that is probably what was meant.
        hint: Option<String>,
    },
    /// [`Weights::get`] found the tensor with another shape.
    #[error("weight `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape the caller asked for.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor operation (creation, conversion) failed.
    #[error("weight `{name}`: {source}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// Candle's error.
        source: candle_core::Error,
    },
    /// Writing a safetensors file failed.
    #[error("{}: cannot write safetensors: {source}", .path.display())]
    Save {
        /// The file being written.
        path: PathBuf,
        /// Candle's error.
        source: candle_core::Error,
    },
}

fn origin_suffix(origin: &Option<PathBuf>) -> String {
    origin
        .as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!(" (did you mean `{h}`?)"))
        .unwrap_or_default()
}
