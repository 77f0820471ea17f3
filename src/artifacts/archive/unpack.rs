//! The streaming unpacker: bytes flow from the source through the gzip decoder into the files,
//! one buffer at a time, so memory stays flat whatever the archive size. Safety rules are in the
//! parent module's header.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::bufread::MultiGzDecoder;
use tar::EntryType;

use super::{ArchiveError, ArchiveLimits, Refusal};

/// Bytes a PAX / GNU long-name header and the next tar header may take. The tar reader holds
/// them in memory, so a multi-gigabyte "long name" would otherwise be a memory bomb.
const METADATA_ALLOWANCE: u64 = 1 << 20;
/// Data tolerated after the end-of-archive marker (GNU tar pads to 10 KiB records).
const TRAILER_ALLOWANCE: u64 = 1 << 20;
/// Copy buffer: large enough that decompression, not syscalls, sets the pace.
const COPY_BUFFER_BYTES: usize = 256 << 10;
/// Read-ahead on the compressed side.
const INPUT_BUFFER_BYTES: usize = 256 << 10;

/// What an unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries read (files, directories, links).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Unpacks a `.tar.gz` (or uncompressed `.tar`, detected from the gzip magic bytes) read from
/// `source` into the existing directory `dest`.
///
/// On error `dest` may hold a partial tree (never anything outside it): unpack into a scratch
/// directory and delete it on failure.
pub fn unpack<R: Read>(
    source: R,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<UnpackStats, ArchiveError> {
    let mut input = BufReader::with_capacity(INPUT_BUFFER_BYTES, source);
    let head = input.fill_buf().map_err(|cause| ArchiveError::Corrupt {
        location: "at the start".into(),
        cause,
    })?;
    let decoded: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let budget = Rc::new(Budget::default());
    let mut archive = tar::Archive::new(Budgeted {
        inner: decoded,
        budget: Rc::clone(&budget),
    });
    let dest_real = fs::canonicalize(dest).map_err(|e| ArchiveError::io(dest, e))?;
    let mut unpacker = Unpacker {
        dest: &dest_real,
        limits,
        stats: UnpackStats::default(),
        dirs: HashSet::new(),
        symlinks: Vec::new(),
        buffer: vec![0; COPY_BUFFER_BYTES],
    };
    let mut last = String::new();
    let location = |last: &str| {
        if last.is_empty() {
            "at the first entry".to_owned()
        } else {
            format!("after entry `{last}`")
        }
    };
    {
        let mut entries = archive.entries().map_err(|cause| ArchiveError::Corrupt {
            location: location(&last),
            cause,
        })?;
        loop {
            budget.allow(METADATA_ALLOWANCE);
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(_)) if budget.is_exhausted() => {
                    return Err(ArchiveError::Refused {
                        entry: if last.is_empty() {
                            "(the first entry)".to_owned()
                        } else {
                            format!("(the entry after `{last}`)")
                        },
                        reason: Refusal::MetadataTooLarge {
                            limit: METADATA_ALLOWANCE,
                        },
                    });
                }
                Some(Err(cause)) => {
                    return Err(ArchiveError::Corrupt {
                        location: location(&last),
                        cause,
                    })
                }
            };
            last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            unpacker
                .entry(&mut entry, &budget)
                .map_err(|failure| match failure {
                    Failure::Refused(reason) => ArchiveError::Refused {
                        entry: last.clone(),
                        reason,
                    },
                    Failure::Read(cause) => ArchiveError::Corrupt {
                        location: format!("in entry `{last}`"),
                        cause,
                    },
                    Failure::Archive(err) => err,
                })?;
        }
    }
    if unpacker.stats.entries == 0 {
        return Err(ArchiveError::Empty);
    }
    // Read on to the end of the stream: this checks the gzip CRC and length trailer, which the
    // tar reader never reaches because it stops at the end-of-archive marker.
    budget.allow(TRAILER_ALLOWANCE);
    let mut rest = archive.into_inner();
    if let Err(cause) = io::copy(&mut rest, &mut io::sink()) {
        return Err(if budget.is_exhausted() {
            ArchiveError::TrailingData {
                limit: TRAILER_ALLOWANCE,
            }
        } else {
            ArchiveError::Corrupt {
                location: "at the end of the archive".into(),
                cause,
            }
        });
    }
    unpacker.check_symlinks()?;
    Ok(unpacker.stats)
}

