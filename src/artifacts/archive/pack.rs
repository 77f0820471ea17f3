//! The packer: a package directory into the `model.tar.gz` a SageMaker Model expects, files at
//! the archive root (`config.json`, not `./dir/config.json`). Reproducible: entries sorted,
//! owners, times and permissions normalised, so the same package gives the same bytes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::ArchiveError;

/// Directory levels followed below the package root (guards against symlink loops).
const MAX_DEPTH: usize = 32;
const OUTPUT_BUFFER_BYTES: usize = 1 << 20;

/// What a pack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Regular files archived.
    pub files: u64,
    /// Their total size, uncompressed.
    pub bytes: u64,
    /// Size of the archive written.
    pub archive_bytes: u64,
}

/// Writes every file below `dir` (symlinks followed, so a package made of links into a cache
/// is archived self-contained) to the gzip-compressed tar `out`. The archive is written next to
/// `out` and renamed into place, so `out` is never left half-written. An existing `out` inside
/// `dir` is not archived into itself.
pub fn pack(dir: &Path, out: &Path) -> Result<PackStats, ArchiveError> {
    let out_real = fs::canonicalize(out).ok();
    let mut entries = Vec::new();
    collect(dir, Path::new(""), 0, &mut entries)?;
    entries.retain(|entry| match (&out_real, entry) {
        (Some(out_real), Entry::File { path, .. }) => {
            fs::canonicalize(path).ok().as_ref() != Some(out_real)
        }
        _ => true,
    });

    let out_dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".wick-pack-")
        .tempfile_in(out_dir)
        .map_err(|e| ArchiveError::io(out_dir, e))?;
    let writer = BufWriter::with_capacity(
        OUTPUT_BUFFER_BYTES,
        temp.as_file()
            .try_clone()
            .map_err(|e| ArchiveError::io(out, e))?,
    );
    // The default level (6): zlib-rs's level 1 uses static Huffman codes, which make float
    // weights *larger* than stored (docs/performance.md, "Artifacts").
    let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stats = PackStats::default();
    for entry in &entries {
        match entry {
            Entry::Dir { rel } => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_mtime(0);
                builder
                    .append_data(&mut header, rel, std::io::empty())
                    .map_err(|e| ArchiveError::io(out, e))?;
            }
            Entry::File { path, rel } => {
                let mut file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
                stats.bytes += file
                    .metadata()
                    .map_err(|e| ArchiveError::io(path, e))?
                    .len();
                builder
                    .append_file(rel, &mut file)
                    .map_err(|e| ArchiveError::io(path, e))?;
                stats.files += 1;
            }
        }
    }
    let mut writer = builder
        .into_inner()
        .and_then(GzEncoder::finish)
        .map_err(|e| ArchiveError::io(out, e))?;
    writer.flush().map_err(|e| ArchiveError::io(out, e))?;
    drop(writer);
    // Temporary files are private (0600); the archive is an ordinary file.
    let file = temp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(|e| ArchiveError::io(out, e))?;
    temp.persist(out)
        .map_err(|e| ArchiveError::io(out, e.error))?;
    stats.archive_bytes = fs::metadata(out)
        .map_err(|e| ArchiveError::io(out, e))?
        .len();
    Ok(stats)
}

enum Entry {
    Dir { rel: PathBuf },
    File { path: PathBuf, rel: PathBuf },
}

/// Depth-first, sorted by name: the archive order is the same on every machine.
fn collect(
    dir: &Path,
    rel: &Path,
    depth: usize,
    entries: &mut Vec<Entry>,
) -> Result<(), ArchiveError> {
    if depth > MAX_DEPTH {
        return Err(ArchiveError::io(
            dir,
            std::io::Error::other(format!(
                "more than {MAX_DEPTH} directory levels (a symlink loop?)"
            )),
        ));
    }
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(|e| ArchiveError::io(dir, e))?
        .map(|child| child.map(|c| c.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| ArchiveError::io(dir, e))?;
    children.sort();
    for name in children {
        let path = dir.join(&name);
        let child_rel = rel.join(&name);
        // `metadata` follows symlinks: links into a cache are archived as the files they name.
        let meta = fs::metadata(&path).map_err(|e| ArchiveError::io(&path, e))?;
        if meta.is_dir() {
            entries.push(Entry::Dir {
                rel: child_rel.clone(),
            });
            collect(&path, &child_rel, depth + 1, entries)?;
        } else if meta.is_file() {
            entries.push(Entry::File {
                path,
                rel: child_rel,
            });
        } else {
            return Err(ArchiveError::io(
                &path,
                std::io::Error::other("neither a regular file nor a directory"),
            ));
        }
    }
    Ok(())
}
