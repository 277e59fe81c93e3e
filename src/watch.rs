//! Waking up on changes in `.coordination/` through `notify` (inotify on
//! Linux), with a polling fallback for file systems where events do not
//! arrive (NFS, some container mounts). Used by `watch`, `events --follow`,
//! `claim --wait` and `work` (`spec/PROTOCOL.md` section 15).
//!
//! Files are the truth and events are hints: a wake-up only means "look
//! again". Temp files of atomic writes (names starting with `.`) and the lock
//! file do not count as changes; an overflow (rescan) does.

use crate::error::{Error, Result};
use notify::{Config, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Default polling interval of the fallback, in milliseconds.
pub const DEFAULT_POLL_MS: u64 = 500;

/// A watch on some directories of `.coordination/`.
pub struct ChangeWatcher {
    rx: mpsc::Receiver<()>,
    _watcher: Box<dyn Watcher + Send>,
    polling: bool,
}

impl std::fmt::Debug for ChangeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeWatcher")
            .field("polling", &self.polling)
            .finish()
    }
}

fn relevant(ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        // An error may mean lost events: look again.
        Err(_) => true,
        Ok(e) if e.need_rescan() => true,
        Ok(e) => {
            if matches!(e.kind, EventKind::Access(_)) {
                return false;
            }
            e.paths.iter().any(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && name != "lock"
            })
        }
    }
}

impl ChangeWatcher {
    /// Watches `dirs` (not recursively). With `poll` set, or when the native
    /// watcher cannot be had (inotify limits), polls every `poll`
    /// (default [`DEFAULT_POLL_MS`]).
    ///
    /// # Errors
    /// [`Error::Io`] when even the polling watcher cannot watch a directory.
    pub fn new(dirs: &[PathBuf], poll: Option<Duration>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let handler = move |ev: notify::Result<notify::Event>| {
            if relevant(&ev) {
                let _ = tx.send(());
            }
        };
        if poll.is_none() {
            match RecommendedWatcher::new(handler.clone(), Config::default()) {
                Ok(mut w) => {
                    let mut ok = true;
                    for d in dirs {
                        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                            tracing::warn!(dir = %d.display(), error = %e, "native file watching failed; polling instead");
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        return Ok(ChangeWatcher {
                            rx,
                            _watcher: Box::new(w),
                            polling: false,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "native file watching unavailable; polling instead")
                }
            }
        }
        let interval = poll.unwrap_or(Duration::from_millis(DEFAULT_POLL_MS));
        let mut w = PollWatcher::new(handler, Config::default().with_poll_interval(interval))
            .map_err(|e| Error::Other(format!("cannot start the polling watcher: {e}")))?;
        for d in dirs {
            w.watch(d, RecursiveMode::NonRecursive).map_err(|e| {
                Error::io("watch", d.as_path(), std::io::Error::other(e.to_string()))
            })?;
        }
        Ok(ChangeWatcher {
            rx,
            _watcher: Box::new(w),
            polling: true,
        })
    }

    /// True when this watcher polls instead of receiving events.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// Blocks until a change is seen or `timeout` passes; returns whether a
    /// change was seen. Notifications already queued are drained, so one
    /// burst of changes wakes the caller once.
    pub fn wait(&self, timeout: Duration) -> bool {
        let changed = match self.rx.recv_timeout(timeout) {
            Ok(()) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                false
            }
        };
        while self.rx.try_recv().is_ok() {}
        changed
    }
}

impl ChangeWatcher {
    /// Forgets the changes seen so far without waiting: after a pause, so
    /// that one burst of changes (a write is several file events) wakes a
    /// waiter once.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// The directories a claim waiter watches: `tasks/` (new and changed tasks).
pub fn claim_dirs(root: &Path) -> Vec<PathBuf> {
    vec![root.join("tasks")]
}
