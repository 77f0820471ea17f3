//! `wick predict`: run image files offline through the serving pipeline (decode, the model's
//! preparation, batched inference, the same answer encoder) and print one JSON line per image;
//! optionally write the label maps or the drawn boxes as pictures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::PredictArgs;
use crate::codec::media::ResponseFormat;
use crate::codec::options::{ImageOutput, RawOptions, RequestOptions};
use crate::codec::respond::Answer;
use crate::model::package::Task;
use crate::model::preprocess::{decode, DecodeLimits};
use crate::model::{Input, Model, ModelError, Output};
use crate::progress::Progress;

/// One output line: the answer for a file, or why there is none.
#[derive(Serialize)]
struct Line<'a> {
    file: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<serde_json::Value>,
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
    let model = Model::load(&args.model_dir, args.precision).with_context(|| {
        format!(
            "loading the model package in `{}`",
            args.model_dir.display()
        )
    })?;
    let raw =
        RawOptions::from_custom_attributes(Some(&args.options)).context("reading `--options`")?;
    let options = RequestOptions::resolve(&raw, model.task(), model.labels(), args.top_k)
        .context("reading `--options`")?;
    if let Some(dir) = &args.output_dir {
        ensure!(
            model.task() != Task::Classification,
            "`--output-dir` writes label maps or drawn boxes; a classification model has none"
        );
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating `--output-dir` `{}`", dir.display()))?;
    }
    let limits = DecodeLimits {
        max_pixels: args.max_image_pixels,
    };
    let mut failures = 0usize;
    let stdout = std::io::stdout();
    let mut progress = Progress::new("predict", "images", args.images.len(), 0);
    for files in args.images.chunks(args.batch_size) {
        let results = predict_files(&model, files, &limits, &options);
        // The chunk's lines go out at once, with the bar out of the way.
        let mut out = Vec::new();
        for (file, result) in files.iter().zip(results) {
            let answer = result.and_then(|(output, image)| {
                let json = encode(&model, &options, &output, &image, ResponseFormat::Json)?;
                if let Some(dir) = &args.output_dir {
                    write_picture(&model, &options, &output, &image, file, dir)?;
                }
                Ok(serde_json::from_slice(&json)?)
            });
            let line = match answer {
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
        progress.suspend(|| {
            let mut stdout = stdout.lock();
            stdout.write_all(&out)?;
            stdout.flush()
        })?;
        progress.advance(files.len());
    }
    progress.finish();
    if failures > 0 {
        eprintln!(
            "error: {failures} of {} images could not be processed",
            args.images.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn encode(
    model: &Model,
    options: &RequestOptions,
    output: &Output,
    image: &Arc<RgbImage>,
    format: ResponseFormat,
) -> Result<Vec<u8>> {
    Ok(Answer {
        output,
        image: Some(image),
        image_size: Some(image.dimensions()),
        options,
        labels: model.labels(),
        is_binary: model.is_binary(),
    }
    .encode(format)?)
}

/// `<stem>.png` in `dir`: the picture `wick serve` answers with `Accept: image/png`.
fn write_picture(
    model: &Model,
    options: &RequestOptions,
    output: &Output,
    image: &Arc<RgbImage>,
    file: &Path,
    dir: &Path,
) -> Result<()> {
    let png = encode(model, options, output, image, ResponseFormat::Png)?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let suffix = match (model.task(), options.image_output) {
        (Task::Segmentation, ImageOutput::Overlay) => "overlay",
        (Task::Segmentation, ImageOutput::Mask) => "mask",
        _ => "boxes",
    };
    let path = dir.join(format!("{stem}.{suffix}.png"));
    std::fs::write(&path, png).with_context(|| format!("writing `{}`", path.display()))
}

/// Decodes and prepares `files` in parallel, then runs the readable ones as one batch.
fn predict_files(
    model: &Model,
    files: &[PathBuf],
    limits: &DecodeLimits,
    options: &RequestOptions,
) -> Vec<Result<(Output, Arc<RgbImage>)>> {
    let inputs: Vec<Result<(Input, Arc<RgbImage>)>> = files
        .par_iter()
        .map(|file| {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading `{}`", file.display()))?;
            let image = Arc::new(decode(&bytes, limits).map_err(ModelError::from)?);
            let input = model.prepare(RgbImage::clone(&image))?;
            Ok((input, image))
        })
        .collect();
    let batch: Vec<(&Input, &crate::model::InferenceOptions)> = inputs
        .iter()
        .filter_map(|r| {
            r.as_ref()
                .ok()
                .map(|(input, _)| (input, &options.inference))
        })
        .collect();
    let mut outputs = if batch.is_empty() {
        Ok(Vec::new().into_iter())
    } else {
        model
            .predict(&batch)
            .map(Vec::into_iter)
            .map_err(anyhow::Error::from)
    };
    inputs
        .into_iter()
        .map(|input| match (input, &mut outputs) {
            (Err(err), _) => Err(err),
            (Ok((_, image)), Ok(all)) => all
                .next()
                .map(|output| (output, image))
                .context("the model returned fewer outputs than images"),
            (Ok(_), Err(err)) => Err(anyhow::anyhow!("inference failed: {err:#}")),
        })
        .collect()
}
