//! The holder's operations (`spec` 5.3, 5.4): completion, which promotes the dependents that become ready, and a failed attempt.

use super::*;

impl Txn<'_> {
    /// Ends the attempt of a task held with `token` as `report` says.
    pub(super) fn report(
        &mut self,
        id: &TaskId,
        token: u64,
        report: Report,
        log_file: Option<String>,
    ) -> Result<Task> {
        match report {
            Report::Complete { result } => self.complete(id, token, result, log_file),
            Report::Fail {
                error,
                result,
                permanent,
            } => self.fail_held(id, token, error, result, log_file, permanent),
        }
    }

    /// Fails the attempt of a task held with `token` (`spec` 5.4),
    /// recording what it produced; see [`Txn::fail_attempt`].
    pub(super) fn fail_held(
        &mut self,
        id: &TaskId,
        token: u64,
        error: String,
        result: Option<Value>,
        log_file: Option<String>,
        permanent: bool,
    ) -> Result<Task> {
        let mut t = self.load(id)?;
        t.check_token(token, self.now, "fail")?;
        if result.is_some() {
            t.result = result;
        }
        if log_file.is_some() {
            t.log_file = log_file;
        }
        self.fail_attempt(t, error, "task_failed", permanent)
    }

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
            let dt = match self.read(&d) {
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
