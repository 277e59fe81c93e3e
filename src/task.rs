//! The task model and its state machine (`spec/PROTOCOL.md` sections 3 and
//! 5). Pure: no I/O. The transition methods check the rules and change the
//! value; `protocol` persists the result.

use crate::clock::{self, serde_ts, Timestamp};
use crate::config::Backoff;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Current major version of the task file format.
pub const TASK_SCHEMA_VERSION: u64 = 1;
/// Longest id accepted for tasks and agents, in bytes (`spec` section 8).
pub const MAX_ID_LEN: usize = 128;
/// Longest description accepted, in bytes (`spec` section 3.2).
pub const MAX_DESCRIPTION_LEN: usize = 1 << 20;
/// Lowest (most urgent) and highest priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=10;
/// Default priority of a new task.
pub const DEFAULT_PRIORITY: u8 = 5;

/// Checks a user-supplied name (task or agent id) against `spec/PROTOCOL.md`
/// section 8: 1 to 128 bytes of `[A-Za-z0-9._-]`, starting with a letter or
/// digit (so no `.`, `..`, `/`, NUL or hidden names).
///
/// # Errors
/// [`Error::Invalid`] naming `what` and the rule.
pub fn validate_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        let shown: String = s
            .chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string();
        Err(Error::Invalid(format!(
            "invalid {what} \"{shown}\": use 1-{MAX_ID_LEN} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )))
    }
}

/// A validated task id (`spec/PROTOCOL.md` section 8). It is also the task
/// file's name: `tasks/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Validates `s` as a task id.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `s` breaks the id rules.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        validate_name("task id", &s)?;
        Ok(TaskId(s))
    }

    /// A fresh id: `task-` plus 12 random hex digits (48 bits).
    pub fn generate() -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        TaskId(format!("task-{}", &u[..12]))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TaskId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a task is in its life cycle (`spec/PROTOCOL.md` section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting to be claimed (maybe on dependencies or backoff).
    Pending,
    /// Held by an agent under a lease.
    Claimed,
    /// Done; `result` holds the outcome. Terminal.
    Completed,
    /// Attempts exhausted: the dead-letter state. `retry` revives it.
    Dead,
    /// Cancelled by a user. `retry` revives it.
    Cancelled,
    /// A dependency is dead or cancelled. `retry` of that dependency, or of
    /// this task, revives it.
    Blocked,
}

