//! Crash recovery at the start of every mutation (`spec` 4.4, 4.5 step 2-3): an unfinished batch rolled back, a stale index rebuilt.

use super::*;

impl Txn<'_> {
    pub(super) fn roll_back_batch(&mut self) -> Result<()> {
        let p = self.c.layout.batch_intent();
        let bytes = match store::read_bytes(&p) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(Error::Corrupt { reason, .. }) => {
                // Not an intent we wrote (a symlink, a FIFO, a huge file):
                // it names no task we can trust, so it goes.
                tracing::warn!(path = %p.display(), %reason, "removing a batch intent that is not ours");
                if crate::protocol::fsroot::remove_file(&p).is_err() {
                    let _ = crate::protocol::fsroot::remove_dir_all(&p);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ids: Vec<String> = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("task_ids").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        tracing::warn!(
            count = ids.len(),
            "rolling back a batch create interrupted by a crash"
        );
        for id in &ids {
            if let Ok(id) = TaskId::new(id.as_str()) {
                let tp = self.c.layout.task(&id);
                match crate::protocol::fsroot::remove_file(&tp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &tp, e)),
                }
            }
        }
        crate::protocol::fsroot::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        store::sync_dir(&self.c.layout.tasks_dir())?;
        // The index may hold entries of the rolled-back tasks: superset is
        // fine, but a rebuild also resets next_seq cleanly.
        self.rebuild_index()?;
        let mut e = Event::new("batch_rolled_back", self.now);
        e.detail.insert("task_ids".into(), Value::from(ids));
        self.events.push(e);
        Ok(())
    }

    pub(super) fn rebuild_index(&mut self) -> Result<()> {
        let listing = self.list()?;
        for e in &listing.errors {
            tracing::warn!(error = %e, "skipping unreadable task file while rebuilding the index");
        }
        self.c.index.rebuild(&listing.tasks)?;
        let mut e = Event::new("index_rebuilt", self.now);
        e.detail
            .insert("tasks".into(), Value::from(listing.tasks.len()));
        self.events.push(e);
        Ok(())
    }
}
