//! Logging setup: tracing to stderr, text or JSON, level from `RUST_LOG`, else
//! `SAGEMAKER_CONTAINER_LOG_LEVEL`, else `info`.
//! Called once from `main`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour codes only for a terminal: CloudWatch and `docker logs` would show them raw.
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(is_terminal);
    // A second init (tests, embedding) keeps the first subscriber: not an error worth failing on.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The level when `RUST_LOG` is unset: `SAGEMAKER_CONTAINER_LOG_LEVEL` in Python's numeric
/// levels (10 debug, 20 info, 30 warning, 40 error), else `info`.
pub fn default_level() -> &'static str {
    match std::env::var("SAGEMAKER_CONTAINER_LOG_LEVEL")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        Some(0..=10) => "debug",
        Some(11..=20) | None => "info",
        Some(21..=30) => "warn",
        Some(_) => "error",
    }
}
