//! `wick package`: check that a model package loads, archive it the way SageMaker expects
//! (`model.tar.gz`, files at the root), and optionally upload it. The one command besides the
//! server that runs an async runtime, and only for the upload.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::artifacts::{self, archive, S3Overrides, TransferOptions};
use crate::cli::PackageArgs;
use crate::model::Classifier;

/// Runs the command; prints the archive path (and the S3 URI when uploaded) on stdout.
pub fn run(args: &PackageArgs) -> Result<ExitCode> {
    // Refuse to publish what `wick serve` could not load.
    let classifier = Classifier::load(&args.model_dir).with_context(|| {
        format!(
            "loading the model package in `{}` (it is checked before archiving)",
            args.model_dir.display()
        )
    })?;
    let architecture = classifier.architecture().to_owned();
    drop(classifier);

    let packed = archive::pack(&args.model_dir, &args.output)
        .with_context(|| format!("writing `{}`", args.output.display()))?;
    tracing::info!(
        archive = %args.output.display(),
        architecture = %architecture,
        files = packed.files,
        bytes = packed.bytes,
        archive_bytes = packed.archive_bytes,
        "package archived"
    );
    println!("{}", args.output.display());

    if let Some(dest) = &args.upload {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime for the upload")?;
        let uploaded = runtime.block_on(artifacts::upload(
            &args.output,
            dest,
            &TransferOptions::default(),
            &S3Overrides::default(),
        ))?;
        tracing::info!(
            uri = %uploaded.uri,
            bytes = uploaded.bytes,
            parts = uploaded.parts,
            elapsed_ms = uploaded.elapsed.as_millis() as u64,
            "archive uploaded"
        );
        println!("{}", uploaded.uri);
    }
    Ok(ExitCode::SUCCESS)
}
