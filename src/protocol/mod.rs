//! The protocol: everything `spec/PROTOCOL.md` sections 2 to 12 define, and
//! nothing about running agents or showing results.
//!
//! **Owns** the on-disk format and every change to it: the task model and its
//! state machine (`task`, spec 3.2, 5), the file formats and the atomic
//! write (`store`, 3, 4.2), the lock (`lock`, 4.1), the derived index
//! (`index`, 9), the event log (`events`, 3.4), the DAG checks (`dag`, 5.1),
//! time (`clock`, 3.1, 6), `config.json` (`config`, 3.3), paths (`layout`,
//! 2), agent records (`registry`, 3.5), discoveries (`discovery`, 3.6), directory handles (`fsroot`, 4.7),
//! safe discovery (`trust`, 4.7), waking on file changes for claim waiters,
//! `watch` and `events --follow` (`watch`, 6.5, 15) and crash points for
//! tests (`faults`).
//!
//! **May use** only `crate::error` and these modules; nothing here knows
//! about `run`, `claude` or `observe`, which build on it.
//!
//! The operations themselves are [`Coordination`]'s methods in this file,
//! composed from `store`, `lock`, `index` and `events`. Every mutation runs
//! under the directory lock in a `Txn`, which first finishes what a crashed
//! writer left (batch intent, stale index) and reaps expired leases.

pub mod archive;
pub mod clock;
pub mod commit_log;
pub mod config;
pub mod dag;
pub mod discovery;
pub mod events;
pub mod faults;
pub mod fsroot;
pub(crate) mod index;
pub mod layout;
pub mod lock;
pub mod registry;
pub mod runs;
pub mod store;
pub mod task;
pub mod trust;
pub mod watch;

mod claim;
mod create;
mod edit;
mod holder;
mod propagation;
mod reap;
mod recovery;

use crate::error::{Error, Result};
use clock::{Clock, SystemClock, Timestamp};
use config::{Backoff, Config, Durability};
use events::Event;
use index::{Index, ReadyEntry};
use layout::Layout;
use lock::LockGuard;
use registry::AgentRecord;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use task::{NewTask, Status, Task, TaskId, DEFAULT_PRIORITY, TASK_SCHEMA_VERSION};

pub use edit::TaskEdit;

/// Default time to wait for the directory lock, in milliseconds.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 10_000;

/// An open coordination directory.
#[derive(Debug, Clone)]
pub struct Coordination {
    layout: Layout,
    config: Config,
    clock: Arc<dyn Clock>,
    /// The open `clock` file whose mtime is a mutation's "now" (`spec`
    /// 6.6), opened by the first mutation; `None` once [`Coordination::with_clock`]
    /// gave another clock (tests).
    server_clock: Option<Arc<std::sync::OnceLock<std::fs::File>>>,
    lock_timeout: Duration,
    correlation_id: Option<String>,
    index: Index,
    /// Whether task writes commit through the commit log (`spec` 4.8):
    /// durable mode on a local file system, unless `ORCHESTRATE_COMMIT_LOG=0`.
    commit_log: bool,
    /// The directory's handle: every path below it is resolved from it
    /// (`spec` 4.7; [`crate::protocol::fsroot`]).
    _root: Arc<crate::protocol::fsroot::Root>,
}

/// Who may use a coordination directory (`spec` 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `0755` directories, `0644` files: others read, only the owner writes.
    Default,
    /// `2775`/`0664`: the directory's group reads and writes (`--group-shared`).
    Group,
    /// `0700`/`0600`: the owner alone (`--private`).
    Private,
}

/// Longest pause, in milliseconds, of a woken `claim --wait` before it
/// looks at the ready index again (`spec` 6.5): spreads the waiters so the
/// first claim empties the index for the others.
pub const WAKE_JITTER_MS: u64 = 25;

/// What a claim asks for (`spec` section 6.1).
#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    /// Who claims; validated as an agent id.
    pub agent: String,
    /// Claim exactly this task instead of the most urgent ready one.
    pub task_id: Option<String>,
    /// Only tasks carrying all of these tags.
    pub tags: Vec<String>,
    /// Lease length in milliseconds; the config's `lease_ms` when `None`.
    pub lease_ms: Option<u64>,
    /// Claim only if `agent` holds no task now, checked under the same lock
    /// as the claim (the Claude Code Stop hook; two hooks of one session may
    /// run at once).
    pub only_if_idle: bool,
}

/// How a holder ends an attempt, for [`Coordination::report_and_claim`].
#[derive(Debug, Clone)]
pub enum Report {
    /// Complete the task with this result (`spec` 5.3).
    Complete {
        /// Stored as the task's `result`.
        result: Option<Value>,
    },
    /// Fail the attempt (`spec` 5.4): back to `pending` after a backoff,
    /// or `dead` when attempts are exhausted or `permanent`.
    Fail {
        /// Stored as the task's `error`.
        error: String,
        /// What the attempt produced, stored as `result` when `Some`.
        result: Option<Value>,
        /// Dead at once, whatever attempts are left.
        permanent: bool,
    },
}

/// Why a claim found nothing (`spec` section 6.1, the `reason` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReadyReason {
    /// No pending task at all.
    Empty,
    /// Pending tasks exist, but every one waits on dependencies.
    WaitingOnDependencies,
    /// Ready tasks exist but all are backing off until `next_ready_at`.
    BackingOff,
    /// Nothing pending; every open task is claimed by someone.
    AllClaimed,
    /// Ready tasks exist, but none matches the claim's filters.
    NoMatch,
    /// The claim asked for `only_if_idle` and the agent holds a task.
    AgentBusy,
}

/// The answer to a claim that found nothing.
#[derive(Debug, Clone, Serialize)]
pub struct NotReady {
    /// Why.
    pub reason: NotReadyReason,
    /// Earliest `not_before` among backing-off candidates, if any.
    #[serde(serialize_with = "ser_opt_ts")]
    pub next_ready_at: Option<Timestamp>,
    /// A sentence for people.
    pub message: String,
}

fn ser_opt_ts<S: serde::Serializer>(
    t: &Option<Timestamp>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&clock::format(t)),
        None => s.serialize_none(),
    }
}

/// The result of [`Coordination::claim`].
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The task now held, with its new fencing token and lease.
    Claimed(Box<Task>),
    /// Nothing could be claimed, and why.
    NothingReady(NotReady),
}

/// One task's transition made by `reap` (or lazily by any mutation).
#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    /// The task.
    pub task_id: TaskId,
    /// Agent whose lease ran out.
    pub agent_id: Option<String>,
    /// Fencing token of the expired lease.
    pub fencing_token: u64,
    /// `pending` (will be retried) or `dead`.
    pub status: Status,
}

/// Counts and holdings for `orchestrate status` (`spec` section 11).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The goal from `config.json`.
    pub goal: String,
    /// Number of readable tasks.
    pub total: usize,
    /// Tasks per status (every status present, maybe 0).
    pub counts: BTreeMap<String, usize>,
    /// Tasks that a claim could take now.
    pub ready: usize,
    /// The first (at most 5) of them, in claim order.
    pub ready_next: Vec<String>,
    /// Claimed task ids per agent.
    pub agents: BTreeMap<String, Vec<String>>,
    /// Age of the oldest pending task, in milliseconds.
    pub oldest_pending_age_ms: Option<i64>,
    /// Earliest `not_before` of a backing-off task.
    #[serde(serialize_with = "ser_opt_ts")]
    pub next_ready_at: Option<Timestamp>,
    /// Task files that could not be read, with the reason.
    pub unreadable: Vec<String>,
}

/// A task held back by dependencies, with each dependency that is not
/// `completed` and its status (`None`: no such task). See
/// [`Coordination::waiting`].
pub type Waiting = (Task, Vec<(TaskId, Option<Status>)>);

/// A listing: the readable tasks (by `seq`) and the files that failed.
#[derive(Debug, Default)]
pub struct Listing {
    /// Readable tasks, in creation order.
    pub tasks: Vec<Task>,
    /// One error per unreadable task file.
    pub errors: Vec<Error>,
}

