//! The derived claim index under `index/` (`spec/PROTOCOL.md` section 9).
//!
//! It lets a claim find the most urgent ready task without opening every
//! task file. It is a hint, never the truth: every entry is checked against
//! the task file before it is used, entries are added *before* the task file
//! changes and removed *after*, so the index is always a superset of the
//! truth, and a missing or foreign-version index is rebuilt from `tasks/`.
//! Nothing in it is fsynced.
//!
//! - `index/version`: `1`.
//! - `index/next_seq`: the next task `seq`, decimal.
//! - `index/ready/<pp>-<bucket>/<seq>-<id>`: empty files, one per pending
//!   task whose dependencies are completed (maybe still backing off).
//!   `pp` is the two-digit priority, `bucket` is `seq / 256` in 12 digits,
//!   `seq` is 12 digits: name order is claim order.
//! - `index/waiting/<id>`: pending tasks waiting on dependencies.
//! - `index/dependents/<id>`: ids of tasks that depend on `<id>`, one per line.
//! - `index/leases/<expires_ms>-<id>`: claimed tasks and their lease expiry
//!   (13-digit Unix milliseconds).

use crate::error::{Error, Result};
use crate::task::{Task, TaskId};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Version written to `index/version`; any other content means "rebuild".
pub const INDEX_VERSION: &str = "1";
const BUCKET: u64 = 256;

/// Handle on `index/`.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    root: PathBuf,
}

fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, p, e)
}

