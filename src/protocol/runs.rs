//! Run records: `runs/<run-id>.json`, one per `orchestrate run` or
//! `from-config` (`spec/PROTOCOL.md` section 13.6). They let the same
//! command find its unfinished run again and resume it instead of planning
//! or creating the tasks a second time. History, not state: a missing or
//! unreadable record only means a run cannot be resumed by its goal.

use crate::error::{Error, Result};
use crate::protocol::clock::{serde_ts, Timestamp};
use crate::protocol::{store, task, Coordination};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Current major version of the run record format.
pub const RUN_SCHEMA_VERSION: u64 = 1;

/// The content of `runs/<run-id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Major version of this file's format.
    pub schema_version: u64,
    /// The run id (the file name without `.json`); also the tag its tasks
    /// carry and its correlation id.
    pub run_id: String,
    /// The goal the run was started with.
    pub goal: String,
    /// True when a leader planned the tasks (no tasks file).
    pub planned: bool,
    /// When the run started.
    #[serde(with = "serde_ts")]
    pub started_at: Timestamp,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl store::Versioned for RunRecord {
    const OBJECT_FIELDS: &'static [&'static str] = &[];
}

impl Coordination {
    /// Writes `runs/<run_id>.json` for a run starting now (atomically, not
    /// under the lock: only the run that owns the id writes it).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a run id that is not a valid name (`spec` 8);
    /// I/O errors.
    pub fn record_run(&self, run_id: &str, goal: &str, planned: bool) -> Result<RunRecord> {
        task::validate_name("run id", run_id)?;
        let rec = RunRecord {
            schema_version: RUN_SCHEMA_VERSION,
            run_id: run_id.to_string(),
            goal: goal.to_string(),
            planned,
            started_at: self.now(),
            extra: Map::new(),
        };
        let dir = self.layout().runs_dir();
        store::ensure_dir(&dir)?;
        let p = dir.join(format!("{run_id}.json"));
        store::write_atomic(&p, &store::to_pretty(&rec)?, false, false)?;
        Ok(rec)
    }

    /// Every readable run record, newest first (by `started_at`, then
    /// `run_id`). Unreadable records are skipped with a warning.
    ///
    /// # Errors
    /// [`Error::Io`] when `runs/` exists but cannot be listed.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let dir = self.layout().runs_dir();
        let names = match crate::protocol::fsroot::read_dir(&dir) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut out = Vec::new();
        for (name, _) in names {
            let Some(name) = name.to_str() else { continue };
            if crate::protocol::layout::is_hidden(name) || !name.ends_with(".json") {
                continue;
            }
            let p = dir.join(name);
            let rec = store::read_bytes(&p).and_then(|b| match b {
                Some(b) => {
                    store::parse_versioned::<RunRecord>(&p, &b, RUN_SCHEMA_VERSION).map(Some)
                }
                None => Ok(None),
            });
            match rec {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "run record unreadable; skipped"),
            }
        }
        out.sort_by(|a, b| (b.started_at, &b.run_id).cmp(&(a.started_at, &a.run_id)));
        Ok(out)
    }
}
