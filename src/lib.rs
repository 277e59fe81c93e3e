//! # orchestrate
//!
//! Coordinate many independently launched agents (Claude Code sessions,
//! shell workers, anything that follows `spec/PROTOCOL.md`) through
//! lock-protected JSON files in a shared `.coordination/` directory, with no
//! server. A task is never held by two claimers at once, no task is lost, a
//! crashed claimer's task comes back after its lease, and a stale holder is
//! fenced off by its token.
//!
//! ```no_run
//! use orchestrate::{Coordination, ClaimRequest, ClaimOutcome, NewTask};
//! # fn main() -> orchestrate::Result<()> {
//! let (c, _created) = Coordination::init(".coordination", Some("Build it".into()))?;
//! let t = c.create(NewTask { description: "Write the parser".into(), priority: Some(1), ..Default::default() })?;
//! if let ClaimOutcome::Claimed(task) = c.claim(&ClaimRequest { agent: "worker-1".into(), ..Default::default() })? {
//!     c.complete(task.id.as_str(), task.fencing_token, Some("done".into()))?;
//! }
//! # let _ = t; Ok(()) }
//! ```
//!
//! Four parts (see `ARCHITECTURE.md`): [`protocol`] (the on-disk format and
//! every change to it), [`run`] (workers, adapters, plans: running agents
//! over the protocol), [`claude`] (the Claude Code hooks and settings) and
//! [`observe`] (metrics, the graph, `doctor`). The `orchestrate`
//! binary is a thin CLI over them. Library APIs carry no semver promise before 1.0; the on-disk
//! format and the CLI's JSON output do (`spec/PROTOCOL.md`).
#![warn(missing_docs)]

/// The README's code blocks, compiled as doctests (`cargo test --doc`), so
/// its library example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod claude;
pub mod error;
pub mod observe;
pub mod protocol;
pub mod run;

pub use error::{Error, Result};
pub use protocol::clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use protocol::config::{Backoff, Config, Durability};
pub use protocol::discovery::{Discovery, NewDiscovery};
pub use protocol::task::{Context, NewTask, Status, Task, TaskId};
pub use protocol::{
    init_dir, resolve_dir, BatchIds, ClaimOutcome, ClaimRequest, Coordination, Listing, NotReady,
    NotReadyReason, Reaped, Report, StatusReport, TaskEdit,
};
