//! Finding image files in a channel: which extensions count as images, hidden entries skipped
//! (`.ipynb_checkpoints`, `.DS_Store`), and every image below a folder at any depth; and where
//! a job's validation images came from. Both trainers' datasets read their channels through
//! these.

use std::path::{Path, PathBuf};

/// File extensions treated as images (compared case-insensitively).
pub(crate) const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Entries of `dir` whose names do not start with `.` (`.ipynb_checkpoints`, `.DS_Store`).
pub(crate) fn visible_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !hidden {
            out.push(path);
        }
    }
    Ok(out)
}

/// Every image file below `dir`, any depth.
pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), (PathBuf, std::io::Error)> {
    for path in visible_entries(dir).map_err(|e| (dir.to_path_buf(), e))? {
        if path.is_dir() {
            walk(&path, out)?;
        } else if has_extension(&path, IMAGE_EXTENSIONS) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `path` ends in one of `extensions` (compared case-insensitively).
pub(crate) fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Where the validation images came from.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ValidationSource {
    /// The `validation` channel.
    Channel,
    /// A stratified split of the training channel.
    Split,
    /// None (`validation_fraction` 0 and no channel).
    None,
}
