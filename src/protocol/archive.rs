//! Archiving finished tasks (`spec` section 18): `tasks/<id>.json` moves to
//! `archive/<id>.json` under the lock, through an intent record so that a
//! crash between placing the archive copy and unlinking the task file is
//! rolled forward by the next lock holder.

use super::*;
use serde::Deserialize;

/// What [`Coordination::archive`] is asked to do (`spec` 18.1).
#[derive(Debug, Clone)]
pub struct ArchiveRequest {
    /// Only tasks finished at least this long ago, in milliseconds (0: every
    /// finished task). A task's finish time is its `completed_at`, else its
    /// `updated_at` (when it became `cancelled` or `dead`).
    pub older_than_ms: u64,
    /// Only tasks in these states; each must be `completed`, `cancelled` or
    /// `dead`. Empty: all three.
    pub statuses: Vec<Status>,
    /// Report what would move and change nothing.
    pub dry_run: bool,
}

impl Default for ArchiveRequest {
    fn default() -> Self {
        ArchiveRequest {
            older_than_ms: DEFAULT_ARCHIVE_AGE_MS,
            statuses: Vec::new(),
            dry_run: false,
        }
    }
}

/// Default `older_than_ms` of [`ArchiveRequest`]: seven days, in milliseconds.
pub const DEFAULT_ARCHIVE_AGE_MS: u64 = 7 * 24 * 3_600_000;

/// The states `archive` may move (`spec` 18.1).
pub const ARCHIVABLE: [Status; 3] = [Status::Completed, Status::Cancelled, Status::Dead];

/// One task moved (or, in a dry run, that would move) to `archive/`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedTask {
    /// The task.
    pub id: TaskId,
    /// Its (final) status.
    pub status: Status,
    /// When it finished (`completed_at`, else `updated_at`).
    #[serde(serialize_with = "clock::serde_ts::serialize")]
    pub finished_at: Timestamp,
    /// Its new path, relative to the coordination directory.
    pub path: String,
}

/// A task that matched but stays in `tasks/`, and why.
#[derive(Debug, Clone, Serialize)]
pub struct KeptTask {
    /// The task.
    pub id: TaskId,
    /// Why it stays: the task still in `tasks/` that depends on it.
    pub needed_by: TaskId,
}

/// The outcome of [`Coordination::archive`].
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// True when nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// What moved (or would move), in `seq` order.
    pub archived: Vec<ArchivedTask>,
    /// What matched the age and states but stays, because a task that stays
    /// in `tasks/` depends on it.
    pub kept: Vec<KeptTask>,
    /// The event-log segment the live log was rotated into (`spec` 3.7), or
    /// `None` (dry run, or nothing moved).
    pub rotated_segment: Option<u64>,
}

/// The intent record written before the first task moves (`spec` 18.2).
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    task_ids: Vec<String>,
}

