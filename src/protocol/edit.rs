//! Editing a task's definition (`spec` 5.9): description, command,
//! priority, tags, hints, files, max attempts and dependencies of a task
//! that is not claimed or completed, checked as a create is, index entries
//! first, then the file, then one `task_edited` event.

use super::*;

/// Changes to a task's definition for [`Coordination::edit`]. A `None`
/// field is left as it is; for the `Option<Option<_>>` fields, `Some(None)`
/// removes the value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskEdit {
    /// The new description (not empty, at most the create limit).
    pub description: Option<String>,
    /// The new shell command, or `Some(None)` to remove it.
    pub command: Option<Option<String>>,
    /// The new priority, 1 (most urgent) to 10.
    pub priority: Option<u8>,
    /// The new tags, replacing the old ones.
    pub tags: Option<Vec<String>>,
    /// The new hints, or `Some(None)` to remove them.
    pub hints: Option<Option<String>>,
    /// The new context files, replacing the old ones.
    pub files: Option<Vec<String>>,
    /// The new attempt budget: at least 1, and at least the attempts the
    /// task has already had.
    pub max_attempts: Option<u32>,
    /// The new dependencies (ids of existing tasks), replacing the old ones.
    pub dependencies: Option<Vec<String>>,
}

impl TaskEdit {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == TaskEdit::default()
    }
}