/// How many more decompressed bytes the tar reader may pull. Set before each step, so neither a
/// metadata header nor an entry can read past what was accounted for.
#[derive(Default)]
struct Budget {
    position: Cell<u64>,
    limit: Cell<u64>,
    exhausted: Cell<bool>,
}

impl Budget {
    fn allow(&self, bytes: u64) {
        self.limit.set(self.position.get().saturating_add(bytes));
    }

    fn is_exhausted(&self) -> bool {
        self.exhausted.get()
    }
}

struct Budgeted<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let position = self.budget.position.get();
        let left = self.budget.limit.get().saturating_sub(position);
        if left == 0 && !buf.is_empty() {
            self.budget.exhausted.set(true);
            return Err(io::Error::other("read budget exhausted"));
        }
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.budget.position.set(position + n as u64);
        Ok(n)
    }
}

/// Why one entry failed, before the entry name is attached.
enum Failure {
    Refused(Refusal),
    Read(io::Error),
    Archive(ArchiveError),
}

impl From<Refusal> for Failure {
    fn from(reason: Refusal) -> Self {
        Failure::Refused(reason)
    }
}

impl From<ArchiveError> for Failure {
    fn from(err: ArchiveError) -> Self {
        Failure::Archive(err)
    }
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a ArchiveLimits,
    stats: UnpackStats,
    /// Directories (relative) known to be real directories inside `dest`.
    dirs: HashSet<PathBuf>,
    /// Symlinks created, with their targets as written: re-checked once everything exists.
    symlinks: Vec<(PathBuf, PathBuf)>,
    buffer: Vec<u8>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        budget: &Budget,
    ) -> Result<(), Failure> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(Refusal::TooManyEntries {
                limit: self.limits.max_entries,
            }
            .into());
        }
        let kind = entry.header().entry_type();
        let raw_path = entry.path().map_err(Failure::Read)?.into_owned();
        let rel = relative_path(&raw_path)?;
        // Old (pre-POSIX) tar marks directories only by a trailing slash.
        let old_style_dir = entry.header().as_ustar().is_none()
            && entry.path_bytes().ends_with(b"/")
            && kind == EntryType::Regular;
        match kind {
            _ if old_style_dir => self.directory(&rel),
            EntryType::Directory => self.directory(&rel),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &rel, budget)
            }
            EntryType::Symlink => {
                let target = link_target(entry)?;
                self.symlink(&rel, target)
            }
            EntryType::Link => {
                let target = link_target(entry)?;
                self.hard_link(&rel, &target)
            }
            EntryType::Char | EntryType::Block => Err(Refusal::DeviceFile.into()),
            EntryType::Fifo => Err(Refusal::Fifo.into()),
            // `git archive` and others write a global PAX header; it carries no file.
            EntryType::XGlobalHeader => Ok(()),
            other => Err(Refusal::UnsupportedType(other.as_byte()).into()),
        }
    }

    fn directory(&mut self, rel: &Path) -> Result<(), Failure> {
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        self.make_dirs(rel)
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        budget: &Budget,
    ) -> Result<(), Failure> {
        let size = entry.size();
        if self.stats.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(Refusal::TooManyBytes {
                limit: self.limits.max_bytes,
            }
            .into());
        }
        let path = self.prepare(rel)?;
        let mode = if entry.header().mode().unwrap_or(0o644) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        budget.allow(entry.header().entry_size().map_err(Failure::Read)?);
        // `create_new` is O_CREAT|O_EXCL: it never follows a symlink planted at this path.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| ArchiveError::io(&path, e))?;
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Read(e)),
            };
            written += n as u64;
            // Sparse entries may expand beyond their header size; the cap holds regardless.
            if self.stats.bytes + written > self.limits.max_bytes {
                return Err(Refusal::TooManyBytes {
                    limit: self.limits.max_bytes,
                }
                .into());
            }
            file.write_all(&self.buffer[..n])
                .map_err(|e| ArchiveError::io(&path, e))?;
        }
        self.stats.bytes += written;
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, target: PathBuf) -> Result<(), Failure> {
        if target.is_absolute() {
            return Err(Refusal::LinkEscapes { target }.into());
        }
        // Lexical check first (cheap, and refuses before anything is created); the resolved
        // check in `check_symlinks` catches targets that go through other symlinks.
        let mut resolved: Vec<&std::ffi::OsStr> = Vec::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for component in parent.components().chain(target.components()) {
            match component {
                Component::Normal(name) => resolved.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    if resolved.pop().is_none() {
                        return Err(Refusal::LinkEscapes { target }.into());
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Refusal::LinkEscapes { target }.into())
                }
            }
        }
        let path = self.prepare(rel)?;
        std::os::unix::fs::symlink(&target, &path).map_err(|e| ArchiveError::io(&path, e))?;
        self.symlinks.push((rel.to_owned(), target));
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, target: &Path) -> Result<(), Failure> {
        let escapes = || Refusal::LinkEscapes {
            target: target.to_owned(),
        };
        let target_rel = relative_path(target).map_err(|_| escapes())?;
        if target_rel.as_os_str().is_empty() || target_rel == rel {
            return Err(Refusal::HardLinkTarget {
                target: target.to_owned(),
            }
            .into());
        }
        self.check_parents(&target_rel)?;
        let source = self.dest.join(&target_rel);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_file() => {}
            _ => {
                return Err(Refusal::HardLinkTarget {
                    target: target.to_owned(),
                }
                .into())
            }
        }
        let path = self.prepare(rel)?;
        fs::hard_link(&source, &path).map_err(|e| ArchiveError::io(&path, e))?;
        Ok(())
    }

    /// Makes the entry's parent directories and clears the way for a new file or link at `rel`
    /// (a later entry replaces an earlier file, as tar does; never a directory).
    fn prepare(&mut self, rel: &Path) -> Result<PathBuf, Failure> {
        if rel.as_os_str().is_empty() {
            return Err(Refusal::EmptyPath.into());
        }
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent)?;
        }
        let path = self.dest.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Err(Refusal::Clash {
                existing: rel.to_owned(),
            }
            .into()),
            Ok(_) => {
                fs::remove_file(&path).map_err(|e| ArchiveError::io(&path, e))?;
                Ok(path)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(ArchiveError::io(&path, e).into()),
        }
    }

    /// Creates `rel` and its ancestors as real directories, refusing any existing symlink or
    /// file on the way.
    fn make_dirs(&mut self, rel: &Path) -> Result<(), Failure> {
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let path = self.dest.join(&prefix);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Refusal::ThroughSymlink { link: prefix }.into())
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(Refusal::Clash { existing: prefix }.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(|e| ArchiveError::io(&path, e))?;
                }
                Err(e) => return Err(ArchiveError::io(&path, e).into()),
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Like `make_dirs` without creating: for a hard link's target.
    fn check_parents(&self, rel: &Path) -> Result<(), Failure> {
        let mut prefix = PathBuf::new();
        for component in rel.parent().into_iter().flat_map(Path::components) {
            prefix.push(component);
            if self.dirs.contains(&prefix) {
                continue;
            }
            if let Ok(meta) = fs::symlink_metadata(self.dest.join(&prefix)) {
                if meta.file_type().is_symlink() {
                    return Err(Refusal::ThroughSymlink { link: prefix }.into());
                }
            }
        }
        Ok(())
    }

    /// Resolves every symlink now that the whole tree exists: a target that is lexically inside
    /// can still leave through another symlink (`s -> .`, `l -> s/../x`).
    fn check_symlinks(&self) -> Result<(), ArchiveError> {
        for (rel, target) in &self.symlinks {
            let refused = |reason| ArchiveError::Refused {
                entry: rel.to_string_lossy().into_owned(),
                reason,
            };
            match fs::canonicalize(self.dest.join(rel)) {
                Ok(real) if real.starts_with(self.dest) => {}
                Ok(_) => {
                    return Err(refused(Refusal::LinkEscapes {
                        target: target.clone(),
                    }))
                }
                Err(_) => {
                    return Err(refused(Refusal::DanglingLink {
                        target: target.clone(),
                    }))
                }
            }
        }
        Ok(())
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, Failure> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => Err(Refusal::EmptyPath.into()),
        Err(e) => Err(Failure::Read(e)),
    }
}

/// An archive path as a path relative to the destination: `./` prefixes dropped; absolute
/// paths and `..` refused. Empty for the archive root (`.` or `./`).
pub(crate) fn relative_path(path: &Path) -> Result<PathBuf, Refusal> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentComponent),
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::AbsolutePath),
        }
    }
    Ok(rel)
}
