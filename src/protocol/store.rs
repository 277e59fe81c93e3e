//! Reading and writing the JSON files of `.coordination/`: the atomic-write
//! protocol (`spec/PROTOCOL.md` section 4.2), symlink refusal, size limits
//! and the `schema_version` check (section 10). The on-disk format lives
//! here and in `task.rs`/`config.rs`.

use crate::error::{Error, Result};
use crate::protocol::config::{Config, CONFIG_SCHEMA_VERSION};
use crate::protocol::layout::TEMP_NAME;
use crate::protocol::task::{Task, TaskId, TASK_SCHEMA_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

/// Permission bits for a file created in `dir` (`spec` section 4.7):
/// `0644`, plus group write when `dir` is group-writable (a directory shared
/// by a group, `init --group-shared`). Never world-writable, whatever the
/// umask: the bits are set with fchmod after creation.
///
/// A private directory (no access for group or others, `init --private`)
/// gives `0600`, so results and logs are readable by the owner only.
pub fn file_mode_for(dir: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let mode = crate::protocol::fsroot::open_dir(dir)
        .and_then(|d| d.metadata())
        .map(|m| m.permissions().mode())
        .unwrap_or(0o755);
    if mode & 0o077 == 0 {
        0o600
    } else if mode & 0o020 != 0 {
        0o664
    } else {
        0o644
    }
}

/// Makes `dir` private to its owner: `0700` (`init --private`); files
/// created in it get `0600` and directories `0700`.
///
/// # Errors
/// [`Error::Io`].
pub fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", dir, e))
}

/// Sets `f`'s permission bits to [`file_mode_for`] its directory.
///
/// # Errors
/// [`Error::Io`] when fchmod fails.
pub fn set_file_mode(f: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = file_mode_for(dir);
    let cur = f
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .permissions()
        .mode()
        & 0o7777;
    if cur != mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", path, e))?;
    }
    Ok(())
}

/// Writes a whole small file that is not part of the atomic-write protocol
/// (index files, notes), with [`file_mode_for`] its directory.
///
/// # Errors
/// [`Error::Io`].
pub fn write_plain(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        crate::protocol::fsroot::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600)
            .map_err(|e| Error::io("write", path, e))?;
    set_file_mode(&f, path)?;
    f.write_all(bytes).map_err(|e| Error::io("write", path, e))
}

/// Opens `path` with the `open(2)` `flags` (and `mode` for a created file)
/// plus `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`, through the directory handle
/// ([`crate::protocol::fsroot`]), and refuses anything but a regular file: a symlink
/// (at the end or in any directory below `.coordination/`) or a FIFO planted
/// there is bad data, never followed and never waited on.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink or a non-regular file; [`Error::Io`]
/// (with `op`) otherwise, including not found.
pub fn open_regular(path: &Path, flags: i32, mode: u32, op: &'static str) -> Result<File> {
    let f = crate::protocol::fsroot::open(path, flags | libc::O_NONBLOCK, mode).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            Error::corrupt(
                path,
                "is a symlink; symlinks inside .coordination/ are refused, not followed",
            )
        } else if e.raw_os_error() == Some(libc::EISDIR) {
            Error::corrupt(path, "is a directory, not a regular file")
        } else {
            Error::io(op, path, e)
        }
    })?;
    if !f
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .is_file()
    {
        return Err(Error::corrupt(path, "is not a regular file"));
    }
    Ok(f)
}

/// Largest task or config file read, in bytes (16 MiB). Larger files are
/// refused as corrupt instead of being loaded into memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Opens `path` for reading without following a symlink.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    // O_NONBLOCK: a FIFO planted here must not hang the reader (it is then
    // refused as not a regular file).
    crate::protocol::fsroot::open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
}

/// Reads a whole file, refusing symlinks and files over [`MAX_FILE_BYTES`].
/// Returns `Ok(None)` when the file does not exist.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink, a non-regular file or an oversized
/// file; [`Error::Io`] otherwise.
pub fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut f = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::corrupt(
                path,
                "is a symlink; symlinks inside .coordination/ are refused, not followed",
            ))
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::corrupt(path, "is not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::corrupt(
            path,
            format!(
                "is {} bytes, over the {} byte limit",
                meta.len(),
                MAX_FILE_BYTES
            ),
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    Read::by_ref(&mut f)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(buf))
}

