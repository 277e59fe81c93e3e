//! Creation (`spec` 5.1, 4.3): one task or a batch, ids, DAG checks, index entries first, then the files (an intent record around a batch).

use super::*;

impl Txn<'_> {
    pub(super) fn create_batch(&mut self, specs: Vec<NewTask>, ids: BatchIds) -> Result<Vec<Task>> {
        let c = self.c;
        // 1. Resolve ids.
        let mut key_to_id: HashMap<String, TaskId> = HashMap::new();
        let mut real_ids: Vec<TaskId> = Vec::with_capacity(specs.len());
        let mut used: HashSet<TaskId> = HashSet::new();
        for s in &specs {
            let id = match &s.id {
                Some(key) => {
                    if key_to_id.contains_key(key) {
                        return Err(Error::Invalid(format!(
                            "id `{key}` appears twice in the batch"
                        )));
                    }
                    let want = TaskId::new(key.as_str())?;
                    let taken = |id: &TaskId| {
                        used.contains(id)
                            || c.layout.task(id).symlink_metadata().is_ok()
                            || c.is_archived(id)
                    };
                    let id = if !taken(&want) {
                        want
                    } else if ids == BatchIds::Exact {
                        return Err(Error::IdTaken(key.clone()));
                    } else {
                        let mut n = 0;
                        loop {
                            let hex = &uuid::Uuid::new_v4().simple().to_string()[..4];
                            let cand = TaskId::new(format!(
                                "{}-{hex}",
                                &key[..key.len().min(task::MAX_ID_LEN - 5)]
                            ))?;
                            if !taken(&cand) {
                                break cand;
                            }
                            n += 1;
                            if n > 100 {
                                return Err(Error::IdTaken(key.clone()));
                            }
                        }
                    };
                    key_to_id.insert(key.clone(), id.clone());
                    id
                }
                None => loop {
                    let id = TaskId::generate();
                    if !used.contains(&id)
                        && c.layout.task(&id).symlink_metadata().is_err()
                        && !c.is_archived(&id)
                    {
                        break id;
                    }
                },
            };
            used.insert(id.clone());
            real_ids.push(id);
        }
        // 2. Resolve dependencies: batch keys first, then existing tasks.
        let mut existing: HashMap<TaskId, Status> = HashMap::new();
        let mut deps: Vec<Vec<TaskId>> = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let mut v = Vec::new();
            for d in &s.dependencies {
                let id = if let Some(id) = key_to_id.get(d) {
                    id.clone()
                } else {
                    let id = TaskId::new(d.as_str())?;
                    if !existing.contains_key(&id) {
                        match self.read(&id)? {
                            Some(t) => {
                                existing.insert(id.clone(), t.status);
                            }
                            None if c.is_archived(&id) => {
                                return Err(Error::Invalid(format!(
                                    "{} depends on `{d}`, which is archived (spec 18): a new task cannot depend on an archived one",
                                    named(s)
                                )))
                            }
                            None => {
                                return Err(Error::Invalid(format!(
                                    "{} depends on `{d}`, which does not exist; create it first (see `orchestrate list`)",
                                    named(s)
                                )))
                            }
                        }
                    }
                    id
                };
                if id == real_ids[i] {
                    return Err(Error::Cycle(vec![id.to_string(), id.to_string()]));
                }
                if !v.contains(&id) {
                    v.push(id);
                }
            }
            deps.push(v);
        }
        // 3. Cycle check inside the batch (existing tasks cannot depend on new ones).
        let pos: HashMap<&TaskId, usize> =
            real_ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
        let order = topo_order(&real_ids, &deps, &pos)?;
        // 4. Build tasks in topological order to derive their initial state.
        let mut next_seq = match c.index.next_seq() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "index/next_seq unusable; rebuilding the index");
                self.rebuild_index()?;
                c.index.next_seq()?
            }
        };
        let mut seqs = vec![0u64; specs.len()];
        for s in seqs.iter_mut() {
            *s = next_seq;
            next_seq = next_seq.checked_add(1).ok_or_else(|| {
                Error::corrupt(
                    c.layout.root().join("index/next_seq"),
                    "the creation sequence is at its maximum (a task file holds `seq` 18446744073709551615?); nothing was created",
                )
            })?;
        }
        let mut status_of: HashMap<TaskId, Status> = existing.clone();
        let mut built: Vec<Option<Task>> = vec![None; specs.len()];
        let mut ready_flags = vec![false; specs.len()];
        for &i in &order {
            let s = &specs[i];
            let mut blocked_by = None;
            let mut all_done = true;
            for d in &deps[i] {
                match status_of.get(d).copied().unwrap_or(Status::Pending) {
                    Status::Completed => {}
                    st if st.is_failed_for_good() || st == Status::Blocked => {
                        blocked_by.get_or_insert(d.clone());
                        all_done = false;
                    }
                    _ => all_done = false,
                }
            }
            let mut t = Task {
                schema_version: TASK_SCHEMA_VERSION,
                id: real_ids[i].clone(),
                seq: seqs[i],
                description: s.description.clone(),
                priority: s.priority.unwrap_or(DEFAULT_PRIORITY),
                dependencies: deps[i].clone(),
                context: s.context.clone(),
                command: s.command.clone(),
                status: Status::Pending,
                attempts: 0,
                max_attempts: s.max_attempts.unwrap_or(c.config.max_attempts),
                backoff: s.backoff,
                claimed_by: None,
                fencing_token: 0,
                lease_expires_at: None,
                not_before: None,
                result: None,
                error: None,
                log_file: None,
                created_at: self.now,
                updated_at: self.now,
                claimed_at: None,
                completed_at: None,
                extra: Default::default(),
            };
            if let Some(d) = blocked_by {
                t.block(self.now, &d);
            }
            ready_flags[i] = all_done && t.status == Status::Pending;
            status_of.insert(t.id.clone(), t.status);
            built[i] = Some(t);
        }
        let tasks: Vec<Task> = built.into_iter().flatten().collect();
        // 5. Index first (superset rule).
        c.index.set_next_seq(next_seq)?;
        for (i, t) in tasks.iter().enumerate() {
            for d in &t.dependencies {
                c.index.add_dependent(d, &t.id)?;
            }
            if ready_flags[i] {
                c.index.add_ready(t)?;
            } else if t.status == Status::Pending {
                c.index.add_waiting(&t.id)?;
            }
        }
        // 6. Files: one rename for a single task; an intent record around a
        // batch, whose files are fsynced together by one syncfs(2).
        for t in &tasks {
            task_bytes(t)?;
        }
        if tasks.len() == 1 {
            self.save_new_with(&tasks[0], c.durable())?;
        } else {
            let intent = serde_json::json!({
                "schema_version": 1,
                "task_ids": tasks.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(),
            });
            store::write_atomic(
                &c.layout.batch_intent(),
                &store::to_pretty(&intent)?,
                c.durable(),
                true,
            )?;
            crate::protocol::faults::point("after_batch_intent");
            for (i, t) in tasks.iter().enumerate() {
                if i == 1 {
                    crate::protocol::faults::point("between_batch_files");
                }
                if let Err(e) = self.save_new_with(t, false) {
                    // Undo what was written; nothing of the batch must stay.
                    for t in &tasks[..i] {
                        let _ = crate::protocol::fsroot::remove_file(&c.layout.task(&t.id));
                    }
                    let _ = crate::protocol::fsroot::remove_file(&c.layout.batch_intent());
                    return Err(e);
                }
            }
            if c.durable() {
                store::sync_fs(&c.layout.tasks_dir())?;
                store::sync_dir(&c.layout.tasks_dir())?;
            }
            let p = c.layout.batch_intent();
            crate::protocol::fsroot::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
        for t in &tasks {
            let e = self.event("task_created", t, None);
            e.detail.insert("priority".into(), Value::from(t.priority));
            if !t.dependencies.is_empty() {
                e.detail.insert(
                    "dependencies".into(),
                    Value::from(
                        t.dependencies
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>(),
                    ),
                );
            }
        }
        Ok(tasks)
    }
}

/// How an error names a new task: by its id, or, without one, by the start
/// of its description (which is not an id, so it is not shown as one).
fn named(s: &NewTask) -> String {
    match s.id.as_deref() {
        Some(id) => format!("task `{id}`"),
        None => format!(
            "the new task \"{}\"",
            s.description.chars().take(40).collect::<String>()
        ),
    }
}
