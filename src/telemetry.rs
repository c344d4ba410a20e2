//! Logging: tracing to stderr (journald keeps it), human-readable or JSON.
//! `RUST_LOG` overrides the level (default `info`).
//!
//! # Logs never carry secrets
//!
//! Whatever `RUST_LOG` asks for, the crates in [`CAPPED_TARGETS`] log at
//! [`CAPPED_LEVEL`] (`info`) at most: at debug and trace they print request
//! and response bodies and headers, such as a container's create request and
//! inspect response with its environment values, registry credentials and
//! AWS session tokens. berth's own events never carry an environment value
//! at any level; they name components, images and ids.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::manifest::LogFormat;

/// Targets (crates, and every module below them) whose debug and trace
/// events carry request or response bodies and headers: the Docker client
/// (`bollard`: container create bodies and inspect responses hold the
/// environment), the HTTP stack below it and below the AWS SDK (`hyper`,
/// `hyper_util`, `h2`), and the AWS SDK and its runtime (`aws_*`: signed
/// requests, credentials, the ECR token).
pub const CAPPED_TARGETS: &[&str] = &["bollard", "hyper", "hyper_util", "h2", "aws_"];

/// The most verbose level at which [`CAPPED_TARGETS`] are logged.
pub const CAPPED_LEVEL: Level = Level::INFO;

/// Installs the global subscriber. Call once. Colours only on a terminal
/// (never in journald or files).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A global filter on top of RUST_LOG's: no directive, however specific, lifts the cap.
    let cap = filter_fn(allowed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(cap)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(cap)
            .init(),
    }
}

/// Whether an event or span may be logged at all (see [`CAPPED_TARGETS`]).
fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= CAPPED_LEVEL || !is_capped(meta.target())
}

fn is_capped(target: &str) -> bool {
    CAPPED_TARGETS.iter().any(|t| {
        if t.ends_with('_') {
            target.starts_with(t)
        } else {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_crates_are_capped_and_others_are_not() {
        for t in [
            "bollard",
            "bollard::docker",
            "bollard::read",
            "hyper::proto::h1::io",
            "hyper_util::client::legacy::pool",
            "h2::codec::framed_read",
            "aws_smithy_runtime::client::orchestrator",
            "aws_sigv4::http_request::sign",
            "aws_config::imds::client",
            "aws_sdk_ecr::operation",
        ] {
            assert!(is_capped(t), "{t}");
        }
        for t in [
            "berth",
            "berth::supervisor",
            "bollardish",
            "h2o",
            "hyperion",
            "awsome",
        ] {
            assert!(!is_capped(t), "{t}");
        }
        // tracing orders levels by verbosity: ERROR < WARN < INFO < DEBUG < TRACE.
        assert!(Level::WARN < CAPPED_LEVEL && CAPPED_LEVEL < Level::DEBUG);
    }
}
