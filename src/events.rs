//! `events.jsonl`: one JSON object per line, appended with one `write(2)`
//! per line under the directory lock (`spec/PROTOCOL.md` section 3.4). It is
//! history, not state: a lost tail never loses a task.

use crate::clock::{self, Timestamp};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (RFC 3339 UTC, milliseconds).
    pub ts: String,
    /// What happened: `task_created`, `task_claimed`, `task_heartbeat`,
    /// `task_completed`, `task_failed`, `task_released`, `task_expired`,
    /// `task_dead`, `task_cancelled`, `task_blocked`, `task_retried`,
    /// `task_unblocked`, `index_rebuilt`, ... (spec section 3.4).
    pub event: String,
    /// The task concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent that caused it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The task's attempt number after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The task's fencing token after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    /// Status before the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Status after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The run's correlation id (`$ORCHESTRATE_CORRELATION_ID`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Event-specific details (error text, delay, ...).
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

impl Event {
    /// A new event named `event` at `now`.
    pub fn new(event: &str, now: Timestamp) -> Self {
        Event {
            ts: clock::format(&now),
            event: event.to_string(),
            task_id: None,
            agent_id: None,
            attempt: None,
            fencing_token: None,
            from: None,
            to: None,
            correlation_id: None,
            detail: Map::new(),
        }
    }

    /// Adds a detail field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Appends `events` to the log at `path` with one `write(2)` each. No fsync:
/// the log is history (spec section 3.4).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or written.
pub fn append(path: &Path, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // A FIFO or symlink planted in place of the log must not hang or
    // redirect a writer that holds the lock.
    let mut f = crate::store::open_regular(
        path,
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600),
        "open",
    )?;
    crate::store::set_file_mode(&f, path)?;
    // A crash in the middle of an append leaves a torn last line: start on a
    // new line so that the torn one stays the only casualty.
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if len > 0 {
        use std::os::unix::fs::FileExt;
        let mut last = [0u8; 1];
        if f.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            f.write_all(b"\n")
                .map_err(|e| Error::io("append", path, e))?;
        }
    }
    for ev in events {
        let mut line = serde_json::to_vec(ev).map_err(|e| Error::Other(e.to_string()))?;
        line.push(b'\n');
        crate::faults::point("before_event_append");
        if crate::faults::armed("mid_event_append") {
            let _ = f.write_all(&line[..line.len() / 2]);
            std::process::abort();
        }
        f.write_all(&line)
            .map_err(|e| Error::io("append", path, e))?;
    }
    Ok(())
}

/// Reads every well-formed line of the log. A torn last line (a crash in
/// the middle of an append) and lines that are not events are skipped, as
/// the spec allows.
///
/// # Errors
/// [`Error::Io`] when the file exists but cannot be read.
pub fn read_all(path: &Path) -> Result<Vec<Event>> {
    let Some(f) = open_for_reading(path)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).split(b'\n') {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if let Ok(ev) = serde_json::from_slice::<Event>(&line) {
            out.push(ev);
        }
    }
    Ok(out)
}

/// Opens the log for reading without following a symlink or blocking on a
/// FIFO; `Ok(None)` when it does not exist.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink or a non-regular file; [`Error::Io`].
pub fn open_for_reading(path: &Path) -> Result<Option<std::fs::File>> {
    match crate::store::open_regular(path, OpenOptions::new().read(true), "open") {
        Ok(f) => Ok(Some(f)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
