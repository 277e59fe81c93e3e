//! The library's error type. Every variant maps to one exit code of
//! `spec/PROTOCOL.md` section 12 through [`Error::exit_code`].

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a protocol operation.
///
/// Variants carry the task id, path or operation they concern so that a
/// message can tell the user what to do. The exit code of each variant is
/// fixed by `spec/PROTOCOL.md` section 12 (DESIGN.md section 7).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from the caller: a malformed id, a priority out of range,
    /// an unknown dependency, an unreadable tasks file. Exit 2.
    #[error("{0}")]
    Invalid(String),

    /// The named task does not exist. Exit 3.
    #[error("task `{0}` not found (see `orchestrate list`)")]
    TaskNotFound(String),

    /// The task exists but has no log for the attempt asked for (never
    /// run by an adapter, not started yet, or the log was deleted). Exit 3.
    #[error("no log for task `{task_id}`: {detail}")]
    LogNotFound {
        /// The task concerned.
        task_id: String,
        /// Which attempt, and what to do.
        detail: String,
    },

    /// `.coordination/` (or its config) does not exist. Exit 3.
    #[error("no coordination directory at `{}`: run `orchestrate init` first, or pass --dir / set COORDINATION_DIR", .0.display())]
    NotInitialized(PathBuf),

    /// Nothing is ready to claim. Exit 3. The payload says why.
    #[error("nothing ready to claim: {0}")]
    NothingReady(String),

    /// The task is in a state that does not allow this transition. Exit 4.
    #[error("task `{task_id}` is {status}; cannot {action} it{hint}")]
    WrongState {
        /// The task concerned.
        task_id: String,
        /// Its current status.
        status: String,
        /// The transition that was attempted (`complete`, `claim`, ...).
        action: String,
        /// Extra advice, starting with `: ` or empty.
        hint: String,
    },

    /// The caller's fencing token is not the task's current one, or its lease
    /// expired and the task went back to the queue. Exit 4.
    #[error("lease lost on task `{task_id}` with token {presented}: {detail}")]
    LeaseLost {
        /// The task concerned.
        task_id: String,
        /// Token the caller presented.
        presented: u64,
        /// Token currently on the task file.
        current: u64,
        /// What happened (expired, reclaimed, ...).
        detail: String,
    },

    /// A task with this id already exists. Exit 4.
    #[error("task id `{0}` is already taken; choose another --id or leave it out to generate one")]
    IdTaken(String),

    /// The new dependencies would close a cycle. Exit 4.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),

    /// The lock could not be had within the timeout. Exit 5.
    #[error("timed out after {waited_ms} ms waiting for the lock `{}`; another process holds it (see `orchestrate status`) or raise --lock-timeout", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited, in milliseconds.
        waited_ms: u64,
    },

    /// Waiting for something (a ready task) timed out. Exit 5.
    #[error("{0}")]
    Timeout(String),

    /// A file in `.coordination/` is corrupt, not what the spec says, a
    /// symlink, or too large. Exit 65.
    #[error("bad data in `{}`: {reason} (fix the file or move it aside; `orchestrate doctor` lists what else is wrong)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file was written by a newer major schema version. Exit 65.
    #[error("`{}` has schema_version {found}, this orchestrate understands up to {supported}: upgrade orchestrate; nothing was changed", path.display())]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Highest major version this build knows.
        supported: u64,
    },

    /// An I/O operation failed. Exit 74.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        /// What was being done (`write`, `rename`, ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The operation was interrupted (Ctrl-C). Exit 130.
    #[error("interrupted")]
    Interrupted,

    /// Any other failure (an agent process could not run, a plan was
    /// rejected twice). Exit 1.
    #[error("{0}")]
    Other(String),
    /// The agent adapter cannot run any task as configured (the Claude CLI
    /// refused its arguments, its binary cannot start): a run stops at once
    /// instead of spending every task's attempts (`spec` 13.2). Exit 1.
    #[error("the agent cannot run as configured, so the run stopped: {0}")]
    AdapterUnusable(String),
    /// A coordination directory this user must not adopt: another user's,
    /// or writable by everyone (`spec` 4.7, safe discovery). Exit 74.
    #[error("refusing `{path}`: {reason}. If you trust it, add it to ORCHESTRATE_SAFE_DIRS (a :-separated list), or use a .coordination/ of your own (`orchestrate init`)", path = .path.display())]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// Why it is not trusted.
        reason: String,
    },
}

impl Error {
    /// Wraps an [`std::io::Error`] with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds a [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The process exit code for this error, per `spec/PROTOCOL.md` section 12.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) => 2,
            Error::TaskNotFound(_)
            | Error::LogNotFound { .. }
            | Error::NotInitialized(_)
            | Error::NothingReady(_) => 3,
            Error::WrongState { .. }
            | Error::LeaseLost { .. }
            | Error::IdTaken(_)
            | Error::Cycle(_) => 4,
            Error::LockTimeout { .. } | Error::Timeout(_) => 5,
            Error::Corrupt { .. } | Error::NewerSchema { .. } => 65,
            Error::Io { .. } | Error::Untrusted { .. } => 74,
            Error::Interrupted => 130,
            Error::Other(_) | Error::AdapterUnusable(_) => 1,
        }
    }

    /// A short stable machine-readable name for the error kind, used in
    /// `--json` error output (`spec/PROTOCOL.md` section 11).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::TaskNotFound(_) => "task_not_found",
            Error::LogNotFound { .. } => "log_not_found",
            Error::NotInitialized(_) => "not_initialized",
            Error::NothingReady(_) => "nothing_ready",
            Error::WrongState { .. } => "wrong_state",
            Error::LeaseLost { .. } => "lease_lost",
            Error::IdTaken(_) => "id_taken",
            Error::Cycle(_) => "cycle",
            Error::LockTimeout { .. } => "lock_timeout",
            Error::Timeout(_) => "timeout",
            Error::Corrupt { .. } => "corrupt",
            Error::NewerSchema { .. } => "newer_schema",
            Error::Io { .. } => "io",
            Error::Interrupted => "interrupted",
            Error::Other(_) => "other",
            Error::AdapterUnusable(_) => "adapter_unusable",
            Error::Untrusted { .. } => "untrusted_directory",
        }
    }
}
