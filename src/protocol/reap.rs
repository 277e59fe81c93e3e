//! Lease expiry (`spec` 6.4): expired claims reaped lazily by every mutation, each a failed attempt with backoff.

use super::*;

impl Txn<'_> {
    pub(super) fn reap_expired(&mut self) -> Result<Vec<Reaped>> {
        let now_ms = self.now.timestamp_millis();
        let mut out = Vec::new();
        for (ms, id, name) in self.c.index.leases()? {
            if ms > now_ms {
                continue;
            }
            let t = match self.read(&id) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    self.c.index.remove_lease_entry(&name)?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a task whose lease expired");
                    self.unreadable.push(e);
                    continue;
                }
            };
            let current = t.status == Status::Claimed
                && t.lease_expires_at.map(|x| x.timestamp_millis()) == Some(ms);
            if !current {
                // A leftover of a crash between writes, or a stale entry.
                if t.status != Status::Claimed
                    || t.lease_expires_at.map(|x| x.timestamp_millis()) != Some(ms)
                {
                    if t.status == Status::Claimed {
                        self.c.index.add_lease(&t)?;
                    }
                    self.c.index.remove_lease_entry(&name)?;
                }
                continue;
            }
            if !t.lease_expired(self.now) {
                continue;
            }
            let holder = t.claimed_by.clone();
            let token = t.fencing_token;
            let msg = format!(
                "lease expired: {} stopped heartbeating",
                holder.as_deref().unwrap_or("the holder")
            );
            let t = self.fail_attempt(t, msg, "task_expired", false)?;
            out.push(Reaped {
                task_id: id,
                agent_id: holder,
                fencing_token: token,
                status: t.status,
            });
        }
        Ok(out)
    }

    /// Ends a claimed task's attempt as failed and persists it; `pending`
    /// with backoff or `dead`, whose dependents become blocked.
    pub(super) fn fail_attempt(
        &mut self,
        mut t: Task,
        error: String,
        event: &str,
        permanent: bool,
    ) -> Result<Task> {
        let old = t.clone();
        let u: f64 = rand::random();
        let delay = self.c.backoff_for(&t).delay_ms(t.attempts, u);
        let status = if permanent {
            t.end_attempt_dead(self.now, error.clone())
        } else {
            t.end_attempt_failed(self.now, error.clone(), delay)
        };
        if status == Status::Pending {
            self.c.index.add_ready(&t)?;
        }
        self.save(&t)?;
        self.c.index.remove_lease(&old)?;
        let e = self.event_from(event, &t, Some(old.status), old.claimed_by.clone());
        e.detail.insert("error".into(), Value::from(error));
        if permanent {
            e.detail.insert("permanent".into(), Value::from(true));
        }
        if status == Status::Pending {
            e.detail.insert("backoff_ms".into(), Value::from(delay));
        }
        if status == Status::Dead {
            self.event_from("task_dead", &t, Some(old.status), old.claimed_by.clone());
            let id = t.id.clone();
            self.propagate_blocked(&id)?;
        }
        Ok(t)
    }
}