enum Readiness {
    Ready,
    NotPending,
    Waiting,
    BlockedBy(TaskId),
    BackingOff(Timestamp),
}

/// How ids given in a batch are treated by [`Coordination::create_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchIds {
    /// An id is the task's id; a taken id is an error (`create-task --id`).
    Exact,
    /// An id is a key local to the batch: it becomes the task's id when
    /// free, else `<key>-<4 hex>` (tasks files, leader plans; spec section 8).
    LocalKeys,
}

impl Coordination {
    /// Creates `dir` as a coordination directory with a default config and
    /// `goal`, or leaves an existing one untouched (`spec` section 2).
    /// Returns the handle and whether anything was created.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be made; [`Error::Corrupt`] or
    /// [`Error::NewerSchema`] for an unusable existing config.
    pub fn init(dir: impl Into<PathBuf>, goal: Option<String>) -> Result<(Self, bool)> {
        Self::init_with(dir, goal, false)
    }

    /// As [`Coordination::init`]; with `group_shared` the directory is made
    /// `2775` first, so that everything created in it is group-writable and
    /// inherits its group (`spec` section 4.7).
    ///
    /// # Errors
    /// As [`Coordination::init`].
    pub fn init_with(
        dir: impl Into<PathBuf>,
        goal: Option<String>,
        group_shared: bool,
    ) -> Result<(Self, bool)> {
        let sharing = if group_shared {
            Sharing::Group
        } else {
            Sharing::Default
        };
        Self::init_shared(dir, goal, sharing)
    }

