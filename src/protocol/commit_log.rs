//! The commit log, `.coordination/commit.log` (`spec/PROTOCOL.md` section
//! 4.8): in durable mode on a local file system, a mutation's commit point
//! is one `fdatasync`'d append of a record holding the full new content of
//! every task file it writes. The task files stay the readable state; they
//! are written (temp + rename, 4.2) after the append without an fsync of
//! their own, and made durable in batches by a checkpoint (`syncfs(2)`, then
//! the log is emptied). After a crash the next lock holder finishes what the
//! log says was committed; after a reboot it writes every committed record
//! again.
//!
//! This is the write-ahead rule of ARIES (Mohan et al., 1992): no task file
//! is replaced before the record of its new content is durable, so a power
//! loss can tear only files whose content is in the log.
//!
//! Record format, one per line: `<crc32c> <len> <json>\n`, where `<crc32c>`
//! is the CRC-32C (Castagnoli, RFC 3720 appendix B.4) of the `<json>` bytes
//! in 8 lowercase hex digits and `<len>` their length in decimal bytes. A
//! line that does not check (torn by a crash in the middle of an append)
//! ends the valid log.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size, in bytes, past which the holder that appended checkpoints the log
/// (`spec` 4.8): `syncfs(2)`, then the log is emptied. 1 MiB is about a
/// thousand task writes, so the `syncfs` costs well under one fsync per
/// commit.
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

/// One record of the log (`spec` 4.8), tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The first record after the log was emptied: the boot the records
    /// that follow were written in (`/proc/sys/kernel/random/boot_id`).
    Checkpoint {
        /// The boot id, trimmed; empty where there is none.
        boot_id: String,
    },
    /// A mutation started changing the index before its commit: a log that
    /// ends here was left by a crash, and the index is rebuilt.
    Begin,
    /// A committed mutation: the full new content of each task file.
    Commit {
        /// Task files written, in order; a later entry for the same id wins.
        tasks: Vec<TaskWrite>,
    },
    /// Every commit before this record is in the task files.
    Applied,
}

/// One task file of a [`Record::Commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskWrite {
    /// The task id: the file is `tasks/<id>.json`.
    pub id: String,
    /// The file's complete content (UTF-8 JSON text, as written).
    pub content: String,
}

/// Encodes `r` as one log line: `<crc32c> <len> <json>\n`.
///
/// # Errors
/// [`Error::Other`] when `r` cannot be serialised (never for these types).
pub fn encode(r: &Record) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(r).map_err(|e| Error::Other(e.to_string()))?;
    let mut line = format!("{:08x} {} ", crc32c::crc32c(&json), json.len()).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// Decodes the valid prefix of a log: its records, each with the offset
/// just past its line, and the length of that prefix in bytes. Decoding
/// stops at the first line that is incomplete or whose length or checksum
/// does not match (a torn append).
///
/// # Errors
/// [`Error::Corrupt`] for a line whose checksum matches but whose JSON is
/// not a record this version knows (written by a newer implementation:
/// dropping it would lose a commit).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<(Record, u64)>, u64)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some((json, end)) = check_line(&bytes[at..]) else {
            break;
        };
        let r: Record = serde_json::from_slice(json).map_err(|e| {
            Error::corrupt(
                path,
                format!(
                    "holds a record this version does not know ({e}); a newer orchestrate wrote it"
                ),
            )
        })?;
        at += end;
        out.push((r, at as u64));
    }
    Ok((out, at as u64))
}

/// The JSON of the line at the start of `b` and the length of the whole
/// line, when it is complete and checks.
fn check_line(b: &[u8]) -> Option<(&[u8], usize)> {
    let sp1 = b.iter().take(9).position(|&c| c == b' ')?;
    if sp1 != 8 {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(&b[..8]).ok()?, 16).ok()?;
    let rest = &b[9..];
    let sp2 = rest.iter().take(21).position(|&c| c == b' ')?;
    let len: usize = std::str::from_utf8(&rest[..sp2]).ok()?.parse().ok()?;
    let start = 9 + sp2 + 1;
    let end = start.checked_add(len)?;
    if b.len() <= end || b[end] != b'\n' {
        return None;
    }
    let json = &b[start..end];
    (crc32c::crc32c(json) == crc).then_some((json, end + 1))
}

