//! Logging setup: tracing to stderr, text or JSON. The level comes from `RUST_LOG` when the
//! user sets it, else from `SAGEMAKER_CONTAINER_LOG_LEVEL` (Python's numbers or names), else
//! `info`. The image sets neither, so SageMaker's setting governs the shipped container.
//! Called once from `main`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
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

/// The log filter when `RUST_LOG` is unset, from `SAGEMAKER_CONTAINER_LOG_LEVEL`.
pub fn default_level() -> &'static str {
    filter_for_sagemaker_level(
        std::env::var("SAGEMAKER_CONTAINER_LOG_LEVEL")
            .ok()
            .as_deref(),
    )
}

/// Python's logging levels (10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, 50 CRITICAL, by number
/// or name) as a tracing filter. Debug is wick's own debug detail (every `/ping` and
/// `/metrics`, each request's headers and sizes, each forward pass): the dependencies' debug
/// output (the AWS SDK's, the HTTP server's) would bury it. Unset or unreadable: info.
pub fn filter_for_sagemaker_level(value: Option<&str>) -> &'static str {
    const DEBUG: &str = "info,wick=debug";
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return "info";
    };
    if let Ok(number) = value.parse::<u32>() {
        return match number {
            0..=10 => DEBUG,
            11..=20 => "info",
            21..=30 => "warn",
            _ => "error",
        };
    }
    match value.to_ascii_uppercase().as_str() {
        "DEBUG" | "NOTSET" => DEBUG,
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::filter_for_sagemaker_level as level;

    #[test]
    fn python_levels_by_number_and_name() {
        for (given, filter) in [
            (None, "info"),
            (Some(""), "info"),
            (Some("10"), "info,wick=debug"),
            (Some(" 20 "), "info"),
            (Some("30"), "warn"),
            (Some("40"), "error"),
            (Some("50"), "error"),
            (Some("debug"), "info,wick=debug"),
            (Some("INFO"), "info"),
            (Some("WARNING"), "warn"),
            (Some("ERROR"), "error"),
            (Some("CRITICAL"), "error"),
            (Some("verbose"), "info"),
        ] {
            assert_eq!(level(given), filter, "{given:?}");
        }
    }
}
