//! How a job ended when it did not fail: what both trainers return, what `metrics.json` calls
//! it and which exit code `wick train` gives it.

/// How the job ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Trained to the end (epoch limit or early stopping).
    Completed,
    /// A stop request ended it; checkpoints and the best model so far are saved.
    Stopped,
}

impl Outcome {
    /// `Completed` when training ran to its end, else `Stopped`.
    pub(crate) fn from_completed(completed: bool) -> Self {
        if completed {
            Outcome::Completed
        } else {
            Outcome::Stopped
        }
    }

    /// The job's `status` in `metrics.json`.
    pub(crate) fn status(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Stopped => "stopped",
        }
    }
}
