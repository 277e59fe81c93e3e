//! An attempt's logs, read back (`orchestrate logs`; `spec/PROTOCOL.md`
//! sections 13.2 and 16.4): which files an attempt left in `logs/`, and
//! following the output of an attempt that is still running.
//!
//! Every file is opened through the directory's handle and refused when it
//! is a symlink or not a regular file (`spec` 2, 4.7), as every other read
//! below `.coordination/`.

use crate::error::{Error, Result};
use crate::protocol::task::{Status, Task, TaskId};
use crate::protocol::watch::ChangeWatcher;
use crate::protocol::Coordination;
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// What a log file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// `<id>.<attempt>.log`: the process's output (shell adapter: stdout
    /// and stderr; Claude adapter: stderr).
    Output,
    /// `<id>.<attempt>.json`: the Claude CLI's reply (stdout).
    Reply,
}

/// One log file of an attempt.
#[derive(Debug, Clone, Serialize)]
pub struct LogFile {
    /// Path relative to the coordination directory, e.g. `logs/a.1.log`.
    pub path: String,
    /// What it holds.
    pub kind: LogKind,
    /// Its size when it was listed, in bytes.
    pub bytes: u64,
}

/// The log files of one attempt of a task.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptLogs {
    /// The task.
    pub task_id: String,
    /// The attempt (1 is the first).
    pub attempt: u32,
    /// The task's attempts so far.
    pub attempts: u32,
    /// The task's status when it was read.
    pub status: Status,
    /// Output first, then the reply; only the files that exist.
    pub files: Vec<LogFile>,
}

const KINDS: [(&str, LogKind); 2] = [("log", LogKind::Output), ("json", LogKind::Reply)];

/// How long `follow` waits for a just-claimed attempt's log to appear, in
/// milliseconds: the worker creates it right after the claim.
const APPEAR_MS: u64 = 3_000;

fn which_attempt(t: &Task, attempt: Option<u32>) -> Result<u32> {
    let n = attempt.unwrap_or(t.attempts);
    if t.attempts == 0 {
        return Err(Error::LogNotFound {
            task_id: t.id.to_string(),
            detail: format!(
                "it has not been attempted yet (status {}); `orchestrate logs {} -f` waits for its first attempt",
                t.status, t.id
            ),
        });
    }
    if n == 0 || n > t.attempts {
        return Err(Error::LogNotFound {
            task_id: t.id.to_string(),
            detail: format!(
                "it has had {} attempt{}; ask for --attempt 1 to {}",
                t.attempts,
                if t.attempts == 1 { "" } else { "s" },
                t.attempts
            ),
        });
    }
    Ok(n)
}

