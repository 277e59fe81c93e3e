//! The Claude Code integration (`spec/PROTOCOL.md` section 14): the hooks
//! that let interactive sessions pull work from the queue (`hook`, 14.1 to
//! 14.3, 14.5) and the merge of our hooks and allow rules into Claude Code's
//! settings files (`settings`, 14.4).
//!
//! **May use** [`crate::protocol`] and, for the data fence and the handed
//! commands that workers share, [`crate::run::agent`].

pub mod hook;
pub mod settings;
