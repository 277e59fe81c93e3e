//! `events.jsonl`: one JSON object per line, appended with one `write(2)`
//! per line under the directory lock (`spec/PROTOCOL.md` section 3.4). It is
//! history, not state: a lost tail never loses a task.

use crate::error::{Error, Result};
use crate::protocol::clock::{self, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Write};
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
    let mut f = crate::protocol::store::open_regular(
        path,
        libc::O_RDWR | libc::O_APPEND | libc::O_CREAT,
        0o600,
        "open",
    )?;
    crate::protocol::store::set_file_mode(&f, path)?;
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
        crate::protocol::faults::point("before_event_append");
        if crate::protocol::faults::armed("mid_event_append") {
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

/// Longest event line read back, in bytes (1 MiB). A longer line (no
/// writer of ours makes one) is skipped whole, so readers stay within
/// bounded memory whatever the file holds.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Bytes read per `read(2)` by [`LogReader`] (64 KiB).
const CHUNK_BYTES: usize = 64 << 10;

/// Reads the lines appended to the log after an offset, in linear time and
/// bounded memory (one chunk plus one line of at most [`MAX_LINE_BYTES`]):
/// for `events`, `events --follow`, `watch`, `metrics` and `doctor`.
#[derive(Debug)]
pub struct LogReader {
    path: std::path::PathBuf,
    offset: u64,
    partial: Vec<u8>,
    skipping: bool,
}

impl LogReader {
    /// A reader of `path` from byte `offset` (0: the whole log).
    pub fn new(path: &Path, offset: u64) -> Self {
        LogReader {
            path: path.to_path_buf(),
            offset,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// A reader that starts at the log's current end (follow mode).
    pub fn at_end(path: &Path) -> Self {
        let len = crate::protocol::fsroot::symlink_metadata(path)
            .map(|m| m.len())
            .unwrap_or(0);
        Self::new(path, len)
    }

    /// Calls `f` with each complete line (without its `\n`) appended since
    /// the last call, in order; a torn last line waits for its end. A log
    /// that shrank (truncated or replaced) is read again from the start.
    /// Lines over [`MAX_LINE_BYTES`] are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Corrupt`] (symlink, FIFO) from the log, or
    /// what `f` returns.
    pub fn read_lines<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(mut file) = open_for_reading(&self.path)? else {
            return Ok(());
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| Error::io("seek", &self.path, e))?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", &self.path, e).into()),
            };
            self.offset += n as u64;
            let mut rest = &chunk[..n];
            while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                let (head, tail) = (&rest[..pos], &rest[pos + 1..]);
                if self.skipping {
                    self.skipping = false;
                } else if self.partial.is_empty() {
                    f(head)?;
                } else {
                    self.partial.extend_from_slice(head);
                    let line = std::mem::take(&mut self.partial);
                    if line.len() <= MAX_LINE_BYTES {
                        f(&line)?;
                    }
                }
                rest = tail;
            }
            if !self.skipping {
                self.partial.extend_from_slice(rest);
                if self.partial.len() > MAX_LINE_BYTES {
                    self.partial = Vec::new();
                    self.skipping = true;
                }
            }
        }
        Ok(())
    }

    /// The bytes after the last newline read so far: a line still being
    /// written, or torn by a crash (empty while skipping an overlong line).
    pub fn unterminated(&self) -> &[u8] {
        &self.partial
    }

    /// As [`LogReader::read_lines`], with each line parsed as an [`Event`];
    /// lines that are not events are skipped, as the spec allows.
    ///
    /// # Errors
    /// As [`LogReader::read_lines`].
    pub fn read_events<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(Event) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.read_lines(|line| match serde_json::from_slice::<Event>(line) {
            Ok(e) => f(e),
            Err(_) => Ok(()),
        })
    }
}

/// Calls `f` with every well-formed event of the log, in order, in
/// bounded memory (see [`LogReader`]).
///
/// # Errors
/// As [`LogReader::read_lines`].
pub fn for_each(path: &Path, f: impl FnMut(Event)) -> Result<()> {
    let mut f = f;
    LogReader::new(path, 0).read_events(|e| {
        f(e);
        Ok::<(), Error>(())
    })
}

/// Opens the log for reading without following a symlink or blocking on a
/// FIFO; `Ok(None)` when it does not exist.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink or a non-regular file; [`Error::Io`].
pub fn open_for_reading(path: &Path) -> Result<Option<std::fs::File>> {
    match crate::protocol::store::open_regular(path, libc::O_RDONLY, 0, "open") {
        Ok(f) => Ok(Some(f)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path, r: &mut LogReader) -> Vec<String> {
        let mut out = Vec::new();
        r.read_lines(|l| {
            out.push(String::from_utf8_lossy(l).into_owned());
            Ok::<(), Error>(())
        })
        .unwrap();
        let _ = path;
        out
    }

    #[test]
    fn log_reader_handles_chunks_torn_tails_long_lines_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        // A line that spans several chunks, a too-long line, a torn tail.
        let long_ok = "a".repeat(CHUNK_BYTES * 3);
        let too_long = "b".repeat(MAX_LINE_BYTES + 10);
        std::fs::write(&p, format!("one\n{long_ok}\n{too_long}\ntwo\nthr")).unwrap();
        let mut r = LogReader::new(&p, 0);
        let got = lines(&p, &mut r);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "one");
        assert_eq!(got[1].len(), long_ok.len());
        assert_eq!(got[2], "two");
        assert_eq!(r.unterminated(), b"thr");
        // The torn line completes later.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"ee\nfour\n")
            .unwrap();
        assert_eq!(lines(&p, &mut r), vec!["three", "four"]);
        // Truncated and rewritten: read again from the start.
        std::fs::write(&p, "new\n").unwrap();
        assert_eq!(lines(&p, &mut r), vec!["new"]);
    }
}
