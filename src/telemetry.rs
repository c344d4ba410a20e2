//! Logging: tracing to stderr (journald keeps it), human-readable or JSON.
//! `RUST_LOG` overrides the level (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::manifest::LogFormat;

/// Installs the global subscriber. Call once. Colours only on a terminal
/// (never in journald or files).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
