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
    source: Source,
    polling: bool,
}

enum Source {
    /// `notify`'s watcher (every event kind) or its polling fallback.
    Notify {
        rx: mpsc::Receiver<()>,
        _watcher: Box<dyn Watcher + Send>,
    },
    /// Raw inotify with a narrow mask, read on the waiting thread itself:
    /// for claim waiters, which only care that a task file was put in
    /// place (see [`ChangeWatcher::for_claims`]).
    Inotify(std::sync::Mutex<inotify::Inotify>),
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
                            source: Source::Notify {
                                rx,
                                _watcher: Box::new(w),
                            },
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
            source: Source::Notify {
                rx,
                _watcher: Box::new(w),
            },
            polling: true,
        })
    }

    /// A watcher for claim waiters (`claim --wait`, `work`, the supervisor)
    /// on `tasks/` under `root`: woken only when a task file is put in place
    /// (`IN_MOVED_TO`: every write of a task file ends with a rename, spec
    /// 4.2), or when the directory itself goes, or on an overflow. `notify`
    /// subscribes to every event kind and reads them on a thread of its own,
    /// so each task write (create, write, close and rename of a temp file)
    /// woke every waiter's thread five times: 50 idle waiters cut the
    /// `create` rate to 0.28 of the rate alone. With this mask the kernel
    /// queues one event per task write and nothing but the waiting thread
    /// wakes. Falls back to [`ChangeWatcher::new`] (polling with `poll`, or
    /// when inotify cannot be had).
    ///
    /// # Errors
    /// As [`ChangeWatcher::new`].
    pub fn for_claims(root: &Path, poll: Option<Duration>) -> Result<Self> {
        use inotify::{Inotify, WatchMask};
        let dirs = claim_dirs(root);
        if poll.is_none() {
            let watched = Inotify::init().and_then(|ino| {
                for d in &dirs {
                    ino.watches().add(
                        d,
                        WatchMask::MOVED_TO
                            | WatchMask::DELETE_SELF
                            | WatchMask::MOVE_SELF
                            | WatchMask::ONLYDIR
                            | WatchMask::DONT_FOLLOW,
                    )?;
                }
                Ok(ino)
            });
            match watched {
                Ok(ino) => {
                    return Ok(ChangeWatcher {
                        source: Source::Inotify(std::sync::Mutex::new(ino)),
                        polling: false,
                    })
                }
                Err(e) => tracing::debug!(error = %e, "inotify unavailable; using notify"),
            }
        }
        Self::new(&dirs, poll)
    }

    /// True when this watcher polls instead of receiving events.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// Blocks until a change is seen or `timeout` passes; returns whether a
    /// change was seen. Notifications already queued are drained, so one
    /// burst of changes wakes the caller once.
    pub fn wait(&self, timeout: Duration) -> bool {
        match &self.source {
            Source::Notify { rx, .. } => {
                let changed = match rx.recv_timeout(timeout) {
                    Ok(()) => true,
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(timeout);
                        false
                    }
                };
                while rx.try_recv().is_ok() {}
                changed
            }
            Source::Inotify(ino) => {
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if !poll_readable(ino, left) {
                        return false;
                    }
                    if drain_inotify(ino) {
                        return true;
                    }
                    if left.is_zero() {
                        return false;
                    }
                }
            }
        }
    }

    /// Forgets the changes seen so far without waiting: after a pause, so
    /// that one burst of changes (a write is several file events) wakes a
    /// waiter once.
    pub fn drain(&self) {
        match &self.source {
            Source::Notify { rx, .. } => while rx.try_recv().is_ok() {},
            Source::Inotify(ino) => {
                drain_inotify(ino);
            }
        }
    }
}

/// Waits up to `timeout` for the inotify descriptor to be readable (poll(2)).
fn poll_readable(ino: &std::sync::Mutex<inotify::Inotify>, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(fd) = ino.lock().map(|i| i.as_raw_fd()) else {
        return true;
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call. EINTR (a
    // signal) reads as "not readable"; the caller looks again.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Reads every queued inotify event (the descriptor is non-blocking) and
/// says whether one counts as a change: a name that is not a temp file or
/// the lock, an overflow, or the watched directory gone.
fn drain_inotify(ino: &std::sync::Mutex<inotify::Inotify>) -> bool {
    use inotify::EventMask;
    let Ok(mut ino) = ino.lock() else {
        return true;
    };
    let mut buf = [0u8; 4096];
    let mut changed = false;
    loop {
        match ino.read_events(&mut buf) {
            Ok(events) => {
                let mut any = false;
                for ev in events {
                    any = true;
                    let name = ev.name.map(|n| n.as_encoded_bytes()).unwrap_or(&[]);
                    if ev.mask.intersects(
                        EventMask::Q_OVERFLOW
                            | EventMask::DELETE_SELF
                            | EventMask::MOVE_SELF
                            | EventMask::IGNORED,
                    ) || (!name.is_empty() && !name.starts_with(b".") && name != b"lock")
                    {
                        changed = true;
                    }
                }
                if !any {
                    return changed;
                }
            }
            // WouldBlock: nothing more queued. Any other error may mean
            // lost events: count it as a change (look again).
            Err(e) => return changed || e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// The directories a claim waiter watches: `tasks/` (new and changed tasks).
pub fn claim_dirs(root: &Path) -> Vec<PathBuf> {
    vec![root.join("tasks")]
}