/// A document type read with [`parse_versioned`] (task files, `config.json`,
/// agent records).
pub trait Versioned: DeserializeOwned {
    /// Its fields that are nested records and must be JSON objects (or
    /// null): serde would also take an array for a struct. Fields of other
    /// types of document are unknown fields here, kept whatever they hold
    /// (`spec` section 10).
    const OBJECT_FIELDS: &'static [&'static str];
}

impl Versioned for Task {
    const OBJECT_FIELDS: &'static [&'static str] = &["context", "backoff"];
}

impl Versioned for Config {
    const OBJECT_FIELDS: &'static [&'static str] = &["backoff"];
}

impl Versioned for crate::protocol::registry::AgentRecord {
    const OBJECT_FIELDS: &'static [&'static str] = &[];
}

/// Parses a versioned JSON document: checks `schema_version` before the
/// typed parse, so that a newer major version gets [`Error::NewerSchema`]
/// rather than a confusing field error.
///
/// # Errors
/// [`Error::Corrupt`] for invalid JSON, a missing or non-integer
/// `schema_version`, or a field that breaks the schema;
/// [`Error::NewerSchema`] for a version above `supported`.
pub fn parse_versioned<T: Versioned>(path: &Path, bytes: &[u8], supported: u64) -> Result<T> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| Error::corrupt(path, format!("not UTF-8: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
    let version = value
        .get("schema_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::corrupt(path, "missing or non-integer `schema_version`"))?;
    if version == 0 {
        return Err(Error::corrupt(
            path,
            "`schema_version` 0 does not exist; versions start at 1",
        ));
    }
    if version > supported {
        return Err(Error::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported,
        });
    }
    // Nested records must be objects (serde would also take arrays).
    for &key in T::OBJECT_FIELDS {
        if let Some(v) = value.get(key) {
            if !(v.is_object() || v.is_null()) {
                return Err(Error::corrupt(
                    path,
                    format!("`{key}` must be a JSON object"),
                ));
            }
        }
    }
    serde_json::from_value(value).map_err(|e| Error::corrupt(path, e.to_string()))
}

/// Reads `tasks/<id>.json`; `Ok(None)` when absent.
///
/// # Errors
/// As [`read_bytes`] and [`parse_versioned`], plus [`Error::Corrupt`] when
/// the `id` inside does not match the file name.
pub fn read_task(path: &Path, id: &TaskId) -> Result<Option<Task>> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(None);
    };
    let task: Task = parse_versioned(path, &bytes, TASK_SCHEMA_VERSION)?;
    task.check_ranges()
        .map_err(|reason| Error::corrupt(path, reason))?;
    if &task.id != id {
        return Err(Error::corrupt(
            path,
            format!("holds task `{}`, not `{id}`", task.id),
        ));
    }
    Ok(Some(task))
}

/// Reads `config.json`; `Ok(None)` when absent.
///
/// # Errors
/// As [`read_bytes`] and [`parse_versioned`].
pub fn read_config(path: &Path) -> Result<Option<Config>> {
    match read_bytes(path)? {
        None => Ok(None),
        Some(b) => {
            let c: Config = parse_versioned(path, &b, CONFIG_SCHEMA_VERSION)?;
            c.check_ranges()
                .map_err(|reason| Error::corrupt(path, reason))?;
            Ok(Some(c))
        }
    }
}

