//! Safe discovery (`spec/PROTOCOL.md` section 4.7): which coordination
//! directories this process may use, as git's `safe.directory` decides which
//! repositories it may read. A `.coordination/` is a queue of commands that
//! workers run and of text handed to Claude sessions, so adopting a
//! stranger's would run their commands as us.
//!
//! A directory is trusted when it is not world-writable and it is owned by
//! the current user or by root, or it is group-shared (`init
//! --group-shared`: setgid and group-writable) with a group the current user
//! is in. `ORCHESTRATE_SAFE_DIRS` (a `:`-separated list of directories, or
//! `*` for any) trusts others explicitly.

use crate::error::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The environment variable that lists directories trusted whatever their
/// owner: `:`-separated absolute paths of `.coordination/` directories (or
/// the project directories holding them), or `*`.
pub const SAFE_DIRS_ENV: &str = "ORCHESTRATE_SAFE_DIRS";

fn in_my_groups(gid: u32) -> bool {
    // SAFETY: getegid and getgroups write only into the buffer we size.
    unsafe {
        if libc::getegid() == gid {
            return true;
        }
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return false;
        }
        let mut v = vec![0 as libc::gid_t; n as usize];
        let n = libc::getgroups(n, v.as_mut_ptr());
        n > 0 && v[..n as usize].contains(&gid)
    }
}

fn listed(dir: &Path) -> bool {
    let Some(list) = std::env::var_os(SAFE_DIRS_ENV) else {
        return false;
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let me = canon(dir);
    std::env::split_paths(&list).any(|p| {
        p.as_os_str() == "*" || {
            let p = canon(&p);
            p == me || me.parent() == Some(p.as_path())
        }
    })
}

/// Why `dir` must not be used, or `None` when it is trusted.
pub fn problem(dir: &Path) -> Option<String> {
    // The directory itself may be a symlink (to shared storage, `spec` 2):
    // what is judged is the directory it leads to.
    let m = std::fs::metadata(dir).ok()?;
    if listed(dir) {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mode = m.mode();
    if mode & 0o002 != 0 {
        return Some(format!(
            "it is writable by every user (mode {:o}), so anyone could have put tasks in it",
            mode & 0o7777
        ));
    }
    // Group-writable: the group's members can plant tasks, so the user
    // must be one of them (then they are the chosen audience), whoever
    // owns the directory.
    if mode & 0o020 != 0 && !in_my_groups(m.gid()) {
        return Some(format!(
            "it is writable by group {}, which you are not in",
            m.gid()
        ));
    }
    let owner_ok = m.uid() == me || m.uid() == 0;
    let group_ok = mode & 0o2020 == 0o2020 && in_my_groups(m.gid());
    if owner_ok || group_ok {
        return None;
    }
    Some(format!(
        "it belongs to user {} and is not shared with a group of yours",
        m.uid()
    ))
}

/// Refuses a directory this process must not adopt (see the module docs).
///
/// # Errors
/// [`Error::Untrusted`] naming the directory, the reason and the override.
pub fn check(dir: &Path) -> Result<()> {
    match problem(dir) {
        None => Ok(()),
        Some(reason) => Err(Error::Untrusted {
            path: dir.to_path_buf(),
            reason,
        }),
    }
}
