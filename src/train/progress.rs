//! What a job shows while it runs. The long passes (a backbone or an encoder over every image):
//! a bar redrawn in place when stderr is a terminal, plain log lines every tenth otherwise,
//! since CloudWatch keeps every line and a redrawn bar would flood it. Each epoch: one metric
//! line on stdout, in the one format both trainers use ([`format_metric_line`]), which
//! SageMaker's `MetricDefinitions` regexes read (README "Training").

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Width of the bar in characters.
const BAR_WIDTH: usize = 30;

/// One pass being reported.
pub(crate) struct Progress {
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
    pub(crate) fn new(label: &'static str, total: usize, done: usize) -> Self {
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
    pub(crate) fn rate(&self) -> f64 {
        (self.done - self.started_at) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Records `n` more images.
    pub(crate) fn advance(&mut self, n: usize) {
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
    pub(crate) fn finish(&self) {
        if self.is_terminal {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

/// `epoch=N; key=value; ...;` with four decimals: the one metric line format of `wick train`,
/// whatever the task.
pub(crate) fn format_metric_line(epoch: usize, pairs: &[(&str, f64)]) -> String {
    let mut line = format!("epoch={epoch};");
    for (key, value) in pairs {
        line.push_str(&format!(" {key}={value:.4};"));
    }
    line
}

/// Prints a metric line to stdout and flushes it.
pub(crate) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not fail the job; the checkpoint and metrics.json keep the numbers.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
