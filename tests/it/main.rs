//! The integration-test binary: the `orchestrate` CLI driven as a separate
//! process against a temporary `.coordination/` directory.
//!
//! - `support`: [`support::TestEnv`] and helpers.
//! - `cli`: every command, its stdout, `--json` shape, exit code and the
//!   task files it leaves on disk; bad input and bad data.
//! - `concurrency`: real processes racing for claims, killed holders.
//! - `harness`: helpers of the fault tests (pre_exec children, tree
//!   snapshots, the reader consistency check).
//! - `crash`: every crash point of every mutating command.
//! - `commit_log`: replay, checkpoint, reboot and doctor of the commit log.
//! - `diskfull`: a full disk (file-size limit) and a directory the caller
//!   cannot write.
//! - `hostile`: symlinks, malformed ids, huge sparse files, permissions.

mod archive;
mod cli;
mod commit_log;
mod concurrency;
mod crash;
mod diskfull;
mod harness;
mod hostile;
mod pipes;
mod support;
mod trust;