fn files_of(c: &Coordination, id: &TaskId, attempt: u32) -> Result<Vec<LogFile>> {
    let mut files = Vec::new();
    for (ext, kind) in KINDS {
        let path = c.layout().attempt_log(id, attempt, ext);
        match crate::protocol::fsroot::symlink_metadata(&path) {
            Ok(m) if m.is_file() => files.push(LogFile {
                path: format!("logs/{id}.{attempt}.{ext}"),
                kind,
                bytes: m.len(),
            }),
            Ok(_) => return Err(Error::corrupt(
                &path,
                "is not a regular file; symlinks inside .coordination/ are refused, not followed",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
    }
    Ok(files)
}

/// Lists the log files of attempt `attempt` of task `id` (its latest
/// attempt when `None`).
///
/// An archived task is read from the archive.
///
/// # Errors
/// [`Error::TaskNotFound`]; [`Error::LogNotFound`] when the task was never
/// attempted, `attempt` is 0 or beyond the task's attempts, or the attempt
/// left no log (claimed by an agent that was not started by `run` or
/// `work`, or the log was deleted: logs are history, `spec` 13.2);
/// [`Error::Corrupt`] for a symlink or non-regular file in their place.
pub fn attempt_logs(c: &Coordination, id: &str, attempt: Option<u32>) -> Result<AttemptLogs> {
    // An archived task's logs stay in logs/ (spec 18).
    let t = match c.get(id) {
        Err(Error::TaskNotFound(_)) => c
            .get_archived(id)?
            .ok_or_else(|| Error::TaskNotFound(id.to_string()))?,
        other => other?,
    };
    let n = which_attempt(&t, attempt)?;
    let files = files_of(c, &t.id, n)?;
    if files.is_empty() {
        return Err(Error::LogNotFound {
            task_id: t.id.to_string(),
            detail: format!(
                "attempt {n} left no file in logs/ (only `run` and `work` write logs; an agent that claimed the task itself keeps its own, and logs may be deleted at any time)"
            ),
        });
    }
    Ok(AttemptLogs {
        task_id: t.id.to_string(),
        attempt: n,
        attempts: t.attempts,
        status: t.status,
        files,
    })
}

/// Opens one of the files [`attempt_logs`] listed, for reading.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink or non-regular file; [`Error::Io`].
pub fn open(c: &Coordination, f: &LogFile) -> Result<File> {
    crate::protocol::store::open_regular(
        &c.layout().root().join(&f.path),
        libc::O_RDONLY,
        0,
        "open log file",
    )
}

/// True while attempt `attempt` of `t` may still write to its log: the task
/// is claimed and this is its current attempt.
fn running(t: &Task, attempt: u32) -> bool {
    t.status == Status::Claimed && t.attempts == attempt
}

/// How long past `lease_expires_at` (by this host's clock) a follower
/// keeps waiting for a claimed attempt, in milliseconds: after that its
/// holder is taken to be gone (a reader does not reap, `spec` 4.6, so on a
/// quiet queue the task would stay claimed until some mutation runs).
const GONE_AFTER_MS: i64 = 2_000;

fn holder_gone(c: &Coordination, t: &Task) -> bool {
    t.lease_expires_at
        .is_some_and(|e| crate::protocol::clock::ms_between(e, c.now()) > GONE_AFTER_MS)
}

/// Follows the output log of a task's attempt as `tail -f` does: passes
/// every chunk of bytes to `out` as it is written, and returns when the
/// attempt is over (the task is no longer claimed in that attempt, or its
/// lease ran out more than 2 s ago: the holder is gone) and the log is read
/// to its end. With `attempt` `None`, follows the latest
/// attempt, and waits for the first one of a task not attempted yet.
/// Changes are seen through `notify` on `logs/` and `tasks/`, with a
/// re-check every `poll_ms` milliseconds in any case.
///
/// Returns the attempts' number and the task as it was when following
/// stopped.
///
/// # Errors
/// As [`attempt_logs`], except that a pending task with no attempt is
/// waited for; [`Error::LogNotFound`] when a running attempt's log does not
/// appear within 3 s (an agent that claimed the task itself writes none);
/// errors of `out` are returned as they are.
pub fn follow(
    c: &Coordination,
    id: &str,
    attempt: Option<u32>,
    poll_ms: u64,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<(u32, Task)> {
    let w = ChangeWatcher::new(
        &[c.layout().logs_dir(), c.layout().tasks_dir()],
        None::<Duration>,
    )?;
    let tick = Duration::from_millis(poll_ms.max(10));
    // The first attempt of a task that has none yet.
    let mut t = c.get(id)?;
    while attempt.is_none() && t.attempts == 0 {
        if matches!(
            t.status,
            Status::Completed | Status::Cancelled | Status::Dead
        ) {
            break;
        }
        w.wait(tick);
        t = c.get(id)?;
    }
    let n = which_attempt(&t, attempt)?;
    let path = c.layout().attempt_log(&t.id, n, "log");
    let since = Instant::now();
    let mut file = loop {
        match crate::protocol::fsroot::symlink_metadata(&path) {
            Ok(_) => {
                break crate::protocol::store::open_regular(
                    &path,
                    libc::O_RDONLY,
                    0,
                    "open log file",
                )?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
        if !running(&t, n) || since.elapsed() >= Duration::from_millis(APPEAR_MS) {
            return Err(Error::LogNotFound {
                task_id: t.id.to_string(),
                detail: format!(
                    "attempt {n} has no output log (only `run` and `work` write logs; an agent that claimed the task itself keeps its own)"
                ),
            });
        }
        w.wait(Duration::from_millis(50));
        t = c.get(id)?;
    };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Read the state first: output written before the attempt ended is
        // then read by the drain below.
        t = c.get(id)?;
        let done = !running(&t, n) || holder_gone(c, &t);
        loop {
            // A log truncated under us (a new attempt reusing the number
            // after a crash): start again from its beginning.
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            if len < pos {
                pos = 0;
            }
            file.seek(SeekFrom::Start(pos))
                .map_err(|e| Error::io("read log file", &path, e))?;
            let k = file
                .read(&mut buf)
                .map_err(|e| Error::io("read log file", &path, e))?;
            if k == 0 {
                break;
            }
            pos += k as u64;
            out(&buf[..k])?;
        }
        if done {
            return Ok((n, t));
        }
        w.wait(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::task::NewTask;

    #[test]
    fn attempt_numbers_outside_the_tasks_attempts_are_refused_with_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Coordination::init(dir.path().join(".coordination"), None).unwrap();
        let t = c
            .create(NewTask {
                id: Some("a".into()),
                description: "a".into(),
                ..Default::default()
            })
            .unwrap();
        let e = attempt_logs(&c, "a", None).unwrap_err();
        assert!(matches!(e, Error::LogNotFound { .. }), "{e}");
        assert!(e.to_string().contains("not been attempted"), "{e}");
        assert_eq!(e.exit_code(), 3);
        let mut t = t;
        t.attempts = 2;
        assert_eq!(which_attempt(&t, None).unwrap(), 2);
        assert_eq!(which_attempt(&t, Some(1)).unwrap(), 1);
        let e = which_attempt(&t, Some(3)).unwrap_err();
        assert!(e.to_string().contains("--attempt 1 to 2"), "{e}");
        assert!(which_attempt(&t, Some(0)).is_err());
    }
}
