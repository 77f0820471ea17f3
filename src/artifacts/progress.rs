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
    /// New counters for one transfer of `uri`, and the task that logs them as `action`.
    pub(crate) fn track(
        uri: String,
        action: &'static str,
        interval: Duration,
    ) -> (Arc<Progress>, Self) {
        let progress = Progress::new();
        let reporter = Self::start(Arc::clone(&progress), uri, action, interval);
        (progress, reporter)
    }

    fn start(
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn logs_bytes_objects_and_rate_on_every_tick() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        // Thread-local: the reporter task runs on this (current-thread) runtime's thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let progress = Progress::new();
        progress.expect(3, 3 << 20);
        progress.add_bytes(2 << 20);
        progress.object_done();
        let reporter = Reporter::start(
            Arc::clone(&progress),
            "s3://b/p/".into(),
            "downloading model",
            Duration::from_millis(20),
        );
        tokio::time::sleep(Duration::from_millis(70)).await;
        drop(reporter);
        let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text}");
        for field in [
            "downloading model",
            "uri=s3://b/p/",
            "bytes=2097152",
            "total_bytes=3145728",
            "objects=1",
            "total_objects=3",
            "mib_per_s=",
        ] {
            assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
        }
    }
}
