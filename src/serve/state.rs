//! The server's shared state: the resolved configuration, the metrics, the shutdown signal
//! and, once loaded and warmed up, the model with the engine in front of it. Handlers read it;
//! `run` fills it.

use std::sync::{Arc, OnceLock};

use super::card::ModelCard;
use super::config::ServeConfig;
use tokio::sync::watch;

use super::engine::{Engine, EngineConfig, Predictor};
use super::metrics::{Metrics, Snapshot};

/// A model that has loaded and passed its warm-up inference.
pub struct Ready {
    /// The queue in front of the worker threads.
    pub(crate) engine: Engine,
    /// The model, shared with the workers (handlers prepare images with it).
    pub(crate) predictor: Arc<dyn Predictor>,
}

/// Shared server state: the configuration and, once loaded, the model.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    config: ServeConfig,
    ready: OnceLock<Ready>,
    /// What `GET /model/metadata` reports, read from the package at load.
    model_card: OnceLock<ModelCard>,
    /// One decoding job per core: more would only take CPU time from the inference threads.
    decode_permits: tokio::sync::Semaphore,
    metrics: Metrics,
    /// Turns true on SIGTERM: bodies still arriving stop being read.
    shutting_down: watch::Sender<bool>,
}

impl AppState {
    /// State with no model yet: `/ping` answers 503 until [`AppState::set_ready`].
    pub fn new(config: ServeConfig) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let decode_permits = tokio::sync::Semaphore::new(cores);
        let config_emf = config.emf;
        AppState {
            inner: Arc::new(Shared {
                config,
                ready: OnceLock::new(),
                model_card: OnceLock::new(),
                decode_permits,
                metrics: Metrics::new(config_emf),
                shutting_down: watch::Sender::new(false),
            }),
        }
    }

    /// The resolved configuration.
    pub(crate) fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    /// The loaded model, if any.
    pub(crate) fn ready(&self) -> Option<&Ready> {
        self.inner.ready.get()
    }

    /// The package's description, once loaded.
    pub(crate) fn model_card(&self) -> Option<&ModelCard> {
        self.inner.model_card.get()
    }

    /// Records the package's description; a second call is ignored.
    pub(crate) fn set_model_card(&self, card: ModelCard) {
        let _ = self.inner.model_card.set(card);
    }

    /// Limits concurrent decoding to one job per core.
    pub(crate) fn decode_permits(&self) -> &tokio::sync::Semaphore {
        &self.inner.decode_permits
    }

    /// The server's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What `/metrics` reports about the engine right now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        match self.ready() {
            None => Snapshot::default(),
            Some(ready) => Snapshot {
                is_ready: true,
                is_healthy: ready.engine.unhealthy().is_none(),
                workers_alive: ready.engine.workers_alive(),
                queue_depth_images: ready.engine.queued_images(),
            },
        }
    }

    /// Starts the shutdown: the accept loop stops and unfinished bodies stop being read.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.send_replace(true);
    }

    /// Watches for the shutdown.
    pub(crate) fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.inner.shutting_down.subscribe()
    }

    /// Publishes the loaded, warmed-up model; a second call is ignored.
    pub(crate) fn set_ready(&self, ready: Ready) {
        let _ = self.inner.ready.set(ready);
    }

    /// Starts the engine for `predictor` with this state's settings and publishes it.
    pub fn start_engine(&self, predictor: Arc<dyn Predictor>) -> std::io::Result<()> {
        let config = self.config();
        let engine = Engine::start(
            &predictor,
            &EngineConfig {
                workers: config.workers,
                queue_capacity: config.queue_capacity,
                max_batch_size: config.max_batch_size,
                stuck_after: config.timeout.saturating_mul(2),
                fault_delay: config.fault_inference_delay,
                fault_worker_exit_after: config.fault_worker_exit_after,
                batch_size_images: self.metrics().batch_size_images(),
            },
        )?;
        self.set_ready(Ready { engine, predictor });
        Ok(())
    }
}
