//! Progress of the long passes (the backbone over every image): a bar redrawn in place when
//! stderr is a terminal, plain log lines every tenth otherwise, since CloudWatch keeps every
//! line and a redrawn bar would flood it.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Width of the bar in characters.
const BAR_WIDTH: usize = 30;

/// One pass being reported.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    started_at: usize,
    is_terminal: bool,
    next_tenth: usize,
}

impl Progress {
    /// Starts reporting a pass over `total` images of which `done` are already done (resumed).
    pub fn new(label: &'static str, total: usize, done: usize) -> Self {
        let total = total.max(1);
        Progress {
            label,
            total,
            done,
            started: Instant::now(),
            started_at: done,
            is_terminal: std::io::stderr().is_terminal(),
            next_tenth: done * 10 / total + 1,
        }
    }

    /// Images per second since the pass (re)started.
    pub fn rate(&self) -> f64 {
        (self.done - self.started_at) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Records `n` more images.
    pub fn advance(&mut self, n: usize) {
        self.done = (self.done + n).min(self.total);
        if self.is_terminal {
            let filled = self.done * BAR_WIDTH / self.total;
            let bar = format!("{}{}", "=".repeat(filled), " ".repeat(BAR_WIDTH - filled));
            let mut err = std::io::stderr().lock();
            // Best effort: a closed terminal must not fail the job.
            let _ = write!(
                err,
                "\r{} [{bar}] {}/{} images, {:.1} images/s ",
                self.label,
                self.done,
                self.total,
                self.rate()
            );
            let _ = err.flush();
        } else if self.done * 10 >= self.next_tenth * self.total {
            self.next_tenth = self.done * 10 / self.total + 1;
            tracing::info!(
                pass = self.label,
                done = self.done,
                total = self.total,
                images_per_second = format!("{:.1}", self.rate()),
                "progress"
            );
        }
    }

    /// Ends the bar's line.
    pub fn finish(&self) {
        if self.is_terminal {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}