    /// As [`Coordination::init`], with the directory's audience
    /// ([`Sharing`]; `spec` 4.7) set first, so that everything created in it
    /// follows.
    ///
    /// # Errors
    /// As [`Coordination::init`].
    pub fn init_shared(
        dir: impl Into<PathBuf>,
        goal: Option<String>,
        sharing: Sharing,
    ) -> Result<(Self, bool)> {
        let dir: PathBuf = dir.into();
        let layout = Layout::new(std::path::absolute(&dir).unwrap_or(dir));
        // The directory itself may be a symlink (to shared storage); only
        // what is inside it must not be.
        // The directories this call makes (the root and any missing
        // parents), deepest first, to remove again if the root is refused.
        let made: Vec<PathBuf> = layout
            .root()
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        if !made.is_empty() {
            store::create_dir(layout.root())?;
        }
        let mode_before = std::fs::metadata(layout.root())
            .map(|m| m.permissions())
            .ok();
        let _root = crate::protocol::fsroot::register(layout.root())
            .map_err(|e| Error::io("open directory", layout.root(), e))?;
        let shared = match sharing {
            Sharing::Group => store::make_group_shared(layout.root()),
            Sharing::Private => store::make_private(layout.root()),
            Sharing::Default => Ok(()),
        };
        // The check `open` makes below, made before anything is written:
        // a directory we would then refuse is left as it was (spec 4.7),
        // and those this call made are removed again. (A group-shared
        // directory can be refused: it inherits its group from a setgid
        // parent, and the user need not be in that group.)
        if let Err(e) = shared.and_then(|()| crate::protocol::trust::check(layout.root())) {
            if !made.is_empty() {
                for d in &made {
                    let _ = std::fs::remove_dir(d);
                }
            } else if let Some(p) = mode_before {
                let _ = std::fs::set_permissions(layout.root(), p);
            }
            return Err(e);
        }
        let _guard = lock::acquire(
            &layout.lock(),
            Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS),
        )?;
        let created = match store::read_config(&layout.config())? {
            Some(_) => false,
            None => {
                for d in [layout.tasks_dir(), layout.logs_dir(), layout.agents_dir()] {
                    store::ensure_dir(&d)?;
                }
                // Keep the queue out of commits when the project is a git
                // work tree (`spec` 2): it ignores everything, itself too.
                store::write_plain(
                    &layout.root().join(".gitignore"),
                    b"# Made by `orchestrate init`: the queue is not part of the project's history.\n*\n",
                )?;
                // The clock file every mutation writes (`spec` 6.6), made
                // here with the rest, so that its owner and mode are the
                // directory's like the lock's.
                let clock_path = layout.clock();
                let clock_file = open_clock(&clock_path, "create the clock file")?;
                let now = clock::server_now(&clock_file, &clock_path)?;
                // The commit log (`spec` 4.8), for the same reason.
                commit_log::Log::open(&layout.commit_log(), true)?;
                let cfg = Config::new(goal.unwrap_or_default(), now);
                store::write_atomic(&layout.config(), &store::to_pretty(&cfg)?, true, true)?;
                if let Err(e) = events::append(&layout.events(), &[Event::new("initialized", now)])
                {
                    tracing::warn!(error = %e, "could not append to events.jsonl");
                }
                true
            }
        };
        drop(_guard);
        let c = Self::open(layout.root())?;
        Ok((c, created))
    }

    /// Opens an existing coordination directory.
    ///
    /// # Errors
    /// [`Error::NotInitialized`] when there is no `config.json`;
    /// [`Error::Corrupt`]/[`Error::NewerSchema`] for a bad one;
    /// [`Error::Untrusted`] for a directory of another user or one that
    /// everyone can write (`spec` 4.7, safe discovery).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        // Absolute, so that agent processes started in another working
        // directory get a path that still points here.
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let layout = Layout::new(dir);
        crate::protocol::trust::check(layout.root())?;
        let _root = crate::protocol::fsroot::register(layout.root()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotInitialized(layout.root().to_path_buf())
            } else {
                Error::io("open directory", layout.root(), e)
            }
        })?;
        let config = store::read_config(&layout.config())?
            .ok_or_else(|| Error::NotInitialized(layout.root().to_path_buf()))?;
        refuse_symlinked_dirs(&layout)?;
        let index = Index::new(layout.index_dir());
        // Without a boot id a writer cannot tell a crash from a reboot, and
        // taking a reboot for a crash would lose unsynced task files
        // (`spec` 4.8): such a writer stays on 4.2.
        let commit_log = config.durability == Durability::Durable
            && !crate::protocol::index::boot_id().is_empty()
            && crate::protocol::watch::shared_fs_kind(layout.root()).is_none()
            && std::env::var_os("ORCHESTRATE_COMMIT_LOG").is_none_or(|v| v != "0");
        Ok(Coordination {
            layout,
            config,
            commit_log,
            clock: Arc::new(SystemClock),
            server_clock: Some(Arc::new(std::sync::OnceLock::new())),
            lock_timeout: Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS),
            correlation_id: std::env::var("ORCHESTRATE_CORRELATION_ID")
                .ok()
                .filter(|s| !s.is_empty()),
            index,
            _root,
        })
    }

    /// Uses `clock` for every time decision.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.server_clock = None;
        self
    }

    /// A mutation's "now", taken holding the lock: the file server's clock
    /// (the mtime of `clock` after a write, `spec` 6.6), or the clock given
    /// to [`Coordination::with_clock`].
    fn mutation_now(&self) -> Result<Timestamp> {
        let Some(cell) = &self.server_clock else {
            return Ok(self.clock.now());
        };
        let path = self.layout.clock();
        let f = match cell.get() {
            Some(f) => f,
            None => {
                let f = open_clock(&path, "open the clock file")?;
                cell.get_or_init(|| f)
            }
        };
        clock::server_now(f, &path)
    }

    /// Waits at most `ms` milliseconds for the directory lock.
    pub fn with_lock_timeout_ms(mut self, ms: u64) -> Self {
        self.lock_timeout = Duration::from_millis(ms);
        self
    }

    /// Tags every event written through this handle with `id`.
    pub fn with_correlation_id(mut self, id: Option<String>) -> Self {
        self.correlation_id = id;
        self
    }

    /// The directory's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The directory's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The clock in use.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn backoff_for(&self, t: &Task) -> Backoff {
        t.backoff.unwrap_or(self.config.backoff)
    }

    fn durable(&self) -> bool {
        self.config.durability == Durability::Durable
    }

    fn mutate<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let guard = lock::acquire(&self.layout.lock(), self.lock_timeout)?;
        let mut tx = Txn {
            c: self,
            now: self.mutation_now()?,
            events: Vec::new(),
            tasks_dir_dirty: false,
            reaped: Vec::new(),
            unreadable: Vec::new(),
            healed: false,
            staged: Vec::new(),
            staged_at: HashMap::new(),
            log: None,
            began: false,
            _guard: guard,
        };
        let r = tx.prepare().and_then(|()| f(&mut tx));
        let synced = tx.finish();
        match (r, synced) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Creates one task (`spec` section 5.1). The id is used as given.
    ///
    /// # Errors
    /// As [`Coordination::create_batch`].
    pub fn create(&self, spec: NewTask) -> Result<Task> {
        let mut v = self.create_batch(vec![spec], BatchIds::Exact)?;
        v.pop().ok_or_else(|| Error::Other("empty batch".into()))
    }

    /// Creates tasks all or nothing (`spec` sections 5.1 and 4.3).
    /// Dependencies may name existing tasks or other tasks of the batch by
    /// their `id`. Returns the created tasks in input order.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields, duplicate ids in the batch or an
    /// unknown dependency; [`Error::IdTaken`] (with [`BatchIds::Exact`]);
    /// [`Error::Cycle`]; lock, I/O and data errors. Nothing is written on error.
    pub fn create_batch(&self, specs: Vec<NewTask>, ids: BatchIds) -> Result<Vec<Task>> {
        if specs.is_empty() {
            return Err(Error::Invalid("no tasks to create".into()));
        }
        for s in &specs {
            task::validate_new(s)?;
        }
        self.mutate(|tx| tx.create_batch(specs, ids))
    }

    /// Claims the most urgent ready task, or the named one (`spec` 6.1).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad agent id or lease; for a named task,
    /// [`Error::TaskNotFound`] or [`Error::WrongState`] (not pending,
    /// dependencies not completed, backing off); lock, I/O and data errors.
    pub fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome> {
        let named = validate_claim(req)?;
        let out = self.mutate(|tx| tx.claim(req, named.as_ref()))?;
        // Something planted in the index was found and removed during the
        // claim (which marks the index stale): what it said is not to be
        // believed, so claim again; this mutation's start rebuilds the
        // index first (`spec` 9, rule 4).
        if matches!(out, ClaimOutcome::NothingReady(_)) && !self.index.is_current() {
            return self.mutate(|tx| tx.claim(req, named.as_ref()));
        }
        Ok(out)
    }

    /// Like [`Coordination::claim`], but when nothing is ready, sleeps until
    /// something may have changed (a task file changed, the earliest
    /// `not_before` or lease expiry passed) and tries again, for at most
    /// `timeout` (`None`: forever). `poll` forces the polling watcher.
    /// (`spec` section 6.5.)
    ///
    /// # Errors
    /// [`Error::Timeout`] when `timeout` passes with nothing claimed; the
    /// errors of [`Coordination::claim`] otherwise (for a named task, a
    /// pending one that is not ready yet is waited for).
    pub fn claim_wait(
        &self,
        req: &ClaimRequest,
        timeout: Option<Duration>,
        poll: Option<Duration>,
    ) -> Result<ClaimOutcome> {
        let start = std::time::Instant::now();
        // Watch before the first attempt so that no change is missed.
        let watcher = crate::protocol::watch::ChangeWatcher::for_claims(self.layout.root(), poll)?;
        let mut try_claim = true;
        let mut next: Option<Timestamp> = None;
        loop {
            if try_claim {
                match self.claim_or_wait_for(req)? {
                    Ok(t) => return Ok(ClaimOutcome::Claimed(Box::new(t))),
                    Err(n) => next = n,
                }
            }
            let mut wait = Duration::from_secs(3600);
            if let Some(t) = timeout {
                let left = t.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(Error::Timeout(format!(
                        "no task became ready within {} ms",
                        t.as_millis()
                    )));
                }
                wait = wait.min(left);
            }
            let now = self.now();
            let mut wake_at: Option<Timestamp> = next;
            if let Some((ms, _, _)) = self.index.leases()?.into_iter().min() {
                if let Some(exp) = chrono::DateTime::from_timestamp_millis(ms) {
                    wake_at = Some(wake_at.map_or(exp, |w| w.min(exp)));
                }
            }
            if let Some(w) = wake_at {
                // Something due in the past was not cleared (an unreadable
                // task file): look again, but not in a tight loop.
                let ms = match clock::ms_between(now, w) {
                    ms if ms <= 0 => 100,
                    ms => ms as u64,
                };
                wait = wait.min(Duration::from_millis(ms));
            }
            set_batch_policy(true);
            watcher.wait(wait);
            // No stampede (`spec` 6.5): a change wakes every waiter, but
            // only those that still see a ready entry after a jittered
            // pause take the lock; the first claim empties the index for
            // the rest. A due timer (backoff end, lease expiry) or a named
            // task always claims.
            let due = wake_at.is_some_and(|w| clock::ms_between(self.now(), w) <= 0);
            try_claim = due || req.task_id.is_some() || {
                let jitter: u64 = rand::random_range(0..=WAKE_JITTER_MS);
                std::thread::sleep(Duration::from_millis(jitter));
                watcher.drain();
                // A stale index (a foreign writer removed `index/version`,
                // `spec` 9 rule 6) cannot be peeked at: the claim rebuilds it.
                self.index.has_ready_entry().unwrap_or(true) || !self.index.is_current()
            };
            set_batch_policy(false);
        }
    }

    /// One claim attempt of [`Coordination::claim_wait`]: the claimed task,
    /// or when to look again at the latest (the next `not_before`).
    fn claim_or_wait_for(
        &self,
        req: &ClaimRequest,
    ) -> Result<std::result::Result<Task, Option<Timestamp>>> {
        {
            let next = match self.claim(req) {
                Ok(ClaimOutcome::Claimed(t)) => return Ok(Ok(*t)),
                Ok(ClaimOutcome::NothingReady(nr)) => nr.next_ready_at,
                Err(e @ Error::WrongState { .. }) => {
                    // A named task that is pending and can still become
                    // ready (dependencies not failed, tags matching) is
                    // waited for; anything else is the answer.
                    let Some(id) = req.task_id.as_deref() else {
                        return Err(e);
                    };
                    let t = self.get(id)?;
                    let tags_ok = req.tags.iter().all(|x| t.context.tags.contains(x));
                    let deps_ok = t.dependencies.iter().all(|d| {
                        self.get(d.as_str()).is_ok_and(|x| {
                            !x.status.is_failed_for_good() && x.status != Status::Blocked
                        })
                    });
                    if t.status != Status::Pending || !tags_ok || !deps_ok {
                        return Err(e);
                    }
                    t.not_before
                }
                Err(e) => return Err(e),
            };
            Ok(Err(next))
        }
    }

    /// Extends the lease of a held task to now + `lease_ms` (the config's when
    /// `None`) (`spec` 6.2).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] for a stale token or an expired lease;
    /// [`Error::WrongState`]; [`Error::TaskNotFound`].
    pub fn heartbeat(&self, id: &str, token: u64, lease_ms: Option<u64>) -> Result<Task> {
        let id = TaskId::new(id)?;
        if lease_ms.is_some_and(|l| l == 0 || l > crate::protocol::config::MAX_DURATION_MS) {
            return Err(Error::Invalid(
                "the lease must be between 1 ms and one year".into(),
            ));
        }
        self.mutate(|tx| {
            let mut t = tx.load(&id)?;
            let old = t.clone();
            t.heartbeat(token, tx.now, lease_ms.unwrap_or(self.config.lease_ms))?;
            self.index.add_lease(&t)?;
            tx.save(&t)?;
            // Compare at the index's precision (milliseconds): removing the
            // "old" line when it is the same line would drop the lease.
            let ms = |x: &Task| x.lease_expires_at.map(|e| e.timestamp_millis());
            if ms(&old) != ms(&t) {
                self.index.remove_lease(&old)?;
            }
            tx.event("task_heartbeat", &t, None).detail.insert(
                "lease_expires_at".into(),
                Value::from(t.lease_expires_at.map(|x| clock::format(&x))),
            );
            Ok(t)
        })
    }

    /// Completes a held task with `result` (`spec` 5.3).
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn complete(&self, id: &str, token: u64, result: Option<Value>) -> Result<Task> {
        self.complete_logged(id, token, result, None)
    }

    /// As [`Coordination::complete`], also recording the attempt's log file
    /// (a path relative to `.coordination/`) in the task's `log_file`.
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn complete_logged(
        &self,
        id: &str,
        token: u64,
        result: Option<Value>,
        log_file: Option<String>,
    ) -> Result<Task> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| tx.complete(&id, token, result, log_file))
    }

    /// Fails the current attempt of a held task: back to `pending` after a
    /// backoff, or `dead` when attempts are exhausted (`spec` 5.4, 7).
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn fail(&self, id: &str, token: u64, error: &str) -> Result<Task> {
        self.fail_logged(id, token, error, None, None)
    }

    /// As [`Coordination::fail`], also recording what the attempt produced
    /// (`result`, e.g. exit status and output tail) and its log file.
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn fail_logged(
        &self,
        id: &str,
        token: u64,
        error: &str,
        result: Option<Value>,
        log_file: Option<String>,
    ) -> Result<Task> {
        self.fail_with(id, token, error, result, log_file, false)
    }

    fn fail_with(
        &self,
        id: &str,
        token: u64,
        error: &str,
        result: Option<Value>,
        log_file: Option<String>,
        permanent: bool,
    ) -> Result<Task> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| tx.fail_held(&id, token, error.to_string(), result, log_file, permanent))
    }

    /// As [`Coordination::fail_logged`], but the task goes to `dead` at
    /// once, whatever attempts are left: for a failure that would be the
    /// same on every attempt (a shell task with no command, an adapter that
    /// refuses its arguments; `spec` 5.4). Its dependents become blocked;
    /// `retry` brings it back. The `task_failed` event carries
    /// `"permanent": true`.
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn fail_permanent_logged(
        &self,
        id: &str,
        token: u64,
        error: &str,
        result: Option<Value>,
        log_file: Option<String>,
    ) -> Result<Task> {
        self.fail_with(id, token, error, result, log_file, true)
    }

    /// Reports a held task's attempt: [`Coordination::complete_logged`] or
    /// [`Coordination::fail_logged`] (or its permanent form), as `report`
    /// says.
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn report(
        &self,
        id: &str,
        token: u64,
        report: Report,
        log_file: Option<String>,
    ) -> Result<Task> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| tx.report(&id, token, report, log_file))
    }

    /// Reports a held task's attempt (`complete` or `fail`, as `report`
    /// says) and claims the next task for `next` in the same transaction:
    /// one lock hold, one directory fsync and one `events.jsonl` append
    /// for a worker's whole cycle instead of two (`spec` 5.10). The claim
    /// sees the report's effects (a dependent it made ready can be the
    /// task claimed). `log_file` is as in [`Coordination::complete_logged`].
    ///
    /// `go_on` is asked under the lock, after the report: `false` (the
    /// caller is stopping, e.g. it was interrupted while it waited for the
    /// lock) claims nothing, and the outcome is `None`.
    ///
    /// Returns the reported task and the claim's outcome. The claim's own
    /// failure (a bad `next`, a named task not ready) does not undo the
    /// report: it comes back as the inner `Err`, the report stands.
    ///
    /// # Errors
    /// The report's errors, as [`Coordination::heartbeat`] (nothing is
    /// claimed then); lock and I/O errors; [`Error::Invalid`] for a bad
    /// `next` before anything is done.
    pub fn report_and_claim(
        &self,
        id: &str,
        token: u64,
        report: Report,
        log_file: Option<String>,
        next: &ClaimRequest,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(Task, Option<Result<ClaimOutcome>>)> {
        let id = TaskId::new(id)?;
        let named = validate_claim(next)?;
        let (t, out) = self.mutate(|tx| {
            let t = tx.report(&id, token, report, log_file)?;
            Ok((t, go_on().then(|| tx.claim(next, named.as_ref()))))
        })?;
        // As in [`Coordination::claim`]: an index found stale during the
        // claim is rebuilt by a fresh transaction before the answer counts.
        let out = match out {
            Some(Ok(ClaimOutcome::NothingReady(_))) if !self.index.is_current() => {
                Some(self.claim(next))
            }
            o => o,
        };
        Ok((t, out))
    }

    /// Gives a held task back without spending an attempt (`spec` 5.5).
    ///
    /// # Errors
    /// As [`Coordination::heartbeat`].
    pub fn release(&self, id: &str, token: u64) -> Result<Task> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| {
            let mut t = tx.load(&id)?;
            let old = t.clone();
            t.release(token, tx.now)?;
            self.index.add_ready(&t)?;
            tx.save(&t)?;
            self.index.remove_lease(&old)?;
            tx.event_from(
                "task_released",
                &t,
                Some(old.status),
                old.claimed_by.clone(),
            );
            Ok(t)
        })
    }

    /// Cancels a pending, claimed or blocked task; its pending dependents
    /// become `blocked` (`spec` 5.6). Returns the cancelled task first, then
    /// the tasks it blocked.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`]; [`Error::WrongState`] for other states.
    pub fn cancel(&self, id: &str, reason: Option<String>) -> Result<Vec<Task>> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| {
            let mut t = tx.load(&id)?;
            let old = t.clone();
            t.cancel(tx.now, reason)?;
            tx.save(&t)?;
            self.index.remove_lease(&old)?;
            self.index.remove_ready(&old)?;
            tx.event_from(
                "task_cancelled",
                &t,
                Some(old.status),
                old.claimed_by.clone(),
            );
            let mut out = vec![t];
            out.extend(tx.propagate_blocked(&id)?);
            Ok(out)
        })
    }

    /// Brings a dead, cancelled or blocked task back to `pending` with a
    /// fresh attempt budget, and with it the dependents it had blocked
    /// (`spec` 5.7). Returns the retried task first, then the unblocked ones.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`]; [`Error::WrongState`] for other states, or a
    /// blocked task whose dependency is still dead or cancelled.
    pub fn retry(&self, id: &str) -> Result<Vec<Task>> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| tx.retry(&id))
    }

    /// Changes the definition of task `id` (`spec` 5.9): the fields set in
    /// `edit`, checked as a create checks them. Returns the task as saved,
    /// the names of the fields that changed (empty, and nothing written,
    /// when the edit changes nothing) and the dependents that were blocked
    /// because the task became blocked (a new dependency dead, cancelled
    /// or blocked).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty edit, a bad value (empty
    /// description, priority out of 1..=10, `max_attempts` below the
    /// attempts had, a malformed tag or id) or an unknown dependency;
    /// [`Error::Cycle`] when a dependency would close a cycle;
    /// [`Error::TaskNotFound`]; [`Error::WrongState`] for a claimed or
    /// completed task. Nothing is written on any error.
    pub fn edit(&self, id: &str, edit: &TaskEdit) -> Result<(Task, Vec<&'static str>, Vec<Task>)> {
        let id = TaskId::new(id)?;
        self.mutate(|tx| tx.edit(&id, edit))
    }

    /// Reclaims every expired lease now (`spec` 6.4). Any mutation does this
    /// lazily too; this returns what was done.
    ///
    /// # Errors
    /// Lock, I/O and data errors; [`Error::Corrupt`] naming the file when a
    /// task whose lease expired cannot be read (it cannot be reclaimed until
    /// `doctor --fix` quarantines it). The other expired leases are reaped
    /// and committed first.
    pub fn reap(&self) -> Result<Vec<Reaped>> {
        let (reaped, unreadable) = self.mutate(|tx| {
            Ok((
                std::mem::take(&mut tx.reaped),
                std::mem::take(&mut tx.unreadable),
            ))
        })?;
        match unreadable.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(reaped),
        }
    }

    /// Reads one task without locking (`spec` 4.2: readers never see a torn file).
    ///
    /// # Errors
    /// [`Error::TaskNotFound`]; data and I/O errors.
    pub fn get(&self, id: &str) -> Result<Task> {
        let id = TaskId::new(id)?;
        store::read_task(&self.layout.task(&id), &id)?
            .ok_or_else(|| Error::TaskNotFound(id.to_string()))
    }

    /// Reads every task without locking. Unreadable files are reported in
    /// [`Listing::errors`] and do not stop the listing.
    ///
    /// # Errors
    /// [`Error::Io`] when `tasks/` cannot be listed.
    pub fn list(&self) -> Result<Listing> {
        let mut out = Listing::default();
        self.for_each_task(|r| {
            match r {
                Ok(t) => out.tasks.push(t),
                Err(e) => out.errors.push(e),
            }
            Ok::<(), Error>(())
        })?;
        out.tasks
            .sort_by(|a, b| (a.seq, &a.id).cmp(&(b.seq, &b.id)));
        Ok(out)
    }

    /// Calls `f` with each task of `tasks/` (or the error reading its
    /// file), in directory order, one at a time and without locking (`spec`
    /// 4.6): memory does not grow with the number of tasks. A file that
    /// disappears while the scan runs (archived, rolled back) is skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when `tasks/` cannot be listed; what `f` returns.
    pub fn for_each_task<E: From<Error>>(
        &self,
        f: impl FnMut(std::result::Result<Task, Error>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.scan_tasks(&self.layout.tasks_dir(), f)
    }

    /// As [`Coordination::for_each_task`], in seq order: a first pass keeps
    /// only each task's `seq` and id (tens of bytes a task), a second reads
    /// each file again and hands it to `f`. A task created between the
    /// passes is left out, one archived between them is skipped.
    ///
    /// # Errors
    /// As [`Coordination::for_each_task`].
    pub fn for_each_task_in_order<E: From<Error>>(
        &self,
        mut f: impl FnMut(std::result::Result<Task, Error>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let dir = self.layout.tasks_dir();
        let mut keys: Vec<(u64, TaskId)> = Vec::new();
        self.scan_tasks(&dir, |r| {
            match r {
                Ok(t) => keys.push((t.seq, t.id)),
                Err(e) => f(Err(e))?,
            }
            Ok::<(), E>(())
        })?;
        keys.sort();
        for (_, id) in keys {
            let path = self.layout.task(&id);
            match store::read_task(&path, &id) {
                Ok(Some(t)) => f(Ok(t))?,
                Ok(None) => {}
                Err(e) => f(Err(e))?,
            }
        }
        Ok(())
    }

    /// Reads each `<id>.json` of `dir` (`tasks/` or `archive/`) and calls
    /// `f` with it, skipping hidden names and names not ending in `.json`.
    fn scan_tasks<E: From<Error>>(
        &self,
        dir: &Path,
        mut f: impl FnMut(std::result::Result<Task, Error>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let rd = crate::protocol::fsroot::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        for (name, _) in rd {
            let Some(name) = name.to_str() else { continue };
            if layout::is_hidden(name) {
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let path = dir.join(name);
            let id = match TaskId::new(stem) {
                Ok(id) => id,
                Err(_) => {
                    f(Err(Error::corrupt(
                        path,
                        "file name is not a valid task id",
                    )))?;
                    continue;
                }
            };
            match store::read_task(&path, &id) {
                Ok(Some(t)) => f(Ok(t))?,
                Ok(None) => {}
                Err(e) => f(Err(e))?,
            }
        }
        Ok(())
    }

    /// Counts, ready tasks and holdings, computed from one pass over
    /// `tasks/` (`spec` section 11, `status`) that keeps a few dozen bytes a
    /// task (its id and status, and a pending task's dependencies), never
    /// the tasks themselves.
    ///
    /// # Errors
    /// As [`Coordination::list`].
    pub fn status(&self) -> Result<StatusReport> {
        /// A pending task not yet known to be ready: its dependencies are
        /// judged once every status is known.
        struct Held {
            key: (u8, u64),
            id: TaskId,
            not_before: Option<Timestamp>,
            dependencies: Vec<TaskId>,
        }
        let now = self.now();
        let mut status_of: HashMap<TaskId, Status> = HashMap::new();
        let mut held: Vec<Held> = Vec::new();
        let mut counts: BTreeMap<String, usize> =
            Status::ALL.iter().map(|s| (s.to_string(), 0)).collect();
        let mut agents: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut oldest: Option<Timestamp> = None;
        let mut unreadable = Vec::new();
        self.for_each_task(|r| {
            let t = match r {
                Ok(t) => t,
                Err(e) => {
                    unreadable.push(e.to_string());
                    return Ok::<(), Error>(());
                }
            };
            *counts.entry(t.status.to_string()).or_default() += 1;
            match t.status {
                Status::Claimed => agents
                    .entry(t.claimed_by.clone().unwrap_or_default())
                    .or_default()
                    .push((t.seq, t.id.to_string())),
                Status::Pending => {
                    oldest = Some(oldest.map_or(t.created_at, |o| o.min(t.created_at)));
                    held.push(Held {
                        key: (t.priority, t.seq),
                        id: t.id.clone(),
                        not_before: t.not_before,
                        dependencies: t.dependencies,
                    });
                }
                _ => {}
            }
            status_of.insert(t.id, t.status);
            Ok(())
        })?;
        let mut ready = 0;
        let mut next_ready_at: Option<Timestamp> = None;
        let mut first_ready: Vec<((u8, u64), &TaskId)> = Vec::new();
        for h in &held {
            let deps_done = h
                .dependencies
                .iter()
                .all(|d| status_of.get(d) == Some(&Status::Completed));
            if !deps_done {
                continue;
            }
            match h.not_before {
                Some(nb) if nb > now => {
                    next_ready_at = Some(next_ready_at.map_or(nb, |x| x.min(nb)))
                }
                _ => {
                    ready += 1;
                    first_ready.push((h.key, &h.id));
                    // Only the five most urgent are named: keep the list short.
                    if first_ready.len() > 64 {
                        first_ready.sort();
                        first_ready.truncate(5);
                    }
                }
            }
        }
        first_ready.sort();
        let mut agents_out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, mut v) in agents {
            v.sort();
            agents_out.insert(a, v.into_iter().map(|(_, id)| id).collect());
        }
        Ok(StatusReport {
            goal: self.config.goal.clone(),
            total: status_of.len(),
            counts,
            ready,
            ready_next: first_ready
                .iter()
                .take(5)
                .map(|(_, id)| id.to_string())
                .collect(),
            agents: agents_out,
            oldest_pending_age_ms: oldest.map(|o| clock::ms_between(o, now)),
            next_ready_at,
            unreadable,
        })
    }

    /// The tasks a claim could take now, in claim order (`spec` 6.1: priority,
    /// 1 first, then `seq`): `pending`, every dependency `completed`, not
    /// backing off. Read from the task files without the lock (4.6), so it
    /// is a snapshot; files that cannot be read are left out (`list` names
    /// them).
    ///
    /// # Errors
    /// [`Error::Io`] when `tasks/` cannot be listed.
    pub fn ready(&self) -> Result<Vec<Task>> {
        Ok(self.ready_listing()?.tasks)
    }

    /// As [`Coordination::ready`], with the unreadable task files in
    /// [`Listing::errors`] (one listing of `tasks/`, held once in memory).
    ///
    /// # Errors
    /// [`Error::Io`] when `tasks/` cannot be listed.
    pub fn ready_listing(&self) -> Result<Listing> {
        let listing = self.list()?;
        let now = self.now();
        let status: HashMap<TaskId, Status> = listing
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.status))
            .collect();
        // Moved, not cloned: the listing is not needed after this.
        let mut v: Vec<Task> = listing
            .tasks
            .into_iter()
            .filter(|t| {
                t.status == Status::Pending
                    && t.not_before.is_none_or(|nb| nb <= now)
                    && t.dependencies
                        .iter()
                        .all(|d| status.get(d) == Some(&Status::Completed))
            })
            .collect();
        v.sort_by_key(|t| (t.priority, t.seq));
        Ok(Listing {
            tasks: v,
            errors: listing.errors,
        })
    }

    /// The tasks held back by dependencies, each with the dependencies that
    /// are not `completed` and their status (`None`: no such task): every
    /// `blocked` task (a dependency failed for good, `spec` 5.6) and every
    /// `pending` one still waiting. In `seq` order; read without the lock.
    ///
    /// # Errors
    /// [`Error::Io`] when `tasks/` cannot be listed.
    pub fn waiting(&self) -> Result<Vec<Waiting>> {
        let listing = self.list()?;
        let status: HashMap<&TaskId, Status> =
            listing.tasks.iter().map(|t| (&t.id, t.status)).collect();
        Ok(listing
            .tasks
            .iter()
            .filter(|t| matches!(t.status, Status::Pending | Status::Blocked))
            .filter_map(|t| {
                let open: Vec<(TaskId, Option<Status>)> = t
                    .dependencies
                    .iter()
                    .map(|d| (d.clone(), status.get(d).copied()))
                    .filter(|(_, s)| *s != Some(Status::Completed))
                    .collect();
                (!open.is_empty() || t.status == Status::Blocked).then(|| (t.clone(), open))
            })
            .collect())
    }

    /// Tasks currently claimed by `agent`, found through the lease index and
    /// checked against their files. No lock is taken.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad agent id; I/O errors reading the index.
    pub fn held_by(&self, agent: &str) -> Result<Vec<Task>> {
        task::validate_name("agent id", agent)?;
        let mut out: Vec<Task> = Vec::new();
        for (_, id, _) in self.index.leases()? {
            if out.iter().any(|t| t.id == id) {
                continue;
            }
            if let Ok(Some(t)) = store::read_task(&self.layout.task(&id), &id) {
                if t.status == Status::Claimed && t.claimed_by.as_deref() == Some(agent) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Reads `agents/<id>.json`; `Ok(None)` when absent.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad id; data and I/O errors.
    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>> {
        task::validate_name("agent id", id)?;
        let p = self.layout.agents_dir().join(format!("{id}.json"));
        match store::read_bytes(&p)? {
            None => Ok(None),
            Some(b) => {
                store::parse_versioned(&p, &b, crate::protocol::registry::AGENT_SCHEMA_VERSION)
                    .map(Some)
            }
        }
    }

    /// Creates or changes `agents/<id>.json` under the lock: `f` gets the
    /// current record (a fresh active one of `kind` if none) and edits it.
    /// `last_seen_at` is set to now. Returns the record written.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad id; lock, data and I/O errors.
    pub fn update_agent(
        &self,
        id: &str,
        kind: &str,
        f: impl FnOnce(&mut AgentRecord),
    ) -> Result<AgentRecord> {
        task::validate_name("agent id", id)?;
        self.mutate(|tx| {
            let now = tx.now;
            let mut rec = self
                .agent(id)?
                .unwrap_or_else(|| AgentRecord::new(id, kind, now));
            f(&mut rec);
            rec.last_seen_at = now;
            let dir = self.layout.agents_dir();
            store::ensure_dir(&dir)?;
            let p = dir.join(format!("{id}.json"));
            store::write_atomic(&p, &store::to_pretty(&rec)?, self.durable(), true)?;
            Ok(rec)
        })
    }

    /// Records one discovery (`spec` 3.6): what an agent found that the
    /// others should know, with the agent and task that made it. One
    /// mutation: `discoveries.json` is rewritten atomically under the lock
    /// (capped, oldest dropped first) and one `discovery_recorded` event is
    /// appended. Returns the record written.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or oversized title or content, a bad
    /// agent or task id, or a task id that names no task; lock, data (a
    /// corrupt or newer `discoveries.json`) and I/O errors. Nothing is
    /// written on error.
    pub fn add_discovery(&self, d: discovery::NewDiscovery) -> Result<discovery::Discovery> {
        let mut v = self.add_discoveries(vec![d], None)?;
        v.pop()
            .ok_or_else(|| Error::Other("no discovery was recorded".into()))
    }

    /// Records several discoveries in one mutation, in order, with one
    /// `discovery_recorded` event each (`spec` 3.6). With `fence` (a task id
    /// and a fencing token: the attempt that made them), they are recorded
    /// only while that token is still the task's current one, so that a
    /// holder whose lease was lost and whose task was claimed again adds
    /// nothing (`spec` 6.3, 13.2). An empty list writes nothing.
    ///
    /// # Errors
    /// As [`Coordination::add_discovery`]; [`Error::LeaseLost`] when the
    /// fence's token is no longer the task's; [`Error::TaskNotFound`] when
    /// the fence's task does not exist.
    pub fn add_discoveries(
        &self,
        ds: Vec<discovery::NewDiscovery>,
        fence: Option<(&str, u64)>,
    ) -> Result<Vec<discovery::Discovery>> {
        for d in &ds {
            discovery::validate_new(d)?;
        }
        if ds.is_empty() {
            return Ok(Vec::new());
        }
        let fence = fence
            .map(|(id, tok)| TaskId::new(id).map(|i| (i, tok)))
            .transpose()?;
        self.mutate(|tx| {
            if let Some((id, tok)) = &fence {
                let t = tx.load(id)?;
                if t.fencing_token != *tok {
                    return Err(Error::LeaseLost {
                        task_id: id.to_string(),
                        presented: *tok,
                        current: t.fencing_token,
                        detail: "the task was claimed again since; the old attempt's discoveries are not recorded".into(),
                    });
                }
            }
            for d in &ds {
                if let Some(t) = &d.task_id {
                    let id = TaskId::new(t)?;
                    if store::read_task(&self.layout.task(&id), &id)?.is_none() {
                        return Err(Error::Invalid(format!(
                            "no task `{t}` in this queue: --task (or $ORCHESTRATE_TASK_ID) names the task the discovery was made in"
                        )));
                    }
                }
            }
            let path = self.layout.discoveries();
            let mut log = discovery::read(&path)?;
            let first = log.discoveries.len();
            for d in ds {
                let id = discovery::new_id(&|x| log.discoveries.iter().any(|e| e.id == x));
                log.discoveries.push(discovery::Discovery {
                    id,
                    title: d.title,
                    content: d.content,
                    agent_id: d.agent_id,
                    related_task: d.task_id,
                    tags: d.tags,
                    created_at: tx.now,
                    correlation_id: self.correlation_id.clone(),
                    extra: serde_json::Map::new(),
                });
            }
            let added: Vec<discovery::Discovery> = log.discoveries[first..].to_vec();
            let dropped = discovery::cap(&mut log);
            if dropped > 0 {
                tracing::debug!(dropped, "dropped the oldest discoveries (cap of spec 3.6)");
            }
            store::write_atomic(&path, &store::to_pretty(&log)?, self.durable(), true)?;
            for rec in &added {
                let mut e = Event::new("discovery_recorded", tx.now);
                e.task_id = rec.related_task.clone();
                e.agent_id = rec.agent_id.clone();
                e.correlation_id = self.correlation_id.clone();
                e.detail
                    .insert("discovery_id".into(), Value::from(rec.id.clone()));
                let title: String = rec.title.chars().take(200).collect();
                e.detail.insert("title".into(), Value::from(title));
                tx.events.push(e);
            }
            Ok(added)
        })
    }

    /// Every discovery in `discoveries.json`, oldest first, read without
    /// the lock (`spec` 3.6, 4.6); empty when the file does not exist.
    ///
    /// # Errors
    /// [`Error::Corrupt`] or [`Error::NewerSchema`] for a bad file;
    /// [`Error::Io`].
    pub fn discoveries(&self) -> Result<Vec<discovery::Discovery>> {
        Ok(discovery::read(&self.layout.discoveries())?.discoveries)
    }

    /// The newest `n` discoveries, oldest of them first (for prompts and
    /// hand-overs, `spec` 13.2, 14.3).
    ///
    /// # Errors
    /// As [`Coordination::discoveries`].
    pub fn recent_discoveries(&self, n: usize) -> Result<Vec<discovery::Discovery>> {
        let mut v = self.discoveries()?;
        let from = v.len().saturating_sub(n);
        Ok(v.split_off(from))
    }

    /// Rebuilds the claim index from `tasks/` now (`spec` section 9).
    ///
    /// # Errors
    /// Lock and I/O errors.
    pub fn reindex(&self) -> Result<()> {
        self.mutate(|tx| tx.rebuild_index())
    }

    /// Runs `f` holding the directory lock, without the crash recovery and
    /// reaping a mutation does first: for `doctor`, which must see the
    /// directory as it is.
    ///
    /// # Errors
    /// Lock errors, and whatever `f` returns.
    pub(crate) fn locked<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _guard = lock::acquire(&self.layout.lock(), self.lock_timeout)?;
        f()
    }

    /// Blocks every pending task with a dead, cancelled, blocked or missing
    /// dependency (the state a crash in the middle of blocking propagation
    /// can leave). Returns the tasks blocked.
    ///
    /// # Errors
    /// Lock, data and I/O errors.
    pub fn repair_blocked(&self) -> Result<Vec<Task>> {
        self.mutate(|tx| {
            let listing = tx.list()?;
            let status: HashMap<&TaskId, Status> =
                listing.tasks.iter().map(|t| (&t.id, t.status)).collect();
            let mut out = Vec::new();
            for t in &listing.tasks {
                if t.status != Status::Pending {
                    continue;
                }
                let bad = t.dependencies.iter().find(|d| {
                    status
                        .get(d)
                        .is_none_or(|s| s.is_failed_for_good() || *s == Status::Blocked)
                });
                if let Some(d) = bad {
                    let mut t2 = t.clone();
                    t2.block(tx.now, d);
                    tx.save(&t2)?;
                    tx.c.index.remove_ready(&t2)?;
                    let e = tx.event("task_blocked", &t2, Some(Status::Pending));
                    e.detail
                        .insert("blocked_by".into(), Value::from(d.to_string()));
                    out.push(t2);
                }
            }
            Ok(out)
        })
    }

    /// True when the index is there, in this version, and built since boot.
    pub fn index_is_current(&self) -> bool {
        self.index.is_current()
    }

    /// The ready-index entries (task ids) and lease-index task ids, for
    /// `doctor`'s staleness check.
    ///
    /// # Errors
    /// I/O errors reading `index/`.
    pub fn index_contents(&self) -> Result<(HashSet<TaskId>, HashSet<TaskId>)> {
        let mut ready = HashSet::new();
        for b in self.index.ready_buckets()? {
            for e in self.index.bucket_entries(&b)? {
                ready.insert(e.id);
            }
        }
        let leases = self
            .index
            .leases()?
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        Ok((ready, leases))
    }

    /// The `index/unmet/<id>` counter of task `id` (`spec` 9): at most the
    /// number of its dependencies not yet completed, or `None` when absent.
    /// For `doctor`'s check that it never exceeds the truth.
    ///
    /// # Errors
    /// I/O errors reading the counter file.
    pub fn unmet_entry(&self, id: &TaskId) -> Result<Option<u64>> {
        self.index.unmet(id)
    }

    /// The lease-index entries as (expiry in Unix milliseconds, task id),
    /// for `doctor`'s check that each matches its task file (`spec` 9, 17).
    ///
    /// # Errors
    /// I/O errors reading `index/leases`.
    pub fn lease_entries(&self) -> Result<Vec<(i64, TaskId)>> {
        Ok(self
            .index
            .leases()?
            .into_iter()
            .map(|(ms, id, _)| (ms, id))
            .collect())
    }
}

/// Checks a claim request before any lock is taken; the named task's id.
fn validate_claim(req: &ClaimRequest) -> Result<Option<TaskId>> {
    task::validate_name("agent id", &req.agent)?;
    if req
        .lease_ms
        .is_some_and(|l| l == 0 || l > crate::protocol::config::MAX_DURATION_MS)
    {
        return Err(Error::Invalid(
            "the lease must be between 1 ms and one year".into(),
        ));
    }
    req.task_id.as_deref().map(TaskId::new).transpose()
}

/// One lock hold: a mutation in progress.
struct Txn<'a> {
    c: &'a Coordination,
    now: Timestamp,
    events: Vec<Event>,
    tasks_dir_dirty: bool,
    reaped: Vec<Reaped>,
    /// Tasks whose lease expired but whose file cannot be read.
    unreadable: Vec<Error>,
    /// A missed ready line was restored in this transaction (at most once).
    healed: bool,
    /// Task files written but not yet committed (commit-log mode, `spec`
    /// 4.8), in order, and each id's place in that list.
    staged: Vec<commit_log::Staged>,
    staged_at: HashMap<TaskId, usize>,
    /// The commit log, once this holder opened it.
    log: Option<commit_log::Log>,
    /// `begin` is in the log for this mutation.
    began: bool,
    _guard: LockGuard,
}

impl Txn<'_> {
    pub(super) fn load(&self, id: &TaskId) -> Result<Task> {
        self.read(id)?
            .ok_or_else(|| Error::TaskNotFound(id.to_string()))
    }

    /// Writes an existing task's file: staged for the commit log (`spec`
    /// 4.8) in commit-log mode, else at once (fsynced when durable).
    pub(super) fn save(&mut self, t: &Task) -> Result<()> {
        if self.c.commit_log {
            let bytes = task_bytes(t)?;
            return self.stage(t, bytes);
        }
        self.save_with(t, self.c.durable())
    }

    /// Every task file, as [`Coordination::list`] reads them, after the
    /// staged writes were committed (so the listing sees them).
    ///
    /// # Errors
    /// As [`Txn::flush`] and [`Coordination::list`].
    pub(super) fn list(&mut self) -> Result<Listing> {
        self.flush()?;
        self.c.list()
    }

    /// Writes a task file, fsyncing it when `fsync` (a batch fsyncs the file
    /// system once instead). Refuses a file readers would refuse as too big.
    pub(super) fn save_with(&mut self, t: &Task, fsync: bool) -> Result<()> {
        let bytes = task_bytes(t)?;
        store::write_atomic(&self.c.layout.task(&t.id), &bytes, fsync, false)?;
        self.tasks_dir_dirty = true;
        Ok(())
    }

    /// As [`Txn::save_with`] for a task file that must not exist yet: never
    /// replaces a file at its name, even one planted after the id was found
    /// free (`spec` 4.2, `RENAME_NOREPLACE`); [`Error::IdTaken`] then.
    pub(super) fn save_new_with(&mut self, t: &Task, fsync: bool) -> Result<()> {
        let bytes = task_bytes(t)?;
        match store::write_new(&self.c.layout.task(&t.id), &bytes, fsync, false) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::IdTaken(t.id.to_string()))
            }
            r => r?,
        }
        self.tasks_dir_dirty = true;
        Ok(())
    }

    pub(super) fn event(&mut self, name: &str, t: &Task, from: Option<Status>) -> &mut Event {
        self.event_from(name, t, from, t.claimed_by.clone())
    }

    pub(super) fn event_from(
        &mut self,
        name: &str,
        t: &Task,
        from: Option<Status>,
        agent: Option<String>,
    ) -> &mut Event {
        let mut e = Event::new(name, self.now);
        e.task_id = Some(t.id.to_string());
        e.agent_id = agent;
        e.attempt = Some(t.attempts);
        e.fencing_token = Some(t.fencing_token);
        e.from = from.map(|s| s.to_string());
        e.to = Some(t.status.to_string());
        e.correlation_id = self.c.correlation_id.clone();
        self.events.push(e);
        let last = self.events.len() - 1;
        &mut self.events[last]
    }

    /// Finishes crash leftovers and expired leases before the operation.
    pub(super) fn prepare(&mut self) -> Result<()> {
        self.recover_commit_log()?;
        // We hold the lock, so a temp file left in `.tmp/` (ours) or at
        // `tasks/.tmp-write` (older or other writers) is a crash leftover:
        // clean it (spec 4.2).
        if store::clean_temps(self.c.layout.root())? > 0 {
            tracing::debug!("removed temp files left by a crash");
        }
        let tmp = self.c.layout.tasks_dir().join(layout::TEMP_NAME);
        match crate::protocol::fsroot::remove_file(&tmp) {
            Ok(()) => tracing::debug!("removed a temp file left by a crash"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale temp file", &tmp, e)),
        }
        self.roll_back_batch()?;
        self.roll_forward_archive()?;
        if !self.c.index.is_current() {
            self.rebuild_index()?;
        }
        self.reaped = self.reap_expired()?;
        Ok(())
    }

    /// Makes the mutation durable (one directory fsync) and appends events.
    pub(super) fn finish(&mut self) -> Result<()> {
        let committed = self.flush();
        let r = if self.tasks_dir_dirty && self.c.durable() {
            crate::protocol::faults::point("before_dir_fsync");
            store::sync_dir(&self.c.layout.tasks_dir())
        } else {
            Ok(())
        };
        if let Err(e) = events::append(&self.c.layout.events(), &self.events) {
            tracing::warn!(error = %e, "could not append to events.jsonl; the task files are correct");
        }
        // One log line per transition (DESIGN.md section 5; shown with -v).
        for e in &self.events {
            if e.task_id.is_some() {
                tracing::info!(
                    task_id = e.task_id.as_deref().unwrap_or(""),
                    agent_id = e.agent_id.as_deref().unwrap_or(""),
                    attempt = e.attempt.unwrap_or(0),
                    fencing_token = e.fencing_token.unwrap_or(0),
                    correlation_id = e.correlation_id.as_deref().unwrap_or(""),
                    to = e.to.as_deref().unwrap_or(""),
                    "{}",
                    e.event
                );
            }
        }
        committed.and(r)
    }
}

