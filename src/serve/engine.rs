//! The inference engine: the one model copy, owned by dedicated worker threads fed through a
//! bounded queue. This is the only place where async request handling meets synchronous tensor
//! work: handlers submit preprocessed images and await a oneshot reply; workers take whatever
//! has queued up (dynamic batching, up to `max_batch_size` images) and run it as one batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use crate::model::package::Task;
use crate::model::{InferenceOptions, Input, Model, ModelError, Output};

/// What the engine runs: the seam where tests put a fake model.
pub trait Predictor: Send + Sync + 'static {
    /// What the model does: decides which response formats apply.
    fn task(&self) -> Task;
    /// Class names by index.
    fn labels(&self) -> &[String];
    /// One decoded image -> an engine input (runs on the blocking pool).
    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError>;
    /// As `prepare`, when the caller keeps only the image's size (no picture in the answer).
    fn prepare_sized(&self, image: RgbImage) -> Result<Input, ModelError> {
        self.prepare(image)
    }
    /// One output per `(input, options)` pair, in order (runs on an engine thread).
    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError>;
    /// A segmentation model with a single foreground class (label maps as 0/255).
    fn is_binary(&self) -> bool {
        false
    }
}

impl Predictor for Model {
    fn task(&self) -> Task {
        Model::task(self)
    }

    fn labels(&self) -> &[String] {
        Model::labels(self)
    }

    fn prepare(&self, image: RgbImage) -> Result<Input, ModelError> {
        Model::prepare(self, image)
    }

    fn prepare_sized(&self, image: RgbImage) -> Result<Input, ModelError> {
        Model::prepare_sized(self, image)
    }

    fn predict(&self, batch: &[(&Input, &InferenceOptions)]) -> Result<Vec<Output>, ModelError> {
        Model::predict(self, batch)
    }

    fn is_binary(&self) -> bool {
        Model::is_binary(self)
    }
}

/// Why a submission did not produce predictions.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The queue is full.
    #[error("the inference queue is full ({capacity} images waiting); retry later")]
    Overloaded {
        /// Queue capacity in images.
        capacity: usize,
    },
    /// The model failed on this batch.
    #[error("inference failed: {0}")]
    Inference(#[source] Arc<ModelError>),
    /// The model panicked; the worker survived.
    #[error("inference panicked: {0}")]
    Panicked(String),
    /// The workers are gone (shutdown).
    #[error("the inference workers have stopped")]
    Stopped,
}

/// Results of one submission, with how long it waited and ran.
pub(crate) struct Outcome {
    /// One output per image, in submission order.
    pub(crate) outputs: Vec<Output>,
    /// Time spent in the queue.
    pub(crate) queue: Duration,
    /// Time of the forward pass that included these images.
    pub(crate) inference: Duration,
}

struct Job {
    /// Each image with its own options (records of one request may differ).
    inputs: Vec<(Input, InferenceOptions)>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Outcome, EngineError>>,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads.
    pub(crate) workers: usize,
    /// Images that may wait.
    pub(crate) queue_capacity: usize,
    /// Most images per forward pass.
    pub(crate) max_batch_size: usize,
    /// A batch running longer than this means a hung worker: the engine reports itself
    /// unhealthy so SageMaker replaces the instance.
    pub(crate) stuck_after: Duration,
    /// Test-only: sleep before every forward pass.
    pub(crate) fault_delay: Option<Duration>,
    /// Test-only: a worker thread dies (as on a crash) after this many batches.
    pub(crate) fault_worker_exit_after: Option<u64>,
    /// Where each forward pass's image count is recorded (`/metrics`).
    pub(crate) batch_size_images: Histogram,
}

