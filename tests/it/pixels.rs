//! Same pixels as the training stack: wick's JPEG decoding equals Pillow's, and its detection
//! letterbox equals ultralytics' `LetterBox` (OpenCV's `INTER_LINEAR` resize, 114 padding),
//! byte for byte. The expected bytes are sha256 digests written by
//! `tests/parity/generate_pixels.py` into `tests/fixtures/pixels/` (versions in the JSON).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wick::model::detect::letterbox::{draw, Placement, PAD_VALUE};
use wick::model::preprocess::{decode, DecodeLimits};

fn pixels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixels")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `cases` of a fixture file.
fn cases(name: &str) -> Result<Vec<Value>> {
    let path = pixels_dir().join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let json: Value = serde_json::from_str(&text)?;
    Ok(json["cases"].as_array().context("cases")?.clone())
}

/// A case's image file: committed (`file`) or a shared photo (`shared`).
fn case_path(case: &Value) -> PathBuf {
    match case["file"].as_str() {
        Some(file) => pixels_dir().join(file),
        None => crate::support::fixture(case["shared"].as_str().expect("file or shared")),
    }
}

fn usize_at(value: &Value, index: usize) -> usize {
    value[index].as_u64().expect("an integer") as usize
}

#[test]
fn jpeg_decoding_is_pillows_byte_for_byte() -> Result<()> {
    let mut mismatches = Vec::new();
    let cases = cases("jpeg.json")?;
    for case in &cases {
        let path = case_path(case);
        let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let image = decode(&bytes, &DecodeLimits::default())?;
        let size = (case["width"].as_u64(), case["height"].as_u64());
        ensure!(
            size == (Some(image.width().into()), Some(image.height().into())),
            "{}: {}x{}, Pillow {size:?}",
            path.display(),
            image.width(),
            image.height()
        );
        if sha256_hex(image.as_raw()) != case["sha256"].as_str().context("sha256")? {
            mismatches.push(path.display().to_string());
        }
    }
    // Baseline and progressive, 4:4:4 / 4:2:2 / 4:2:0, greyscale, EXIF-rotated, two photos.
    assert!(cases.len() >= 11, "{} cases", cases.len());
    assert!(
        mismatches.is_empty(),
        "decoded RGB differs from Pillow's: {mismatches:?}"
    );
    Ok(())
}

/// The generator's synthetic picture: a gradient under integer hash noise,
/// `(3x + 2y + 60c + ((73856093x) ^ (19349663y) ^ (83492791c)) % 61) % 256`.
fn synth_picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let channel = |c: u64| {
            let (x, y) = (u64::from(x), u64::from(y));
            let noise = ((x * 73_856_093) ^ (y * 19_349_663) ^ (c * 83_492_791)) % 61;
            ((3 * x + 2 * y + 60 * c + noise) % 256) as u8
        };
        image::Rgb([channel(0), channel(1), channel(2)])
    })
}

/// The canvas [`draw`] makes, back in ultralytics' layout: HWC bytes.
fn canvas_bytes(planar: &[f32], (h, w): (usize, usize)) -> Vec<u8> {
    let plane = h * w;
    (0..plane)
        .flat_map(|i| (0..3).map(move |c| (planar[c * plane + i] * 255.0).round() as u8))
        .collect()
}

#[test]
fn letterbox_is_ultralytics_byte_for_byte() -> Result<()> {
    let mut mismatches = Vec::new();
    let cases = cases("letterbox.json")?;
    for case in &cases {
        let (image, name) = match case["synthetic"].as_array() {
            Some(_) => {
                let (w, h) = (
                    usize_at(&case["synthetic"], 0),
                    usize_at(&case["synthetic"], 1),
                );
                (
                    synth_picture(w as u32, h as u32),
                    format!("synthetic {w}x{h}"),
                )
            }
            None => {
                let path = case_path(case);
                let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
                (
                    decode(&bytes, &DecodeLimits::default())?,
                    path.display().to_string(),
                )
            }
        };
        let original = (image.height() as usize, image.width() as usize);
        let target = (
            usize_at(&case["new_shape"], 0),
            usize_at(&case["new_shape"], 1),
        );
        let placement = if case["auto"].as_bool() == Some(true) {
            let stride = case["stride"].as_u64().context("stride")? as usize;
            Placement::minimal(original, target, stride)
        } else {
            Placement::new(original, target)
        };
        let canvas = (usize_at(&case["canvas"], 0), usize_at(&case["canvas"], 1));
        let label = format!("{name} into {target:?}, auto {}", case["auto"]);
        ensure!(
            placement.canvas == canvas,
            "{label}: canvas {:?}, ultralytics {canvas:?}",
            placement.canvas
        );
        let bytes = canvas_bytes(&draw(&image, &placement, PAD_VALUE), canvas);
        if sha256_hex(&bytes) != case["sha256"].as_str().context("sha256")? {
            mismatches.push(label);
        }
    }
    // Up- and downscaling, exact 2x, odd and extreme sizes, 1080p, non-square input, photos.
    assert!(cases.len() >= 15, "{} cases", cases.len());
    assert!(
        mismatches.is_empty(),
        "letterbox differs from ultralytics': {mismatches:?}"
    );
    Ok(())
}
