//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text for
//! people or JSON lines for log shippers. Also the span field names every module shares, so a
//! session's lines can be found by the same key wherever they come from.

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Span and event field names, shared so that grepping one key finds a session everywhere.
pub mod fields {
    pub const SESSION_ID: &str = "session.id";
    pub const LISTENER: &str = "listener";
    pub const CLIENT_ADDR: &str = "client.addr";
    pub const BACKEND: &str = "backend";
}

/// The filter used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Calling it twice is harmless: the first one stays, so tests
/// and embedders that set their own subscriber are not overridden.
pub fn init(format: LogFormat) {
    let (filter, bad_env) = filter_from_env();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: journald, files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let (Ok(()), Some(problem)) = (installed, bad_env) {
        tracing::warn!("RUST_LOG is not a valid filter ({problem}); using `{DEFAULT_FILTER}`");
    }
}

/// `RUST_LOG` when it parses; otherwise the default and the reason, to warn once logging works.
fn filter_from_env() -> (EnvFilter, Option<String>) {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(e.to_string())),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn formats_have_cli_names() {
        let names: Vec<_> = LogFormat::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(names, ["text", "json"]);
    }

    #[test]
    fn init_twice_does_not_panic() {
        init(LogFormat::Text);
        init(LogFormat::Json);
    }
}
