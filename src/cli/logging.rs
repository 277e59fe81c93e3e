//! tracing-subscriber to stderr: `-v`/`-q`, `$ORCHESTRATE_LOG`, `--log-format json`.

use super::Global;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs never go to stdout.
pub fn init(g: &Global) {
    let default = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = match std::env::var("ORCHESTRATE_LOG") {
        Ok(s) if !s.is_empty() && g.verbose == 0 && !g.quiet => EnvFilter::new(s),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
