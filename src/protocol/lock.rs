//! The directory lock (`spec/PROTOCOL.md` section 4.1): an exclusive
//! `flock(2)` on `.coordination/lock`, through std's `File::lock` (stable
//! since Rust 1.89). The kernel drops it when the holder dies, so there is
//! no stale-lock cleanup. This is the only module that locks files.

use crate::error::{Error, Result};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An exclusive hold on the directory lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the descriptor releases the flock as well; unlock first
        // so that the release does not wait for the close.
        let _ = self.file.unlock();
    }
}

/// The second name of the lock file's inode: `lock.anchor` beside `lock`
/// (`spec` 4.1). A lock file deleted by hand is restored from it as the
/// same inode, so a process that opens `lock` afterwards waits on the
/// holder's lock instead of creating a new, unlocked file.
pub fn anchor_path(lock: &Path) -> PathBuf {
    lock.with_file_name("lock.anchor")
}

fn open_existing(path: &Path) -> Result<Option<File>> {
    match crate::protocol::store::open_regular(path, libc::O_RDWR, 0, "open lock file") {
        Ok(f) => Ok(Some(f)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the lock file without ever creating a second inode for it while
/// its anchor exists: a missing `lock` is restored as a hard link of
/// `lock.anchor`; only when both are missing (a new directory) is a new
/// file made, anchor first, with `O_EXCL`.
fn open_lock_file(path: &Path) -> Result<File> {
    let anchor = anchor_path(path);
    let mut made_anchor = false;
    for _ in 0..8 {
        if let Some(f) = open_existing(path)? {
            // Only the owner can chmod; everyone else just uses the file.
            let _ = crate::protocol::store::set_file_mode(&f, path);
            return Ok(f);
        }
        match crate::protocol::fsroot::hard_link(&anchor, path) {
            Ok(()) => {
                if !made_anchor {
                    tracing::warn!(lock = %path.display(), "the lock file was missing; restored it from {}", anchor.display());
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("restore lock file", path, e)),
        }
        // Neither name exists: a new directory. The anchor is made first,
        // exclusively, so that two processes cannot make two inodes.
        match crate::protocol::fsroot::open(
            &anchor,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        ) {
            Ok(f) => {
                made_anchor = true;
                let _ = crate::protocol::store::set_file_mode(&f, &anchor);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create lock file", &anchor, e)),
        }
    }
    Err(Error::corrupt(
        path,
        "the lock file keeps disappearing; stop whatever deletes .coordination/lock",
    ))
}

/// Device and inode of an open file (`fstat(2)`).
fn identity(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// True when `path` (not followed: `lstat(2)`) is the file `id` names.
fn names(path: &Path, id: (u64, u64)) -> bool {
    crate::protocol::fsroot::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id)
}

/// Makes `lock.anchor` a second name of the locked `lock` file (identity
/// `id`) when it is missing or names another inode (a directory from before
/// anchors, or a lock file replaced by hand). Called with the lock held.
fn ensure_anchor(id: (u64, u64), path: &Path) {
    let anchor = anchor_path(path);
    if names(&anchor, id) {
        return;
    }
    let tmp = path.with_file_name(format!(".lock.anchor.tmp-{}", std::process::id()));
    let _ = crate::protocol::fsroot::remove_file(&tmp);
    if crate::protocol::fsroot::hard_link(path, &tmp).is_ok()
        && crate::protocol::fsroot::rename(&tmp, &anchor).is_err()
    {
        let _ = crate::protocol::fsroot::remove_file(&tmp);
    }
}

/// Takes the exclusive lock on `path`, waiting at most `timeout`.
///
/// Tries without blocking first; when the lock is contended, blocks in the
/// kernel's queue (on a helper thread, so that the wait can time out) rather
/// than polling. Once locked, checks that the locked file is still the one
/// at `path` (same device and inode); if someone deleted or replaced it,
/// the lock is dropped and taken again on the file now there, so two
/// processes can never both hold "the" lock through different files.
///
/// # Errors
/// [`Error::LockTimeout`] after `timeout`; [`Error::Io`] when the file
/// cannot be opened; [`Error::Corrupt`] when it is a symlink.
pub fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let file = acquire_once(path, left, start)?;
        // Lock identity (`spec` 4.1): a lock file deleted or replaced while
        // we waited for it locks nothing the next process will see.
        if let Some(id) = identity(&file).filter(|&id| names(path, id)) {
            ensure_anchor(id, path);
            return Ok(LockGuard {
                file,
                path: path.to_path_buf(),
            });
        }
        tracing::warn!(lock = %path.display(), "the lock file was deleted or replaced while we waited; locking the new one");
        drop(file);
        if start.elapsed() >= timeout {
            return Err(Error::LockTimeout {
                path: path.to_path_buf(),
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
    }
}

fn acquire_once(path: &Path, timeout: Duration, start: Instant) -> Result<File> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    tracing::debug!(lock = %path.display(), "waiting for lock");
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::spawn(move || {
        let r = file.lock().map(|()| file);
        // If the waiter gave up, the receiver is gone and the File (and
        // with it the lock) is dropped here.
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(Error::io("lock", path, e)),
        Err(_) => Err(Error::LockTimeout {
            path: path.to_path_buf(),
            waited_ms: start.elapsed().as_millis() as u64,
        }),
    }
}
