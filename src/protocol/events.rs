//! `events.jsonl`: one JSON object per line, appended with one `write(2)`
//! per line under the directory lock (`spec/PROTOCOL.md` section 3.4). It is
//! history, not state: a lost tail never loses a task.

use crate::error::{Error, Result};
use crate::protocol::clock::{self, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
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
    // Over the rotation size: start a new segment first (spec 3.7). The
    // caller holds the lock.
    if crate::protocol::fsroot::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.len() >= ROTATE_BYTES)
    {
        if let Some(root) = path.parent() {
            rotate(&crate::protocol::layout::Layout::new(root))?;
        }
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

/// Reads every well-formed line of the history (segments, then the live
/// log `path`; `spec` 3.7). A torn last line (a crash in
/// the middle of an append) and lines that are not events are skipped, as
/// the spec allows.
///
/// # Errors
/// [`Error::Io`] when the file exists but cannot be read.
pub fn read_all(path: &Path) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for_each(path, |e| out.push(e))?;
    Ok(out)
}

/// Longest event line read back, in bytes (1 MiB). A longer line (no
/// writer of ours makes one) is skipped whole, so readers stay within
/// bounded memory whatever the file holds.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Bytes read per `read(2)` by [`LogReader`] (64 KiB).
const CHUNK_BYTES: usize = 64 << 10;

/// Size at which a mutation rotates the live log into a segment before
/// appending (`spec` 3.7): 64 MiB.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// The directory of rotated segments next to the live log `events.jsonl`
/// (`spec` 3.7): `events/`.
pub fn segments_dir(live: &Path) -> std::path::PathBuf {
    live.with_file_name("events")
}

/// The path of segment `k` (`events/<k, 12 digits>.jsonl`, `spec` 3.7).
pub fn segment_path(live: &Path, k: u64) -> std::path::PathBuf {
    segments_dir(live).join(format!("{k:012}.jsonl"))
}

/// The numbers of the rotated segments next to the live log, ascending
/// (`spec` 3.7: names of 12 digits and `.jsonl`; anything else in
/// `events/` is ignored). Empty when `events/` does not exist.
///
/// # Errors
/// [`Error::Io`] when `events/` exists but cannot be listed.
pub fn segments(live: &Path) -> Result<Vec<u64>> {
    let dir = segments_dir(live);
    let rd = match crate::protocol::fsroot::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", &dir, e)),
    };
    let mut v: Vec<u64> = rd
        .into_iter()
        .filter_map(|(n, _)| {
            let n = n.to_str()?.strip_suffix(".jsonl")?.to_string();
            (n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Renames the live log `events.jsonl` of `layout` to the next segment
/// `events/<K>.jsonl`, K = the largest segment number + 1 (1 for the
/// first), `spec` 3.7. The caller holds the lock. Returns `K`, or `None`
/// when the live log is missing or empty (nothing to rotate).
///
/// # Errors
/// [`Error::Io`] when `events/` cannot be made or the rename fails.
pub fn rotate(layout: &crate::protocol::layout::Layout) -> Result<Option<u64>> {
    let live = layout.events();
    match crate::protocol::fsroot::symlink_metadata(&live) {
        Ok(m) if m.is_file() && !m.is_empty() => {}
        _ => return Ok(None),
    }
    crate::protocol::store::ensure_dir(&segments_dir(&live))?;
    let k = segments(&live)?.last().copied().unwrap_or(0) + 1;
    let to = segment_path(&live, k);
    crate::protocol::fsroot::rename_noreplace(&live, &to)
        .map_err(|e| Error::io("rename", &to, e))?;
    Ok(Some(k))
}

/// Where a [`LogReader`] is in the history: segment number and byte offset
/// (`spec` 3.7). The live log's segment number is the largest rotated
/// segment's + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Segment number (1-based; the live log counts as the next one).
    pub segment: u64,
    /// Bytes of that segment consumed, up to the end of a complete line.
    pub offset: u64,
}

/// Reads the event history in order, across the rotated segments and the
/// live log (`spec` 3.7), from a [`Position`], in linear time and bounded
/// memory (one chunk plus one line of at most [`MAX_LINE_BYTES`]): for
/// `events`, `events --follow`, `watch`, `metrics` and `doctor`. A rotation
/// while it reads is followed: the segment it was reading is finished under
/// its new name, then the new live log is read from its start.
#[derive(Debug)]
pub struct LogReader {
    path: std::path::PathBuf,
    segment: u64,
    offset: u64,
    partial: Vec<u8>,
    skipping: bool,
}

impl LogReader {
    /// A reader of the live log `path` only, from byte `offset` (0: the
    /// whole live log; segments already rotated are not read).
    pub fn new(path: &Path, offset: u64) -> Self {
        let segment = segments(path)
            .ok()
            .and_then(|v| v.last().copied())
            .unwrap_or(0)
            + 1;
        Self::at(path, Position { segment, offset })
    }

    /// A reader of the whole history: every rotated segment from the
    /// oldest still there, then the live log `path`.
    pub fn history(path: &Path) -> Self {
        let segment = segments(path)
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(1);
        Self::at(path, Position { segment, offset: 0 })
    }

    /// A reader that starts at `pos` (a checkpoint's). A segment that was
    /// deleted is skipped to the next one there.
    pub fn at(path: &Path, pos: Position) -> Self {
        let mut r = LogReader {
            path: path.to_path_buf(),
            segment: pos.segment.max(1),
            offset: pos.offset,
            partial: Vec::new(),
            skipping: false,
        };
        if let Ok(v) = segments(path) {
            let live = v.last().copied().unwrap_or(0) + 1;
            if r.segment < live && !v.contains(&r.segment) {
                r.segment = v.iter().copied().find(|&k| k > r.segment).unwrap_or(live);
                r.offset = 0;
            }
        }
        r
    }

    /// A reader that starts at the live log's current end (follow mode).
    pub fn at_end(path: &Path) -> Self {
        let len = crate::protocol::fsroot::symlink_metadata(path)
            .map(|m| m.len())
            .unwrap_or(0);
        Self::new(path, len)
    }

    /// A reader of about the last `bytes` bytes of the live log, from the
    /// first line that starts in them: for "the last N events" at a cost
    /// that does not grow with history.
    pub fn tail(path: &Path, bytes: u64) -> Self {
        let len = crate::protocol::fsroot::symlink_metadata(path)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut r = Self::new(path, len.saturating_sub(bytes));
        // Mid-line: drop up to the first newline.
        r.skipping = r.offset > 0;
        r
    }

    /// Where the reader is: after the last complete line it handed out.
    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset - self.partial.len() as u64,
        }
    }

    /// Calls `f` with each complete line (without its `\n`) appended since
    /// the last call, in order, across segments; a torn last line of the
    /// live log waits for its end (one at the end of a rotated segment is
    /// dropped). A live log that shrank (truncated or replaced) is read
    /// again from the start. Lines over [`MAX_LINE_BYTES`] are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Corrupt`] (symlink, FIFO) from the log, or
    /// what `f` returns.
    pub fn read_lines<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        loop {
            let seg = segment_path(&self.path, self.segment);
            if crate::protocol::fsroot::exists(&seg) {
                // A rotated segment (maybe the live log we were reading,
                // renamed since): finish it, then the next one.
                self.read_file(&seg, false, &mut f)?;
                self.segment += 1;
                self.offset = 0;
                self.partial.clear();
                self.skipping = false;
                continue;
            }
            self.read_file(&self.path.clone(), true, &mut f)?;
            // Rotated while we read? Then finish it under its new name.
            if crate::protocol::fsroot::exists(&seg) {
                continue;
            }
            return Ok(());
        }
    }

    fn read_file<E: From<Error>>(
        &mut self,
        path: &Path,
        live: bool,
        f: &mut impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(mut file) = open_for_reading(path)? else {
            return Ok(());
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        if live && len < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| Error::io("seek", path, e))?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e).into()),
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

