//! The derived claim index under `index/` (`spec/PROTOCOL.md` section 9).
//!
//! It lets a claim find the most urgent ready task without opening every
//! task file. It is a hint, never the truth: every entry is checked against
//! the task file before it is used, entries are added *before* the task file
//! changes and removed *after*, so the index is always a superset of the
//! truth, and a missing, foreign-version or pre-reboot index is rebuilt from
//! `tasks/`. Nothing in it is fsynced.
//!
//! Files are appended to and rewritten in place rather than created and
//! deleted per entry: on ext4, every freed inode makes later inode
//! allocations slower for a while (`recently_deleted()`), so churning
//! inodes for index entries made claims quadratic under load.
//!
//! - `index/version`: `2 <boot id>`; the boot id (`/proc/sys/kernel/random/boot_id`)
//!   makes a reboot, and so a power loss, force a rebuild.
//! - `index/next_seq`: the next task `seq`, decimal.
//! - `index/ready/<pp>/<bucket>`: one line `<seq>-<id>` per pending task
//!   whose dependencies are completed (maybe still backing off). `pp` is the
//!   two-digit priority (a directory, so a claim lists at most 10 names
//!   before it reaches the most urgent buckets), `bucket` is `seq / 256` in
//!   12 digits, `seq` is 12 digits: directory order, then file order, then
//!   line order, is claim order.
//! - `index/waiting`: ids of pending tasks created or put back while waiting
//!   on dependencies (append-only; compacted when read).
//! - `index/dependents/<id>`: ids of tasks that depend on `<id>`, one per line.
//! - `index/leases`: one line `<expires_ms>-<id>` per claimed task
//!   (13-digit Unix milliseconds).
//! - `index/unmet/<id>`: for a task with at least [`UNMET_MIN_DEPS`]
//!   dependencies, at most the number of its distinct dependencies not yet
//!   completed, so a completion of one of many dependencies need not read
//!   the dependent's file (fan-in stays linear; spec section 9).

use crate::error::{Error, Result};
use crate::protocol::task::{Task, TaskId};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Version written to `index/version`; any other content means "rebuild".
pub const INDEX_VERSION: &str = "3";

/// Tasks with at least this many dependencies get an `index/unmet/<id>`
/// counter; fewer are checked directly, which is as cheap.
pub const UNMET_MIN_DEPS: usize = 16;
const BUCKET: u64 = 256;

/// Handle on `index/`.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    root: PathBuf,
}

fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, p, e)
}

#[derive(Clone, Copy, PartialEq)]
enum Access {
    Read,
    Append,
    Write,
    Create,
}

/// Opens an index file without following a symlink or blocking on a FIFO.
/// Something planted there (a symlink, a FIFO, a directory) is removed, the
/// index is marked stale so the next mutation rebuilds it, and the open is
/// retried (append) or treated as absent (read, rewrite): the index is
/// derived, so nothing is lost. `Ok(None)` when there is no file.
fn open_index_file(p: &Path, access: Access) -> Result<Option<File>> {
    for attempt in 0..2 {
        let flags = match access {
            Access::Read => libc::O_RDONLY,
            Access::Append => libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            Access::Write => libc::O_WRONLY,
            Access::Create => libc::O_WRONLY | libc::O_CREAT,
        };
        let planted = match crate::protocol::fsroot::open(p, flags | libc::O_NONBLOCK, 0o600) {
            Ok(f) => {
                if f.metadata().map_err(io("stat", p))?.is_file() {
                    if matches!(access, Access::Append | Access::Create) {
                        crate::protocol::store::set_file_mode(&f, p)?;
                    }
                    return Ok(Some(f));
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e)
                if e.raw_os_error() == Some(libc::ELOOP)
                    || e.raw_os_error() == Some(libc::EISDIR) =>
            {
                true
            }
            Err(e) => return Err(Error::io("open index file", p, e)),
        };
        if planted && attempt == 0 {
            tracing::warn!(path = %p.display(), "not a regular file in index/; removing it and rebuilding the index");
            remove_planted_dirs(p);
            if crate::protocol::fsroot::remove_file(p).is_err() {
                let _ = crate::protocol::fsroot::remove_dir_all(p);
            }
            mark_stale(p);
            if !matches!(access, Access::Append | Access::Create) {
                return Ok(None);
            }
        }
    }
    Err(Error::corrupt(p, "cannot be replaced by a regular file"))
}

/// Marks the index holding `p` stale (removes `index/version`), so the next
/// mutation rebuilds it (`spec` 9, rule 4): after something planted in it
/// was removed.
fn mark_stale(p: &Path) {
    if let Some(root) = p
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "index"))
    {
        let _ = crate::protocol::fsroot::remove_file(&root.join("version"));
    }
}

