//! Path math for `.coordination/` (`spec/PROTOCOL.md` section 2). No
//! protocol logic.

use crate::protocol::task::TaskId;
use std::path::{Path, PathBuf};

/// Name of the directory `init` creates by default.
pub const DEFAULT_DIR: &str = ".coordination";

/// The paths of one coordination directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Paths under `root` (the `.coordination/` directory itself).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The coordination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// The lock file every mutation holds (`spec` section 4.1).
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// `clock`: written by every mutation under the lock; its mtime is the
    /// mutation's "now" (`spec` section 6.6).
    pub fn clock(&self) -> PathBuf {
        self.root.join("clock")
    }
    /// `commit.log`, the commit log of durable mode (`spec` section 4.8).
    pub fn commit_log(&self) -> PathBuf {
        self.root.join("commit.log")
    }
    /// `events.jsonl`, the append-only history.
    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    /// `discoveries.json`, what agents found (`spec` section 3.6).
    pub fn discoveries(&self) -> PathBuf {
        self.root.join("discoveries.json")
    }
    /// `tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }
    /// `tasks/<id>.json`.
    pub fn task(&self, id: &TaskId) -> PathBuf {
        self.root.join("tasks").join(format!("{id}.json"))
    }
    /// The intent record of an unfinished batch create (`spec` section 4.3).
    pub fn batch_intent(&self) -> PathBuf {
        self.root.join("tasks").join(".batch-intent.json")
    }
    /// `index/`, the derived claim index (`spec` section 9).
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }
    /// `logs/`, output of agent processes.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `logs/<id>.<attempt>.<ext>`: an attempt's output (`ext` `log`) or
    /// a Claude reply (`ext` `json`) (`spec` section 13.2).
    pub fn attempt_log(&self, id: &TaskId, attempt: u32, ext: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.{attempt}.{ext}"))
    }
    /// `runs/`, one record per run (`spec` section 13.6).
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }
    /// `agents/`, one file per registered agent.
    pub fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }
    /// `archive/`, finished tasks moved out of `tasks/` (`spec` section 18).
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }
    /// `archive/<id>.json`, an archived task (`spec` section 18).
    pub fn archived_task(&self, id: &TaskId) -> PathBuf {
        self.root.join("archive").join(format!("{id}.json"))
    }
    /// The intent record of an unfinished archive (`spec` section 18.2).
    pub fn archive_intent(&self) -> PathBuf {
        self.root.join("archive").join(".archive-intent.json")
    }
    /// `events/`, the rotated segments of the event log and the metrics
    /// checkpoint (`spec` section 3.6).
    pub fn event_segments_dir(&self) -> PathBuf {
        self.root.join("events")
    }
}

/// The fixed temp-file name used for atomic writes in a directory
/// (`spec` section 4.2). Writers hold the lock, so one name suffices, and a
/// crash leftover is replaced by the next write.
pub const TEMP_NAME: &str = ".tmp-write";

/// True for names readers must skip: temp files, intents, anything hidden.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}
