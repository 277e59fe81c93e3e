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
    /// On a network or FUSE file system, where changes made by other
    /// clients raise no event here: the longest a wait goes without
    /// looking again (spec 15.2).
    recheck: Option<Duration>,
}

static SHARED_MOUNT_POLLING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Turns the automatic re-check on network and FUSE file systems on
/// (`true`, the default) or off (`--no-poll`): then only local changes
/// wake a waiter there (spec 15.2).
pub fn set_shared_mount_polling(on: bool) {
    SHARED_MOUNT_POLLING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The `statfs(2)` `f_type` of file systems whose other clients' changes
/// raise no inotify event on this host (values from `statfs(2)` and
/// `linux/magic.h`): NFS, FUSE (GlusterFS, sshfs, ceph-fuse...), SMB/CIFS,
/// Ceph, 9p, AFS, Coda, OCFS2, GFS2, Lustre, OrangeFS.
const SHARED_FS_MAGIC: [(u64, &str); 12] = [
    (0x6969, "nfs"),
    (0x6573_5546, "fuse"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x517B, "smb"),
    (0x00C3_6400, "ceph"),
    (0x0102_1997, "9p"),
    (0x5346_414F, "afs"),
    (0x7375_7245, "coda"),
    (0x7461_636F, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0x0BD0_0BD0, "lustre"),
];

/// The name of the shared (network or FUSE) file system `dir` is on, from
/// its `statfs(2)` `f_type`; `None` for a local one or when it cannot be
/// told.
pub fn shared_fs_kind(dir: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(dir).ok()?;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 by target
    let magic = st.f_type as u64 & 0xFFFF_FFFF;
    SHARED_FS_MAGIC
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, n)| *n)
}

fn recheck_for(dirs: &[PathBuf], poll: Option<Duration>) -> Option<Duration> {
    if poll.is_some() || !SHARED_MOUNT_POLLING.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let kind = dirs.iter().find_map(|d| shared_fs_kind(d))?;
    tracing::debug!(
        fs = kind,
        "shared file system: looking again every {DEFAULT_POLL_MS} ms as well"
    );
    Some(Duration::from_millis(DEFAULT_POLL_MS))
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
                !name.starts_with('.') && name != "lock" && name != "clock"
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
                            recheck: recheck_for(dirs, poll),
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
            recheck: None,
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
                        recheck: recheck_for(&dirs, poll),
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

    /// True when this watcher also looks again on its own because the
    /// directory is on a network or FUSE file system (spec 15.2).
    pub fn rechecks(&self) -> bool {
        self.recheck.is_some()
    }

    /// Blocks until a change is seen or `timeout` passes; returns whether a
    /// change was seen. Notifications already queued are drained, so one
    /// burst of changes wakes the caller once. On a network or FUSE file
    /// system ([`ChangeWatcher::rechecks`]), a wait longer than the
    /// re-check interval ends after it with `true` ("look again"), since
    /// other hosts' changes raise no event here.
    pub fn wait(&self, timeout: Duration) -> bool {
        match self.recheck {
            Some(r) if timeout > r => {
                self.wait_events(r);
                true
            }
            _ => self.wait_events(timeout),
        }
    }

    fn wait_events(&self, timeout: Duration) -> bool {
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
                    ) || (!name.is_empty()
                        && !name.starts_with(b".")
                        && name != b"lock"
                        && name != b"clock")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_is_not_shared_and_gets_no_recheck() {
        let d = tempfile::tempdir().unwrap();
        // /tmp is tmpfs or the root file system here, never a network one.
        assert_eq!(shared_fs_kind(d.path()), None);
        assert_eq!(recheck_for(&[d.path().to_path_buf()], None), None);
        let w = ChangeWatcher::new(&[d.path().to_path_buf()], None).unwrap();
        assert!(!w.rechecks());
        let t = std::time::Instant::now();
        assert!(!w.wait(Duration::from_millis(700)), "no change, no recheck");
        assert!(t.elapsed() >= Duration::from_millis(650));
    }

    #[test]
    fn proc_is_recognised_by_its_magic_as_local() {
        // PROC_SUPER_MAGIC 0x9fa0 is in no list: the check reads f_type.
        let st = rustix::fs::statfs("/proc").unwrap();
        #[allow(clippy::unnecessary_cast)]
        let magic = st.f_type as u64;
        assert_eq!(magic, 0x9fa0);
        assert_eq!(shared_fs_kind(Path::new("/proc")), None);
    }
}
