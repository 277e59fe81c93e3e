//! The task model and its state machine (`spec/PROTOCOL.md` sections 3 and
//! 5). Pure: no I/O. The transition methods check the rules and change the
//! value; `protocol` persists the result.

use crate::error::{Error, Result};
use crate::protocol::clock::{self, serde_ts, Timestamp};
use crate::protocol::config::Backoff;
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
    /// Checks the value ranges a reader enforces (`spec` section 3.2):
    /// priority 1..=10, `max_attempts` >= 1, a valid backoff.
    ///
    /// # Errors
    /// A sentence naming the bad field.
    pub fn check_ranges(&self) -> std::result::Result<(), String> {
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(format!("priority {} is outside 1..10", self.priority));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts is 0".into());
        }
        if let Some(b) = &self.backoff {
            b.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

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
            let detail = if self.fencing_token == 0 {
                // The kind stays `lease_lost` (a token that is not the
                // current one, spec 6.3); the words say what happened.
                "the task was never claimed, so no token is valid for it yet; claim it first"
                    .to_string()
            } else if token > self.fencing_token || token == 0 {
                format!(
                    "no claim of this task ever returned that token (the current one is {}); use the token your claim printed",
                    self.fencing_token
                )
            } else {
                format!(
                    "the task was claimed again since (current token {}) and is now {}; stop working on it",
                    self.fencing_token, self.status
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
            // The caller's token is the last one granted, but the lease is
            // gone: it expired and was reaped, or the task was cancelled.
            let detail = match self.status {
                Status::Pending | Status::Dead if self.fencing_token > 0 => format!(
                    "the lease is gone: it expired and was taken back, or the attempt was already reported; the task is now {}. Stop working on it",
                    self.status
                ),
                Status::Cancelled if self.fencing_token > 0 => {
                    "the task was cancelled; stop working on it".to_string()
                }
                _ => return Err(self.wrong(action, "it is not claimed")),
            };
            return Err(Error::LeaseLost {
                task_id: self.id.to_string(),
                presented: token,
                current: self.fencing_token,
                detail,
            });
        }
        if self.lease_expired(now) {
            return Err(Error::LeaseLost {
                task_id: self.id.to_string(),
                presented: token,
                current: self.fencing_token,
                detail: "the lease expired; stop working on it (it will be taken back and retried)"
                    .into(),
            });
        }
        Ok(())
    }

    /// pending -> claimed: grants a lease of `lease_ms` milliseconds to
    /// `agent` and a new fencing token. Readiness (dependencies,
    /// `not_before`) is checked by the caller, who can see other tasks.
    ///
    /// # Errors
    /// [`Error::WrongState`] unless the task is `pending`;
    /// [`Error::Corrupt`] (nothing changed) when `fencing_token` or
    /// `attempts` read from disk is at its maximum: counters are never
    /// wrapped, since a wrapped token would let a stale holder in (`spec`
    /// 6.3).
    pub fn claim(&mut self, agent: &str, now: Timestamp, lease_ms: u64) -> Result<()> {
        if self.status != Status::Pending {
            return Err(self.wrong("claim", ""));
        }
        let path = || std::path::PathBuf::from(format!("tasks/{}.json", self.id));
        let token = self.fencing_token.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                path(),
                "`fencing_token` is at its maximum (18446744073709551615); the task cannot be claimed again without reusing a token: cancel it and create it anew",
            )
        })?;
        let attempts = self.attempts.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                path(),
                "`attempts` is at its maximum (4294967295); cancel the task and create it anew",
            )
        })?;
        self.status = Status::Claimed;
        self.claimed_by = Some(agent.to_string());
        self.fencing_token = token;
        self.attempts = attempts;
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
        self.end_attempt(now, error, delay_ms, false)
    }

    /// claimed -> dead at once, whatever attempts are left: the failure
    /// would be the same on every attempt (`spec` 5.4, permanent failure).
    /// Returns `Status::Dead`.
    pub fn end_attempt_dead(&mut self, now: Timestamp, error: String) -> Status {
        self.end_attempt(now, error, 0, true)
    }

    fn end_attempt(&mut self, now: Timestamp, error: String, delay_ms: u64, dead: bool) -> Status {
        self.error = Some(error);
        self.lease_expires_at = None;
        self.claimed_by = None;
        self.updated_at = now;
        if dead || self.attempts >= self.max_attempts {
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

    /// pending -> blocked because dependency `dep` is dead, cancelled or
    /// blocked itself (`spec` 5.1, 5.6).
    pub fn block(&mut self, now: Timestamp, dep: &TaskId) {
        self.status = Status::Blocked;
        self.error = Some(format!("dependency `{dep}` is dead, cancelled or blocked"));
        self.not_before = None;
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::config::Backoff;
    use chrono::TimeZone;

    const LEASE: u64 = 60_000;

    fn t0() -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date")
    }

    fn at(ms: u64) -> Timestamp {
        clock::add_ms(t0(), ms)
    }

    fn task(status: Status) -> Task {
        Task {
            schema_version: TASK_SCHEMA_VERSION,
            id: TaskId::new("t1").expect("valid id"),
            seq: 1,
            description: "do it".into(),
            priority: DEFAULT_PRIORITY,
            dependencies: vec![],
            context: Context::default(),
            command: None,
            status,
            attempts: 0,
            max_attempts: 3,
            backoff: None,
            claimed_by: None,
            fencing_token: 0,
            lease_expires_at: None,
            not_before: None,
            result: None,
            error: None,
            log_file: None,
            created_at: t0(),
            updated_at: t0(),
            claimed_at: None,
            completed_at: None,
            extra: Map::new(),
        }
    }

    /// A task claimed by `agent-a` at t0 with a lease of [`LEASE`] ms.
    fn claimed() -> Task {
        let mut t = task(Status::Pending);
        t.claim("agent-a", t0(), LEASE)
            .expect("pending task claims");
        t
    }

    fn assert_wrong_state(r: Result<()>, action: &str) {
        match r {
            Err(Error::WrongState { action: a, .. }) => assert_eq!(a, action),
            other => panic!("expected WrongState for {action}, got {other:?}"),
        }
    }

    fn assert_lease_lost(r: Result<()>, presented: u64, current: u64, detail_has: &str) {
        match r {
            Err(Error::LeaseLost {
                presented: p,
                current: c,
                detail,
                ..
            }) => {
                assert_eq!((p, c), (presented, current));
                assert!(
                    detail.contains(detail_has),
                    "detail `{detail}` lacks `{detail_has}`"
                );
            }
            other => panic!("expected LeaseLost, got {other:?}"),
        }
    }

    // ---- claim ----

    #[test]
    fn claim_from_pending_grants_lease_token_and_attempt() {
        let mut t = task(Status::Pending);
        t.fencing_token = 4;
        t.attempts = 1;
        t.not_before = Some(t0());
        t.claim("agent-a", at(10), 5_000).unwrap();
        assert_eq!(t.status, Status::Claimed);
        assert_eq!(t.fencing_token, 5);
        assert_eq!(t.attempts, 2);
        assert_eq!(t.claimed_by.as_deref(), Some("agent-a"));
        assert_eq!(t.claimed_at, Some(at(10)));
        assert_eq!(t.lease_expires_at, Some(at(5_010)));
        assert_eq!(t.not_before, None);
        assert_eq!(t.updated_at, at(10));
    }

    #[test]
    fn claim_from_every_other_state_is_refused_and_changes_nothing() {
        for st in Status::ALL {
            if st == Status::Pending {
                continue;
            }
            let mut t = task(st);
            let before = t.clone();
            assert_wrong_state(t.claim("agent-b", at(1), LEASE), "claim");
            assert_eq!(t, before, "claim from {st} changed the task");
        }
    }

    #[test]
    fn claim_twice_is_refused() {
        let mut t = claimed();
        let before = t.clone();
        assert_wrong_state(t.claim("agent-b", at(1), LEASE), "claim");
        assert_eq!(t, before);
    }

    // ---- heartbeat ----

    #[test]
    fn heartbeat_with_current_token_extends_the_lease() {
        let mut t = claimed();
        t.heartbeat(1, at(30_000), 90_000).unwrap();
        assert_eq!(t.lease_expires_at, Some(at(120_000)));
        assert_eq!(t.updated_at, at(30_000));
        assert_eq!(t.status, Status::Claimed);
        assert_eq!(t.fencing_token, 1);
        assert_eq!(t.attempts, 1);
    }

    #[test]
    fn heartbeat_with_stale_token_is_lease_lost() {
        let mut t = claimed();
        t.end_attempt_failed(at(1), "boom".into(), 0);
        t.claim("agent-b", at(2), LEASE).unwrap();
        let before = t.clone();
        assert_lease_lost(t.heartbeat(1, at(3), LEASE), 1, 2, "claimed again");
        assert_eq!(t, before);
    }

    #[test]
    fn heartbeat_with_future_token_is_lease_lost() {
        let mut t = claimed();
        let before = t.clone();
        assert_lease_lost(t.heartbeat(7, at(3), LEASE), 7, 1, "no claim");
        assert_eq!(t, before);
    }

    #[test]
    fn heartbeat_after_expiry_is_lease_lost() {
        let mut t = claimed();
        let before = t.clone();
        // Exactly at the expiry instant the lease is gone.
        assert_lease_lost(t.heartbeat(1, at(LEASE), LEASE), 1, 1, "expired");
        assert_lease_lost(t.heartbeat(1, at(LEASE + 1), LEASE), 1, 1, "expired");
        assert_eq!(t, before);
        // One millisecond before, it is still held.
        t.heartbeat(1, at(LEASE - 1), LEASE).unwrap();
    }

    #[test]
    fn heartbeat_of_unclaimed_task_with_current_token_is_wrong_state() {
        for st in [Status::Pending, Status::Completed, Status::Dead] {
            let mut t = task(st);
            assert_wrong_state(t.heartbeat(0, at(1), LEASE), "heartbeat");
        }
    }

    #[test]
    fn lease_expired_only_for_claimed_tasks() {
        let t = claimed();
        assert!(!t.lease_expired(at(LEASE - 1)));
        assert!(t.lease_expired(at(LEASE)));
        let mut no_lease = claimed();
        no_lease.lease_expires_at = None;
        assert!(
            no_lease.lease_expired(t0()),
            "a claim without a lease is expired"
        );
        let mut p = task(Status::Pending);
        p.lease_expires_at = Some(t0());
        assert!(!p.lease_expired(at(LEASE * 2)));
    }

    // ---- complete ----

    #[test]
    fn complete_with_current_token() {
        let mut t = claimed();
        t.error = Some("old error".into());
        t.complete(1, at(500), Some(Value::from("done"))).unwrap();
        assert_eq!(t.status, Status::Completed);
        assert_eq!(t.result, Some(Value::from("done")));
        assert_eq!(t.error, None);
        assert_eq!(t.lease_expires_at, None);
        assert_eq!(t.completed_at, Some(at(500)));
        assert_eq!(t.updated_at, at(500));
        assert_eq!(t.fencing_token, 1);
    }

    #[test]
    fn complete_with_stale_or_expired_token_changes_nothing() {
        let mut t = claimed();
        t.release(1, at(1)).unwrap();
        t.claim("agent-b", at(2), LEASE).unwrap();
        let before = t.clone();
        assert_lease_lost(t.complete(1, at(3), None), 1, 2, "claimed again");
        assert_lease_lost(t.complete(2, at(2 + LEASE), None), 2, 2, "expired");
        assert_eq!(t, before);
    }

    #[test]
    fn complete_twice_is_wrong_state() {
        let mut t = claimed();
        t.complete(1, at(1), None).unwrap();
        let before = t.clone();
        assert_wrong_state(t.complete(1, at(2), None), "complete");
        assert_eq!(t, before);
    }

    // ---- fail (end_attempt_failed) ----

    #[test]
    fn failed_attempt_with_attempts_left_goes_back_to_pending_after_backoff() {
        let mut t = claimed();
        let st = t.end_attempt_failed(at(100), "boom".into(), 2_000);
        assert_eq!(st, Status::Pending);
        assert_eq!(t.status, Status::Pending);
        assert_eq!(t.not_before, Some(at(2_100)));
        assert_eq!(t.error.as_deref(), Some("boom"));
        assert_eq!(t.claimed_by, None);
        assert_eq!(t.lease_expires_at, None);
        assert_eq!(t.completed_at, None);
        assert_eq!(t.attempts, 1, "a failed attempt stays spent");
        assert_eq!(t.fencing_token, 1);
        // The old token is now useless ("lease lost": the holder must stop),
        // and the task claims again with a new one.
        assert_lease_lost(t.heartbeat(1, at(200), LEASE), 1, 1, "lease is gone");
        t.claim("agent-b", at(2_100), LEASE).unwrap();
        assert_eq!((t.fencing_token, t.attempts), (2, 2));
    }

    #[test]
    fn attempts_exhausted_makes_the_task_dead() {
        let mut t = task(Status::Pending);
        t.max_attempts = 3;
        let mut statuses = vec![];
        for i in 0..3u64 {
            t.claim("agent-a", at(i * 10), LEASE).unwrap();
            t.check_token(i + 1, at(i * 10 + 1), "fail").unwrap();
            statuses.push(t.end_attempt_failed(at(i * 10 + 1), format!("fail {i}"), 0));
        }
        assert_eq!(
            statuses,
            vec![Status::Pending, Status::Pending, Status::Dead]
        );
        assert_eq!(t.status, Status::Dead);
        assert_eq!(t.attempts, 3);
        assert_eq!(t.fencing_token, 3);
        assert_eq!(t.not_before, None);
        assert_eq!(t.completed_at, Some(at(21)));
        assert_eq!(t.error.as_deref(), Some("fail 2"));
        assert_wrong_state(t.claim("agent-a", at(100), LEASE), "claim");
    }

    #[test]
    fn max_attempts_one_dies_on_first_failure() {
        let mut t = task(Status::Pending);
        t.max_attempts = 1;
        t.claim("a", t0(), LEASE).unwrap();
        assert_eq!(t.end_attempt_failed(at(1), "x".into(), 1_000), Status::Dead);
    }

    // ---- release ----

    #[test]
    fn release_gives_the_attempt_back() {
        let mut t = claimed();
        t.release(1, at(10)).unwrap();
        assert_eq!(t.status, Status::Pending);
        assert_eq!(t.attempts, 0);
        assert_eq!(t.claimed_by, None);
        assert_eq!(t.lease_expires_at, None);
        assert_eq!(t.not_before, None);
        assert_eq!(t.fencing_token, 1, "the token never goes back");
        t.claim("agent-b", at(11), LEASE).unwrap();
        assert_eq!((t.fencing_token, t.attempts), (2, 1));
    }

    #[test]
    fn release_with_stale_token_or_expired_lease_is_lease_lost() {
        let mut t = claimed();
        let before = t.clone();
        assert_lease_lost(t.release(0, at(1)), 0, 1, "ever returned that token");
        assert_lease_lost(t.release(1, at(LEASE)), 1, 1, "expired");
        assert_eq!(t, before);
        let mut p = task(Status::Pending);
        assert_wrong_state(p.release(0, at(1)), "release");
    }

    // ---- cancel ----

    #[test]
    fn cancel_from_each_state() {
        for st in Status::ALL {
            let mut t = if st == Status::Claimed {
                claimed()
            } else {
                task(st)
            };
            let before = t.clone();
            let r = t.cancel(at(5), Some("no longer needed".into()));
            match st {
                Status::Pending | Status::Claimed | Status::Blocked => {
                    r.unwrap();
                    assert_eq!(t.status, Status::Cancelled);
                    assert_eq!(t.error.as_deref(), Some("no longer needed"));
                    assert_eq!(t.claimed_by, None);
                    assert_eq!(t.lease_expires_at, None);
                    assert_eq!(t.completed_at, Some(at(5)));
                }
                _ => {
                    assert_wrong_state(r, "cancel");
                    assert_eq!(t, before, "cancel from {st} changed the task");
                }
            }
        }
    }

    #[test]
    fn cancel_without_reason_records_cancelled() {
        let mut t = task(Status::Pending);
        t.cancel(at(1), None).unwrap();
        assert_eq!(t.error.as_deref(), Some("cancelled"));
    }

    #[test]
    fn holder_of_a_cancelled_task_cannot_complete_it() {
        let mut t = claimed();
        t.cancel(at(1), None).unwrap();
        let before = t.clone();
        let r = t.complete(1, at(2), None);
        assert!(
            matches!(r, Err(Error::WrongState { .. } | Error::LeaseLost { .. })),
            "got {r:?}"
        );
        assert_eq!(t, before);
    }

    // ---- retry ----

    #[test]
    fn retry_from_each_state() {
        for st in Status::ALL {
            let mut t = task(st);
            t.attempts = 3;
            t.fencing_token = 3;
            t.not_before = Some(at(1_000));
            t.completed_at = Some(t0());
            let before = t.clone();
            let r = t.retry(at(7));
            match st {
                Status::Dead | Status::Cancelled | Status::Blocked => {
                    r.unwrap();
                    assert_eq!(t.status, Status::Pending);
                    assert_eq!(t.attempts, 0, "retry gives a fresh attempt budget");
                    assert_eq!(t.fencing_token, 3, "the token never goes back");
                    assert_eq!(t.not_before, None);
                    assert_eq!(t.completed_at, None);
                    assert_eq!(t.updated_at, at(7));
                }
                _ => {
                    assert_wrong_state(r, "retry");
                    assert_eq!(t, before, "retry from {st} changed the task");
                }
            }
        }
    }

    #[test]
    fn dead_task_retried_then_claimed_gets_a_new_token() {
        let mut t = task(Status::Pending);
        t.max_attempts = 1;
        t.claim("a", t0(), LEASE).unwrap();
        assert_eq!(t.end_attempt_failed(at(1), "x".into(), 0), Status::Dead);
        t.retry(at(2)).unwrap();
        t.claim("b", at(3), LEASE).unwrap();
        assert_eq!((t.fencing_token, t.attempts), (2, 1));
        assert_lease_lost(t.complete(1, at(4), None), 1, 2, "claimed again");
    }

    // ---- block ----

    #[test]
    fn block_records_the_dependency() {
        let mut t = task(Status::Pending);
        t.not_before = Some(at(9));
        let dep = TaskId::new("dep-1").unwrap();
        t.block(at(3), &dep);
        assert_eq!(t.status, Status::Blocked);
        assert!(t.error.as_deref().unwrap().contains("dep-1"));
        assert_eq!(t.not_before, None);
    }

    // ---- check_token ----

    #[test]
    fn check_token_never_changes_the_task() {
        let t = claimed();
        let before = t.clone();
        t.check_token(1, at(1), "x").unwrap();
        let _ = t.check_token(0, at(1), "x");
        let _ = t.check_token(1, at(LEASE), "x");
        assert_eq!(t, before);
    }

    // ---- validate_name ----

    #[test]
    fn validate_name_accepts_good_names() {
        for ok in [
            "a",
            "A",
            "0",
            "task-1",
            "a.b_c-d",
            "a..b",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert!(validate_name("task id", ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn validate_name_refuses_bad_names() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\\b",
            "a\0b",
            ".hidden",
            "-flag",
            "_x",
            "a b",
            "a\nb",
            "é",
            "a:b",
            long.as_str(),
        ] {
            match validate_name("task id", bad) {
                Err(Error::Invalid(msg)) => assert!(msg.contains("task id"), "{msg}"),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn validate_name_error_is_bounded_and_escaped() {
        let Err(Error::Invalid(msg)) =
            validate_name("agent id", &format!("a\0{}", "b".repeat(5000)))
        else {
            panic!("accepted")
        };
        assert!(msg.len() < 300, "message is {} bytes", msg.len());
        assert!(msg.contains("\\0"), "NUL not escaped: {msg}");
    }

    #[test]
    fn task_id_deserialisation_validates() {
        assert!(serde_json::from_str::<TaskId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<TaskId>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<TaskId>("\"a/b\"").is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_ne!(a, b);
        validate_name("task id", a.as_str()).unwrap();
        assert!(a.as_str().starts_with("task-") && a.as_str().len() == 17);
    }

    // ---- validate_new ----

    fn new_task() -> NewTask {
        NewTask {
            description: "x".into(),
            ..Default::default()
        }
    }

    fn invalid(t: &NewTask) -> String {
        match validate_new(t) {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validate_new_priority_bounds() {
        for p in [1, 5, 10] {
            validate_new(&NewTask {
                priority: Some(p),
                ..new_task()
            })
            .unwrap();
        }
        for p in [0, 11, 255] {
            let m = invalid(&NewTask {
                priority: Some(p),
                ..new_task()
            });
            assert!(m.contains(&format!("priority {p}")), "{m}");
        }
    }

    #[test]
    fn validate_new_description() {
        for d in ["", "   ", "\n\t"] {
            let m = invalid(&NewTask {
                description: d.into(),
                ..new_task()
            });
            assert!(m.contains("empty"), "{m}");
        }
        validate_new(&NewTask {
            description: "y".repeat(MAX_DESCRIPTION_LEN),
            ..new_task()
        })
        .unwrap();
        let m = invalid(&NewTask {
            description: "y".repeat(MAX_DESCRIPTION_LEN + 1),
            ..new_task()
        });
        assert!(m.contains("limit"), "{m}");
        let m = invalid(&NewTask {
            description: "y".repeat(10 << 20),
            ..new_task()
        });
        assert!(m.contains(&format!("{}", 10 << 20)), "{m}");
    }

    #[test]
    fn validate_new_other_fields() {
        invalid(&NewTask {
            max_attempts: Some(0),
            ..new_task()
        });
        validate_new(&NewTask {
            max_attempts: Some(1),
            ..new_task()
        })
        .unwrap();
        invalid(&NewTask {
            id: Some("../x".into()),
            ..new_task()
        });
        invalid(&NewTask {
            dependencies: vec!["ok".into(), "a/b".into()],
            ..new_task()
        });
        invalid(&NewTask {
            context: Context {
                tags: vec![String::new()],
                ..Default::default()
            },
            ..new_task()
        });
        invalid(&NewTask {
            backoff: Some(Backoff {
                factor: 0.5,
                ..Backoff::default()
            }),
            ..new_task()
        });
    }

    // ---- serde ----

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let mut t = claimed();
        t.extra
            .insert("added_in_1_1".into(), serde_json::json!({"k": [1, 2]}));
        let text = serde_json::to_string_pretty(&t).unwrap();
        let back: Task = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "claimed");
        assert_eq!(v["lease_expires_at"], "2026-01-02T03:05:05.000Z");
    }

    #[test]
    fn status_names_round_trip() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()).unwrap(), st);
            assert_eq!(serde_json::to_value(st).unwrap(), Value::from(st.as_str()));
        }
        assert!(Status::parse("Pending").is_err());
        assert!(Status::parse("").is_err());
    }

    // ---- backoff (config.rs) ----

    fn backoff(base_ms: u64, factor: f64, max_ms: u64, jitter: f64) -> Backoff {
        Backoff {
            base_ms,
            factor,
            max_ms,
            jitter,
        }
    }

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        let b = backoff(1_000, 2.0, 60_000, 0.5);
        let got: Vec<u64> = (1..=9).map(|n| b.ceiling_ms(n)).collect();
        assert_eq!(
            got,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(b.ceiling_ms(0), 1_000, "attempt 0 is treated as the first");
        assert_eq!(b.ceiling_ms(u32::MAX), 60_000, "huge attempts saturate");
        assert_eq!(backoff(500, 1.0, 900, 0.0).ceiling_ms(40), 500);
        assert_eq!(backoff(100, 3.0, 1_000, 0.0).ceiling_ms(3), 900);
        assert_eq!(backoff(100, 3.0, 1_000, 0.0).ceiling_ms(4), 1_000);
        assert_eq!(
            backoff(u64::MAX / 2, 10.0, u64::MAX, 0.0).ceiling_ms(100),
            u64::MAX
        );
    }

    #[test]
    fn backoff_delay_stays_within_jitter_bounds() {
        let b = backoff(1_000, 2.0, 60_000, 0.5);
        for attempt in 1..=10 {
            let c = b.ceiling_ms(attempt);
            assert_eq!(b.delay_ms(attempt, 0.0), c, "u = 0 gives the ceiling");
            for i in 0..=100 {
                let u = f64::from(i) / 100.0;
                let d = b.delay_ms(attempt, u);
                assert!(d <= c, "attempt {attempt} u {u}: {d} > ceiling {c}");
                assert!(d >= c / 2, "attempt {attempt} u {u}: {d} < half of {c}");
            }
        }
        assert_eq!(b.delay_ms(1, 1.0), 500);
        assert_eq!(b.delay_ms(1, 0.5), 750);
        // u outside [0, 1] is clamped.
        assert_eq!(b.delay_ms(1, 7.0), 500);
        assert_eq!(b.delay_ms(1, -3.0), 1_000);
        // No jitter: exactly the ceiling; full jitter: anything down to 0.
        let none = backoff(1_000, 2.0, 60_000, 0.0);
        assert_eq!(none.delay_ms(3, 0.9), 4_000);
        let full = backoff(1_000, 2.0, 60_000, 1.0);
        assert_eq!(full.delay_ms(3, 1.0), 0);
        assert_eq!(full.delay_ms(3, 0.25), 3_000);
    }

    #[test]
    fn backoff_validate() {
        backoff(1_000, 2.0, 60_000, 0.5).validate().unwrap();
        backoff(0, 1.0, 0, 0.0).validate().unwrap();
        backoff(1, 1.0, 1, 1.0).validate().unwrap();
        for b in [
            backoff(1_000, 0.9, 60_000, 0.5),
            backoff(1_000, f64::NAN, 60_000, 0.5),
            backoff(1_000, f64::INFINITY, 60_000, 0.5),
            backoff(1_000, 2.0, 60_000, -0.1),
            backoff(1_000, 2.0, 60_000, 1.1),
            backoff(1_000, 2.0, 999, 0.5),
        ] {
            assert!(
                matches!(b.validate(), Err(Error::Invalid(_))),
                "{b:?} accepted"
            );
        }
    }
}
