//! Resuming a run (`spec/PROTOCOL.md` section 13.6): running the same tasks
//! file, configuration or goal again continues the unfinished run instead of
//! creating every task a second time.
//!
//! A run's tasks carry its run id as a tag (13.1). For a tasks file, a task
//! of the file is the run's task when a task with its `id` (or that `id`
//! with the `-<4 hex>` suffix a taken id gets, or, for a task without an
//! `id`, its exact description) carries the run's tag; archived tasks
//! count, as finished. For a
//! leader-planned run, the run is the newest run record with the same goal
//! and `planned: true` that still has a pending or claimed task.

use crate::error::{Error, Result};
use crate::protocol::task::{NewTask, Status, Task, TaskId};
use crate::protocol::Coordination;
use std::collections::{HashMap, HashSet};

/// An earlier run to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The earlier run's id: this run uses it as its tag and correlation id.
    pub run_id: String,
    /// The earlier run's tasks, in creation order (`seq`).
    pub tasks: Vec<TaskId>,
    /// Tasks of the file that the earlier run does not have: created now,
    /// with the run's tag.
    pub to_create: Vec<NewTask>,
    /// What a person should know: tasks whose definition in the queue
    /// differs from the file (the queue's is kept).
    pub notes: Vec<String>,
}

impl Resume {
    /// Counts of the earlier run's tasks per status, read now, as
    /// `(status, count)` in the order of [`Status`]'s variants that occur.
    ///
    /// # Errors
    /// Data and I/O errors reading the task files.
    pub fn counts(&self, c: &Coordination) -> Result<Vec<(Status, usize)>> {
        let mut m: Vec<(Status, usize)> = Vec::new();
        for id in &self.tasks {
            let st = c.get(id.as_str())?.status;
            match m.iter_mut().find(|(s, _)| *s == st) {
                Some((_, n)) => *n += 1,
                None => m.push((st, 1)),
            }
        }
        Ok(m)
    }
}

fn run_tag(t: &Task) -> Option<&str> {
    t.context
        .tags
        .iter()
        .map(String::as_str)
        .find(|x| x.starts_with("run-"))
}

/// Finds the run to resume for `goal` and, with a tasks file, its `tasks`.
/// Returns `None` when there is none: then the run starts fresh.
///
/// # Errors
/// [`Error::Invalid`] when tasks of the file exist in the queue but were
/// not created by a run (no `run-` tag): they cannot be told apart from
/// hand-made tasks, so the caller must choose (`work` to drain them, or
/// `--fresh`). Data and I/O errors reading the queue.
pub fn find(c: &Coordination, goal: &str, tasks: Option<&[NewTask]>) -> Result<Option<Resume>> {
    let listing = c.list()?;
    let Some(specs) = tasks else {
        return find_planned(c, goal, &listing.tasks);
    };
    // Archived tasks belong to their run too: finished, never re-created.
    let mut archived: Vec<Task> = Vec::new();
    c.for_each_archived(|t| -> Result<()> {
        if let Ok(t) = t {
            archived.push(t);
        }
        Ok(())
    })?;
    let all: Vec<&Task> = listing.tasks.iter().chain(archived.iter()).collect();
    // A task of the file is `key`, or `key-<4 hex>` when an earlier run
    // found `key` taken (section 8) — as a `--fresh` run's tasks are.
    let is_key = |t: &Task, key: &str| {
        let id = t.id.as_str();
        id == key
            || id
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|h| {
                    h.len() == 4
                        && h.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                })
    };
    // The runs the file's tasks belong to, with the newest `seq` of each
    // and whether any of its tasks is unfinished.
    let mut runs: HashMap<&str, (u64, bool)> = HashMap::new();
    let mut untagged = Vec::new();
    for s in specs {
        let Some(key) = s.id.as_deref() else { continue };
        for t in all.iter().filter(|t| is_key(t, key)) {
            match run_tag(t) {
                Some(tag) => {
                    let e = runs.entry(tag).or_insert((0, false));
                    e.0 = e.0.max(t.seq);
                    e.1 |= matches!(t.status, Status::Pending | Status::Claimed);
                }
                None if t.id.as_str() == key => untagged.push(t.id.to_string()),
                None => {}
            }
        }
    }
    // The newest unfinished run; else the newest.
    let best = runs
        .iter()
        .max_by_key(|(tag, (seq, open))| (*open, *seq, *tag))
        .map(|(tag, _)| *tag);
    let Some(tag) = best else {
        if !untagged.is_empty() {
            return Err(Error::Invalid(format!(
                "tasks of this file already exist in the queue but no run created them ({}): drain them with `orchestrate work --adapter shell --until-empty`, edit them with `orchestrate edit`, or pass --fresh to create new copies",
                untagged.join(", ")
            )));
        }
        return Ok(None);
    };
    let run: Vec<&Task> = all
        .iter()
        .copied()
        .filter(|t| t.context.tags.iter().any(|x| x == tag))
        .collect();
    let mut used: HashSet<&TaskId> = HashSet::new();
    let mut to_create = Vec::new();
    let mut notes = Vec::new();
    for s in specs {
        let found = match s.id.as_deref() {
            Some(k) => run.iter().find(|t| !used.contains(&t.id) && is_key(t, k)),
            None => run
                .iter()
                .find(|t| !used.contains(&t.id) && t.description == s.description),
        };
        match found {
            Some(t) => {
                used.insert(&t.id);
                let mut differs = Vec::new();
                if t.description != s.description {
                    differs.push("description");
                }
                if t.command != s.command {
                    differs.push("command");
                }
                if !differs.is_empty() {
                    let how = if matches!(t.status, Status::Completed) {
                        "it is completed and is not run again; pass --fresh to run the file's version".to_string()
                    } else {
                        format!(
                            "change it with `orchestrate edit {}`, or pass --fresh",
                            t.id
                        )
                    };
                    notes.push(format!(
                        "`{}`: its {} in the queue differs from the file; the queue's is kept ({how})",
                        t.id,
                        differs.join(" and "),
                    ));
                }
            }
            None => to_create.push(s.clone()),
        }
    }
    let archived_ids: HashSet<&TaskId> = archived.iter().map(|t| &t.id).collect();
    let n_archived = run.iter().filter(|t| archived_ids.contains(&t.id)).count();
    if n_archived > 0 {
        notes.push(format!(
            "{n_archived} task(s) of this run are archived: finished, not run again, and not in this report (`orchestrate list --archived`)"
        ));
    }
    Ok(Some(Resume {
        run_id: tag.to_string(),
        // The report reads the live tasks; archived ones are history.
        tasks: run
            .iter()
            .filter(|t| !archived_ids.contains(&t.id))
            .map(|t| t.id.clone())
            .collect(),
        to_create,
        notes,
    }))
}

fn find_planned(c: &Coordination, goal: &str, tasks: &[Task]) -> Result<Option<Resume>> {
    for r in c.runs()? {
        if !r.planned || r.goal != goal {
            continue;
        }
        let run: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.context.tags.contains(&r.run_id))
            .collect();
        if run
            .iter()
            .any(|t| matches!(t.status, Status::Pending | Status::Claimed))
        {
            return Ok(Some(Resume {
                run_id: r.run_id.clone(),
                tasks: run.iter().map(|t| t.id.clone()).collect(),
                to_create: Vec::new(),
                notes: Vec::new(),
            }));
        }
    }
    Ok(None)
}
