//! Directory handles for every file operation under `.coordination/`
//! (`spec/PROTOCOL.md` section 4.7, "every path is resolved from the
//! directory's handle").
//!
//! A [`Coordination`](crate::Coordination) opens its directory once and
//! registers the handle here ([`register`]). From then on, every function of
//! this module given a path below a registered directory resolves it from
//! that handle with `openat2(2)` and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! (Linux 5.6; a walk component by component with `O_NOFOLLOW |
//! O_DIRECTORY` where the kernel lacks it), and acts with the `*at` system
//! calls on the handle of the parent directory: a symlink anywhere below
//! `.coordination/` is refused (`ELOOP`), and a directory swapped for a
//! symlink between two steps of an operation cannot redirect the second
//! step, because it is not looked up by name again. Paths outside every
//! registered directory (the user's own files) go to `std::fs` unchanged.
//!
//! The functions mirror `std::fs` (same names, `std::io::Result`), so the
//! callers read as before. `rustix` provides the system calls (already in
//! the dependency tree through `tempfile`); `cap-std` would have hidden the
//! `RESOLVE_NO_SYMLINKS` choice (it follows symlinks that stay inside).

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, CWD};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// An open `.coordination/` directory. Dropping the last [`Arc`] closes it
/// and unregisters it.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

static ROOTS: Mutex<Vec<Weak<Root>>> = Mutex::new(Vec::new());

/// Opens `path` (absolute; the directory itself may be a symlink, which is
/// the caller's trust decision, `spec` 4.7) and registers its handle, so
/// that the functions of this module resolve paths below it from the handle.
/// The newest registration of a path wins (a directory removed and made
/// again is opened afresh by the next [`Coordination::open`]).
///
/// # Errors
/// The `open(2)` error: not found, not a directory, no permission.
///
/// [`Coordination::open`]: crate::Coordination::open
pub fn register(path: &Path) -> io::Result<Arc<Root>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let root = Arc::new(Root {
        path: path.to_path_buf(),
        fd,
    });
    let mut roots = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    roots.retain(|w| w.strong_count() > 0);
    roots.push(Arc::downgrade(&root));
    Ok(root)
}

/// The registered directory that holds `path` (strictly below it), and
/// `path` relative to it.
fn find(path: &Path) -> Option<(Arc<Root>, PathBuf)> {
    find_or_self(path).filter(|(_, rel)| !rel.as_os_str().is_empty())
}

/// As [`find`], also matching a registered directory itself (relative path
/// empty): it is then opened through its handle, whatever symlink led to it.
fn find_or_self(path: &Path) -> Option<(Arc<Root>, PathBuf)> {
    let roots = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    roots
        .iter()
        .rev()
        .filter_map(Weak::upgrade)
        .filter_map(|r| {
            let rel = path.strip_prefix(&r.path).ok()?.to_path_buf();
            Some((r, rel))
        })
        .max_by_key(|(r, _)| r.path.as_os_str().len())
}

/// The registered directory that holds `path` (strictly below it), if any.
pub fn root_of(path: &Path) -> Option<PathBuf> {
    find(path).map(|(r, _)| r.path.clone())
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Opens `rel` below `dir` with no symlink followed in any component.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    // openat2 refuses a mode without O_CREAT (EINVAL), unlike openat.
    let mode = if flags.intersects(OFlags::CREATE | OFlags::TMPFILE) {
        mode
    } else {
        Mode::empty()
    };
    let rel_or_dot = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    match rustix::fs::openat2(dir, rel_or_dot, flags, mode, resolve_flags()) {
        Ok(fd) => return Ok(fd),
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {}
        // EAGAIN: a rename raced the lookup (RESOLVE_* asks to retry).
        Err(rustix::io::Errno::AGAIN) => {
            if let Ok(fd) = rustix::fs::openat2(dir, rel_or_dot, flags, mode, resolve_flags()) {
                return Ok(fd);
            }
        }
        Err(e) => return Err(e.into()),
    }
    // No openat2 (old kernel, or a seccomp filter): walk the components.
    walk_beneath(dir, rel, flags, mode)
}

