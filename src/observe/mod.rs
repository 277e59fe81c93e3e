//! Observing a queue without changing it (`spec/PROTOCOL.md` sections 15 to
//! 17): metrics in the Prometheus text format (`metrics`, 16.2), the task
//! graph as DOT or Mermaid (`graph`, 16.3), an attempt's logs (`logs`, 16.4) and the consistency check with its repairs (`doctor`, 17; its
//! `--fix` is the one writer here, and it goes through the protocol's lock).
//!
//! **May use** [`crate::protocol`].

pub mod doctor;
pub mod graph;
pub mod logs;
pub mod metrics;
pub mod mount;
