//! Running agents over the protocol (`spec/PROTOCOL.md` section 13): the
//! supervisor of `run`, `work` and `from-config` (`supervisor`), the agent
//! adapters that start a `claude` or shell process for one attempt and
//! read its outcome (`agent`, 13.2), and tasks files, `orchestration.json`
//! and leader plans (`plan`, 13.3), and finding an unfinished run to
//! continue (`resume`, 13.6).
//!
//! **May use** [`crate::protocol`] (only through [`crate::Coordination`]'s
//! operations and the task model, never the files directly); nothing above
//! it (`claude` uses the data fence and handed commands from `agent`).

pub mod agent;
pub mod plan;
pub mod resume;
pub mod supervisor;
