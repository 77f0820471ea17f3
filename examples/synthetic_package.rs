//! Writes a segmentation model package with synthetic weights (the parity formula,
//! `wick::model::weights::synthesize`) for an architecture listed in
//! `tests/fixtures/segmentation/`: a real-size network to serve without downloading weights.
//! `local_test/container_test.sh` serves the DeepLabV3+ ResNet-34 one from the image.
//!
//! ```sh
//! cargo run --example synthetic_package -- tests/fixtures/segmentation/smp_deeplabv3plus_resnet34.json DEST_DIR
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use wick::model::weights::{synthesize, Weights};

/// The part of a parity fixture that describes the network.
#[derive(Deserialize)]
struct Fixture {
    architecture: String,
    num_classes: usize,
    tensors: Vec<(String, Vec<usize>)>,
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: synthetic_package FIXTURE_JSON DEST_DIR";
    let fixture_path = PathBuf::from(args.next().context(usage)?);
    let dest = PathBuf::from(args.next().context(usage)?);
    let text = std::fs::read(&fixture_path)
        .with_context(|| format!("reading {}", fixture_path.display()))?;
    let fixture: Fixture = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", fixture_path.display()))?;
    ensure!(
        !dest.join("config.json").exists(),
        "{} already holds a package",
        dest.display()
    );
    let tensors: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .map(|(name, shape)| (name.clone(), synthesize(name, shape)))
        .collect();
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    Weights::from_tensors(tensors).save_safetensors(&dest.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architecture": fixture.architecture,
        "task": "segmentation",
        "num_classes": fixture.num_classes,
    });
    std::fs::write(
        dest.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    println!("{}", dest.display());
    Ok(())
}
