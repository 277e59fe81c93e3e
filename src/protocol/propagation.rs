//! Cancel, block and retry propagation (`spec` 5.6, 5.7): blocking runs down the DAG, a retry brings dependents back.

use super::*;

impl Txn<'_> {
    /// Marks every pending task that (transitively) depends on `root` as
    /// blocked (`spec` 5.6).
    pub(super) fn propagate_blocked(&mut self, root: &TaskId) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        let mut queue: VecDeque<TaskId> = VecDeque::from([root.clone()]);
        let mut seen: HashSet<TaskId> = HashSet::new();
        while let Some(cur) = queue.pop_front() {
            for d in self.c.index.dependents(&cur)? {
                if !seen.insert(d.clone()) {
                    continue;
                }
                let mut t = match self.load(&d) {
                    Ok(t) => t,
                    Err(Error::TaskNotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                // The dependents file is a superset: check the edge is real.
                if t.status != Status::Pending || !t.dependencies.contains(&cur) {
                    continue;
                }
                t.block(self.now, &cur);
                self.save(&t)?;
                self.c.index.remove_ready(&t)?;
                let e = self.event("task_blocked", &t, Some(Status::Pending));
                e.detail
                    .insert("blocked_by".into(), Value::from(cur.to_string()));
                queue.push_back(d);
                out.push(t);
            }
        }
        Ok(out)
    }

    pub(super) fn retry(&mut self, id: &TaskId) -> Result<Vec<Task>> {
        let mut t = self.load(id)?;
        let old_status = t.status;
        let mut overlay: HashMap<TaskId, Status> = HashMap::new();
        if matches!(t.status, Status::Blocked | Status::Dead | Status::Cancelled) {
            for d in &t.dependencies {
                let st = match self.read(d)? {
                    Some(dt) => dt.status,
                    None => {
                        return Err(Error::WrongState {
                            task_id: id.to_string(),
                            status: t.status.to_string(),
                            action: "retry".into(),
                            hint: format!(": its dependency `{d}` does not exist"),
                        })
                    }
                };
                if st.is_failed_for_good() || st == Status::Blocked {
                    return Err(Error::WrongState {
                        task_id: id.to_string(),
                        status: t.status.to_string(),
                        action: "retry".into(),
                        hint: format!(": its dependency `{d}` is {st}; retry `{d}` first"),
                    });
                }
            }
        }
        t.retry(self.now)?;
        t.error = None;
        overlay.insert(id.clone(), Status::Pending);
        let mut changed = vec![(t, old_status)];
        // Unblock dependents whose dependencies are no longer failed.
        let mut queue: VecDeque<TaskId> = VecDeque::from([id.clone()]);
        let mut seen: HashSet<TaskId> = HashSet::from([id.clone()]);
        while let Some(cur) = queue.pop_front() {
            for d in self.c.index.dependents(&cur)? {
                if seen.contains(&d) {
                    continue;
                }
                let mut dt = match self.read(&d) {
                    Ok(Some(dt)) => dt,
                    _ => continue,
                };
                if dt.status != Status::Blocked {
                    continue;
                }
                let mut still_blocked = false;
                for dep in &dt.dependencies {
                    let st = match overlay.get(dep) {
                        Some(s) => *s,
                        None => match self.read(dep) {
                            Ok(Some(x)) => x.status,
                            _ => Status::Dead,
                        },
                    };
                    if st.is_failed_for_good() || st == Status::Blocked {
                        still_blocked = true;
                    }
                }
                if still_blocked {
                    continue;
                }
                seen.insert(d.clone());
                dt.retry(self.now)?;
                dt.error = None;
                overlay.insert(d.clone(), Status::Pending);
                queue.push_back(d);
                changed.push((dt, Status::Blocked));
            }
        }
        // Index first (superset rule), then files. The dependents entries
        // are written again: an index rebuilt since creation only lists open
        // tasks.
        for (t, _) in &changed {
            for d in &t.dependencies {
                self.c.index.add_dependent(d, &t.id)?;
            }
            match self.readiness(t, &overlay)? {
                Readiness::Ready | Readiness::BackingOff(_) => self.c.index.add_ready(t)?,
                _ => self.c.index.add_waiting(&t.id)?,
            }
        }
        let mut out = Vec::new();
        for (i, (t, from)) in changed.into_iter().enumerate() {
            self.save(&t)?;
            let name = if i == 0 {
                "task_retried"
            } else {
                "task_unblocked"
            };
            self.event_from(name, &t, Some(from), None);
            out.push(t);
        }
        Ok(out)
    }
}
