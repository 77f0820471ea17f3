//! What a job shows while it runs. The long passes (a backbone or an encoder over every image)
//! report through [`Progress`] (`crate::progress`: a bar on a terminal, plain log lines every
//! tenth otherwise). Each epoch: one metric
//! line on stdout, in the one format both trainers use ([`format_metric_line`]), which
//! SageMaker's `MetricDefinitions` regexes read (README "Training").

use std::io::Write;

pub(crate) use crate::progress::Progress;

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