/// Liveness of the worker threads, shared with `/ping`.
struct Health {
    /// Worker threads still running.
    alive: AtomicUsize,
    /// Per worker: when its current batch started (ms since `epoch`, plus one), 0 when idle.
    busy_since_ms: Vec<AtomicU64>,
    epoch: Instant,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// The running engine. Dropping it closes the queue and joins the workers.
pub struct Engine {
    sender: Option<SyncSender<Job>>,
    queued_images: Arc<AtomicUsize>,
    capacity: usize,
    health: Arc<Health>,
    expected_workers: usize,
    stuck_after: Duration,
    workers: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts `config.workers` threads sharing `predictor`.
    pub(crate) fn start(
        predictor: &Arc<dyn Predictor>,
        config: &EngineConfig,
    ) -> std::io::Result<Self> {
        // The channel bound is in jobs; images are counted separately for admission.
        let (sender, receiver) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued_images = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Health {
            alive: AtomicUsize::new(0),
            busy_since_ms: (0..config.workers).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        });
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let worker = Worker {
                index,
                predictor: Arc::clone(predictor),
                receiver: Arc::clone(&receiver),
                queued_images: Arc::clone(&queued_images),
                health: Arc::clone(&health),
                config: config.clone(),
            };
            health.alive.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name(format!("wick-infer-{index}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(err) => {
                    health.alive.fetch_sub(1, Ordering::SeqCst);
                    return Err(err);
                }
            }
        }
        Ok(Engine {
            sender: Some(sender),
            queued_images,
            capacity: config.queue_capacity,
            health,
            expected_workers: config.workers,
            stuck_after: config.stuck_after,
            workers,
        })
    }

    /// Why the engine cannot serve, if it cannot: a worker thread has died, or one has been
    /// inside a single batch for longer than `stuck_after`.
    pub(crate) fn unhealthy(&self) -> Option<String> {
        let alive = self.health.alive.load(Ordering::SeqCst);
        if alive < self.expected_workers {
            return Some(format!(
                "{} of {} inference workers have stopped",
                self.expected_workers - alive,
                self.expected_workers
            ));
        }
        let now = self.health.now_ms();
        let stuck_ms = self.stuck_after.as_millis() as u64;
        self.health
            .busy_since_ms
            .iter()
            .map(|b| b.load(Ordering::SeqCst))
            .filter(|&since| since > 0)
            .map(|since| now.saturating_sub(since))
            .max()
            .filter(|&busy_ms| busy_ms > stuck_ms)
            .map(|busy_ms| format!("an inference worker has been busy on one batch for {busy_ms} ms (limit {stuck_ms} ms)"))
    }

    /// Whether `images` more would fit in the queue now.
    pub(crate) fn has_room(&self, images: usize) -> bool {
        let queued = self.queued_images.load(Ordering::SeqCst);
        queued == 0 || queued + images <= self.capacity
    }

    /// Worker threads still running.
    pub(crate) fn workers_alive(&self) -> usize {
        self.health.alive.load(Ordering::SeqCst)
    }

    /// Images waiting for a worker.
    pub(crate) fn queued_images(&self) -> usize {
        self.queued_images.load(Ordering::SeqCst)
    }

    pub(crate) fn submit(
        &self,
        inputs: Vec<(Input, InferenceOptions)>,
    ) -> Result<oneshot::Receiver<Result<Outcome, EngineError>>, EngineError> {
        let n = inputs.len();
        let queued = self.queued_images.fetch_add(n, Ordering::SeqCst);
        // A request larger than the whole queue is still admitted when the queue is empty.
        if queued > 0 && queued + n > self.capacity {
            self.queued_images.fetch_sub(n, Ordering::SeqCst);
            return Err(EngineError::Overloaded {
                capacity: self.capacity,
            });
        }
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        let sender = self.sender.as_ref().ok_or(EngineError::Stopped)?;
        match sender.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(err) => {
                self.queued_images.fetch_sub(n, Ordering::SeqCst);
                Err(match err {
                    TrySendError::Full(_) => EngineError::Overloaded {
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => EngineError::Stopped,
                })
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

struct Worker {
    index: usize,
    predictor: Arc<dyn Predictor>,
    receiver: Arc<Mutex<Receiver<Job>>>,
    queued_images: Arc<AtomicUsize>,
    health: Arc<Health>,
    config: EngineConfig,
}

/// Counts a worker out however its thread ends, a panic included.
struct AliveGuard(Arc<Health>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Worker {
    fn run(self) {
        let alive = AliveGuard(Arc::clone(&self.health));
        let mut batches = 0u64;
        while let Some(jobs) = self.next_batch() {
            let images: usize = jobs.iter().map(|j| j.inputs.len()).sum();
            self.queued_images.fetch_sub(images, Ordering::SeqCst);
            if self
                .config
                .fault_worker_exit_after
                .is_some_and(|limit| batches >= limit)
            {
                tracing::error!(
                    worker = self.index,
                    "fault injection: inference worker exits"
                );
                // Counted out before `jobs` drops: a client that sees its request fail must
                // already find /ping unhealthy.
                drop(alive);
                return;
            }
            batches += 1;
            // A client that timed out has dropped its receiver: skip its work.
            let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
            if !jobs.is_empty() {
                let busy = &self.health.busy_since_ms[self.index];
                busy.store(self.health.now_ms(), Ordering::SeqCst);
                self.run_batch(jobs);
                busy.store(0, Ordering::SeqCst);
            }
        }
    }

    /// Blocks for one job, then takes whatever else is already waiting, up to the batch size.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        let first = receiver.recv().ok()?;
        let mut images = first.inputs.len();
        let mut jobs = vec![first];
        while images < self.config.max_batch_size {
            match receiver.try_recv() {
                Ok(job) => {
                    images += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        let pairs: Vec<(&Input, &InferenceOptions)> = jobs
            .iter()
            .flat_map(|j| j.inputs.iter().map(|(input, options)| (input, options)))
            .collect();
        let predictor = &self.predictor;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(delay) = self.config.fault_delay {
                std::thread::sleep(delay);
            }
            // Run the forward pass on a rayon worker rather than on this thread: the kernels'
            // parallel loops then start on a thread that is already awake in the pool instead
            // of waking the pool from outside at every layer.
            rayon::scope(|_| predictor.predict(&pairs))
        }));
        let inference = started.elapsed();
        let expected = pairs.len();
        self.config.batch_size_images.observe(expected as f64);
        tracing::debug!(
            worker = self.index,
            images = expected,
            requests = jobs.len(),
            inference_ms = format!("{:.2}", inference.as_secs_f64() * 1e3),
            "forward pass"
        );
        drop(pairs);
        let mut results = match result {
            Ok(Ok(outputs)) if outputs.len() == expected => Ok(outputs.into_iter()),
            Ok(Ok(outputs)) => Err(format!(
                "the model returned {} results for {expected} images",
                outputs.len(),
            )),
            Ok(Err(err)) => {
                // One failed forward pass fails every request batched into it.
                let err = Arc::new(err);
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(EngineError::Inference(Arc::clone(&err))));
                }
                return;
            }
            Err(panic) => Err(panic_message(&*panic)),
        };
        for job in jobs {
            let queue = started.saturating_duration_since(job.enqueued);
            let outcome = match &mut results {
                Ok(all) => Ok(Outcome {
                    outputs: all.by_ref().take(job.inputs.len()).collect(),
                    queue,
                    inference,
                }),
                Err(message) => Err(EngineError::Panicked(message.clone())),
            };
            // The client may have gone (timeout): nothing to do about it.
            let _ = job.reply.send(outcome);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
