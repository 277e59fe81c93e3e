//! `orchestrate doctor [--fix]`: checks every file of `.coordination/`
//! against `spec/PROTOCOL.md` and repairs what can be repaired without
//! losing a readable task (`spec` section 17).
//!
//! Checks: task files (JSON, schema, version, name = id, symlinks), field
//! invariants per status (section 5.8), dangling dependencies, dependency
//! cycles, pending tasks whose dependency failed for good, crash leftovers
//! (temp files, batch intent, half-built index), agent records, and the
//! derived index (present, current, and a superset of the ready set and the
//! leases). Repairs: unreadable files are moved to `quarantine/` with a note,
//! temps removed, an unfinished batch rolled back, blocking propagated, the
//! index rebuilt. A file from a newer schema version is never touched.

use crate::error::{Error, Result};
use crate::protocol::clock;
use crate::protocol::store;
use crate::protocol::task::{Status, Task, TaskId};
use crate::protocol::Coordination;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Damage: something is lost, stuck or unreadable until fixed.
    Error,
    /// Not damage, but worth knowing (a torn last event line, a newer file).
    Warning,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable name: `corrupt_file`, `newer_schema`, `symlink`, `stray_file`,
    /// `orphan_temp`, `unfinished_batch`, `invalid_fields`,
    /// `dangling_dependency`, `dependency_cycle`, `should_be_blocked`,
    /// `index_missing`, `index_stale`, `orphan_index_build`, `torn_event`,
    /// `lock_identity`, `duplicate_seq`, `commit_log_pending`; with `--shared`,
    /// `mount_not_coherent` and `mount_unknown`.
    pub kind: String,
    /// Error or warning.
    pub severity: Severity,
    /// The file, relative to `.coordination/`.
    pub file: String,
    /// What is wrong.
    pub message: String,
    /// What fixes it (what `--fix` does, or what a person must do).
    pub fix: String,
    /// True when `--fix` can repair it.
    pub fixable: bool,
    /// True when it was repaired in this run.
    pub fixed: bool,
}

/// The outcome of a doctor run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Everything found.
    pub findings: Vec<Finding>,
    /// Task files read successfully.
    pub tasks_checked: usize,
    /// True when no error remains (after fixes, if `--fix`).
    pub clean: bool,
}

struct Collector {
    findings: Vec<Finding>,
}