/// Serialises `value` as the spec's pretty JSON (two-space indent, UTF-8,
/// trailing newline).
///
/// # Errors
/// [`Error::Other`] if serialisation fails (it does not for our types).
pub fn to_pretty(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(value).map_err(|e| Error::Other(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

/// Flushes the whole file system that holds `dir` (`syncfs(2)`): one call
/// that makes many unsynced writes durable at once (a batch create).
///
/// # Errors
/// [`Error::Io`].
pub fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d =
        crate::protocol::fsroot::open_dir(dir).map_err(|e| Error::io("open directory", dir, e))?;
    // SAFETY: syncfs takes a valid open descriptor, which `d` is for the
    // duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::io("syncfs", dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// fsyncs a directory so that a rename or unlink in it survives power loss.
///
/// # Errors
/// [`Error::Io`].
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d =
        crate::protocol::fsroot::open_dir(dir).map_err(|e| Error::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Replaces `path` with `bytes` atomically (`spec` section 4.2): create
/// `<dir>/.tmp-write-<16 random hex digits>` exclusively through the
/// directory handle (never following a planted symlink), write, fsync when
/// `durable`, rename over `path`, and fsync the directory when
/// `durable && sync_parent`. The caller holds the directory lock.
///
/// # Errors
/// [`Error::Io`] for any failing step; the temp file is removed and `path`
/// is left as it was. [`Error::Corrupt`] when what got placed keeps not
/// being our file (a hostile user of a shared directory).
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool, sync_parent: bool) -> Result<()> {
    write_placed(path, bytes, durable, sync_parent, Placement::Replace)
}

/// As [`write_atomic`] for a file that must not exist yet (a new task):
/// placed with `renameat2(RENAME_NOREPLACE)` (`linkat` + `unlinkat` where
/// the file system refuses the flag), so nothing already at `path`, even
/// one planted after the caller looked, is ever replaced.
///
/// # Errors
/// [`Error::Io`] with kind `AlreadyExists` when `path` exists; otherwise as
/// [`write_atomic`].
pub fn write_new(path: &Path, bytes: &[u8], durable: bool, sync_parent: bool) -> Result<()> {
    write_placed(path, bytes, durable, sync_parent, Placement::New)
}

#[derive(Clone, Copy, PartialEq)]
enum Placement {
    Replace,
    New,
}

/// Where temp files of writes below `.coordination/` are made (`spec` 4.2):
/// one small directory, so the next lock holder finds a crash's leftovers
/// with one listing instead of listing `tasks/`.
pub const TEMP_DIR: &str = ".tmp";

/// An unpredictable temp name for a write of `path` (`spec` 4.2):
/// `.tmp-write-` and 16 hex digits, so another user cannot plant something
/// at it in advance; in [`TEMP_DIR`] of the coordination directory holding
/// `path`, else beside `path`.
fn temp_for(path: &Path, dir: &Path) -> std::path::PathBuf {
    let name = format!("{TEMP_NAME}-{:016x}", rand::random::<u64>());
    match crate::protocol::fsroot::root_of(path) {
        Some(root) => root.join(TEMP_DIR).join(name),
        None => dir.join(name),
    }
}

/// Removes every temp file left in [`TEMP_DIR`] by an interrupted write.
/// Only a lock holder may call it: then no write is in progress.
///
/// # Errors
/// [`Error::Io`] when the directory cannot be listed or a file removed.
pub fn clean_temps(root: &Path) -> Result<usize> {
    let d = root.join(TEMP_DIR);
    let names = match crate::protocol::fsroot::read_dir(&d) {
        Ok(v) => v,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        // Something planted in its place (a symlink, a file): it is ours
        // and holds nothing durable, so the link itself is removed and the
        // directory made again by the next write.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            tracing::warn!(path = %d.display(), "not a directory; removing it");
            crate::protocol::fsroot::remove_file(&d).map_err(|e| Error::io("remove", &d, e))?;
            return Ok(1);
        }
        Err(e) => return Err(Error::io("list", &d, e)),
    };
    for (n, _) in &names {
        let p = d.join(n);
        match crate::protocol::fsroot::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale temp file", &p, e)),
        }
    }
    Ok(names.len())
}

/// True for the temp names of [`write_atomic`] and of older writers
/// (`.tmp-write`, `.tmp-write-*`): readers skip them, `doctor` reports and
/// cleans them.
pub fn is_temp_name(name: &str) -> bool {
    name == TEMP_NAME
        || name
            .strip_prefix(TEMP_NAME)
            .is_some_and(|r| r.starts_with('-'))
}

fn write_placed(
    path: &Path,
    bytes: &[u8],
    durable: bool,
    sync_parent: bool,
    how: Placement,
) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Other(format!("no parent directory for {}", path.display())))?;
    // Another user of a group-shared directory may swap what we placed for
    // their own object (`spec` 4.7): the placed file is checked to be ours
    // (same inode as our descriptor) and the write is redone when it is
    // not; a success is only reported for our own bytes at `path`.
    for _ in 0..WRITE_TRIES {
        match write_once(path, &temp_for(path, dir), bytes, durable, how)? {
            true => {
                if durable && sync_parent {
                    sync_dir(dir)?;
                }
                return Ok(());
            }
            false => {
                tracing::warn!(path = %path.display(), "the file was replaced by someone else during a write; writing again")
            }
        }
    }
    Err(Error::corrupt(
        path,
        "someone keeps replacing the file during writes (a hostile user of a shared directory?); the write was not done",
    ))
}

