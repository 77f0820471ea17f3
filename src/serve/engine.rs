//! The inference engine: the one model copy, owned by dedicated worker threads fed through a
//! bounded queue. This is the only place where async request handling meets synchronous tensor
//! work: handlers submit preprocessed images and await a oneshot reply; workers take whatever
//! has queued up (dynamic batching, up to `max_batch_size` images) and run it as one batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::oneshot;

use crate::model::preprocess::{to_batch, PreprocessConfig};
use crate::model::{Classifier, ModelError, Prediction};

/// What the engine runs: the seam where tests put a fake model.
pub trait Predictor: Send + Sync + 'static {
    /// The transform requests must be preprocessed with.
    fn preprocess_config(&self) -> &PreprocessConfig;
    /// The `top_k` best classes of each image in `batch` `(n, 3, h, w)`.
    fn classify(&self, batch: &Tensor, top_k: usize) -> Result<Vec<Vec<Prediction>>, ModelError>;
}

impl Predictor for Classifier {
    fn preprocess_config(&self) -> &PreprocessConfig {
        Classifier::preprocess_config(self)
    }

    fn classify(&self, batch: &Tensor, top_k: usize) -> Result<Vec<Vec<Prediction>>, ModelError> {
        Classifier::classify(self, batch, top_k)
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
pub struct Outcome {
    /// Predictions per image, in submission order.
    pub predictions: Vec<Vec<Prediction>>,
    /// Time spent in the queue.
    pub queue: Duration,
    /// Time of the forward pass that included these images.
    pub inference: Duration,
}

struct Job {
    inputs: Vec<Vec<f32>>,
    top_k: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Outcome, EngineError>>,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads.
    pub workers: usize,
    /// Images that may wait.
    pub queue_capacity: usize,
    /// Most images per forward pass.
    pub max_batch_size: usize,
    /// Test-only: sleep before every forward pass.
    pub fault_delay: Option<Duration>,
}

/// The running engine. Dropping it closes the queue and joins the workers.
pub struct Engine {
    sender: Option<SyncSender<Job>>,
    queued_images: Arc<AtomicUsize>,
    capacity: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts `config.workers` threads sharing `predictor`.
    pub fn start(predictor: &Arc<dyn Predictor>, config: &EngineConfig) -> std::io::Result<Self> {
        // The channel bound is in jobs; images are counted separately for admission.
        let (sender, receiver) = mpsc::sync_channel::<Job>(config.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued_images = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let worker = Worker {
                predictor: Arc::clone(predictor),
                receiver: Arc::clone(&receiver),
                queued_images: Arc::clone(&queued_images),
                config: config.clone(),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("wick-infer-{index}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Engine {
            sender: Some(sender),
            queued_images,
            capacity: config.queue_capacity,
            workers,
        })
    }

    /// Queues `inputs` (preprocessed CHW images) for inference; fails at once when full.
    pub fn submit(
        &self,
        inputs: Vec<Vec<f32>>,
        top_k: usize,
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
            top_k,
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
    predictor: Arc<dyn Predictor>,
    receiver: Arc<Mutex<Receiver<Job>>>,
    queued_images: Arc<AtomicUsize>,
    config: EngineConfig,
}

impl Worker {
    fn run(self) {
        while let Some(jobs) = self.next_batch() {
            let images: usize = jobs.iter().map(|j| j.inputs.len()).sum();
            self.queued_images.fetch_sub(images, Ordering::SeqCst);
            // A client that timed out has dropped its receiver: skip its work.
            let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
            if !jobs.is_empty() {
                self.run_batch(jobs);
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
        let top_k = jobs.iter().map(|j| j.top_k).max().unwrap_or(1);
        let inputs: Vec<Vec<f32>> = jobs.iter().flat_map(|j| j.inputs.iter().cloned()).collect();
        let predictor = &self.predictor;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(delay) = self.config.fault_delay {
                std::thread::sleep(delay);
            }
            let batch =
                to_batch(&inputs, predictor.preprocess_config()).map_err(ModelError::from)?;
            predictor.classify(&batch, top_k)
        }));
        let inference = started.elapsed();
        let mut results = match result {
            Ok(Ok(predictions)) if predictions.len() == inputs.len() => Ok(predictions.into_iter()),
            Ok(Ok(predictions)) => Err(format!(
                "the model returned {} results for {} images",
                predictions.len(),
                inputs.len()
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
                Ok(all) => {
                    let predictions = all
                        .by_ref()
                        .take(job.inputs.len())
                        .map(|mut p| {
                            p.truncate(job.top_k);
                            p
                        })
                        .collect();
                    Ok(Outcome {
                        predictions,
                        queue,
                        inference,
                    })
                }
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
