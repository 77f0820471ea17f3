//! Files that appear whole or not at all: written beside their final name (`.{name}.{pid}.tmp`,
//! hidden and unique to the process), then renamed over it, so a reader, a restarted job or
//! SageMaker's checkpoint sync never sees half a file. The weights writer, the trained
//! packages' `config.json` and the training checkpoints all write through [`write`].

use std::path::Path;

/// Writes `path` whole: `fill` writes the temporary file it is given, which is then renamed to
/// `path` (`rename_error` turns a failed rename into the caller's error). On any failure the
/// temporary file is removed.
pub(crate) fn write<E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    rename_error: impl FnOnce(std::io::Error) -> E,
) -> Result<(), E> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = fill(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(rename_error));
    if written.is_err() {
        // Best effort: the write already failed, the temporary file is litter.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_appears_whole_and_a_failed_write_leaves_nothing() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.json");
        write(&path, |tmp| std::fs::write(tmp, b"{}"), |e| e)?;
        assert_eq!(std::fs::read(&path)?, b"{}");
        let failed = write(
            &dir.path().join("b.json"),
            |tmp| {
                std::fs::write(tmp, b"half")?;
                Err(std::io::Error::other("disk full"))
            },
            |e| e,
        );
        assert!(failed.is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, ["a.json"]);
        Ok(())
    }
}