/// [`open_beneath`] without `openat2`: each directory component opened
/// with `O_PATH | O_DIRECTORY | O_NOFOLLOW` from the one before (a symlink
/// gives `ELOOP`), `..` and absolute paths refused (`EXDEV`), the last one
/// opened with `flags` (which hold `O_NOFOLLOW`).
fn walk_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let mut comps: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => comps.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        }
    }
    let Some(last) = comps.pop() else {
        return Ok(rustix::fs::openat(dir, ".", flags, mode)?);
    };
    let mut cur: Option<OwnedFd> = None;
    for c in comps {
        let base = cur.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(
            base,
            c,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::NOTDIR {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                e.into()
            }
        })?;
        cur = Some(next);
    }
    let base = cur.as_ref().map_or(dir, |f| f.as_fd());
    Ok(rustix::fs::openat(base, last, flags, mode)?)
}

/// The parent directory of `rel` opened below `dir`, and the last name.
fn parent_of(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<(OwnedFd, PathBuf)> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let fd = open_beneath(dir, parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
    Ok((fd, PathBuf::from(name)))
}

/// Opens `path` with `open(2)` `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are
/// always added) and `mode` for a created file: resolved from the handle of
/// its registered directory, else from the working directory.
///
/// # Errors
/// The `open(2)` error; `ELOOP` for a symlink in any component below a
/// registered directory.
pub fn open(path: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let flags = OFlags::from_bits_retain(flags as u32);
    let mode = Mode::from_bits_truncate(mode);
    let fd = match find_or_self(path) {
        Some((root, rel)) => open_beneath(root.fd.as_fd(), &rel, flags, mode)?,
        // Outside every registered directory: a file is not followed if it
        // is a symlink; a directory is (the user's own path, e.g. a
        // `.coordination` that is a symlink to shared storage, before it is
        // registered).
        None if flags.contains(OFlags::DIRECTORY) => {
            rustix::fs::open(path, flags | OFlags::CLOEXEC, mode)?
        }
        None => rustix::fs::open(path, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode)?,
    };
    Ok(File::from(fd))
}

/// Opens the directory `path` (for listing, fsync, fchmod), refusing a
/// symlink, as [`open`].
///
/// # Errors
/// As [`open`]; `ENOTDIR` when it is not a directory.
pub fn open_dir(path: &Path) -> io::Result<File> {
    open(
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK,
        0,
    )
}

/// Runs `op` on (parent directory handle, last name) of `path` when it is
/// below a registered directory; `None` otherwise.
fn with_parent<T>(
    path: &Path,
    op: impl FnOnce(BorrowedFd<'_>, &Path) -> io::Result<T>,
) -> Option<io::Result<T>> {
    let (root, rel) = find(path)?;
    // A name directly in the registered directory: its own handle is the
    // parent, with no open (on a network file system each open is a round
    // trip to the server).
    if rel.parent().is_some_and(|p| p.as_os_str().is_empty()) {
        if let Some(name) = rel.file_name() {
            return Some(op(root.fd.as_fd(), Path::new(name)));
        }
    }
    Some(parent_of(root.fd.as_fd(), &rel).and_then(|(fd, name)| op(fd.as_fd(), &name)))
}

/// `std::fs::remove_file`, through the parent's handle (`unlinkat(2)`).
///
/// # Errors
/// As `unlink(2)`.
pub fn remove_file(path: &Path) -> io::Result<()> {
    with_parent(path, |d, n| {
        Ok(rustix::fs::unlinkat(d, n, AtFlags::empty())?)
    })
    .unwrap_or_else(|| std::fs::remove_file(path))
}

/// `std::fs::remove_dir` (an empty directory), through the parent's handle.
///
/// # Errors
/// As `rmdir(2)`.
pub fn remove_dir(path: &Path) -> io::Result<()> {
    with_parent(path, |d, n| {
        Ok(rustix::fs::unlinkat(d, n, AtFlags::REMOVEDIR)?)
    })
    .unwrap_or_else(|| std::fs::remove_dir(path))
}

/// `std::fs::remove_dir_all`, never following a symlink: each directory is
/// opened from its parent's handle and emptied through its own.
///
/// # Errors
/// The first failing `unlinkat(2)` or `openat(2)`.
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    fn empty(dir: BorrowedFd<'_>) -> io::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for ent in rustix::fs::Dir::read_from(&fd)? {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                use std::os::unix::ffi::OsStrExt;
                names.push((
                    OsStr::from_bytes(n).to_os_string(),
                    ent.file_type() == rustix::fs::FileType::Directory,
                ));
            }
        }
        for (n, is_dir) in names {
            if is_dir {
                let sub = rustix::fs::openat(
                    fd.as_fd(),
                    &n,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                empty(sub.as_fd())?;
                rustix::fs::unlinkat(fd.as_fd(), &n, AtFlags::REMOVEDIR)?;
            } else {
                rustix::fs::unlinkat(fd.as_fd(), &n, AtFlags::empty())?;
            }
        }
        Ok(())
    }
    with_parent(path, |d, n| {
        let st = rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            let sub = rustix::fs::openat(
                d,
                n,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            empty(sub.as_fd())?;
            Ok(rustix::fs::unlinkat(d, n, AtFlags::REMOVEDIR)?)
        } else {
            Ok(rustix::fs::unlinkat(d, n, AtFlags::empty())?)
        }
    })
    .unwrap_or_else(|| std::fs::remove_dir_all(path))
}

