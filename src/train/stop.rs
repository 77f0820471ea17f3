//! The stop request: SIGTERM (SageMaker's `StopTrainingJob`, spot interruption: `docker stop
//! -t 120`, SIGKILL 120 s later) or SIGINT (Ctrl-C) sets a flag that the passes check between
//! batches, so the job saves a checkpoint and the best model so far and exits in time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once a stop was requested.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag raised by SIGTERM and SIGINT.
    pub(crate) fn install() -> std::io::Result<Self> {
        let flag = StopFlag::default();
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&flag.0))?;
        }
        Ok(flag)
    }

    /// Whether a stop was requested.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