/// Unlinks every symlink planted in place of a directory between `index/`
/// and `p` (top first; the link itself, never its target), so that the
/// retried open can make the real directory.
fn remove_planted_dirs(p: &Path) {
    let mut dirs: Vec<&Path> = p
        .ancestors()
        .skip(1)
        .take_while(|a| a.file_name().is_some_and(|n| n != "index"))
        .collect();
    dirs.reverse();
    for d in dirs {
        if crate::protocol::fsroot::symlink_metadata(d).is_ok_and(|m| m.is_symlink() || !m.is_dir())
        {
            tracing::warn!(path = %d.display(), "not a directory in index/; removing it");
            let _ = crate::protocol::fsroot::remove_file(d);
        }
    }
}

fn append_line(p: &Path, line: &str) -> Result<()> {
    let f = match open_index_file(p, Access::Append)? {
        Some(f) => Some(f),
        None => {
            // The directory is missing (a new priority): make it, try again.
            if let Some(parent) = p.parent() {
                crate::protocol::store::create_dir(parent)?;
            }
            open_index_file(p, Access::Append)?
        }
    };
    let Some(mut f) = f else {
        return Err(Error::corrupt(p, "cannot be created"));
    };
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(io("append to index file", p))
}

fn read_lines(p: &Path) -> Result<Vec<String>> {
    let Some(mut f) = open_index_file(p, Access::Read)? else {
        return Ok(Vec::new());
    };
    // A plain read loop: `File::read_to_end` first stats the file for a
    // size hint, which on a network file system is one more round trip per
    // index file read.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read index file", p, e)),
        }
    }
    // Not UTF-8: junk in a derived file; treat as empty (the callers'
    // superset checks and a rebuild recover).
    let t = String::from_utf8(buf).unwrap_or_default();
    Ok(t.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Rewrites `p` with `lines` without making a new inode: write from offset
/// 0, then cut the file. A crash in between leaves old lines after the new
/// ones, which is a superset, as the protocol allows.
fn rewrite_lines(p: &Path, lines: &[String]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let Some(f) = open_index_file(p, Access::Write)? else {
        return Ok(());
    };
    let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all_at(buf.as_bytes(), 0)
        .map_err(io("rewrite index file", p))?;
    f.set_len(buf.len() as u64)
        .map_err(io("truncate index file", p))
}

fn remove_line(p: &Path, line: &str) -> Result<()> {
    let lines = read_lines(p)?;
    if !lines.iter().any(|l| l == line) {
        return Ok(());
    }
    let kept: Vec<String> = lines.into_iter().filter(|l| l != line).collect();
    rewrite_lines(p, &kept)
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match crate::protocol::fsroot::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        // A symlink (or a file) planted where an index directory belongs:
        // never followed. Removed (the link itself), the index marked stale
        // so the next mutation rebuilds it; nothing is lost, it is derived.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            tracing::warn!(path = %dir.display(), "not a directory in index/; removing it and rebuilding the index");
            let _ = crate::protocol::fsroot::remove_file(dir);
            mark_stale(dir);
            return Ok(Vec::new());
        }
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut v = Vec::new();
    for (name, _) in rd {
        if let Some(n) = name.to_str() {
            if !n.starts_with('.') {
                v.push(n.to_string());
            }
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// The boot id of the running kernel, or "" where there is none.
pub(crate) fn boot_id() -> &'static str {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(|| {
        // Debug builds only: tests simulate a reboot with another id.
        #[cfg(debug_assertions)]
        if let Some(id) = std::env::var_os("ORCHESTRATE_BOOT_ID") {
            return id.to_string_lossy().into_owned();
        }
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// A ready-index entry, in claim order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ReadyEntry {
    pub bucket: String,
    pub name: String,
    pub id: TaskId,
}

impl Index {
    pub fn new(root: PathBuf) -> Self {
        Index { root }
    }

    fn version_line() -> String {
        format!("{INDEX_VERSION} {}", boot_id())
    }

    /// True when the index exists in the version this code writes and was
    /// built since the last boot.
    pub fn is_current(&self) -> bool {
        matches!(read_lines(&self.root.join("version")), Ok(l) if l.first().map(|x| x.trim()) == Some(Self::version_line().trim()))
    }

    /// `<pp>/<bucket>`: the priority directory, then the bucket file.
    fn bucket_name(t: &Task) -> String {
        format!("{:02}/{:012}", t.priority, t.seq / BUCKET)
    }

    fn entry_name(t: &Task) -> String {
        format!("{:012}-{}", t.seq, t.id)
    }

    /// True when `e` is the entry `t` would have if it were ready.
    pub fn entry_matches(e: &ReadyEntry, t: &Task) -> bool {
        e.name == Self::entry_name(t) && e.bucket == Self::bucket_name(t)
    }

    fn ready_dir(&self) -> PathBuf {
        self.root.join("ready")
    }

    pub fn add_ready(&self, t: &Task) -> Result<()> {
        append_line(
            &self.ready_dir().join(Self::bucket_name(t)),
            &Self::entry_name(t),
        )
    }

    pub fn remove_ready(&self, t: &Task) -> Result<()> {
        remove_line(
            &self.ready_dir().join(Self::bucket_name(t)),
            &Self::entry_name(t),
        )
    }

    pub fn remove_ready_entry(&self, e: &ReadyEntry) -> Result<()> {
        remove_line(&self.ready_dir().join(&e.bucket), &e.name)
    }

    /// Priority directories of `ready/`, most urgent first.
    pub fn ready_priorities(&self) -> Result<Vec<String>> {
        list_names(&self.ready_dir())
    }

    /// Buckets (`<pp>/<bucket>`) of one priority, in claim order.
    pub fn priority_buckets(&self, pp: &str) -> Result<Vec<String>> {
        Ok(list_names(&self.ready_dir().join(pp))?
            .into_iter()
            .map(|b| format!("{pp}/{b}"))
            .collect())
    }

    /// Every bucket, in claim order (for `doctor`; a claim walks the
    /// priorities lazily instead).
    pub fn ready_buckets(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for pp in self.ready_priorities()? {
            v.extend(self.priority_buckets(&pp)?);
        }
        Ok(v)
    }

    /// True when some ready bucket has an entry: a lock-free look, for
    /// waiters deciding whether a change is worth taking the lock for.
    /// Entries are hints (a superset of the ready set), so `true` may still
    /// find nothing; `false` means nothing is ready.
    pub fn has_ready_entry(&self) -> Result<bool> {
        for pp in self.ready_priorities()? {
            for b in self.priority_buckets(&pp)? {
                if !read_lines(&self.ready_dir().join(&b))?.is_empty() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Entries of one bucket in claim order (duplicates removed).
    pub fn bucket_entries(&self, bucket: &str) -> Result<Vec<ReadyEntry>> {
        let mut names = read_lines(&self.ready_dir().join(bucket))?;
        names.sort_unstable();
        names.dedup();
        Ok(names
            .into_iter()
            .filter_map(|n| {
                let id = n.split_once('-').map(|(_, id)| id)?;
                let id = TaskId::new(id).ok()?;
                Some(ReadyEntry {
                    bucket: bucket.to_string(),
                    name: n,
                    id,
                })
            })
            .collect())
    }

    pub fn remove_bucket_if_empty(&self, bucket: &str) {
        let p = self.ready_dir().join(bucket);
        if matches!(crate::protocol::fsroot::symlink_metadata(&p), Ok(m) if m.is_file() && m.is_empty())
        {
            let _ = crate::protocol::fsroot::remove_file(&p);
            // The priority directory goes too once empty (fails otherwise).
            if let Some(parent) = p.parent() {
                let _ = crate::protocol::fsroot::remove_dir(parent);
            }
        }
    }

    pub fn add_waiting(&self, id: &TaskId) -> Result<()> {
        append_line(&self.root.join("waiting"), id.as_str())
    }

    /// True when some task is still waiting on dependencies, as told by
    /// `still_waiting` (which reads the task file). Drops entries that are
    /// no longer waiting.
    pub fn any_waiting(&self, still_waiting: &dyn Fn(&TaskId) -> bool) -> Result<bool> {
        let p = self.root.join("waiting");
        let lines = read_lines(&p)?;
        let mut kept = Vec::new();
        let mut found = false;
        let mut seen = std::collections::HashSet::new();
        for l in lines {
            if found {
                kept.push(l);
                continue;
            }
            if !seen.insert(l.clone()) {
                continue;
            }
            if let Ok(id) = TaskId::new(l.as_str()) {
                if still_waiting(&id) {
                    found = true;
                    kept.push(l);
                }
            }
        }
        rewrite_lines(&p, &kept)?;
        Ok(found)
    }

    pub fn add_dependent(&self, dep: &TaskId, dependent: &TaskId) -> Result<()> {
        append_line(
            &self.root.join("dependents").join(dep.as_str()),
            dependent.as_str(),
        )
    }

    /// Ids that depend on `id` (deduplicated, sorted).
    pub fn dependents(&self, id: &TaskId) -> Result<Vec<TaskId>> {
        let mut v: Vec<TaskId> = read_lines(&self.root.join("dependents").join(id.as_str()))?
            .iter()
            .filter_map(|l| TaskId::new(l.as_str()).ok())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// The `unmet/<id>` counter: at most the number of `id`'s distinct
    /// dependencies that are not completed. `Ok(None)` when there is none or
    /// it does not parse (then the caller counts from the task files).
    pub fn unmet(&self, id: &TaskId) -> Result<Option<u64>> {
        Ok(read_lines(&self.root.join("unmet").join(id.as_str()))?
            .first()
            .and_then(|l| l.trim().parse().ok()))
    }

    /// Sets the `unmet/<id>` counter to `n`, in place: truncate, then write,
    /// so a crash in between leaves nothing or a prefix of the digits, both
    /// at most `n` (the counter may only err low; spec section 9, rule 1).
    pub fn set_unmet(&self, id: &TaskId, n: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let p = self.root.join("unmet").join(id.as_str());
        let f = match open_index_file(&p, Access::Create)? {
            Some(f) => f,
            None => {
                // `unmet/` is missing (the first counter): make it, try again.
                if let Some(parent) = p.parent() {
                    crate::protocol::store::create_dir(parent)?;
                }
                open_index_file(&p, Access::Create)?
                    .ok_or_else(|| Error::corrupt(&p, "cannot be created"))?
            }
        };
        f.set_len(0).map_err(io("truncate", &p))?;
        f.write_all_at(format!("{n}\n").as_bytes(), 0)
            .map_err(io("write", &p))
    }

    fn lease_line(t: &Task) -> Option<String> {
        t.lease_expires_at
            .map(|exp| format!("{:013}-{}", exp.timestamp_millis().max(0), t.id))
    }

    pub fn add_lease(&self, t: &Task) -> Result<()> {
        match Self::lease_line(t) {
            Some(l) => append_line(&self.root.join("leases"), &l),
            None => Ok(()),
        }
    }

    pub fn remove_lease(&self, t: &Task) -> Result<()> {
        match Self::lease_line(t) {
            Some(l) => remove_line(&self.root.join("leases"), &l),
            None => Ok(()),
        }
    }

    /// Lease entries: (expiry in Unix ms, task id, entry line).
    pub fn leases(&self) -> Result<Vec<(i64, TaskId, String)>> {
        let mut v = Vec::new();
        for n in read_lines(&self.root.join("leases"))? {
            let parsed = n
                .split_once('-')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, TaskId::new(id).ok()?)));
            if let Some((ms, id)) = parsed {
                v.push((ms, id, n));
            }
        }
        v.sort();
        v.dedup();
        Ok(v)
    }

    pub fn remove_lease_entry(&self, name: &str) -> Result<()> {
        remove_line(&self.root.join("leases"), name)
    }

    /// Marks this index stale (removes `index/version`), so the next
    /// mutation rebuilds it (`spec` 9, rule 4).
    pub fn mark_stale(&self) {
        let _ = crate::protocol::fsroot::remove_file(&self.root.join("version"));
    }

    pub fn next_seq(&self) -> Result<u64> {
        let p = self.root.join("next_seq");
        read_lines(&p)?
            .first()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| {
                Error::corrupt(&p, "missing or not a number (the index will be rebuilt)")
            })
    }

    pub fn set_next_seq(&self, n: u64) -> Result<()> {
        let p = self.root.join("next_seq");
        match open_index_file(&p, Access::Write)? {
            Some(f) => {
                use std::os::unix::fs::FileExt;
                let line = format!("{n}\n");
                f.write_all_at(line.as_bytes(), 0)
                    .map_err(io("write", &p))?;
                f.set_len(line.len() as u64).map_err(io("truncate", &p))
            }
            None => crate::protocol::store::write_plain(&p, format!("{n}\n").as_bytes()),
        }
    }

    /// Builds a complete index for `tasks` in a fresh directory next to
    /// `root` and swaps it into place. Caller holds the lock.
    pub fn rebuild(&self, tasks: &[Task]) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(".index-rebuild");
        let old = parent.join(".index-old");
        for p in [&tmp, &old] {
            if crate::protocol::fsroot::exists(p) {
                crate::protocol::fsroot::remove_dir_all(p).map_err(io("remove", p))?;
            }
        }
        for sub in ["ready", "dependents"] {
            let d = tmp.join(sub);
            crate::protocol::store::create_dir(&d)?;
        }
        let fresh = Index::new(tmp.clone());
        let by_id: std::collections::HashMap<&TaskId, &Task> =
            tasks.iter().map(|t| (&t.id, t)).collect();
        let mut max_seq = 0;
        let mut ready: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut dependents: std::collections::BTreeMap<&TaskId, Vec<&str>> = Default::default();
        let mut waiting = Vec::new();
        let mut leases = Vec::new();
        for t in tasks {
            max_seq = max_seq.max(t.seq);
            use crate::protocol::task::Status::*;
            if matches!(t.status, Pending | Claimed | Blocked) {
                for d in &t.dependencies {
                    dependents.entry(d).or_default().push(t.id.as_str());
                }
            }
            match t.status {
                Pending => {
                    let all_done = t
                        .dependencies
                        .iter()
                        .all(|d| by_id.get(d).is_some_and(|d| d.status == Completed));
                    if all_done {
                        ready
                            .entry(Self::bucket_name(t))
                            .or_default()
                            .push(Self::entry_name(t));
                    } else {
                        waiting.push(t.id.to_string());
                    }
                }
                Claimed => leases.extend(Self::lease_line(t)),
                _ => {}
            }
        }
        let write = |p: PathBuf, lines: &[String]| -> Result<()> {
            let mut s = lines.join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            crate::protocol::store::write_plain(&p, s.as_bytes())
        };
        for (b, mut lines) in ready {
            lines.sort();
            let p = tmp.join("ready").join(b);
            if let Some(parent) = p.parent() {
                crate::protocol::store::create_dir(parent)?;
            }
            write(p, &lines)?;
        }
        for (d, ids) in dependents {
            let lines: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            write(tmp.join("dependents").join(d.as_str()), &lines)?;
        }
        write(tmp.join("waiting"), &waiting)?;
        write(tmp.join("leases"), &leases)?;
        // Never hand out a seq again: tasks archived (spec 18) took theirs
        // with them, so the old counter is kept when it is ahead.
        let next = max_seq.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                self.root.join("next_seq"),
                "a task file holds `seq` 18446744073709551615, the maximum: no new task can get a larger one",
            )
        })?;
        fresh.set_next_seq(next.max(self.next_seq().unwrap_or(0)))?;
        crate::protocol::store::write_plain(
            &tmp.join("version"),
            format!("{}\n", Self::version_line()).as_bytes(),
        )?;
        if crate::protocol::fsroot::exists(&self.root) {
            crate::protocol::fsroot::rename(&self.root, &old).map_err(io("rename", &self.root))?;
        }
        crate::protocol::fsroot::rename(&tmp, &self.root).map_err(io("rename", &tmp))?;
        if crate::protocol::fsroot::exists(&old) {
            crate::protocol::fsroot::remove_dir_all(&old).map_err(io("remove", &old))?;
        }
        Ok(())
    }
}
