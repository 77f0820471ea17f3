//! `wick predict`: classify image files offline through the serving pipeline (decode, the
//! model's evaluation transform, batched inference) and print one JSON line per image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::PredictArgs;
use crate::model::preprocess::{decode, preprocess, to_batch, DecodeLimits};
use crate::model::{Classifier, ModelError, Prediction};

/// One output line: the predictions for a file, or why there are none.
#[derive(Serialize)]
struct Line<'a> {
    file: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<Vec<Prediction>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the command; exits non-zero if any image failed (after printing every result).
pub fn run(args: &PredictArgs) -> Result<ExitCode> {
    ensure!(args.top_k > 0, "`--top-k` must be at least 1 (given: 0)");
    ensure!(
        args.batch_size > 0,
        "`--batch-size` must be at least 1 (given: 0)"
    );
    let classifier = Classifier::load(&args.model_dir).with_context(|| {
        format!(
            "loading the model package in `{}`",
            args.model_dir.display()
        )
    })?;
    let limits = DecodeLimits {
        max_pixels: args.max_image_pixels,
    };
    let mut failures = 0usize;
    let stdout = std::io::stdout();
    for files in args.images.chunks(args.batch_size) {
        let results = classify_files(&classifier, files, &limits, args.top_k);
        let mut out = stdout.lock();
        for (file, result) in files.iter().zip(results) {
            let line = match result {
                Ok(predictions) => Line {
                    file,
                    predictions: Some(predictions),
                    error: None,
                },
                Err(err) => {
                    failures += 1;
                    Line {
                        file,
                        predictions: None,
                        error: Some(format!("{err:#}")),
                    }
                }
            };
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        }
        out.flush()?;
    }
    if failures > 0 {
        eprintln!(
            "error: {failures} of {} images could not be classified",
            args.images.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Decodes and transforms `files` in parallel, then classifies the readable ones as one batch.
fn classify_files(
    classifier: &Classifier,
    files: &[PathBuf],
    limits: &DecodeLimits,
    top_k: usize,
) -> Vec<Result<Vec<Prediction>>> {
    let cfg = classifier.preprocess_config();
    let inputs: Vec<Result<Vec<f32>>> = files
        .par_iter()
        .map(|file| {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading `{}`", file.display()))?;
            let image = decode(&bytes, limits).map_err(ModelError::from)?;
            Ok(preprocess(&image, cfg).map_err(ModelError::from)?)
        })
        .collect();
    let ready: Vec<Vec<f32>> = inputs
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut predictions = if ready.is_empty() {
        Ok(Vec::new())
    } else {
        to_batch(&ready, cfg)
            .map_err(ModelError::from)
            .and_then(|batch| classifier.classify(&batch, top_k))
            .map_err(anyhow::Error::from)
    };
    inputs
        .into_iter()
        .map(|input| match (input, &mut predictions) {
            (Err(err), _) => Err(err),
            (Ok(_), Ok(ranked)) => Ok(ranked.remove(0)),
            (Ok(_), Err(err)) => Err(anyhow::anyhow!("inference failed: {err:#}")),
        })
        .collect()
}
