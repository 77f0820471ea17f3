//! `wick convert`: rewrite a model package with its weights as `model.safetensors`, which
//! loads by memory map in milliseconds, and check that the copy computes what the original does.

use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};

use crate::cli::ConvertArgs;
use crate::model::package::Package;
use crate::model::weights::{synthesize, Weights};
use crate::model::Classifier;

/// Largest logit difference tolerated between the source and the converted package (both are
/// f32; only a conversion bug could move logits).
const MAX_LOGIT_DIFFERENCE: f32 = 1e-5;

/// Runs the command.
pub fn run(args: &ConvertArgs) -> Result<ExitCode> {
    let package = Package::open(&args.src)
        .with_context(|| format!("reading the package in `{}`", args.src.display()))?;
    let weights = Weights::load(&package.weights_path)?;
    let source = Classifier::from_package(&package, &weights).with_context(|| {
        format!(
            "building `{}` from `{}`",
            package.config.architecture,
            package.weights_path.display()
        )
    })?;
    if args.dest.join("config.json").exists() {
        bail!(
            "`{}` already holds a config.json; choose an empty destination",
            args.dest.display()
        );
    }
    std::fs::create_dir_all(&args.dest)
        .with_context(|| format!("creating `{}`", args.dest.display()))?;
    let weights_path = args.dest.join("model.safetensors");
    weights.save_safetensors(&weights_path)?;
    let mut config = package.config.clone();
    config.weights = Some("model.safetensors".into());
    config.num_classes = Some(package.num_classes());
    config.label_names = Some(package.labels);
    config.id2label = None;
    let config_path = args.dest.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing `{}`", config_path.display()))?;

    let converted = Classifier::load(&args.dest)?;
    let cfg = source.preprocess_config();
    let probe = synthesize("input", &[1, 3, cfg.input_height, cfg.input_width]);
    let difference = (source.logits(&probe)? - converted.logits(&probe)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    ensure!(
        difference <= MAX_LOGIT_DIFFERENCE,
        "the converted package computes different logits (max difference {difference:e}); please report this"
    );
    tracing::info!(dest = %args.dest.display(), tensors = weights.len(), "package converted and verified");
    Ok(ExitCode::SUCCESS)
}