/// Both paths below one registered directory: the handles of their parents
/// and their names.
fn two_parents(from: &Path, to: &Path) -> Option<io::Result<(OwnedFd, PathBuf, OwnedFd, PathBuf)>> {
    let (root, rel_from) = find(from)?;
    let rel_to = to
        .strip_prefix(&root.path)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())?
        .to_path_buf();
    Some((|| {
        let (fd1, n1) = parent_of(root.fd.as_fd(), &rel_from)?;
        let (fd2, n2) = parent_of(root.fd.as_fd(), &rel_to)?;
        Ok((fd1, n1, fd2, n2))
    })())
}

/// `std::fs::rename`, through the parents' handles (`renameat(2)`).
///
/// # Errors
/// As `rename(2)`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    match two_parents(from, to) {
        Some(r) => {
            let (d1, n1, d2, n2) = r?;
            Ok(rustix::fs::renameat(&d1, &n1, &d2, &n2)?)
        }
        None => std::fs::rename(from, to),
    }
}

/// Renames `from` to `to` only if `to` does not exist
/// (`renameat2(RENAME_NOREPLACE)`; where the file system refuses that flag,
/// `linkat(2)` then `unlinkat(2)` of `from`, which also never replaces).
///
/// # Errors
/// `EEXIST` when `to` exists; otherwise as `rename(2)` / `link(2)`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (d1, n1, d2, n2) = match two_parents(from, to) {
        Some(r) => r?,
        None => {
            let p = |p: &Path| -> io::Result<(OwnedFd, PathBuf)> {
                let name = p
                    .file_name()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                let parent = p.parent().filter(|x| !x.as_os_str().is_empty());
                let fd = rustix::fs::openat(
                    CWD,
                    parent.unwrap_or(Path::new(".")),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                Ok((fd, PathBuf::from(name)))
            };
            let (a, b) = p(from)?;
            let (c, d) = p(to)?;
            (a, b, c, d)
        }
    };
    match rustix::fs::renameat_with(&d1, &n1, &d2, &n2, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL)
        | Err(rustix::io::Errno::NOSYS)
        | Err(rustix::io::Errno::NOTSUP) => {
            rustix::fs::linkat(&d1, &n1, &d2, &n2, AtFlags::empty())?;
            Ok(rustix::fs::unlinkat(&d1, &n1, AtFlags::empty())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// `std::fs::hard_link`, through the parents' handles (`linkat(2)`, the
/// source not followed if it is a symlink).
///
/// # Errors
/// As `link(2)`.
pub fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    match two_parents(from, to) {
        Some(r) => {
            let (d1, n1, d2, n2) = r?;
            Ok(rustix::fs::linkat(&d1, &n1, &d2, &n2, AtFlags::empty())?)
        }
        None => std::fs::hard_link(from, to),
    }
}

/// `std::fs::create_dir` with `mode` (then set exactly, so the umask does
/// not decide), through the parent's handle (`mkdirat(2)`).
///
/// # Errors
/// As `mkdir(2)`, `EEXIST` included.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match with_parent(path, |d, n| {
        Ok(rustix::fs::mkdirat(d, n, Mode::from_bits_truncate(mode))?)
    }) {
        Some(r) => r?,
        None => std::fs::create_dir(path)?,
    }
    open_dir(path)?.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// File type and identity of `path` itself (a symlink is not followed),