/// The open log file of one lock holder, and its length in bytes.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Log {
    /// Opens the log at `path` read-write, creating it (mode per `spec`
    /// 4.7) when `create`; `Ok(None)` when it is missing and not `create`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a symlink or non-regular file at `path`;
    /// [`Error::Io`] otherwise.
    pub fn open(path: &Path, create: bool) -> Result<Option<Log>> {
        let flags = libc::O_RDWR | if create { libc::O_CREAT } else { 0 };
        let file = match crate::protocol::store::open_regular(path, flags, 0o600, "open") {
            Ok(f) => f,
            Err(Error::Io { source, .. })
                if !create && source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let log = Log::from_file(path, file)?;
        if log.len == 0 && create {
            crate::protocol::store::set_file_mode(&log.file, path)?;
        }
        Ok(Some(log))
    }

    fn from_file(path: &Path, file: File) -> Result<Log> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        Ok(Log {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Opens the log at `path` read-only, for a reader that takes no lock
    /// (`doctor`); `Ok(None)` when it is missing.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_read(path: &Path) -> Result<Option<Log>> {
        let file = match crate::protocol::store::open_regular(path, libc::O_RDONLY, 0, "open") {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Log::from_file(path, file).map(Some)
    }

    /// The log's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the log has no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when nothing in the log needs recovery in this boot: empty, or
    /// its first record is a checkpoint of `boot_id` and its last is
    /// `applied` or that checkpoint. Reads at most two short ranges.
    ///
    /// # Errors
    /// [`Error::Io`] when the reads fail.
    pub fn is_clean(&self, boot_id: &str) -> Result<bool> {
        if self.len == 0 {
            return Ok(true);
        }
        let head = self.read_range(0, self.len.min(160))?;
        let Some((json, _)) = check_line(&head) else {
            return Ok(false);
        };
        match serde_json::from_slice::<Record>(json) {
            Ok(Record::Checkpoint { boot_id: b }) if b == boot_id => {}
            _ => return Ok(false),
        }
        let n = self.len.min(160);
        let tail = self.read_range(self.len - n, n)?;
        if tail.last() != Some(&b'\n') {
            return Ok(false);
        }
        let body = &tail[..tail.len() - 1];
        let start = match body.iter().rposition(|&c| c == b'\n') {
            Some(p) => p + 1,
            // No line starts in the window: the log is that one line (the
            // checkpoint alone), or its last line is long (not `applied`).
            None if n == self.len => 0,
            None => return Ok(false),
        };
        let Some((json, end)) = check_line(&tail[start..]) else {
            return Ok(false);
        };
        Ok(start + end == tail.len()
            && matches!(
                serde_json::from_slice::<Record>(json),
                Ok(Record::Applied | Record::Checkpoint { .. })
            ))
    }

    fn read_range(&self, off: u64, n: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(buf)
    }

    /// Reads the whole log (at most a checkpoint's worth plus one mutation).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn read_all(&self) -> Result<Vec<u8>> {
        self.read_range(0, self.len)
    }

    /// Writes `bytes` at the end of the log, without syncing.
    ///
    /// # Errors
    /// [`Error::Io`]; the length is then unchanged as far as this holder
    /// knows (a partial line left behind does not check).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.len)
            .map_err(|e| Error::io("append to", &self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// `fdatasync(2)` of the log: the commit point of what was appended.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))
    }

    /// Cuts the log to `len` bytes (a torn tail, a commit whose sync
    /// failed, or 0 at a checkpoint) and makes that durable.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("truncate", &self.path, e))?;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(id: &str) -> Record {
        Record::Commit {
            tasks: vec![TaskWrite {
                id: id.into(),
                content: "{\n  \"id\": \"x\"\n}\n".into(),
            }],
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let p = Path::new("commit.log");
        let mut bytes = encode(&Record::Checkpoint {
            boot_id: "b".into(),
        })
        .unwrap();
        bytes.extend(encode(&commit("a")).unwrap());
        bytes.extend(encode(&Record::Applied).unwrap());
        let whole = bytes.len() as u64;
        let (recs, valid) = decode(p, &bytes).unwrap();
        assert_eq!(valid, whole);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].0, commit("a"));
        let second = encode(&commit("b")).unwrap();
        for cut in 0..second.len() {
            let mut torn = bytes.clone();
            torn.extend_from_slice(&second[..cut]);
            let (recs, valid) = decode(p, &torn).unwrap();
            assert_eq!((recs.len(), valid), (3, whole), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let p = Path::new("commit.log");
        let line = encode(&commit("a")).unwrap();
        for i in 0..line.len() - 1 {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            let (recs, valid) = decode(p, &bad).unwrap_or((Vec::new(), 0));
            assert_eq!((recs.len(), valid), (0, 0), "byte {i}");
        }
    }

    #[test]
    fn an_unknown_record_that_checks_is_refused() {
        let json = br#"{"kind":"from_the_future"}"#;
        let mut line = format!("{:08x} {} ", crc32c::crc32c(json), json.len()).into_bytes();
        line.extend_from_slice(json);
        line.push(b'\n');
        assert!(matches!(
            decode(Path::new("commit.log"), &line),
            Err(Error::Corrupt { .. })
        ));
    }
}

/// A task file written by the mutation in progress, not yet committed.
#[derive(Debug)]
pub(super) struct Staged {
    task: crate::protocol::task::Task,
    bytes: Vec<u8>,
}

impl super::Txn<'_> {
    /// The task file `id` as this mutation sees it: its staged write if it
    /// made one, else the file. `Ok(None)` when there is no such file.
    ///
    /// # Errors
    /// Data and I/O errors reading the file.
    pub(super) fn read(
        &self,
        id: &crate::protocol::task::TaskId,
    ) -> Result<Option<crate::protocol::task::Task>> {
        if let Some(&i) = self.staged_at.get(id) {
            return Ok(Some(self.staged[i].task.clone()));
        }
        crate::protocol::store::read_task(&self.c.layout.task(id), id)
    }

    /// Stages the write of `t`'s file (`bytes`) for the commit at the end of
    /// the mutation (or at the next [`super::Txn::flush`]). The first stage
    /// of a mutation appends `begin` (and a checkpoint record to an empty
    /// log), unsynced, so that a crash before the commit is seen and the
    /// index, whose entries may already be gone, is rebuilt (`spec` 4.8).
    ///
    /// # Errors
    /// I/O errors appending to the log.
    pub(super) fn stage(&mut self, t: &crate::protocol::task::Task, bytes: Vec<u8>) -> Result<()> {
        if !self.began {
            let log = self.open_log()?;
            let mut first = Vec::new();
            if log.is_empty() {
                first = encode(&Record::Checkpoint {
                    boot_id: crate::protocol::index::boot_id().to_string(),
                })?;
            }
            first.extend(encode(&Record::Begin)?);
            log.append(&first)?;
            self.began = true;
        }
        let s = Staged {
            task: t.clone(),
            bytes,
        };
        match self.staged_at.get(&t.id) {
            Some(&i) => self.staged[i] = s,
            None => {
                self.staged_at.insert(t.id.clone(), self.staged.len());
                self.staged.push(s);
            }
        }
        Ok(())
    }

    fn open_log(&mut self) -> Result<&mut Log> {
        if self.log.is_none() {
            self.log = Log::open(&self.c.layout.commit_log(), true)?;
        }
        self.log
            .as_mut()
            .ok_or_else(|| Error::Other("the commit log could not be opened".into()))
    }

    /// Commits the staged writes (`spec` 4.8): appends one `commit` record
    /// and `fdatasync`s the log (the commit point), then writes each task
    /// file (4.2 steps 1, 2, 3 and 5), appends `applied`, and checkpoints
    /// when the log has grown past [`CHECKPOINT_BYTES`]. Nothing staged:
    /// nothing done.
    ///
    /// # Errors
    /// I/O errors. Before the commit point the mutation is then not
    /// committed (its record is cut off again). After it, a failure of the
    /// first task-file write takes the record back too (nothing was applied
    /// and nobody saw it); a later failure leaves the mutation committed,
    /// and the next lock holder finishes writing the task files.
    pub(super) fn flush(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        self.staged_at.clear();
        let rec = encode(&Record::Commit {
            tasks: staged
                .iter()
                .map(|s| TaskWrite {
                    id: s.task.id.to_string(),
                    content: String::from_utf8_lossy(&s.bytes).into_owned(),
                })
                .collect(),
        })?;
        let log = self.open_log()?;
        crate::protocol::faults::point("before_log_append");
        if crate::protocol::faults::armed("mid_log_record") {
            let _ = log.append(&rec[..rec.len() / 2]);
            std::process::abort();
        }
        let before = log.len();
        if let Err(e) = log.append(&rec).and_then(|()| log.sync()) {
            // Not committed: cut the record off so that nobody applies it.
            let _ = log.truncate(before);
            return Err(e);
        }
        crate::protocol::faults::point("after_log_append");
        for (i, s) in staged.iter().enumerate() {
            let written = crate::protocol::store::write_atomic(
                &self.c.layout.task(&s.task.id),
                &s.bytes,
                false,
                false,
            );
            if let Err(e) = written {
                if i == 0 {
                    // Nothing applied and nobody else has seen the commit
                    // (the lock is ours): take it back, so that a write
                    // refused by the file system (no room, no permission)
                    // changes nothing, as without the log.
                    let log = self.open_log()?;
                    if log.truncate(before).is_ok() {
                        return Err(e);
                    }
                }
                // Committed, partly applied: the next lock holder finishes.
                tracing::warn!(
                    error = %e,
                    "the change is committed in commit.log; the next mutation writes its task files"
                );
                return Err(e);
            }
        }
        crate::protocol::faults::point("before_applied");
        let log = self.open_log()?;
        log.append(&encode(&Record::Applied)?)?;
        if log.len() > CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes every committed task file durable and empties the log (`spec`
    /// 4.8): `syncfs(2)` of the file system of `tasks/`, then the log is
    /// truncated to 0 and fsynced. Flushes staged writes first. A no-op when
    /// there is no log or it is empty. Archive calls it before it moves task
    /// files, since a replay would bring a moved file back.
    ///
    /// # Errors
    /// I/O errors.
    pub(super) fn checkpoint(&mut self) -> Result<()> {
        self.flush()?;
        if self.log.is_none() {
            self.log = Log::open(&self.c.layout.commit_log(), false)?;
        }
        let tasks = self.c.layout.tasks_dir();
        let Some(log) = self.log.as_mut().filter(|l| !l.is_empty()) else {
            return Ok(());
        };
        crate::protocol::store::sync_fs(&tasks)?;
        crate::protocol::faults::point("before_checkpoint");
        log.truncate(0)?;
        self.began = false;
        Ok(())
    }

    /// Recovery of the commit log, first thing under the lock (`spec` 4.8,
    /// 4.5 step 1). Clean log (empty, or ending in `applied` in this boot):
    /// nothing but two short reads for a holder that uses the log. Otherwise:
    /// - in this boot (a holder crashed): a torn tail is cut off, the log
    ///   `fdatasync`ed (its writer may have died before its sync), the
    ///   commits after the last `applied` written to the task files, and
    ///   `applied` appended;
    /// - in another boot (the machine restarted, so unsynced task files may
    ///   be lost or torn): every committed task file is written again, each
    ///   fsynced, then `tasks/` fsynced;
    /// - either way, a holder that does not use the log (relaxed mode, a
    ///   network file system, `ORCHESTRATE_COMMIT_LOG=0`) then makes the
    ///   files durable (`syncfs`) and empties the log, since it will write
    ///   task files the log does not know about.
    ///
    /// A clean log is only emptied (after a `syncfs`) by a holder that does
    /// not use it. Unless the log was clean, the index is marked stale (step
    /// 3 rebuilds it) and a `commit_log_recovered` event says what was done.
    ///
    /// # Errors
    /// Data errors (a record from a newer version) and I/O errors.
    pub(super) fn recover_commit_log(&mut self) -> Result<()> {
        let path = self.c.layout.commit_log();
        let boot = crate::protocol::index::boot_id();
        let Some(mut log) = Log::open(&path, self.c.commit_log)? else {
            return Ok(());
        };
        if log.is_clean(boot)? {
            if !self.c.commit_log && !log.is_empty() {
                // Every commit is in the task files already; make them
                // durable before writing files the log does not know about.
                // Nothing to recover: the index stays as it is.
                crate::protocol::store::sync_fs(&self.c.layout.tasks_dir())?;
                log.truncate(0)?;
            }
            self.log = Some(log);
            return Ok(());
        }
        let bytes = log.read_all()?;
        let (records, valid) = decode(&path, &bytes)?;
        let same_boot =
            matches!(records.first(), Some((Record::Checkpoint { boot_id }, _)) if boot_id == boot);
        let commits = |from: usize| -> Vec<&TaskWrite> {
            records[from..]
                .iter()
                .filter_map(|(r, _)| match r {
                    Record::Commit { tasks } => Some(tasks),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        let (reason, written) = if same_boot {
            if valid < log.len() {
                log.truncate(valid)?;
            }
            let last_applied = records
                .iter()
                .rposition(|(r, _)| matches!(r, Record::Applied))
                .map_or(0, |i| i + 1);
            let pending = commits(last_applied);
            if !pending.is_empty() {
                log.sync()?;
            }
            let n = self.rewrite(&pending, false)?;
            log.append(&encode(&Record::Applied)?)?;
            ("crash", n)
        } else {
            let n = self.rewrite(&commits(0), true)?;
            crate::protocol::store::sync_dir(&self.c.layout.tasks_dir())?;
            log.truncate(0)?;
            ("reboot", n)
        };
        if !self.c.commit_log && !log.is_empty() {
            crate::protocol::store::sync_fs(&self.c.layout.tasks_dir())?;
            log.truncate(0)?;
        }
        self.c.index.mark_stale();
        let mut e = crate::protocol::events::Event::new("commit_log_recovered", self.now);
        e.detail.insert("reason".into(), reason.into());
        e.detail.insert("task_files".into(), written.into());
        e.detail
            .insert("uses_the_log".into(), self.c.commit_log.into());
        self.events.push(e);
        tracing::info!(reason, task_files = written, "recovered the commit log");
        self.log = Some(log);
        Ok(())
    }

    /// Writes the last content of each task file in `writes`, fsynced
    /// when `durable`; the number of files written.
    fn rewrite(&self, writes: &[&TaskWrite], durable: bool) -> Result<usize> {
        let mut last: Vec<&TaskWrite> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for w in writes.iter().rev() {
            if seen.insert(w.id.as_str()) {
                last.push(w);
            }
        }
        last.reverse();
        for (i, w) in last.iter().enumerate() {
            if i > 0 {
                crate::protocol::faults::point("mid_replay");
            }
            let id = crate::protocol::task::TaskId::new(&w.id)?;
            crate::protocol::store::write_atomic(
                &self.c.layout.task(&id),
                w.content.as_bytes(),
                durable,
                false,
            )?;
        }
        Ok(last.len())
    }
}
