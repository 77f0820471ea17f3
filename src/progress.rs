//! Progress of the long passes (`wick predict` over its files, `wick train`'s backbone and
//! encoder passes): an `indicatif` bar redrawn in place when stderr is a terminal, otherwise a
//! plain log line at every tenth, since CloudWatch keeps every line and a redrawn bar would
//! flood it.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// One pass being reported.
pub(crate) struct Progress {
    label: &'static str,
    unit: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    started_at: usize,
    next_tenth: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts reporting a pass over `total` `unit`s (`"images"`) of which `done` are already
    /// done (a resumed job).
    pub(crate) fn new(label: &'static str, unit: &'static str, total: usize, done: usize) -> Self {
        let total = total.max(1);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64).with_position(done as u64);
            let template =
                format!("{label} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            label,
            unit,
            total,
            done,
            started: Instant::now(),
            started_at: done,
            next_tenth: done * 10 / total + 1,
            bar,
        }
    }

    /// Units per second since the pass (re)started.
    pub(crate) fn rate(&self) -> f64 {
        (self.done - self.started_at) as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Records `n` more units.
    pub(crate) fn advance(&mut self, n: usize) {
        self.done = (self.done + n).min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        } else if self.done * 10 >= self.next_tenth * self.total {
            self.next_tenth = self.done * 10 / self.total + 1;
            tracing::info!(
                pass = self.label,
                done = self.done,
                total = self.total,
                unit = self.unit,
                per_second = format!("{:.1}", self.rate()),
                "progress"
            );
        }
    }

    /// Runs `write` (lines to stdout) with the bar out of the way.
    pub(crate) fn suspend<R>(&self, write: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Leaves the finished bar on its line.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stop_at_the_total_and_a_resumed_pass_rates_only_its_own_work() {
        let mut progress = Progress::new("predict", "images", 10, 4);
        assert_eq!(progress.next_tenth, 5);
        progress.advance(3);
        assert_eq!((progress.done, progress.next_tenth), (7, 8));
        progress.advance(100);
        assert_eq!(progress.done, 10, "never past the total");
        assert!(progress.rate() > 0.0);
        let fresh = Progress::new("predict", "images", 10, 4);
        assert_eq!(fresh.rate(), 0.0, "the 4 resumed images are not this run's");
    }
}