/// resolved through the parent's handle: `lstat(2)`.
///
/// # Errors
/// As `lstat(2)`; `ELOOP` for a symlink in a directory component.
pub fn symlink_metadata(path: &Path) -> io::Result<Stat> {
    let st = match with_parent(path, |d, n| {
        Ok(rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW)?)
    }) {
        Some(r) => r?,
        None => rustix::fs::lstat(path)?,
    };
    Ok(Stat {
        kind: rustix::fs::FileType::from_raw_mode(st.st_mode),
        dev: st.st_dev,
        ino: st.st_ino,
        len: st.st_size.max(0) as u64,
    })
}

/// What [`symlink_metadata`] returns.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    kind: rustix::fs::FileType,
    dev: u64,
    ino: u64,
    len: u64,
}

impl Stat {
    /// Device number (`st_dev`).
    pub fn dev(&self) -> u64 {
        self.dev
    }
    /// Inode number (`st_ino`).
    pub fn ino(&self) -> u64 {
        self.ino
    }
    /// Size in bytes (`st_size`).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind == rustix::fs::FileType::RegularFile
    }
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind == rustix::fs::FileType::Directory
    }
    /// A symlink (never followed).
    pub fn is_symlink(&self) -> bool {
        self.kind == rustix::fs::FileType::Symlink
    }
}

/// Whether `path` exists (without following a symlink at its end).
pub fn exists(path: &Path) -> bool {
    symlink_metadata(path).is_ok()
}

/// The entries of the directory `path`, without `.` and `..`: (name, kind)
/// with `kind` from the directory entry (`d_type`; [`EntryKind::Other`]
/// where the file system gives none, then the caller stats). Read through
/// a handle opened as [`open_dir`].
///
/// # Errors
/// As [`open_dir`] and `getdents(2)`.
pub fn read_dir(path: &Path) -> io::Result<Vec<(std::ffi::OsString, EntryKind)>> {
    use std::os::unix::ffi::OsStrExt;
    let d = open_dir(path)?;
    let mut v = Vec::new();
    for ent in rustix::fs::Dir::read_from(&d)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let kind = match ent.file_type() {
            rustix::fs::FileType::RegularFile => EntryKind::File,
            rustix::fs::FileType::Directory => EntryKind::Dir,
            rustix::fs::FileType::Symlink => EntryKind::Symlink,
            rustix::fs::FileType::Unknown => EntryKind::Unknown,
            _ => EntryKind::Other,
        };
        v.push((OsStr::from_bytes(n).to_os_string(), kind));
    }
    Ok(v)
}

/// The type of a directory entry, as `d_type` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
    /// A FIFO, socket or device.
    Other,
    /// The file system did not say (`DT_UNKNOWN`): stat it.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered directory with `sub/` inside, and a directory outside.
    fn setup() -> (tempfile::TempDir, Arc<Root>, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("coord");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        let r = register(&root).unwrap();
        (t, r, root)
    }

    #[test]
    fn a_symlinked_component_below_the_root_is_refused() {
        let (t, _r, root) = setup();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("link")).unwrap();
        let e = open(&root.join("link/x"), libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert!(!t.path().join("outside/x").exists());
        // The parent opened as a directory: a symlink there is ENOTDIR.
        let e = remove_file(&root.join("link/y")).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        );
        // The link itself can be removed (it is the last component).
        remove_file(&root.join("link")).unwrap();
        open(&root.join("sub/x"), libc::O_WRONLY | libc::O_CREAT, 0o600).unwrap();
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let (_t, _r, root) = setup();
        std::fs::write(root.join("sub/a"), b"new").unwrap();
        std::fs::write(root.join("sub/b"), b"old").unwrap();
        let e = rename_noreplace(&root.join("sub/a"), &root.join("sub/b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(root.join("sub/b")).unwrap(), b"old");
        rename_noreplace(&root.join("sub/a"), &root.join("sub/c")).unwrap();
        assert_eq!(std::fs::read(root.join("sub/c")).unwrap(), b"new");
        assert!(!root.join("sub/a").exists());
    }

    #[test]
    fn the_walk_without_openat2_refuses_symlinks_too() {
        let (t, r, root) = setup();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("link")).unwrap();
        // The fallback path, as on a kernel without openat2.
        let e = walk_beneath(
            r.fd.as_fd(),
            Path::new("link/x"),
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        let f = walk_beneath(
            r.fd.as_fd(),
            Path::new("sub/y"),
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
        assert!(f.is_ok());
        assert!(root.join("sub/y").is_file());
        let e = walk_beneath(
            r.fd.as_fd(),
            Path::new("../outside/z"),
            OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    }
}