/// Attempts of [`write_atomic`] before it gives up on a directory whose
/// files keep being replaced under it.
const WRITE_TRIES: usize = 5;

/// One temp-write-rename; `Ok(false)` when what got placed at `path` is not
/// the file we wrote (or the temp name was taken by someone else).
fn write_once(
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    durable: bool,
    how: Placement,
) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    crate::protocol::faults::point("before_temp_write");
    let result = (|| {
        let create = || {
            crate::protocol::fsroot::open(tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
        };
        let created = match create() {
            // The temp directory is made on first use.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(d) = tmp.parent() {
                    create_dir(d)?;
                }
                create()
            }
            r => r,
        };
        let mut f = match created {
            Ok(f) => f,
            // Taken (by chance or by someone): try another name.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io("create temp file", tmp, e)),
        };
        set_file_mode(&f, path)?;
        f.write_all(bytes).map_err(|e| Error::io("write", tmp, e))?;
        crate::protocol::faults::point("after_temp_write");
        if durable {
            f.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
        }
        crate::protocol::faults::point("after_fsync");
        let ours = f.metadata().map_err(|e| Error::io("stat", tmp, e))?;
        match how {
            Placement::Replace => crate::protocol::fsroot::rename(tmp, path),
            Placement::New => crate::protocol::fsroot::rename_noreplace(tmp, path),
        }
        .map_err(|e| Error::io("rename into place", path, e))?;
        crate::protocol::faults::point("after_rename");
        let placed = crate::protocol::fsroot::symlink_metadata(path)
            .map_err(|e| Error::io("stat", path, e))?;
        Ok(placed.dev() == ours.dev() && placed.ino() == ours.ino())
    })();
    if !matches!(result, Ok(true)) {
        let _ = crate::protocol::fsroot::remove_file(tmp);
    }
    result
}

/// Creates a directory (and parents) unless it exists; refuses a symlink in
/// its place.
///
/// # Errors
/// [`Error::Corrupt`] if `dir` is a symlink or not a directory; [`Error::Io`].
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match crate::protocol::fsroot::symlink_metadata(dir) {
        Ok(m) if m.is_symlink() => Err(Error::corrupt(
            dir,
            "is a symlink; symlinks inside .coordination/ are refused",
        )),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::corrupt(dir, "is not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => create_dir(dir),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::corrupt(
            dir,
            "has a symlink in its path; symlinks inside .coordination/ are refused",
        )),
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// Creates `dir` (and missing parents) with `0755`, or `2775` when its parent
/// is group-writable (shared by a group), set explicitly so the umask does
/// not decide (`spec` section 4.7).
///
/// # Errors
/// [`Error::Io`].
pub fn create_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !crate::protocol::fsroot::exists(p))
    {
        create_dir(parent)?;
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mode = match file_mode_for(parent) {
        0o664 => 0o2775,
        0o600 => 0o700,
        _ => 0o755,
    };
    match crate::protocol::fsroot::create_dir(dir, mode) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", dir, e)),
    }
}

/// Makes `dir` shared by its group: `2775` (setgid, so files inherit the
/// group; group-writable, so files get `0664`). `init --group-shared`.
///
/// # Errors
/// [`Error::Io`].
pub fn make_group_shared(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2775))
        .map_err(|e| Error::io("chmod", dir, e))
}
