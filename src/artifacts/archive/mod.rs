//! `.tar.gz` model archives: a streaming, defensive unpacker ([`unpack`]) for untrusted
//! archives and the packer behind `wick package` ([`pack`]). Synchronous (std I/O); callers on
//! an async runtime run these on a blocking thread.
//!
//! Unpacking rules (`README.md` "Model artifacts"): every entry lands inside the destination or
//! the whole unpack fails, naming the refused entry. Refused: absolute paths, `..` components,
//! paths that pass through a symlink, symlinks and hard links that resolve outside the
//! destination (or to nothing), device files and FIFOs, more than
//! [`ArchiveLimits::max_entries`] entries or [`ArchiveLimits::max_bytes`] unpacked bytes, and
//! oversized metadata (PAX / GNU long-name headers). Files are created with `O_EXCL`, so nothing
//! is ever written through a link; permissions keep only the executable bit.

mod pack;
mod unpack;

use std::path::PathBuf;

pub use pack::{pack, PackStats};
pub use unpack::{unpack, UnpackStats};

/// Caps that keep a hostile or broken archive from filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Total bytes of file contents the archive may unpack to.
    pub max_bytes: u64,
    /// Number of entries (files, directories, links) the archive may hold.
    pub max_entries: u64,
}

impl Default for ArchiveLimits {
    /// 32 GiB and 100,000 entries: above any image model wick serves, below a full disk.
    fn default() -> Self {
        ArchiveLimits {
            max_bytes: 32 << 30,
            max_entries: 100_000,
        }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `/etc/passwd`.
    #[error("absolute path")]
    AbsolutePath,
    /// `../x`, `a/../../x`.
    #[error("path has a `..` component")]
    ParentComponent,
    /// An empty name, or `.` for something other than a directory.
    #[error("empty path")]
    EmptyPath,
    /// A parent directory of the entry is a symlink unpacked earlier.
    #[error("path passes through the symlink `{}`", link.display())]
    ThroughSymlink {
        /// The symlink, relative to the destination.
        link: PathBuf,
    },
    /// A symlink or hard link whose target lies outside the destination.
    #[error("link target `{}` is outside the destination", target.display())]
    LinkEscapes {
        /// The target as written in the archive.
        target: PathBuf,
    },
    /// A symlink that resolves to nothing (or loops).
    #[error("symlink target `{}` does not exist in the archive", target.display())]
    DanglingLink {
        /// The target as written in the archive.
        target: PathBuf,
    },
    /// A hard link to something other than a regular file unpacked earlier.
    #[error("hard link target `{}` is not a regular file unpacked before it", target.display())]
    HardLinkTarget {
        /// The target as written in the archive.
        target: PathBuf,
    },
    /// A character or block device.
    #[error("device file")]
    DeviceFile,
    /// A named pipe.
    #[error("FIFO (named pipe)")]
    Fifo,
    /// An entry type wick does not unpack (tar type flag byte).
    #[error("unsupported entry type `{}`", char::from(*.0))]
    UnsupportedType(u8),
    /// The entry would replace a directory, or needs a directory where a file is.
    #[error("clashes with `{}` unpacked earlier", existing.display())]
    Clash {
        /// The existing path, relative to the destination.
        existing: PathBuf,
    },
    /// More entries than [`ArchiveLimits::max_entries`].
    #[error("the archive has more than {limit} entries (the limit)")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// More unpacked bytes than [`ArchiveLimits::max_bytes`].
    #[error("unpacking it would exceed {limit} bytes in total (the limit)")]
    TooManyBytes {
        /// The limit.
        limit: u64,
    },
    /// A PAX or GNU long-name header larger than wick reads into memory.
    #[error("its metadata (PAX or GNU long-name header) exceeds {limit} bytes")]
    MetadataTooLarge {
        /// The limit.
        limit: u64,
    },
}

/// Errors unpacking or packing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A hostile or unsupported entry; nothing was written outside the destination.
    #[error("refused archive entry `{entry}`: {reason}")]
    Refused {
        /// The entry's path as stored in the archive.
        entry: String,
        /// Why.
        reason: Refusal,
    },
    /// Not a (gzip-compressed) tar archive, or cut short.
    #[error("the archive is corrupt or truncated ({location}): {cause}")]
    Corrupt {
        /// Where reading stopped, e.g. "after entry `config.json`".
        location: String,
        /// The decoder's or tar reader's error (in the message, not repeated as a source).
        cause: std::io::Error,
    },
    /// The archive holds no entries.
    #[error("the archive is empty")]
    Empty,
    /// More than a megabyte of data after the end-of-archive marker.
    #[error("more than {limit} bytes of data follow the end of the archive")]
    TrailingData {
        /// The limit.
        limit: u64,
    },
    /// Reading or writing a file failed.
    #[error("`{}`: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl ArchiveError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        ArchiveError::Io {
            path: path.into(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests;
