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
//! The library holds the protocol; the `orchestrate` binary is a thin CLI
//! over it. Library APIs carry no semver promise before 1.0; the on-disk
//! format and the CLI's JSON output do (`spec/PROTOCOL.md`).
#![warn(missing_docs)]

pub mod agent;
pub mod clock;
pub mod config;
pub mod dag;
pub mod doctor;
pub mod error;
pub mod events;
pub mod faults;
pub mod fsroot;
pub mod graph;
pub mod hook;
mod index;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod protocol;
pub mod registry;
pub mod settings;
pub mod store;
pub mod supervisor;
pub mod task;
pub mod trust;
pub mod watch;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use config::{Backoff, Config, Durability};
pub use error::{Error, Result};
pub use protocol::{
    init_dir, resolve_dir, BatchIds, ClaimOutcome, ClaimRequest, Coordination, Listing, NotReady,
    NotReadyReason, Reaped, StatusReport,
};
pub use task::{Context, NewTask, Status, Task, TaskId};