impl Coordination {
    /// Moves finished tasks out of `tasks/` into `archive/` (`spec`
    /// section 18): those in `req.statuses` that finished at least
    /// `req.older_than_ms` milliseconds ago, except any task that a task
    /// staying in `tasks/` depends on (so no task left ever has a dependency
    /// outside `tasks/`). One `task_archived` event per task; the index is
    /// rebuilt; the live event log is then rotated into a segment (3.7).
    /// Archived ids stay taken ([`Error::IdTaken`] for a new task with one).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a state other than completed, cancelled or
    /// dead (nothing changed); lock, data and I/O errors.
    pub fn archive(&self, req: &ArchiveRequest) -> Result<ArchiveReport> {
        let statuses: Vec<Status> = if req.statuses.is_empty() {
            ARCHIVABLE.to_vec()
        } else {
            req.statuses.clone()
        };
        if let Some(s) = statuses.iter().find(|s| !ARCHIVABLE.contains(s)) {
            return Err(Error::Invalid(format!(
                "cannot archive `{s}` tasks: only finished ones (completed, cancelled, dead)"
            )));
        }
        let mut report = self.mutate(|tx| tx.archive(req.older_than_ms, &statuses, req.dry_run))?;
        if !req.dry_run && !report.archived.is_empty() {
            // The tasks have moved; a log that cannot rotate (a planted
            // `events/`) is history trouble, not a failed archive (3.4).
            report.rotated_segment = match self.rotate_events() {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "could not rotate events.jsonl after the archive");
                    None
                }
            };
        }
        Ok(report)
    }

    /// Rotates the live `events.jsonl` into the next segment
    /// `events/<K>.jsonl` under the lock (`spec` 3.7). Returns `K`, or `None`
    /// when the live log is missing or empty.
    ///
    /// # Errors
    /// Lock and I/O errors.
    pub fn rotate_events(&self) -> Result<Option<u64>> {
        self.locked(|| events::rotate(&self.layout))
    }

    /// Reads an archived task, `Ok(None)` when `archive/<id>.json` does not
    /// exist (`spec` 18).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad id; data and I/O errors.
    pub fn get_archived(&self, id: &str) -> Result<Option<Task>> {
        let id = TaskId::new(id)?;
        store::read_task(&self.layout.archived_task(&id), &id)
    }

    /// True when `archive/<id>.json` exists: the id is taken for good.
    pub fn is_archived(&self, id: &TaskId) -> bool {
        crate::protocol::fsroot::symlink_metadata(&self.layout.archived_task(id)).is_ok()
    }

    /// The number of archived tasks: the regular files named `<id>.json`
    /// in `archive/` (`spec` 18, 16.2), leaving out a task whose file is
    /// also still in `tasks/` (an archive interrupted by a crash, 18.2), as
    /// [`Coordination::for_each_archived`] does. Names and kinds only: no
    /// file is read, so this stays cheap however large the archive grows.
    /// 0 when `archive/` does not exist. A caller that also lists `tasks/`
    /// counts first: archived tasks never return, so a task moving in
    /// between is then missed once rather than counted twice.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `archive/` is not a directory (`spec` 2);
    /// [`Error::Io`] when it cannot be listed.
    pub fn count_archived(&self) -> Result<u64> {
        use crate::protocol::fsroot::EntryKind;
        let dir = self.layout.archive_dir();
        match crate::protocol::fsroot::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("stat", &dir, e)),
            Ok(m) if !m.is_dir() => {
                return Err(Error::corrupt(
                    &dir,
                    "is not a directory; `orchestrate doctor --fix` moves it to quarantine/",
                ))
            }
            Ok(_) => {}
        }
        let names = crate::protocol::fsroot::read_dir(&dir)
            .map_err(|e| Error::io("list directory", &dir, e))?;
        Ok(names
            .iter()
            .filter(|(name, kind)| match kind {
                EntryKind::File => true,
                // No `d_type` from this file system: ask the inode.
                EntryKind::Unknown => crate::protocol::fsroot::symlink_metadata(&dir.join(name))
                    .is_ok_and(|m| m.is_file()),
                _ => false,
            })
            .filter_map(|(name, _)| name.to_str()?.strip_suffix(".json"))
            .filter_map(|stem| TaskId::new(stem).ok())
            .filter(|id| crate::protocol::fsroot::symlink_metadata(&self.layout.task(id)).is_err())
            .count() as u64)
    }

    /// Calls `f` with each archived task (or the error reading its file), in
    /// directory order, one at a time (memory does not grow with the
    /// archive). A task whose file is also still in `tasks/` (an archive
    /// interrupted by a crash, 18.2) is left out: `list` shows it.
    ///
    /// # Errors
    /// [`Error::Io`] when `archive/` exists but cannot be listed; what `f`
    /// returns.
    pub fn for_each_archived<E: From<Error>>(
        &self,
        mut f: impl FnMut(std::result::Result<Task, Error>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let dir = self.layout.archive_dir();
        if !crate::protocol::fsroot::exists(&dir) {
            return Ok(());
        }
        self.scan_tasks(&dir, |r| {
            if let Ok(t) = &r {
                if crate::protocol::fsroot::symlink_metadata(&self.layout.task(&t.id)).is_ok() {
                    return Ok(());
                }
            }
            f(r)
        })
    }
}