fn touch(p: &Path) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
    {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::io("create index entry", p, e)),
    }
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove index entry", p, e)),
    }
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(io("list", dir))?;
        if let Some(n) = ent.file_name().to_str() {
            if !n.starts_with('.') {
                v.push(n.to_string());
            }
        }
    }
    v.sort_unstable();
    Ok(v)
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

    /// True when the index exists in the version this code writes.
    pub fn is_current(&self) -> bool {
        matches!(std::fs::read_to_string(self.root.join("version")), Ok(s) if s.trim() == INDEX_VERSION)
    }

    fn ready_bucket(t: &Task) -> String {
        format!("{:02}-{:012}", t.priority, t.seq / BUCKET)
    }

    fn ready_path(&self, t: &Task) -> PathBuf {
        self.root
            .join("ready")
            .join(Self::ready_bucket(t))
            .join(format!("{:012}-{}", t.seq, t.id))
    }

    pub fn add_ready(&self, t: &Task) -> Result<()> {
        let p = self.ready_path(t);
        match touch(&p) {
            Ok(()) => Ok(()),
            Err(_) => {
                let dir = p.parent().unwrap_or(&self.root);
                std::fs::create_dir_all(dir).map_err(io("create index directory", dir))?;
                touch(&p)
            }
        }
    }

    pub fn remove_ready(&self, t: &Task) -> Result<()> {
        remove(&self.ready_path(t))
    }

    pub fn remove_ready_entry(&self, e: &ReadyEntry) -> Result<()> {
        remove(&self.root.join("ready").join(&e.bucket).join(&e.name))
    }

    /// Ready buckets in claim order.
    pub fn ready_buckets(&self) -> Result<Vec<String>> {
        list_names(&self.root.join("ready"))
    }

    /// Entries of one bucket in claim order.
    pub fn bucket_entries(&self, bucket: &str) -> Result<Vec<ReadyEntry>> {
        let names = list_names(&self.root.join("ready").join(bucket))?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let id = n.split_once('-').map(|(_, id)| id).unwrap_or("");
            // A name that is not ours is junk in a derived directory: drop it.
            match TaskId::new(id) {
                Ok(id) => out.push(ReadyEntry {
                    bucket: bucket.to_string(),
                    name: n,
                    id,
                }),
                Err(_) => {
                    let _ = remove(&self.root.join("ready").join(bucket).join(&n));
                }
            }
        }
        Ok(out)
    }

    pub fn remove_bucket_if_empty(&self, bucket: &str) {
        // Fails with ENOTEMPTY when it is not; that is fine.
        let _ = std::fs::remove_dir(self.root.join("ready").join(bucket));
    }

    pub fn add_waiting(&self, id: &TaskId) -> Result<()> {
        touch(&self.root.join("waiting").join(id.as_str()))
    }

    pub fn remove_waiting(&self, id: &TaskId) -> Result<()> {
        remove(&self.root.join("waiting").join(id.as_str()))
    }

    /// True when at least one task is waiting on dependencies (per the index).
    pub fn any_waiting(&self) -> Result<bool> {
        let dir = self.root.join("waiting");
        match std::fs::read_dir(&dir) {
            Ok(mut rd) => Ok(rd.next().is_some()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("list", &dir, e)),
        }
    }

    pub fn add_dependent(&self, dep: &TaskId, dependent: &TaskId) -> Result<()> {
        let p = self.root.join("dependents").join(dep.as_str());
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(io("open", &p))?;
        f.write_all(format!("{dependent}\n").as_bytes())
            .map_err(io("append", &p))
    }

    /// Ids that depend on `id` (deduplicated, sorted).
    pub fn dependents(&self, id: &TaskId) -> Result<Vec<TaskId>> {
        let p = self.root.join("dependents").join(id.as_str());
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &p, e)),
        };
        let mut v: Vec<TaskId> = text.lines().filter_map(|l| TaskId::new(l).ok()).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn lease_path(&self, expires_ms: i64, id: &TaskId) -> PathBuf {
        self.root
            .join("leases")
            .join(format!("{:013}-{}", expires_ms.max(0), id))
    }

    pub fn add_lease(&self, t: &Task) -> Result<()> {
        if let Some(exp) = t.lease_expires_at {
            touch(&self.lease_path(exp.timestamp_millis(), &t.id))?;
        }
        Ok(())
    }

    pub fn remove_lease(&self, t: &Task) -> Result<()> {
        if let Some(exp) = t.lease_expires_at {
            remove(&self.lease_path(exp.timestamp_millis(), &t.id))?;
        }
        Ok(())
    }

    /// Lease entries: (expiry in Unix ms, task id, entry name).
    pub fn leases(&self) -> Result<Vec<(i64, TaskId, String)>> {
        let mut v = Vec::new();
        for n in list_names(&self.root.join("leases"))? {
            let parsed = n
                .split_once('-')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, TaskId::new(id).ok()?)));
            match parsed {
                Some((ms, id)) => v.push((ms, id, n)),
                None => {
                    let _ = remove(&self.root.join("leases").join(&n));
                }
            }
        }
        Ok(v)
    }

    pub fn remove_lease_entry(&self, name: &str) -> Result<()> {
        remove(&self.root.join("leases").join(name))
    }

    pub fn next_seq(&self) -> Result<u64> {
        let p = self.root.join("next_seq");
        let s = std::fs::read_to_string(&p).map_err(io("read", &p))?;
        s.trim()
            .parse()
            .map_err(|_| Error::corrupt(&p, "not a number (the index will be rebuilt)"))
    }

    pub fn set_next_seq(&self, n: u64) -> Result<()> {
        let p = self.root.join("next_seq");
        std::fs::write(&p, format!("{n}\n")).map_err(io("write", &p))
    }

    /// Builds a complete index for `tasks` in a fresh directory next to
    /// `root` and swaps it into place. Caller holds the lock.
    pub fn rebuild(&self, tasks: &[Task]) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(".index-rebuild");
        let old = parent.join(".index-old");
        for p in [&tmp, &old] {
            if p.exists() {
                std::fs::remove_dir_all(p).map_err(io("remove", p))?;
            }
        }
        for sub in ["ready", "waiting", "dependents", "leases"] {
            let d = tmp.join(sub);
            std::fs::create_dir_all(&d).map_err(io("create directory", &d))?;
        }
        let fresh = Index::new(tmp.clone());
        let by_id: std::collections::HashMap<&TaskId, &Task> =
            tasks.iter().map(|t| (&t.id, t)).collect();
        let mut max_seq = 0;
        for t in tasks {
            max_seq = max_seq.max(t.seq);
            use crate::task::Status::*;
            if matches!(t.status, Pending | Claimed | Blocked) {
                for d in &t.dependencies {
                    fresh.add_dependent(d, &t.id)?;
                }
            }
            match t.status {
                Pending => {
                    let all_done = t
                        .dependencies
                        .iter()
                        .all(|d| by_id.get(d).is_some_and(|d| d.status == Completed));
                    if all_done {
                        fresh.add_ready(t)?;
                    } else {
                        fresh.add_waiting(&t.id)?;
                    }
                }
                Claimed => fresh.add_lease(t)?,
                _ => {}
            }
        }
        fresh.set_next_seq(max_seq + 1)?;
        std::fs::write(tmp.join("version"), format!("{INDEX_VERSION}\n"))
            .map_err(io("write", &tmp))?;
        if self.root.exists() {
            std::fs::rename(&self.root, &old).map_err(io("rename", &self.root))?;
        }
        std::fs::rename(&tmp, &self.root).map_err(io("rename", &tmp))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
        }
        Ok(())
    }
}
