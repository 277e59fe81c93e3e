//! The holder's operations (`spec` 5.3): completion, which promotes the dependents that become ready.

use super::*;

impl Txn<'_> {
    pub(super) fn complete(
        &mut self,
        id: &TaskId,
        token: u64,
        result: Option<Value>,
        log_file: Option<String>,
    ) -> Result<Task> {
        let mut t = self.load(id)?;
        let old = t.clone();
        t.complete(token, self.now, result)?;
        if log_file.is_some() {
            t.log_file = log_file;
        }
        let mut overlay = HashMap::new();
        overlay.insert(id.clone(), Status::Completed);
        let mut promote = Vec::new();
        for d in self.c.index.dependents(id)? {
            // A dependent of many tasks keeps a counter (`index/unmet`) so
            // that all but the last completions skip reading its file and
            // its dependencies' files: fan-in stays linear (spec 9, rule 1).
            if let Some(n) = self.c.index.unmet(&d)? {
                if n > 1 {
                    self.c.index.set_unmet(&d, n - 1)?;
                    continue;
                }
            }
            let dt = match store::read_task(&self.c.layout.task(&d), &d) {
                Ok(Some(dt)) => dt,
                _ => continue,
            };
            if dt.dependencies.len() >= crate::protocol::index::UNMET_MIN_DEPS
                && matches!(dt.status, Status::Pending | Status::Blocked)
            {
                let n = self.unmet_count(&dt, &overlay);
                self.c.index.set_unmet(&d, n)?;
                if n > 0 {
                    continue;
                }
            }
            if matches!(
                self.readiness(&dt, &overlay)?,
                Readiness::Ready | Readiness::BackingOff(_)
            ) {
                promote.push(dt);
            }
        }
        for d in &promote {
            self.c.index.add_ready(d)?;
        }
        self.save(&t)?;
        self.c.index.remove_lease(&old)?;
        self.event_from(
            "task_completed",
            &t,
            Some(old.status),
            old.claimed_by.clone(),
        );
        Ok(t)
    }
}