/// A task's file content, refused when readers would refuse it as too big.
fn task_bytes(t: &Task) -> Result<Vec<u8>> {
    let bytes = store::to_pretty(t)?;
    if bytes.len() as u64 > store::MAX_FILE_BYTES {
        return Err(Error::Invalid(format!(
            "task `{}` would be a {} byte file, over the {} byte limit; put large text in a file and refer to it",
            t.id,
            bytes.len(),
            store::MAX_FILE_BYTES
        )));
    }
    Ok(bytes)
}

/// Kahn's algorithm over the batch; returns indices in dependency order, or
/// the cycle found.
fn topo_order(
    ids: &[TaskId],
    deps: &[Vec<TaskId>],
    pos: &HashMap<&TaskId, usize>,
) -> Result<Vec<usize>> {
    let n = ids.len();
    let mut indeg = vec![0usize; n];
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for d in ds {
            if let Some(&j) = pos.get(d) {
                indeg[i] += 1;
                out_edges[j].push(i);
            }
        }
    }
    let mut q: VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = q.pop_front() {
        order.push(i);
        for &k in &out_edges[i] {
            indeg[k] -= 1;
            if indeg[k] == 0 {
                q.push_back(k);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Find one cycle among the remaining nodes to name it.
    let start = (0..n).find(|&i| indeg[i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut cur = start;
    let mut visited = HashSet::from([start]);
    loop {
        let next = deps[cur]
            .iter()
            .filter_map(|d| pos.get(d).copied())
            .find(|&j| indeg[j] > 0);
        let Some(next) = next else { break };
        if visited.contains(&next) {
            let at = path.iter().position(|&x| x == next).unwrap_or(0);
            let mut cyc: Vec<String> = path[at..].iter().map(|&i| ids[i].to_string()).collect();
            cyc.push(ids[next].to_string());
            return Err(Error::Cycle(cyc));
        }
        visited.insert(next);
        path.push(next);
        cur = next;
    }
    Err(Error::Cycle(ids.iter().map(|i| i.to_string()).collect()))
}

/// Refuses subdirectories of `.coordination/` that are symlinks (DESIGN.md
/// section 2: symlinks inside `.coordination/` are refused, not followed).
/// The files inside are opened with `O_NOFOLLOW`, but that only guards the
/// last path component: a symlinked `tasks/` would send every write outside.
fn refuse_symlinked_dirs(layout: &Layout) -> Result<()> {
    for d in [
        layout.tasks_dir(),
        layout.index_dir(),
        layout.logs_dir(),
        layout.agents_dir(),
        layout.archive_dir(),
    ] {
        if crate::protocol::fsroot::symlink_metadata(&d).is_ok_and(|m| m.is_symlink()) {
            return Err(Error::corrupt(
                &d,
                "is a symlink; symlinks inside .coordination/ are refused, not followed",
            ));
        }
    }
    Ok(())
}

/// Finds the coordination directory: `explicit` if given, else
/// `$COORDINATION_DIR`, else the nearest `.coordination/` with a
/// `config.json` in the current directory or above it (as git finds
/// `.git`), else `./.coordination` (DESIGN.md section 7; `spec` section 2).
pub fn resolve_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("COORDINATION_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(found) = std::env::current_dir()
        .ok()
        .and_then(|cwd| find_dir_from(&cwd))
    {
        return found;
    }
    PathBuf::from(layout::DEFAULT_DIR)
}

/// The nearest initialised `.coordination/` in `start` or one of its
/// parents (one holding `config.json`), as git finds `.git`; `None` when
/// there is none.
pub fn find_dir_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(layout::DEFAULT_DIR))
        .find(|d| d.join("config.json").is_file())
}

/// The directory `init` creates: `explicit`, else `$COORDINATION_DIR`, else
/// `./.coordination` (no search upwards: `init` makes a new one here).
pub fn init_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("COORDINATION_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(p);
    }
    PathBuf::from(layout::DEFAULT_DIR)
}

/// Puts the calling thread in `SCHED_BATCH` (`batch`) or back in
/// `SCHED_OTHER`, both normal, unprivileged policies (sched(7)). A waiter
/// woken by a file change in `SCHED_BATCH` does not preempt the process
/// that is still in the middle of the change (the writer that woke it), so
/// many waiters slow a writer less; a waiter that goes on to claim is back
/// in `SCHED_OTHER` before it takes the lock. Failures are ignored: this is
/// only a scheduling hint.
fn set_batch_policy(batch: bool) {
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives for the call.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

/// Opens (creating when missing) the `clock` file (`spec` 6.6) with the
/// directory's file mode (4.7; `fchmod`, so no umask narrows it), refusing
/// anything but a regular file with one name: a hard link planted there
/// would have every mutation write into the file it names.
fn open_clock(path: &Path, op: &'static str) -> Result<std::fs::File> {
    let f = store::open_regular(
        path,
        libc::O_RDWR | libc::O_CREAT,
        store::file_mode_for(path.parent().unwrap_or(path)),
        op,
    )?;
    let st = rustix::fs::fstat(&f).map_err(|e| Error::io("stat", path, e.into()))?;
    if st.st_nlink > 1 {
        return Err(Error::corrupt(
            path,
            "has more than one name (a hard link to another file); remove it, the next mutation makes a new one",
        ));
    }
    store::set_file_mode(&f, path)?;
    Ok(f)
}
