//! Agent records: `agents/<agent-id>.json`, one per registered agent
//! (`spec/PROTOCOL.md` section 3.5). Written under the directory lock with
//! the atomic-write protocol; used by the Claude Code hooks to remember a
//! session and to bound how often its Stop hook blocks.

use crate::protocol::clock::{serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Current major version of the agent file format.
pub const AGENT_SCHEMA_VERSION: u64 = 1;

/// Whether an agent is around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Registered and not ended.
    Active,
    /// Ended (session end); holds nothing.
    Gone,
}

/// The content of `agents/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Major version of this file's format.
    pub schema_version: u64,
    /// The agent id (the file name without `.json`).
    pub id: String,
    /// Active or gone.
    pub status: AgentStatus,
    /// What kind of agent: `claude-code` for hook-driven sessions.
    pub kind: String,
    /// Claude Code's working directory, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Claude Code's transcript, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_path: Option<String>,
    /// When the agent first registered.
    #[serde(with = "serde_ts")]
    pub registered_at: Timestamp,
    /// When a hook last ran for it.
    #[serde(with = "serde_ts")]
    pub last_seen_at: Timestamp,
    /// Stop-hook blocks in a row without progress (`spec` section 14.3).
    #[serde(default)]
    pub consecutive_blocks: u32,
    /// `<task id>:<fencing token>` the last block was about, to tell progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_block: Option<String>,
    /// The Claude Code `session_id` that registered this agent id
    /// (SessionStart), so that a second live session with the same id is
    /// told so and acts under its own id (`spec` 3.5, 14.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AgentRecord {
    /// A fresh active record for `id` at `now`.
    pub fn new(id: &str, kind: &str, now: Timestamp) -> Self {
        AgentRecord {
            schema_version: AGENT_SCHEMA_VERSION,
            id: id.to_string(),
            status: AgentStatus::Active,
            kind: kind.to_string(),
            cwd: None,
            transcript_path: None,
            registered_at: now,
            last_seen_at: now,
            consecutive_blocks: 0,
            last_block: None,
            session_id: None,
            extra: Map::new(),
        }
    }
}
