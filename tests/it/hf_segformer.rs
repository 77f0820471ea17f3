//! A Hugging Face `SegformerForSemanticSegmentation` folder, as transformers'
//! `save_pretrained` writes its `config.json` and the image processor its
//! `preprocessor_config.json` (`tests/fixtures/hf/segformer_b0/`, written by
//! `tests/parity/generate_segformer_photo.py`), with the synthetic weights saved as
//! `model.safetensors`: it loads with no file added (task, MiT variant, labels, the 512x512
//! squash), and on the photo `chelsea.png` gives the label map transformers' own processor,
//! model and `post_process_semantic_segmentation` give.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use wick::model::weights::{synthesize, Weights};
use wick::model::Segmenter;

use crate::support::fixture;

#[derive(Deserialize)]
struct Expected {
    size: (u32, u32),
    step: usize,
    tensors: Vec<(String, Vec<usize>)>,
    /// Every `step`-th label of every `step`-th row.
    labels: Vec<String>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/segformer_b0")
}

/// The folder transformers would leave: its two JSON files and `model.safetensors`.
fn hf_folder(expected: &Expected, dir: &Path) -> Result<()> {
    for name in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(fixture_dir().join(name), dir.join(name))?;
    }
    let tensors = expected
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    Weights::from_tensors(tensors).save_safetensors(&dir.join("model.safetensors"))?;
    Ok(())
}

#[test]
fn a_hugging_face_segformer_folder_segments_a_photo_as_transformers_does() -> Result<()> {
    let path = fixture_dir().join("expected.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let expected: Expected = serde_json::from_str(&text)?;
    let dir = tempfile::tempdir()?;
    hf_folder(&expected, dir.path())?;
    let segmenter = Segmenter::load(dir.path())?;
    assert_eq!(
        segmenter.labels(),
        ["background", "cat", "dog", "grass", "sky"],
        "labels come from id2label"
    );

    let photo = image::open(fixture("chelsea.png"))?.to_rgb8();
    assert_eq!(photo.dimensions(), expected.size);
    let map = segmenter.segment(&photo, None)?;
    assert_eq!(
        (map.width, map.height),
        expected.size,
        "the photo's own size"
    );
    let width = map.width as usize;
    let (mut agree, mut total) = (0usize, 0usize);
    let mut counts = [[0usize; 5]; 2];
    for (row, want_row) in expected.labels.iter().enumerate() {
        let y = row * expected.step;
        for (col, want) in want_row.chars().enumerate() {
            let want = want.to_digit(10).context("label digit")? as usize;
            let got = usize::from(map.classes[y * width + col * expected.step]);
            agree += usize::from(got == want);
            total += 1;
            counts[0][want] += 1;
            counts[1][got.min(4)] += 1;
        }
    }
    // transformers resizes with torchvision and resizes the quarter-size logits to the photo
    // once; wick resizes with fast_image_resize and returns the network's logits at 512x512
    // first (two bilinear steps): class boundaries may move by a pixel.
    assert!(
        agree * 100 >= total * 99,
        "{agree} of {total} sampled pixels agree with transformers' label map; classes \
         (transformers, wick): {counts:?}"
    );
    Ok(())
}
