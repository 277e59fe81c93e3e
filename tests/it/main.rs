//! The integration-test binary: the `orchestrate` CLI driven as a separate
//! process against a temporary `.coordination/` directory.
//!
//! - `support`: [`support::TestEnv`] and helpers.
//! - `cli`: every command, its stdout, `--json` shape, exit code and the
//!   task files it leaves on disk; bad input and bad data.
//! - `concurrency`: real processes racing for claims, killed holders.

mod cli;
mod concurrency;
mod support;
