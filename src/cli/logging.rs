//! tracing-subscriber to stderr: `-v`/`-q`, `$ORCHESTRATE_LOG`, `--log-format json`.

use super::Global;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs never go to stdout.
pub fn init(g: &Global) {
    // -v wins over -q (which for `run` also hides progress); a non-empty
    // $ORCHESTRATE_LOG (EnvFilter syntax) wins over both.
    let default = match (g.verbose, g.quiet) {
        (0, true) => "error",
        (0, false) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("ORCHESTRATE_LOG") {
        Ok(s) if !s.is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(default))
        }
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Logs never block or fail a command (a full or closed stderr).
        .with_writer(|| super::output::StderrNoWait);
    if g.log_format.as_deref() == Some("json") {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init();
    } else {
        let _ = builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .without_time()
            .try_init();
    }
}
