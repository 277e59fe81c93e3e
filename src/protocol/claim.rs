//! Claiming (`spec` 6.1): readiness from the task files, the ready index walked in claim order, a task taken under a lease.

use super::*;

impl Txn<'_> {
    /// How many of `t`'s distinct dependencies are not completed (an
    /// unreadable or missing one counts as not completed), `overlay` first.
    pub(super) fn unmet_count(&self, t: &Task, overlay: &HashMap<TaskId, Status>) -> u64 {
        let distinct: std::collections::HashSet<&TaskId> = t.dependencies.iter().collect();
        distinct
            .into_iter()
            .filter(|d| {
                let st = match overlay.get(*d) {
                    Some(s) => Some(*s),
                    None => self.read(d).ok().flatten().map(|dt| dt.status),
                };
                st != Some(Status::Completed)
            })
            .count() as u64
    }

    pub(super) fn readiness(
        &self,
        t: &Task,
        overlay: &HashMap<TaskId, Status>,
    ) -> Result<Readiness> {
        if t.status != Status::Pending {
            return Ok(Readiness::NotPending);
        }
        for d in &t.dependencies {
            let st = match overlay.get(d) {
                Some(s) => Some(*s),
                None => match self.read(d) {
                    Ok(Some(dt)) => Some(dt.status),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(task_id = %t.id, error = %e, "dependency unreadable");
                        return Ok(Readiness::Waiting);
                    }
                },
            };
            match st {
                Some(Status::Completed) => {}
                Some(s) if s.is_failed_for_good() || s == Status::Blocked => {
                    return Ok(Readiness::BlockedBy(d.clone()))
                }
                None => return Ok(Readiness::BlockedBy(d.clone())),
                Some(_) => return Ok(Readiness::Waiting),
            }
        }
        match t.not_before {
            Some(nb) if nb > self.now => Ok(Readiness::BackingOff(nb)),
            _ => Ok(Readiness::Ready),
        }
    }

    pub(super) fn take(&mut self, mut t: Task, agent: &str, lease_ms: u64) -> Result<Task> {
        let old_status = t.status;
        let old = t.clone();
        t.claim(agent, self.now, lease_ms)?;
        self.c.index.add_lease(&t)?;
        self.save(&t)?;
        self.c.index.remove_ready(&old)?;
        let e = self.event("task_claimed", &t, Some(old_status));
        e.detail.insert(
            "lease_expires_at".into(),
            Value::from(t.lease_expires_at.map(|x| clock::format(&x))),
        );
        Ok(t)
    }

    pub(super) fn claim(
        &mut self,
        req: &ClaimRequest,
        named: Option<&TaskId>,
    ) -> Result<ClaimOutcome> {
        let lease_ms = req.lease_ms.unwrap_or(self.c.config.lease_ms);
        if req.only_if_idle {
            for (_, id, _) in self.c.index.leases()? {
                if let Ok(Some(t)) = self.read(&id) {
                    if t.status == Status::Claimed
                        && t.claimed_by.as_deref() == Some(req.agent.as_str())
                    {
                        return Ok(ClaimOutcome::NothingReady(NotReady {
                            reason: NotReadyReason::AgentBusy,
                            next_ready_at: None,
                            message: format!("agent `{}` already holds task `{}`", req.agent, t.id),
                        }));
                    }
                }
            }
        }
        let matches = |t: &Task| req.tags.iter().all(|tag| t.context.tags.contains(tag));
        let no_overlay = HashMap::new();
        if let Some(id) = named {
            let t = self.load(id)?;
            if !matches(&t) {
                return Err(Error::WrongState {
                    task_id: id.to_string(),
                    status: t.status.to_string(),
                    action: "claim".into(),
                    hint: ": it does not carry the requested tags".into(),
                });
            }
            let hint = match self.readiness(&t, &no_overlay)? {
                Readiness::Ready => {
                    return Ok(ClaimOutcome::Claimed(Box::new(
                        self.take(t, &req.agent, lease_ms)?,
                    )))
                }
                Readiness::NotPending => match (&t.claimed_by, t.status) {
                    (Some(a), Status::Claimed) => format!(": it is held by {a}"),
                    _ => String::new(),
                },
                Readiness::Waiting => ": its dependencies are not completed yet".into(),
                Readiness::BlockedBy(d) => {
                    format!(": dependency `{d}` is dead, cancelled or missing")
                }
                Readiness::BackingOff(nb) => {
                    format!(": it is backing off until {}", clock::format(&nb))
                }
            };
            return Err(Error::WrongState {
                task_id: id.to_string(),
                status: t.status.to_string(),
                action: "claim".into(),
                hint,
            });
        }

        let mut next_ready_at: Option<Timestamp> = None;
        let mut skipped_by_filter = false;
        let buckets = self
            .c
            .index
            .ready_priorities()?
            .into_iter()
            .map(|pp| self.c.index.priority_buckets(&pp))
            .flat_map(|r| match r {
                Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            });
        for bucket in buckets {
            let bucket = bucket?;
            let entries = self.c.index.bucket_entries(&bucket)?;
            if entries.is_empty() {
                self.c.index.remove_bucket_if_empty(&bucket);
                continue;
            }
            for entry in entries {
                let t = match self.read(&entry.id) {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        self.c.index.remove_ready_entry(&entry)?;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping unreadable task");
                        continue;
                    }
                };
                if !self.entry_matches(&entry, &t) {
                    // Stale (priority or seq changed, or not pending): drop it.
                    self.c.index.remove_ready_entry(&entry)?;
                    continue;
                }
                match self.readiness(&t, &no_overlay)? {
                    Readiness::Ready => {
                        if !matches(&t) {
                            skipped_by_filter = true;
                            continue;
                        }
                        let t = self.take(t, &req.agent, lease_ms)?;
                        return Ok(ClaimOutcome::Claimed(Box::new(t)));
                    }
                    Readiness::NotPending => self.c.index.remove_ready_entry(&entry)?,
                    Readiness::Waiting => {
                        self.c.index.add_waiting(&t.id)?;
                        self.c.index.remove_ready_entry(&entry)?;
                    }
                    Readiness::BlockedBy(d) => {
                        let mut t = t;
                        t.block(self.now, &d);
                        self.save(&t)?;
                        self.c.index.remove_ready_entry(&entry)?;
                        let e = self.event("task_blocked", &t, Some(Status::Pending));
                        e.detail
                            .insert("blocked_by".into(), Value::from(d.to_string()));
                        let id = t.id.clone();
                        self.propagate_blocked(&id)?;
                    }
                    Readiness::BackingOff(nb) => {
                        if matches(&t) {
                            next_ready_at = Some(next_ready_at.map_or(nb, |x| x.min(nb)));
                        } else {
                            skipped_by_filter = true;
                        }
                    }
                }
            }
        }
        let (reason, message) = if let Some(nb) = next_ready_at {
            (
                NotReadyReason::BackingOff,
                format!(
                    "every ready task is backing off; the next is ready at {}",
                    clock::format(&nb)
                ),
            )
        } else if skipped_by_filter {
            (
                NotReadyReason::NoMatch,
                "no ready task carries the requested tags".to_string(),
            )
        } else if let Some(t) = self.first_waiting()? {
            if !self.healed && matches!(self.readiness(&t, &HashMap::new()), Ok(Readiness::Ready)) {
                self.healed = true;
                // The index lost its ready line (a hand-edited or damaged
                // `dependents/` or `unmet/`): promote it from the task files
                // and claim again (`spec` 9, rule 2).
                tracing::warn!(task_id = %t.id, "a waiting task is ready but was missing from the ready index; promoting it");
                self.c.index.add_ready(&t)?;
                return self.claim(req, named);
            }
            (
                NotReadyReason::WaitingOnDependencies,
                "pending tasks are waiting on dependencies that are not completed".to_string(),
            )
        } else if !self.c.index.leases()?.is_empty() {
            (
                NotReadyReason::AllClaimed,
                "nothing pending; the open tasks are all claimed".to_string(),
            )
        } else {
            (NotReadyReason::Empty, "no pending tasks".to_string())
        };
        Ok(ClaimOutcome::NothingReady(NotReady {
            reason,
            next_ready_at,
            message,
        }))
    }

    /// The first task of `index/waiting` that is still `pending` (the read
    /// compacts the file, `spec` 9 rule 3), or `None`.
    pub(super) fn first_waiting(&self) -> Result<Option<Task>> {
        let found = std::cell::RefCell::new(None);
        self.c.index.any_waiting(&|id| match self.read(id) {
            Ok(Some(t)) if t.status == Status::Pending => {
                *found.borrow_mut() = Some(t);
                true
            }
            _ => false,
        })?;
        Ok(found.into_inner())
    }

    pub(super) fn entry_matches(&self, e: &ReadyEntry, t: &Task) -> bool {
        t.status == Status::Pending && Index::entry_matches(e, t)
    }
}