impl Status {
    /// All states, in display order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Claimed,
        Status::Completed,
        Status::Dead,
        Status::Cancelled,
        Status::Blocked,
    ];

    /// The snake_case name used on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Claimed => "claimed",
            Status::Completed => "completed",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
            Status::Blocked => "blocked",
        }
    }

    /// Parses a status name (as on disk).
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the valid names.
    pub fn parse(s: &str) -> Result<Self> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown status `{s}`: expected one of pending, claimed, completed, dead, cancelled, blocked"
                ))
            })
    }

    /// True for states that make dependents `blocked`.
    pub fn is_failed_for_good(self) -> bool {
        matches!(self, Status::Dead | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker needs to know besides the description (`spec` section 3.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// Files relevant to the task (paths relative to the working directory).
    #[serde(default)]
    pub files: Vec<String>,
    /// Free-text hints for the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<String>,
    /// Tags; `claim --tag` filters on them.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One task: the content of `tasks/<id>.json` (`spec/PROTOCOL.md` section 3.2).
///
/// Unknown fields are kept in `extra` and written back unchanged, so a newer
/// minor version's fields survive an older binary's writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Major version of this file's format; see [`TASK_SCHEMA_VERSION`].
    pub schema_version: u64,
    /// The task's id, equal to the file name without `.json`.
    pub id: TaskId,
    /// Creation order: strictly increasing per directory, the age key of the
    /// claim order.
    pub seq: u64,
    /// What to do.
    pub description: String,
    /// 1 (most urgent) to 10.
    pub priority: u8,
    /// Ids of tasks that must be `completed` before this one is ready.
    #[serde(default)]
    pub dependencies: Vec<TaskId>,
    /// Files, hints and tags.
    #[serde(default)]
    pub context: Context,
    /// Shell command run by the shell agent adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Life-cycle state.
    pub status: Status,
    /// Attempts started and not given back (incremented by each claim,
    /// decremented by `release`).
    pub attempts: u32,
    /// Attempts allowed before the task goes `dead`.
    pub max_attempts: u32,
    /// Per-task backoff override; the config's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Agent holding the lease, when `claimed`.
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// Grows by one with every claim; 0 before the first.
    pub fencing_token: u64,
    /// When the current lease runs out, when `claimed`.
    #[serde(default, with = "serde_ts::option")]
    pub lease_expires_at: Option<Timestamp>,
    /// Not claimable before this instant (backoff after a failure).
    #[serde(default, with = "serde_ts::option")]
    pub not_before: Option<Timestamp>,
    /// Outcome reported by `complete`: a string or any JSON value.
    #[serde(default)]
    pub result: Option<Value>,
    /// Last error reported by `fail`, a lease expiry or a cancel.
    #[serde(default)]
    pub error: Option<String>,
    /// Log file of the last attempt, relative to `.coordination/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// When the task was created.
    #[serde(with = "serde_ts")]
    pub created_at: Timestamp,
    /// When the task file last changed.
    #[serde(with = "serde_ts")]
    pub updated_at: Timestamp,
    /// When the current or last claim was made.
    #[serde(default, with = "serde_ts::option")]
    pub claimed_at: Option<Timestamp>,
    /// When the task reached `completed`, `dead` or `cancelled`.
    #[serde(default, with = "serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a caller provides to create a task; the rest is filled in by
/// [`crate::Coordination::create`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewTask {
    /// Wanted id; generated (`task-` + hex) when `None`.
    pub id: Option<String>,
    /// What to do; must not be empty.
    pub description: String,
    /// 1..=10; [`DEFAULT_PRIORITY`] when `None`.
    pub priority: Option<u8>,
    /// Ids of existing tasks (or, in a batch, of other tasks of the batch).
    pub dependencies: Vec<String>,
    /// Files, hints, tags.
    pub context: Context,
    /// Shell command for the shell adapter.
    pub command: Option<String>,
    /// Attempts before `dead`; the config's `max_attempts` when `None`.
    pub max_attempts: Option<u32>,
    /// Per-task backoff; the config's when `None`.
    pub backoff: Option<Backoff>,
}

/// Checks the fields of a [`NewTask`] that need no disk access.
///
/// # Errors
/// [`Error::Invalid`] for an empty or oversized description, a priority
/// outside 1..=10, `max_attempts` of 0, or a bad id.
pub fn validate_new(t: &NewTask) -> Result<()> {
    if t.description.trim().is_empty() {
        return Err(Error::Invalid("task description is empty".into()));
    }
    if t.description.len() > MAX_DESCRIPTION_LEN {
        return Err(Error::Invalid(format!(
            "task description is {} bytes, the limit is {MAX_DESCRIPTION_LEN}; put long text in a file and list it with -f",
            t.description.len()
        )));
    }
    if let Some(p) = t.priority {
        if !PRIORITY_RANGE.contains(&p) {
            return Err(Error::Invalid(format!(
                "priority {p} is out of range: use 1 (most urgent) to 10"
            )));
        }
    }
    if t.max_attempts == Some(0) {
        return Err(Error::Invalid("max_attempts must be at least 1".into()));
    }
    if let Some(b) = &t.backoff {
        b.validate()?;
    }
    if let Some(id) = &t.id {
        validate_name("task id", id)?;
    }
    for d in &t.dependencies {
        validate_name("dependency id", d)?;
    }
    for tag in &t.context.tags {
        if tag.is_empty() || tag.len() > MAX_ID_LEN {
            return Err(Error::Invalid(format!(
                "tag `{tag}` must be 1-{MAX_ID_LEN} bytes"
            )));
        }
    }
    Ok(())
}

impl Task {
    fn wrong(&self, action: &str, hint: &str) -> Error {
        Error::WrongState {
            task_id: self.id.to_string(),
            status: self.status.to_string(),
            action: action.to_string(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!(": {hint}")
            },
        }
    }

    /// True when the lease ran out at `now` (`spec` section 6).
    pub fn lease_expired(&self, now: Timestamp) -> bool {
        self.status == Status::Claimed && self.lease_expires_at.is_none_or(|t| t <= now)
    }

    /// Checks that `token` is the current fencing token of a live lease
    /// (`spec` section 6.3, after Kleppmann 2016).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the token is stale or the lease expired;
    /// [`Error::WrongState`] when the task is not claimed and the token is current.
    pub fn check_token(&self, token: u64, now: Timestamp, action: &str) -> Result<()> {
        if token != self.fencing_token {
            let detail = if token > self.fencing_token {
                "no claim of this task ever returned that token".to_string()
            } else {
                format!(
                    "the task was claimed again since, and is now {}",
                    self.status
                )
            };
            return Err(Error::LeaseLost {
                task_id: self.id.to_string(),
                presented: token,
                current: self.fencing_token,
                detail,
            });
        }
        if self.status != Status::Claimed {
            return Err(self.wrong(action, "it is not claimed"));
        }
        if self.lease_expired(now) {
            return Err(Error::LeaseLost {
                task_id: self.id.to_string(),
                presented: token,
                current: self.fencing_token,
                detail: "the lease expired".into(),
            });
        }
        Ok(())
    }

    /// pending -> claimed: grants a lease of `lease_ms` milliseconds to
    /// `agent` and a new fencing token. Readiness (dependencies,
    /// `not_before`) is checked by the caller, who can see other tasks.
    ///
    /// # Errors
    /// [`Error::WrongState`] unless the task is `pending`.
    pub fn claim(&mut self, agent: &str, now: Timestamp, lease_ms: u64) -> Result<()> {
        if self.status != Status::Pending {
            return Err(self.wrong("claim", ""));
        }
        self.status = Status::Claimed;
        self.claimed_by = Some(agent.to_string());
        self.fencing_token += 1;
        self.attempts += 1;
        self.claimed_at = Some(now);
        self.lease_expires_at = Some(clock::add_ms(now, lease_ms));
        self.not_before = None;
        self.updated_at = now;
        Ok(())
    }

    /// Extends the lease to `now + lease_ms`.
    ///
    /// # Errors
    /// As [`Task::check_token`].
    pub fn heartbeat(&mut self, token: u64, now: Timestamp, lease_ms: u64) -> Result<()> {
        self.check_token(token, now, "heartbeat")?;
        self.lease_expires_at = Some(clock::add_ms(now, lease_ms));
        self.updated_at = now;
        Ok(())
    }

    /// claimed -> completed with `result`.
    ///
    /// # Errors
    /// As [`Task::check_token`].
    pub fn complete(&mut self, token: u64, now: Timestamp, result: Option<Value>) -> Result<()> {
        self.check_token(token, now, "complete")?;
        self.status = Status::Completed;
        self.result = result;
        self.error = None;
        self.lease_expires_at = None;
        self.completed_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Ends the current attempt as failed (from `fail` or a lease expiry):
    /// back to `pending` with `not_before = now + delay_ms` when attempts
    /// remain, else `dead`. Returns the new status. The token is not checked
    /// here.
    pub fn end_attempt_failed(&mut self, now: Timestamp, error: String, delay_ms: u64) -> Status {
        self.error = Some(error);
        self.lease_expires_at = None;
        self.claimed_by = None;
        self.updated_at = now;
        if self.attempts >= self.max_attempts {
            self.status = Status::Dead;
            self.completed_at = Some(now);
            self.not_before = None;
        } else {
            self.status = Status::Pending;
            self.not_before = Some(clock::add_ms(now, delay_ms));
        }
        self.status
    }

    /// claimed -> pending without spending an attempt.
    ///
    /// # Errors
    /// As [`Task::check_token`].
    pub fn release(&mut self, token: u64, now: Timestamp) -> Result<()> {
        self.check_token(token, now, "release")?;
        self.status = Status::Pending;
        self.attempts = self.attempts.saturating_sub(1);
        self.claimed_by = None;
        self.lease_expires_at = None;
        self.not_before = None;
        self.updated_at = now;
        Ok(())
    }

    /// pending|claimed|blocked -> cancelled. A holder's later calls get
    /// "lease lost" because the lease is gone.
    ///
    /// # Errors
    /// [`Error::WrongState`] for completed, dead or cancelled tasks.
    pub fn cancel(&mut self, now: Timestamp, reason: Option<String>) -> Result<()> {
        match self.status {
            Status::Pending | Status::Claimed | Status::Blocked => {}
            _ => {
                return Err(self.wrong(
                    "cancel",
                    "only pending, claimed or blocked tasks can be cancelled",
                ))
            }
        }
        self.status = Status::Cancelled;
        self.error = Some(reason.unwrap_or_else(|| "cancelled".into()));
        self.claimed_by = None;
        self.lease_expires_at = None;
        self.completed_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// dead|cancelled|blocked -> pending with a fresh attempt budget.
    ///
    /// # Errors
    /// [`Error::WrongState`] for other states.
    pub fn retry(&mut self, now: Timestamp) -> Result<()> {
        if !matches!(
            self.status,
            Status::Dead | Status::Cancelled | Status::Blocked
        ) {
            return Err(self.wrong(
                "retry",
                "only dead, cancelled or blocked tasks can be retried",
            ));
        }
        self.status = Status::Pending;
        self.attempts = 0;
        self.not_before = None;
        self.completed_at = None;
        self.claimed_by = None;
        self.lease_expires_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// pending -> blocked because dependency `dep` is dead or cancelled.
    pub fn block(&mut self, now: Timestamp, dep: &TaskId) {
        self.status = Status::Blocked;
        self.error = Some(format!("dependency `{dep}` is dead or cancelled"));
        self.not_before = None;
        self.updated_at = now;
    }
}
