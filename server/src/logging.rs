//! Where musterd's log lines go and how they look: standard error, as text for people or as
//! one JSON object a line for a log pipeline (`--log-format json`). What is logged is set by
//! `MUSTERD_LOG` (`info` by default): a level (`debug`, `warn`), or levels per target, as
//! `info,musterd::access=off` (no access log).
//!
//! Every request is logged once at target `musterd::access` (see `crate::http`), by its
//! route's pattern rather than its path, so a token given in a path never reaches a log.

use clap::ValueEnum;
use std::sync::OnceLock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Lines for people (colour on a terminal).
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Sets up logging for the process, once.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTERD_LOG")
        .unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Whether log lines are text: a plain line for people (`musterd listening on …`) is
/// printed beside them then, and left out of a JSON log.
pub fn text() -> bool {
    FORMAT.get().is_none_or(|f| *f == LogFormat::Text)
}
