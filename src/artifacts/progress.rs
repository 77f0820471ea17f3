//! Transfer counters shared by the download tasks, and the task that logs them every few
//! seconds (SageMaker only shows the container log while a big model downloads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters updated by every transfer task.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    bytes: AtomicU64,
    total_bytes: AtomicU64,
    objects: AtomicU64,
    total_objects: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) elapsed: Duration,
    pub(crate) bytes: u64,
    pub(crate) total_bytes: u64,
    pub(crate) objects: u64,
    pub(crate) total_objects: u64,
    pub(crate) requests: u64,
    pub(crate) retries: u64,
}

impl Snapshot {
    pub(crate) fn mib_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.bytes as f64 / (1024.0 * 1024.0) / seconds
        } else {
            0.0
        }
    }
}

impl Progress {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Progress {
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            total_objects: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    pub(crate) fn expect(&self, objects: u64, bytes: u64) {
        self.total_objects.fetch_add(objects, Ordering::Relaxed);
        self.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn object_done(&self) {
        self.objects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            elapsed: self.started.elapsed(),
            bytes: self.bytes.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            total_objects: self.total_objects.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// Logs the counters every `interval` until dropped.
pub(crate) struct Reporter(tokio::task::JoinHandle<()>);

impl Reporter {
    pub(crate) fn start(
        progress: Arc<Progress>,
        uri: String,
        action: &'static str,
        interval: Duration,
    ) -> Self {
        Reporter(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await; // the first tick is immediate
            loop {
                ticks.tick().await;
                let now = progress.snapshot();
                tracing::info!(
                    uri = %uri,
                    bytes = now.bytes,
                    total_bytes = now.total_bytes,
                    objects = now.objects,
                    total_objects = now.total_objects,
                    mib_per_s = format_args!("{:.1}", now.mib_per_second()),
                    retries = now.retries,
                    "{action}"
                );
            }
        }))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}