impl Txn<'_> {
    /// Returns the edited task, the names of the fields that changed (empty
    /// when the edit changes nothing: then nothing is written), and the
    /// dependents it blocked.
    pub(super) fn edit(
        &mut self,
        id: &TaskId,
        edit: &TaskEdit,
    ) -> Result<(Task, Vec<&'static str>, Vec<Task>)> {
        if edit.is_empty() {
            return Err(Error::Invalid(
                "nothing to change: give at least one of --description, --command, --priority, --tag, --hints, --file, --max-attempts, --depends (or a --no-... flag)".into(),
            ));
        }
        let old = self.load(id)?;
        if matches!(old.status, Status::Claimed | Status::Completed) {
            return Err(Error::WrongState {
                task_id: id.to_string(),
                status: old.status.to_string(),
                action: "edit".into(),
                hint: if old.status == Status::Claimed {
                    ": its holder works from the definition it claimed; edit it after it is released or fails, or cancel it".into()
                } else {
                    ": a completed task is history; create a new task instead".into()
                },
            });
        }
        let mut t = old.clone();
        if let Some(d) = &edit.description {
            t.description = d.clone();
        }
        if let Some(c) = &edit.command {
            t.command = c.clone();
        }
        if let Some(p) = edit.priority {
            t.priority = p;
        }
        if let Some(tags) = &edit.tags {
            t.context.tags = tags.clone();
        }
        if let Some(h) = &edit.hints {
            t.context.hints = h.clone();
        }
        if let Some(f) = &edit.files {
            t.context.files = f.clone();
        }
        if let Some(m) = edit.max_attempts {
            if m < t.attempts {
                return Err(Error::Invalid(format!(
                    "task `{id}` has already had {} attempts; --max-attempts must be at least that",
                    t.attempts
                )));
            }
            t.max_attempts = m;
        }
        // The checks of a create (`spec` 5.1), on the result.
        task::validate_new(&NewTask {
            id: None,
            description: t.description.clone(),
            priority: Some(t.priority),
            dependencies: edit.dependencies.clone().unwrap_or_default(),
            context: t.context.clone(),
            command: t.command.clone(),
            max_attempts: Some(t.max_attempts),
            backoff: None,
        })?;
        if let Some(deps) = &edit.dependencies {
            let mut v: Vec<TaskId> = Vec::with_capacity(deps.len());
            for d in deps {
                let d = TaskId::new(d.as_str())?;
                if &d == id {
                    return Err(Error::Cycle(vec![id.to_string(), id.to_string()]));
                }
                if self.read(&d)?.is_none() {
                    return Err(Error::Invalid(format!(
                        "task `{id}` cannot depend on `{d}`, which does not exist (see `orchestrate list`); nothing was changed"
                    )));
                }
                if !v.contains(&d) {
                    v.push(d);
                }
            }
            if let Some(cycle) = self.path_to(id, &v)? {
                return Err(Error::Cycle(cycle));
            }
            t.dependencies = v;
        }
        let mut changed = Vec::new();
        for (name, differs) in [
            ("description", t.description != old.description),
            ("command", t.command != old.command),
            ("priority", t.priority != old.priority),
            ("tags", t.context.tags != old.context.tags),
            ("hints", t.context.hints != old.context.hints),
            ("files", t.context.files != old.context.files),
            ("max_attempts", t.max_attempts != old.max_attempts),
            ("dependencies", t.dependencies != old.dependencies),
        ] {
            if differs {
                changed.push(name);
            }
        }
        if changed.is_empty() {
            return Ok((old, changed, Vec::new()));
        }
        let deps_changed = t.dependencies != old.dependencies;
        t.updated_at = self.now;
        // A pending task that now waits on a dead, cancelled or blocked (or
        // missing) task is blocked, as at creation (5.6). An edit never
        // unblocks: `retry` does, after checking the dependencies (5.7).
        let readiness = self.readiness(&t, &HashMap::new())?;
        if let Readiness::BlockedBy(d) = &readiness {
            t.block(self.now, d);
        }
        // Index first (9, rule 1): dependents lines for the new
        // dependencies, an `unmet/` counter lowered to 0 (it may only err
        // low, and a removed dependency could leave it too high), and the
        // ready or waiting line the new definition needs.
        if deps_changed {
            for d in &t.dependencies {
                if !old.dependencies.contains(d) {
                    self.c.index.add_dependent(d, id)?;
                }
            }
            if self.c.index.unmet(id)?.is_some() {
                self.c.index.set_unmet(id, 0)?;
            }
        }
        let was_indexed_ready = old.status == Status::Pending
            && !matches!(
                self.readiness(&old, &HashMap::new())?,
                Readiness::Waiting | Readiness::BlockedBy(_)
            );
        let now_ready = matches!(readiness, Readiness::Ready | Readiness::BackingOff(_));
        let same_line = t.priority == old.priority;
        if t.status == Status::Pending {
            if now_ready && !(was_indexed_ready && same_line) {
                self.c.index.add_ready(&t)?;
            } else if !now_ready {
                self.c.index.add_waiting(id)?;
            }
        }
        self.save(&t)?;
        // Then the entries the change made stale.
        if was_indexed_ready && !(now_ready && same_line && t.status == Status::Pending) {
            self.c.index.remove_ready(&old)?;
        }
        let e = self.event("task_edited", &t, Some(old.status));
        e.detail.insert(
            "changed".into(),
            Value::from(changed.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        );
        let blocked = if t.status == Status::Blocked && old.status != Status::Blocked {
            self.propagate_blocked(id)?
        } else {
            Vec::new()
        };
        Ok((t, changed, blocked))
    }

    /// A dependency path from one of `deps` back to `id`, as task ids
    /// `id -> dep -> ... -> id`, when depending on `deps` would close a
    /// cycle; `None` otherwise. Follows `dependencies` in the task files
    /// (a task missing or unreadable ends its branch).
    fn path_to(&self, id: &TaskId, deps: &[TaskId]) -> Result<Option<Vec<String>>> {
        let mut parent: HashMap<TaskId, TaskId> = HashMap::new();
        let mut stack: Vec<TaskId> = Vec::new();
        for d in deps {
            if parent.insert(d.clone(), id.clone()).is_none() {
                stack.push(d.clone());
            }
        }
        while let Some(cur) = stack.pop() {
            let Ok(Some(ct)) = self.read(&cur) else {
                continue;
            };
            for next in ct.dependencies {
                if &next == id {
                    let mut path = vec![id.to_string()];
                    let mut back = vec![cur.to_string()];
                    let mut at = cur.clone();
                    while let Some(p) = parent.get(&at) {
                        if p == id {
                            break;
                        }
                        back.push(p.to_string());
                        at = p.clone();
                    }
                    back.reverse();
                    path.extend(back);
                    path.push(id.to_string());
                    return Ok(Some(path));
                }
                if !parent.contains_key(&next) {
                    parent.insert(next.clone(), cur.clone());
                    stack.push(next);
                }
            }
        }
        Ok(None)
    }
}