/// Calls `f` with every well-formed event of the whole history (rotated
/// segments, then the live log `path`), in order, in bounded memory (see
/// [`LogReader`]).
///
/// # Errors
/// As [`LogReader::read_lines`].
pub fn for_each(path: &Path, f: impl FnMut(Event)) -> Result<()> {
    let mut f = f;
    LogReader::history(path).read_events(|e| {
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

    #[test]
    fn log_reader_follows_rotations_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::protocol::layout::Layout::new(dir.path());
        let p = layout.events();
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let mut follow = LogReader::new(&p, 0);
        assert_eq!(lines(&p, &mut follow), vec!["one", "two"]);
        use std::io::Write;
        let append = |s: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&p)
                .unwrap()
                .write_all(s.as_bytes())
                .unwrap()
        };
        // Appended, rotated, appended to the new live log, rotated again and
        // appended once more before the reader looks: all once, in order.
        append("three\n");
        assert_eq!(rotate(&layout).unwrap(), Some(1));
        append("four\n");
        assert_eq!(rotate(&layout).unwrap(), Some(2));
        append("five\n");
        assert_eq!(lines(&p, &mut follow), vec!["three", "four", "five"]);
        assert_eq!(
            follow.position(),
            Position {
                segment: 3,
                offset: 5
            }
        );
        // The whole history, and from a position.
        let mut all = LogReader::history(&p);
        assert_eq!(
            lines(&p, &mut all),
            vec!["one", "two", "three", "four", "five"]
        );
        let mut from = LogReader::at(
            &p,
            Position {
                segment: 1,
                offset: 8,
            },
        );
        assert_eq!(lines(&p, &mut from), vec!["three", "four", "five"]);
        assert_eq!(segments(&p).unwrap(), vec![1, 2]);
        // An empty live log is not rotated.
        std::fs::write(&p, "").unwrap();
        assert_eq!(rotate(&layout).unwrap(), None);
    }
}
