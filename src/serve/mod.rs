//! `wick serve`: the SageMaker hosting contract. Binds the port at once, loads and warms the
//! model on a blocking thread while `/ping` answers 503, then serves `/invocations` until
//! SIGTERM or SIGINT, after which it finishes the requests that have arrived and exits 0.

mod allocator;
mod body;
mod card;
mod compat;
pub(crate) mod config;
mod engine;
mod error;
mod handlers;
mod invoke;
mod large;
mod metrics;
mod multipart;
mod openapi;
mod page;
mod routes;
mod server;
mod state;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

pub use config::ServeConfig;
pub use engine::{Engine, EngineConfig, EngineError, Predictor};
pub use routes::app;
pub use state::{AppState, Ready};

use crate::artifacts::{self, ArtifactUri, FetchOptions, LocalModel};
use crate::cli::ServeArgs;
use crate::model::Model;
use server::{serve_connections, HttpLimits};

/// Runs the server until a shutdown signal (exit 0) or a model that fails to load (exit 1).
pub fn run(args: &ServeArgs) -> Result<ExitCode> {
    let config = ServeConfig::from_args(args)?;
    allocator::limit_arenas();
    // HTTP work is light (decoding runs on the blocking pool, inference on its own threads):
    // two I/O threads keep /ping answering while every core computes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wick-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(serve(config));
    // A model still loading when SIGTERM arrived must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn serve(config: ServeConfig) -> Result<ExitCode> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "wick serve configuration");
    if !crate::model::preprocess::jpeg_decoder_has_simd() {
        tracing::warn!(
            "this binary's JPEG decoder was built without its SIMD code (nasm was missing when \
             mozjpeg-sys was compiled): JPEG requests decode about 2x slower"
        );
    }
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.port))
        .await
        .with_context(|| format!("binding 0.0.0.0:{} (SAGEMAKER_BIND_TO_PORT)", config.port))?;
    tracing::info!(address = %listener.local_addr()?, "listening; /ping answers 503 until the model is ready");
    let grace = config.shutdown_grace;
    let location = config.model_location.clone();
    let fetch_options = FetchOptions {
        limits: config.archive_limits,
        ..FetchOptions::default()
    };
    let state = AppState::new(config);

    let mut loader = tokio::spawn(fetch_and_load(state.clone(), location, fetch_options));
    let mut is_loading = true;
    // Held for the server's lifetime: dropping it deletes a downloaded model's scratch copy.
    let mut _local_model = None;

    let limits = HttpLimits {
        header_read_timeout: state.config().header_read_timeout,
        max_header_bytes: state.config().max_header_bytes,
    };
    let server = tokio::spawn(serve_connections(
        listener,
        app(state.clone()),
        state.clone(),
        limits,
        state.shutdown_watch(),
        grace,
    ));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            joined = &mut loader, if is_loading => {
                is_loading = false;
                match joined {
                    Ok(Ok(model)) => _local_model = Some(model),
                    Ok(Err(err)) => {
                        tracing::error!(error = format!("{err:#}"), "the model failed to load; exiting");
                        return Ok(ExitCode::FAILURE);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the model loader crashed; exiting");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            signal = &mut shutdown => {
                tracing::info!(signal, grace_secs = grace.as_secs(), "shutting down: no new connections, finishing the requests that have arrived");
                state.begin_shutdown();
                break;
            }
        }
    }
    loader.abort();
    server.await.context("the HTTP server task")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Fetches the package (a no-op for a plain local directory), then loads and warms it on the
/// blocking pool. `/ping` answers 503 all along.
async fn fetch_and_load(
    state: AppState,
    location: ArtifactUri,
    options: FetchOptions,
) -> Result<LocalModel> {
    let started = Instant::now();
    let model = artifacts::fetch(&location, &options).await?;
    if model.is_scratch() {
        tracing::info!(uri = %location, fetch_ms = started.elapsed().as_millis() as u64, path = %model.path().display(), "model fetched");
    }
    let dir = model.path().to_path_buf();
    tokio::task::spawn_blocking(move || load_and_warm(&state, &dir))
        .await
        .context("the model loading thread")??;
    Ok(model)
}

/// Loads the package, runs one inference through the real path, starts the engine.
fn load_and_warm(state: &AppState, model_dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let model = Model::load(model_dir, state.config().precision)
        .with_context(|| format!("loading the model package in `{}`", model_dir.display()))?;
    let load_time = started.elapsed();
    let started = Instant::now();
    model.warm_up().context("warm-up inference")?;
    state
        .metrics()
        .set_model_times(load_time, started.elapsed());
    tracing::info!(
        task = ?model.task(),
        warmup_ms = started.elapsed().as_millis() as u64,
        "warm-up inference done; ready"
    );
    if let Some(card) = card::ModelCard::read(model_dir) {
        state.set_model_card(card);
    }
    state
        .start_engine(Arc::new(model))
        .context("starting the inference workers")?;
    Ok(())
}

/// Resolves on SIGTERM (SageMaker, `docker stop`) or SIGINT (Ctrl-C). As PID 1 in a container
/// there is no default handler, so without this the process would ignore SIGTERM.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    }
}
