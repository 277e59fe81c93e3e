//! The directory lock (`spec/PROTOCOL.md` section 4.1): an exclusive
//! `flock(2)` on `.coordination/lock`, through std's `File::lock` (stable
//! since Rust 1.89). The kernel drops it when the holder dies, so there is
//! no stale-lock cleanup. This is the only module that locks files.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
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

fn open_lock_file(path: &Path) -> Result<File> {
    let f = crate::store::open_regular(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
        "open lock file",
    )?;
    // Only the owner can chmod; everyone else just uses the file.
    let _ = crate::store::set_file_mode(&f, path);
    Ok(f)
}

/// Takes the exclusive lock on `path`, waiting at most `timeout`.
///
/// Tries without blocking first; when the lock is contended, blocks in the
/// kernel's queue (on a helper thread, so that the wait can time out) rather
/// than polling.
///
/// # Errors
/// [`Error::LockTimeout`] after `timeout`; [`Error::Io`] when the file
/// cannot be opened; [`Error::Corrupt`] when it is a symlink.
pub fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => {
            return Ok(LockGuard {
                file,
                path: path.to_path_buf(),
            })
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    tracing::debug!(lock = %path.display(), "waiting for lock");
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::spawn(move || {
        let r = file.lock().map(|()| file);
        // If the waiter gave up, the receiver is gone and the File (and
        // with it the lock) is dropped here.
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(LockGuard {
            file,
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) => Err(Error::io("lock", path, e)),
        Err(_) => Err(Error::LockTimeout {
            path: path.to_path_buf(),
            waited_ms: start.elapsed().as_millis() as u64,
        }),
    }
}