fn finished_at(t: &Task) -> Timestamp {
    t.completed_at.unwrap_or(t.updated_at)
}

impl Txn<'_> {
    fn archive(
        &mut self,
        older_than_ms: u64,
        statuses: &[Status],
        dry_run: bool,
    ) -> Result<ArchiveReport> {
        let listing = self.list()?;
        if let Some(e) = listing.errors.into_iter().next() {
            // An unreadable task might depend on anything: moving nothing
            // is the only safe answer.
            return Err(e);
        }
        let now = self.now;
        let mut candidates: HashSet<&TaskId> = listing
            .tasks
            .iter()
            .filter(|t| statuses.contains(&t.status))
            .filter(|t| clock::ms_between(finished_at(t), now) >= older_than_ms as i64)
            .map(|t| &t.id)
            .collect();
        // A task may leave only with every task that depends on it: drop
        // candidates needed by a task that stays, until nothing changes.
        let by_id: HashMap<&TaskId, &Task> = listing.tasks.iter().map(|t| (&t.id, t)).collect();
        let mut kept: Vec<KeptTask> = Vec::new();
        let mut work: Vec<&TaskId> = listing
            .tasks
            .iter()
            .filter(|t| !candidates.contains(&t.id))
            .map(|t| &t.id)
            .collect();
        while let Some(stays) = work.pop() {
            let Some(t) = by_id.get(stays) else { continue };
            for d in &t.dependencies {
                if candidates.remove(d) {
                    kept.push(KeptTask {
                        id: d.clone(),
                        needed_by: stays.clone(),
                    });
                    work.push(d);
                }
            }
        }
        let moving: Vec<&Task> = listing
            .tasks
            .iter()
            .filter(|t| candidates.contains(&t.id))
            .collect();
        kept.sort_by(|a, b| a.id.cmp(&b.id));
        let archived: Vec<ArchivedTask> = moving
            .iter()
            .map(|t| ArchivedTask {
                id: t.id.clone(),
                status: t.status,
                finished_at: finished_at(t),
                path: format!("archive/{}.json", t.id),
            })
            .collect();
        let report = ArchiveReport {
            dry_run,
            archived,
            kept,
            rotated_segment: None,
        };
        if dry_run || moving.is_empty() {
            return Ok(report);
        }
        // A replay of the commit log would bring a moved file back: make
        // the task files durable and empty the log first (spec 4.8).
        self.checkpoint()?;
        let layout = &self.c.layout;
        store::ensure_dir(&layout.archive_dir())?;
        // 1. The intent, durable before anything moves; the index marked
        //    stale, so a crash anywhere below leaves it to be rebuilt.
        let intent = Intent {
            task_ids: moving.iter().map(|t| t.id.to_string()).collect(),
        };
        store::write_atomic(
            &layout.archive_intent(),
            &store::to_pretty(&intent)?,
            self.c.durable(),
            self.c.durable(),
        )?;
        self.c.index.mark_stale();
        crate::protocol::faults::point("after_archive_intent");
        // 2. The archive copies: a second name for each task file's inode.
        for t in &moving {
            link_into_archive(layout, &t.id)?;
            crate::protocol::faults::point("between_archive_links");
        }
        if self.c.durable() {
            store::sync_dir(&layout.archive_dir())?;
        }
        crate::protocol::faults::point("after_archive_links");
        // 3. The task files' names in tasks/ go, then the intent.
        for t in &moving {
            unlink_task(layout, &t.id)?;
            crate::protocol::faults::point("between_archive_unlinks");
        }
        self.tasks_dir_dirty = true;
        self.finish_archive_intent()?;
        self.rebuild_index()?;
        for t in &moving {
            let e = self.event_from("task_archived", t, None, None);
            e.detail
                .insert("path".into(), Value::from(format!("archive/{}.json", t.id)));
        }
        Ok(report)
    }

    /// Rolls an interrupted archive forward (`spec` 18.2): every id of the
    /// intent whose archive copy is in place loses its `tasks/` name, the
    /// intent goes, and the index is rebuilt.
    pub(super) fn roll_forward_archive(&mut self) -> Result<()> {
        let layout = &self.c.layout;
        let p = layout.archive_intent();
        let bytes = match store::read_bytes(&p) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(Error::corrupt(
                    layout.archive_dir(),
                    "is not a directory; `orchestrate doctor --fix` moves it to quarantine/",
                ))
            }
            Err(Error::Corrupt { reason, .. }) => {
                tracing::warn!(path = %p.display(), %reason, "removing an archive intent that is not ours");
                if crate::protocol::fsroot::remove_file(&p).is_err() {
                    let _ = crate::protocol::fsroot::remove_dir_all(&p);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ids: Vec<String> = serde_json::from_slice::<Intent>(&bytes)
            .map(|i| i.task_ids)
            .unwrap_or_default();
        tracing::warn!(
            count = ids.len(),
            "finishing an archive interrupted by a crash"
        );
        let mut done = Vec::new();
        for id in ids {
            let Ok(id) = TaskId::new(id.as_str()) else {
                continue;
            };
            let (tp, ap) = (layout.task(&id), layout.archived_task(&id));
            let (Ok(tm), Ok(am)) = (
                crate::protocol::fsroot::symlink_metadata(&tp),
                crate::protocol::fsroot::symlink_metadata(&ap),
            ) else {
                continue;
            };
            // Only the very file we linked: the same inode under both names.
            if tm.is_file() && (tm.dev(), tm.ino()) == (am.dev(), am.ino()) {
                unlink_task(layout, &id)?;
                self.tasks_dir_dirty = true;
                done.push(id);
            }
        }
        if self.c.durable() && self.tasks_dir_dirty {
            store::sync_dir(&layout.tasks_dir())?;
        }
        self.finish_archive_intent()?;
        for id in done {
            if let Ok(Some(t)) = store::read_task(&self.c.layout.archived_task(&id), &id) {
                let e = self.event_from("task_archived", &t, None, None);
                e.detail
                    .insert("path".into(), Value::from(format!("archive/{id}.json")));
                e.detail.insert("recovered".into(), Value::from(true));
            }
        }
        self.rebuild_index()
    }

    fn finish_archive_intent(&mut self) -> Result<()> {
        let p = self.c.layout.archive_intent();
        match crate::protocol::fsroot::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &p, e)),
        }
        if self.c.durable() {
            store::sync_dir(&self.c.layout.archive_dir())?;
        }
        Ok(())
    }
}

/// Gives `tasks/<id>.json` its second name `archive/<id>.json`. An archive
/// copy already there is accepted only when it is the same inode (a crashed
/// archive's leftover).
fn link_into_archive(layout: &Layout, id: &TaskId) -> Result<()> {
    let (tp, ap) = (layout.task(id), layout.archived_task(id));
    match crate::protocol::fsroot::hard_link(&tp, &ap) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let same = match (
                crate::protocol::fsroot::symlink_metadata(&tp),
                crate::protocol::fsroot::symlink_metadata(&ap),
            ) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            };
            if same {
                Ok(())
            } else {
                Err(Error::corrupt(
                    ap,
                    format!("already exists and is not tasks/{id}.json: an archived task with the id of a live one; move one of them aside"),
                ))
            }
        }
        Err(e) => Err(Error::io("link", &ap, e)),
    }
}

fn unlink_task(layout: &Layout, id: &TaskId) -> Result<()> {
    let tp = layout.task(id);
    match crate::protocol::fsroot::remove_file(&tp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &tp, e)),
    }
}