impl Collector {
    fn add(
        &mut self,
        kind: &str,
        severity: Severity,
        file: &str,
        message: String,
        fix: &str,
        fixable: bool,
    ) {
        self.findings.push(Finding {
            kind: kind.into(),
            severity,
            file: file.into(),
            message,
            fix: fix.into(),
            fixable,
            fixed: false,
        });
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Symlinks and special files under `index/` (three levels deep: `index/`,
/// `ready/`, `ready/<pp>/`, `dependents/`, `unmet/`), listed through the
/// directory handle without following anything.
fn index_plants(index: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = crate::protocol::fsroot::read_dir(dir) else {
            return;
        };
        for (name, kind) in entries {
            let p = dir.join(&name);
            let kind = match kind {
                crate::protocol::fsroot::EntryKind::Unknown => {
                    match crate::protocol::fsroot::symlink_metadata(&p) {
                        Ok(m) if m.is_symlink() => crate::protocol::fsroot::EntryKind::Symlink,
                        Ok(m) if m.is_dir() => crate::protocol::fsroot::EntryKind::Dir,
                        Ok(m) if m.is_file() => crate::protocol::fsroot::EntryKind::File,
                        _ => crate::protocol::fsroot::EntryKind::Other,
                    }
                }
                k => k,
            };
            match kind {
                crate::protocol::fsroot::EntryKind::Dir if depth > 0 => walk(&p, depth - 1, out),
                crate::protocol::fsroot::EntryKind::File
                | crate::protocol::fsroot::EntryKind::Dir => {}
                _ => out.push(p),
            }
        }
    }
    let mut out = Vec::new();
    walk(index, 2, &mut out);
    out
}

/// Moves `path` into `quarantine/` with a `.note` beside it; returns the
/// new path.
fn quarantine(root: &Path, path: &Path, reason: &str) -> Result<PathBuf> {
    let q = root.join("quarantine");
    store::ensure_dir(&q)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let target = q.join(format!("{name}.{stamp}"));
    crate::protocol::fsroot::rename(path, &target)
        .map_err(|e| Error::io("move to quarantine", path, e))?;
    let note = format!(
        "moved here by `orchestrate doctor --fix` at {}\nfrom: {}\nreason: {reason}\n",
        clock::format(&chrono::Utc::now()),
        path.display()
    );
    store::write_plain(&q.join(format!("{name}.{stamp}.note")), note.as_bytes())?;
    Ok(target)
}

/// Field invariants of section 5.8; returns the first broken one.
fn invariant_problem(t: &Task) -> Option<String> {
    match t.status {
        Status::Claimed => {
            if t.claimed_by.is_none() {
                return Some("claimed without `claimed_by`".into());
            }
            if t.lease_expires_at.is_none() {
                return Some("claimed without `lease_expires_at`".into());
            }
            if t.fencing_token == 0 {
                return Some("claimed with fencing_token 0".into());
            }
        }
        Status::Pending | Status::Blocked if t.claimed_by.is_some() => {
            return Some(format!("{} but `claimed_by` is set", t.status));
        }
        Status::Completed if t.completed_at.is_none() => {
            return Some("completed without `completed_at`".into());
        }
        _ => {}
    }
    if let (Some(a), Some(e)) = (t.claimed_at, t.lease_expires_at) {
        if a > e {
            return Some(format!(
                "claimed_at {} is after lease_expires_at {}",
                clock::format(&a),
                clock::format(&e)
            ));
        }
    }
    if t.updated_at < t.created_at {
        return Some(format!(
            "updated_at {} is before created_at {}",
            clock::format(&t.updated_at),
            clock::format(&t.created_at)
        ));
    }
    if t.completed_at.is_some_and(|x| x < t.created_at) {
        return Some("completed_at is before created_at".into());
    }
    if u64::from(t.attempts) > t.fencing_token {
        return Some(format!(
            "attempts {} exceed fencing_token {}",
            t.attempts, t.fencing_token
        ));
    }
    None
}

fn find_cycle(tasks: &HashMap<TaskId, Task>) -> Option<Vec<TaskId>> {
    let mut ids: Vec<&TaskId> = tasks.keys().collect();
    ids.sort();
    let pos: HashMap<&TaskId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let edges = |i: usize| -> Vec<usize> {
        tasks[ids[i]]
            .dependencies
            .iter()
            .filter_map(|d| pos.get(d).copied())
            .collect()
    };
    crate::protocol::dag::find_cycle(ids.len(), edges)
        .map(|c| c.into_iter().map(|i| ids[i].clone()).collect())
}

/// Checks the directory and, with `fix`, repairs what can be repaired.
///
/// # Errors
/// Lock and I/O errors that stop the check itself.
pub fn run(c: &Coordination, fix: bool) -> Result<Report> {
    // The scan holds the lock, so that a write in flight (its temp file, an
    // index entry not yet added) is never taken for damage.
    let (mut col, tasks_checked) = c.locked(|| scan(c))?;
    let root = c.layout().root().to_path_buf();
    if fix && col.findings.iter().any(|f| f.fixable) {
        fix_all(c, &root, &mut col)?;
    }
    let clean = !col
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error && !f.fixed);
    Ok(Report {
        findings: col.findings,
        tasks_checked,
        clean,
    })
}

fn scan(c: &Coordination) -> Result<(Collector, usize)> {
    let root = c.layout().root().to_path_buf();
    let mut col = Collector {
        findings: Vec::new(),
    };
    let mut tasks: HashMap<TaskId, Task> = HashMap::new();

    // 0. The lock file and its anchor are one inode (`spec` 4.1); the scan
    // holds the lock, so a difference means someone replaced one by hand.
    {
        let lock = c.layout().lock();
        let anchor = crate::protocol::lock::anchor_path(&lock);
        match (crate::protocol::fsroot::symlink_metadata(&lock), crate::protocol::fsroot::symlink_metadata(&anchor)) {
            (Ok(a), Ok(b)) if a.is_file() && b.is_file() && (a.dev(), a.ino()) != (b.dev(), b.ino()) => col.add(
                "lock_identity",
                Severity::Warning,
                "lock",
                "`lock` and `lock.anchor` are different files: one was replaced by hand".into(),
                "nothing: the next lock holder makes `lock.anchor` a link of `lock` again; never delete or replace the lock file",
                false,
            ),
            (Ok(a), _) if !a.is_file() => col.add(
                "lock_identity",
                Severity::Error,
                "lock",
                "`lock` is not a regular file".into(),
                "remove it by hand when no orchestrate process runs; it is restored from `lock.anchor`",
                false,
            ),
            _ => {}
        }
    }

    // 0. Temp files of interrupted writes (`spec` 4.2): in `.tmp/`.
    let tmp_dir = root.join(store::TEMP_DIR);
    if let Ok(entries) = crate::protocol::fsroot::read_dir(&tmp_dir) {
        for (name, _) in entries {
            col.add(
                "orphan_temp",
                Severity::Warning,
                &rel(&root, &tmp_dir.join(&name)),
                "temp file left by an interrupted write".into(),
                "remove it (the write it belonged to did not happen)",
                true,
            );
        }
    }

    // 0b. An archive interrupted by a crash (`spec` 18.2): tasks under two
    // names until the next mutation rolls it forward.
    let intent = c.layout().archive_intent();
    if crate::protocol::fsroot::exists(&intent) {
        col.add(
            "archive_intent",
            Severity::Warning,
            &rel(&root, &intent),
            "an archive was interrupted: some tasks may be in both tasks/ and archive/".into(),
            "finish it (any mutation does; doctor --fix runs one)",
            true,
        );
    }

    // 0c. A commit log a crashed writer left (`spec` 4.8): its newest
    // commits may not be in the task files yet.
    let log_path = c.layout().commit_log();
    let mut log_pending = false;
    if let Ok(Some(log)) = crate::protocol::commit_log::Log::open_read(&log_path) {
        if !log.is_clean(crate::protocol::index::boot_id()) {
            log_pending = true;
            col.add(
                "commit_log_pending",
                Severity::Warning,
                &rel(&root, &log_path),
                "a writer was interrupted (or the machine restarted): commits in commit.log may not be in the task files yet, so readers may see older task files".into(),
                "recover it (any mutation does; doctor --fix runs one)",
                true,
            );
        }
    }

    // 0d. The files every mutation opens by name, and archive/ (whose
    // intent every mutation's recovery reads, 18.2): anything else there
    // (a directory, a FIFO, a symlink, a file) stops every write with exit
    // 65, so it is an error here too.
    let archive = c.layout().archive_dir();
    for (path, dir) in [
        (log_path.clone(), false),
        (c.layout().clock(), false),
        (c.layout().events(), false),
        (archive, true),
    ] {
        let Ok(m) = crate::protocol::fsroot::symlink_metadata(&path) else {
            continue;
        };
        if (dir && m.is_dir()) || (!dir && m.is_file()) {
            continue;
        }
        let what = if m.is_symlink() {
            "a symlink"
        } else if m.is_dir() {
            "a directory"
        } else if dir {
            "a file"
        } else {
            "not a regular file"
        };
        let (belongs, again) = if dir {
            (
                "a directory",
                "the next archive creates the directory again",
            )
        } else {
            ("a regular file", "the next mutation creates the file again")
        };
        col.add(
            if m.is_symlink() {
                "symlink"
            } else {
                "stray_file"
            },
            Severity::Error,
            &rel(&root, &path),
            format!("{what}, where {belongs} belongs: every mutation refuses to run (exit 65)"),
            &format!("move it to quarantine/ ({again})"),
            true,
        );
    }

    // 1. Files in tasks/, the root and agents/.
    for dir in [
        root.clone(),
        c.layout().tasks_dir(),
        c.layout().agents_dir(),
    ] {
        let rd = match crate::protocol::fsroot::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let is_tasks = dir == c.layout().tasks_dir();
        let is_agents = dir == c.layout().agents_dir();
        for (name, _) in rd {
            let path = dir.join(&name);
            let name = name.to_string_lossy().into_owned();
            let r = rel(&root, &path);
            let ft = match crate::protocol::fsroot::symlink_metadata(&path) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if store::is_temp_name(&name) {
                col.add(
                    "orphan_temp",
                    Severity::Warning,
                    &r,
                    "temp file left by an interrupted write".into(),
                    "remove it (the write it belonged to did not happen)",
                    true,
                );
                continue;
            }
            if name == ".index-rebuild" || name == ".index-old" {
                col.add(
                    "orphan_index_build",
                    Severity::Error,
                    &r,
                    "half-built or old index left by an interrupted rebuild".into(),
                    "remove it",
                    true,
                );
                continue;
            }
            if is_tasks && name == ".batch-intent.json" {
                col.add(
                    "unfinished_batch",
                    Severity::Error,
                    &r,
                    "a batch create was interrupted; its tasks are not committed".into(),
                    "roll the batch back (the next mutation does this too)",
                    true,
                );
                continue;
            }
            if !(is_tasks || is_agents) {
                continue;
            }
            if ft.is_symlink() {
                col.add(
                    "symlink",
                    Severity::Error,
                    &r,
                    "a symlink inside .coordination/ (refused, never followed)".into(),
                    "move it to quarantine/",
                    true,
                );
                continue;
            }
            if name.starts_with('.') {
                col.add(
                    "stray_file",
                    Severity::Warning,
                    &r,
                    "unknown hidden file".into(),
                    "remove it if nothing of yours needs it",
                    false,
                );
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                col.add(
                    "stray_file",
                    Severity::Error,
                    &r,
                    "not a `<id>.json` file".into(),
                    "move it to quarantine/",
                    true,
                );
                continue;
            };
            let Ok(id) = TaskId::new(stem) else {
                col.add(
                    "stray_file",
                    Severity::Error,
                    &r,
                    "file name is not a valid id".into(),
                    "move it to quarantine/",
                    true,
                );
                continue;
            };
            if is_agents {
                if let Err(e) = c.agent(stem) {
                    let newer = matches!(e, Error::NewerSchema { .. });
                    col.add(
                        if newer {
                            "newer_schema"
                        } else {
                            "corrupt_file"
                        },
                        if newer {
                            Severity::Warning
                        } else {
                            Severity::Error
                        },
                        &r,
                        e.to_string(),
                        if newer {
                            "upgrade orchestrate; nothing is changed"
                        } else {
                            "move it to quarantine/ (the agent registers again)"
                        },
                        !newer,
                    );
                }
                continue;
            }
            match store::read_task(&path, &id) {
                Ok(Some(t)) => {
                    tasks.insert(id, t);
                }
                Ok(None) => {}
                Err(e @ Error::NewerSchema { .. }) => col.add(
                    "newer_schema",
                    Severity::Warning,
                    &r,
                    e.to_string(),
                    "upgrade orchestrate; the file is left as it is",
                    false,
                ),
                Err(e) => col.add(
                    "corrupt_file",
                    Severity::Error,
                    &r,
                    e.to_string(),
                    "move it to quarantine/ with a note; recreate the task if it matters",
                    true,
                ),
            }
        }
    }

    // 1b. Two tasks with one `seq`: two creates read the same
    // `index/next_seq`, which only a file system that served a stale copy
    // of a file rewritten in place can do (spec 6.6, README "Several
    // machines").
    {
        let mut by_seq: BTreeMap<u64, Vec<&TaskId>> = BTreeMap::new();
        for (id, t) in &tasks {
            by_seq.entry(t.seq).or_default().push(id);
        }
        for (seq, mut ids) in by_seq.into_iter().filter(|(_, v)| v.len() > 1) {
            ids.sort();
            col.add(
                "duplicate_seq",
                Severity::Error,
                &format!("tasks/{}.json", ids[0]),
                format!(
                    "tasks {} all have seq {seq}: two creates read the same index/next_seq, so this file system showed one process a stale copy of a file another had rewritten under the lock; claims may be granted twice here",
                    ids.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
                ),
                "stop every process, make the mount coherent (see `orchestrate doctor --shared`), then run `orchestrate reindex`",
                false,
            );
        }
    }

    // 2. Per-task checks.
    let mut ids: Vec<&TaskId> = tasks.keys().collect();
    ids.sort();
    for id in &ids {
        let t = &tasks[*id];
        let r = format!("tasks/{id}.json");
        if let Some(p) = invariant_problem(t) {
            col.add(
                "invalid_fields",
                Severity::Error,
                &r,
                p,
                "edit the file by hand, or cancel and recreate the task",
                false,
            );
        }
        for d in &t.dependencies {
            if !tasks.contains_key(d) {
                let pending = t.status == Status::Pending;
                col.add(
                    "dangling_dependency",
                    if pending { Severity::Error } else { Severity::Warning },
                    &r,
                    format!("depends on `{d}`, which does not exist"),
                    if pending { "block it (`--fix`), then recreate the dependency and `retry` it, or cancel it" } else { "nothing to do while the task is not pending" },
                    pending,
                );
            }
        }
        if t.status == Status::Pending {
            let failed = t.dependencies.iter().find(|d| {
                tasks
                    .get(*d)
                    .is_some_and(|x| x.status.is_failed_for_good() || x.status == Status::Blocked)
            });
            if let Some(d) = failed {
                col.add(
                    "should_be_blocked",
                    Severity::Error,
                    &r,
                    format!("pending, but its dependency `{d}` is {}", tasks[d].status),
                    "mark it blocked (as the spec requires)",
                    true,
                );
            }
        }
    }
    if let Some(cycle) = find_cycle(&tasks) {
        let names: Vec<String> = cycle.iter().map(|x| x.to_string()).collect();
        col.add(
            "dependency_cycle",
            Severity::Error,
            &format!("tasks/{}.json", cycle[0]),
            format!("dependency cycle: {}", names.join(" -> ")),
            "cancel one task of the cycle",
            false,
        );
    }

    // 3. The derived index. A symlink or special file planted in it is
    // reported first, and its contents are then not read: reading would
    // remove the plant (the index repairs itself on use), and doctor
    // without --fix changes nothing.
    let planted = index_plants(&c.layout().index_dir());
    for p in &planted {
        col.add(
            "index_stale",
            Severity::Error,
            &rel(&root, p),
            "a symlink or special file inside index/ (never followed)".into(),
            "rebuild the index (the plant is removed)",
            true,
        );
    }
    if planted.is_empty() && !c.index_is_current() {
        col.add(
            "index_missing",
            Severity::Warning,
            "index/version",
            "the index is missing, from another version, or from before the last boot".into(),
            "rebuild it (any mutation does this too)",
            true,
        );
    } else if planted.is_empty() {
        let (ready, leases) = c.index_contents()?;
        let mut expiries: HashMap<TaskId, Vec<i64>> = HashMap::new();
        for (ms, id) in c.lease_entries()? {
            expiries.entry(id).or_default().push(ms);
        }
        for id in &ids {
            let t = &tasks[*id];
            let deps_done = t
                .dependencies
                .iter()
                .all(|d| tasks.get(d).is_some_and(|x| x.status == Status::Completed));
            let missing = match t.status {
                Status::Pending if deps_done => !ready.contains(*id),
                Status::Claimed => !leases.contains(*id),
                _ => false,
            };
            let want = t.lease_expires_at.map(|x| x.timestamp_millis());
            if t.status == Status::Claimed
                && !missing
                && !expiries
                    .get(*id)
                    .is_some_and(|v| v.iter().any(|ms| Some(*ms) == want))
            {
                col.add(
                    "index_stale",
                    Severity::Error,
                    "index/leases",
                    format!(
                        "the lease index holds another expiry for `{id}` than its task file ({}), so reaping would misjudge it",
                        t.lease_expires_at.map(|x| clock::format(&x)).unwrap_or_default()
                    ),
                    "rebuild the index",
                    true,
                );
            }
            if matches!(t.status, Status::Pending | Status::Blocked)
                && t.dependencies.len() >= crate::protocol::index::UNMET_MIN_DEPS
            {
                let distinct: HashSet<&TaskId> = t.dependencies.iter().collect();
                let truth = distinct
                    .into_iter()
                    .filter(|d| tasks.get(*d).is_none_or(|x| x.status != Status::Completed))
                    .count() as u64;
                if let Some(n) = c.unmet_entry(id)?.filter(|n| *n > truth) {
                    col.add(
                        "index_stale",
                        Severity::Error,
                        &format!("index/unmet/{id}"),
                        format!(
                            "the index counts {n} unfinished dependencies of `{id}` where there are {truth}, so it might never become ready"
                        ),
                        "rebuild the index",
                        true,
                    );
                }
            }
            if missing {
                col.add(
                    "index_stale",
                    Severity::Error,
                    "index/",
                    format!(
                        "task `{id}` ({}) is missing from the index, so no claim would find it",
                        t.status
                    ),
                    "rebuild the index",
                    true,
                );
            }
        }
    }

    // 4. The event log: a torn line is history damage, not task damage.
    // Streamed, so a huge log costs time, not memory; a torn last line
    // (no newline yet) is not complete and is checked like the others.
    let mut line_no = 0u64;
    let mut torn = Vec::new();
    let mut reader = crate::protocol::events::LogReader::new(&c.layout().events(), 0);
    let _ = reader.read_lines(|l| {
        line_no += 1;
        if !l.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(l).is_err()
            && torn.len() < 100
        {
            torn.push(line_no);
        }
        Ok::<(), Error>(())
    });
    let tail = reader.unterminated();
    let tail_torn =
        !tail.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(tail).is_err();
    if tail_torn && torn.len() < 100 {
        torn.push(line_no + 1);
    }
    for n in torn {
        col.add(
            "torn_event",
            Severity::Warning,
            "events.jsonl",
            format!("line {n} is not JSON (a crash in the middle of an append); readers skip it"),
            "nothing to do",
            false,
        );
    }

    // An interrupted writer may have changed the index before its commit
    // (recovery then rebuilds it) or after it (recovery replays the commit
    // into the task files, which then agree with the index); either way
    // the next mutation's recovery settles it (`spec` 4.8), so that is not
    // damage yet.
    if log_pending {
        for f in col
            .findings
            .iter_mut()
            .filter(|f| matches!(f.kind.as_str(), "index_stale" | "index_missing"))
        {
            f.severity = Severity::Warning;
            f.message.push_str(
                " (a writer was interrupted: the next mutation's recovery \
                 makes the task files and the index agree)",
            );
        }
    }

    Ok((col, tasks.len()))
}

fn fix_all(c: &Coordination, root: &Path, col: &mut Collector) -> Result<()> {
    // File moves and removals first, holding the lock.
    c.locked(|| {
        for f in col.findings.iter_mut().filter(|f| f.fixable) {
            let path = root.join(&f.file);
            let done = match f.kind.as_str() {
                // Gone already counts: the next writer cleaned it.
                "orphan_temp" => {
                    crate::protocol::fsroot::remove_file(&path).is_ok()
                        || !crate::protocol::fsroot::exists(&path)
                }
                "orphan_index_build" => {
                    crate::protocol::fsroot::remove_dir_all(&path).is_ok()
                        || !crate::protocol::fsroot::exists(&path)
                }
                "corrupt_file" | "symlink" | "stray_file" => {
                    quarantine(root, &path, &f.message).is_ok()
                }
                _ => false,
            };
            f.fixed = done;
        }
        Ok(())
    })?;
    // Then protocol-level repairs: the mutation prologue rolls back an
    // unfinished batch and rebuilds a missing index.
    let needs_rebuild = col.findings.iter().any(|f| {
        f.fixable
            && matches!(
                f.kind.as_str(),
                "index_stale"
                    | "index_missing"
                    | "unfinished_batch"
                    | "archive_intent"
                    | "commit_log_pending"
                    | "corrupt_file"
                    | "symlink"
                    | "stray_file"
            )
    });
    if needs_rebuild {
        c.reindex()?;
        for f in col.findings.iter_mut() {
            if matches!(
                f.kind.as_str(),
                "index_stale"
                    | "index_missing"
                    | "unfinished_batch"
                    | "archive_intent"
                    | "commit_log_pending"
            ) {
                f.fixed = true;
            }
        }
    }
    if col.findings.iter().any(|f| {
        matches!(f.kind.as_str(), "should_be_blocked" | "dangling_dependency") && f.fixable
    }) {
        c.repair_blocked()?;
        for f in col.findings.iter_mut() {
            if matches!(f.kind.as_str(), "should_be_blocked" | "dangling_dependency") && f.fixable {
                f.fixed = true;
            }
        }
    }
    Ok(())
}
