//! Model-based property test of the task life cycle (`spec/PROTOCOL.md`
//! sections 5 to 7, DESIGN.md section 3).
//!
//! Random sequences of create / claim / heartbeat / complete / fail /
//! release / cancel / retry / reap, with a [`ManualClock`] moved forward
//! between steps, run against both the library (a fresh `.coordination/`
//! per case) and [`Model`], a small in-memory reference written from the
//! spec with its own types. After every step the test checks that the
//! outcome agrees (Ok, or the same `Error::kind()`; for a claim, the same
//! task or the same "nothing ready" reason), and that every task's state
//! agrees (status, attempts, fencing token, holder, lease expiry,
//! `not_before`, error presence), plus the per-status field invariants of
//! spec 5.8.
//!
//! Backoff is made deterministic by a jitter of 0 in `config.json` (and in
//! the per-task backoffs the test creates).
//!
//! Cases: 64 of up to 40 steps by default; `PROPTEST_CASES=N` changes the
//! count. A failing case is saved in `tests/model.proptest-regressions` and
//! replayed first on every later run.

use orchestrate::{
    Backoff, ClaimOutcome, ClaimRequest, Coordination, Error, ManualClock, NewTask, NotReadyReason,
    Status, Task,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

/// `config.json` `lease_ms` of the test directories.
const LEASE_MS: u64 = 1_000;
/// `config.json` `max_attempts` (used when a create gives none).
const CONFIG_MAX_ATTEMPTS: u32 = 2;
/// `config.json` `backoff`, jitter 0: delays 200, 300, 300, ... ms.
const CONFIG_BACKOFF: ModelBackoff = ModelBackoff {
    base_ms: 200,
    factor: 2,
    max_ms: 300,
};
/// A per-task backoff some creates give: delays 50, 150, 400, 400, ... ms.
const TASK_BACKOFF: ModelBackoff = ModelBackoff {
    base_ms: 50,
    factor: 3,
    max_ms: 400,
};
/// Where the clock starts (2027-01-15T08:00:00Z), in Unix milliseconds.
const T0_MS: i64 = 1_800_000_000_000;
const AGENTS: [&str; 3] = ["agent-a", "agent-b", "agent-c"];
/// A valid task id that no step ever creates.
const MISSING_ID: &str = "no-such-task";
const DEFAULT_CASES: u32 = 64;
const MAX_STEPS: usize = 40;
/// Task picks are taken modulo the candidates; small numbers print well.
const PICK: usize = 16;

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Pending,
    Claimed,
    Completed,
    Dead,
    Cancelled,
    Blocked,
}

impl St {
    fn name(self) -> &'static str {
        match self {
            St::Pending => "pending",
            St::Claimed => "claimed",
            St::Completed => "completed",
            St::Dead => "dead",
            St::Cancelled => "cancelled",
            St::Blocked => "blocked",
        }
    }

    /// A dependency in this state blocks its pending dependents (spec 5.6).
    fn blocks_dependents(self) -> bool {
        matches!(self, St::Dead | St::Cancelled | St::Blocked)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelBackoff {
    base_ms: u64,
    factor: u64,
    max_ms: u64,
}

impl ModelBackoff {
    /// Spec 7 with jitter 0: `min(max_ms, base_ms * factor^(n-1))`.
    fn delay_ms(self, n: u32) -> u64 {
        let mut d = self.base_ms;
        for _ in 1..n {
            d = d.saturating_mul(self.factor);
            if d >= self.max_ms {
                break;
            }
        }
        d.min(self.max_ms)
    }

    fn to_lib(self) -> Backoff {
        Backoff {
            base_ms: self.base_ms,
            factor: self.factor as f64,
            max_ms: self.max_ms,
            jitter: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
struct ModelTask {
    id: String,
    priority: u8,
    /// Indices into [`Model::tasks`].
    deps: Vec<usize>,
    max_attempts: u32,
    backoff: Option<ModelBackoff>,
    status: St,
    attempts: u32,
    token: u64,
    claimed_by: Option<String>,
    lease_expires_at: Option<i64>,
    not_before: Option<i64>,
    has_error: bool,
}

/// One step's call with its arguments resolved against the model's state
/// (task ids, tokens), as both sides make it.
#[derive(Clone, Debug)]
enum Call {
    Create {
        id: String,
        priority: u8,
        deps: Vec<String>,
        max_attempts: Option<u32>,
        backoff: Option<ModelBackoff>,
    },
    Claim {
        agent: String,
        task: Option<String>,
        lease_ms: Option<u64>,
    },
    Heartbeat {
        id: String,
        token: u64,
        lease_ms: Option<u64>,
    },
    Complete {
        id: String,
        token: u64,
    },
    Fail {
        id: String,
        token: u64,
    },
    Release {
        id: String,
        token: u64,
    },
    Cancel {
        id: String,
    },
    Retry {
        id: String,
    },
    Reap,
}

/// The outcome of a call, as the model predicts it and as the library's
/// answer is projected for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// `create`: the new task's id and initial status.
    Created { id: String, status: &'static str },
    /// `claim`: the task claimed and its new fencing token.
    Claimed { id: String, token: u64 },
    /// `claim` found nothing (spec 6.1): the reason and `next_ready_at`.
    NothingReady {
        reason: &'static str,
        next_ready_at: Option<i64>,
    },
    /// `heartbeat`, `complete`, `fail`, `release`: the task and its status.
    Task { id: String, status: &'static str },
    /// `cancel`, `retry`: the task itself, then the set of tasks that it
    /// blocked or unblocked.
    Tasks {
        first: String,
        rest: BTreeSet<String>,
    },
    /// `reap`: (task, holder, token, new status), sorted.
    Reaped(Vec<(String, Option<String>, u64, &'static str)>),
    /// An error, by `Error::kind()`.
    Err(&'static str),
}

#[derive(Clone, Debug)]
struct Step {
    advance_ms: u64,
    call: Call,
    expect: Outcome,
}

/// The whole coordination directory, as the spec says it should be.
#[derive(Clone, Debug)]
struct Model {
    now: i64,
    /// In creation (`seq`) order.
    tasks: Vec<ModelTask>,
    /// The step just applied, for the system under test to replay.
    last: Option<Step>,
}

impl Model {
    fn new() -> Self {
        Model {
            now: T0_MS,
            tasks: Vec::new(),
            last: None,
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.id == id)
    }

    /// Ready (spec 6.1): pending, every dependency completed, `not_before`
    /// null or `<= now`.
    fn is_ready(&self, i: usize) -> bool {
        let t = &self.tasks[i];
        t.status == St::Pending
            && self.deps_completed(i)
            && t.not_before.is_none_or(|nb| nb <= self.now)
    }

    fn deps_completed(&self, i: usize) -> bool {
        self.tasks[i]
            .deps
            .iter()
            .all(|&d| self.tasks[d].status == St::Completed)
    }

    fn backing_off(&self, i: usize) -> bool {
        let t = &self.tasks[i];
        t.status == St::Pending
            && self.deps_completed(i)
            && t.not_before.is_some_and(|nb| nb > self.now)
    }

    /// Spec 5.4: ends the current attempt of a claimed task as failed.
    fn fail_attempt(&mut self, i: usize) {
        let now = self.now;
        let t = &mut self.tasks[i];
        t.has_error = true;
        t.claimed_by = None;
        t.lease_expires_at = None;
        if t.attempts >= t.max_attempts {
            t.status = St::Dead;
            t.not_before = None;
            self.block_dependents(i);
        } else {
            let delay = t.backoff.unwrap_or(CONFIG_BACKOFF).delay_ms(t.attempts);
            t.status = St::Pending;
            t.not_before = Some(now + delay as i64);
        }
    }

    /// Spec 5.6: every pending task depending on `root`, directly or
    /// through tasks this blocks, becomes blocked. Returns them.
    fn block_dependents(&mut self, root: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([root]);
        while let Some(cur) = queue.pop_front() {
            for d in 0..self.tasks.len() {
                let t = &mut self.tasks[d];
                if t.status == St::Pending && t.deps.contains(&cur) {
                    t.status = St::Blocked;
                    t.not_before = None;
                    t.has_error = true;
                    out.push(d);
                    queue.push_back(d);
                }
            }
        }
        out
    }

    /// Spec 5.7, the effect of a retry (and of an unblock).
    fn revive(&mut self, i: usize) {
        let t = &mut self.tasks[i];
        t.status = St::Pending;
        t.attempts = 0;
        t.has_error = false;
        t.not_before = None;
        t.claimed_by = None;
        t.lease_expires_at = None;
    }

    /// Spec 6.4: every expired lease (`lease_expires_at <= now`) ends its
    /// attempt as failed. Done at the start of every mutation.
    fn reap(&mut self) -> Vec<(String, Option<String>, u64, &'static str)> {
        let mut expired: Vec<(i64, usize)> = self
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match (t.status, t.lease_expires_at) {
                (St::Claimed, Some(exp)) if exp <= self.now => Some((exp, i)),
                _ => None,
            })
            .collect();
        expired.sort();
        let mut out = Vec::new();
        for (_, i) in expired {
            let holder = self.tasks[i].claimed_by.clone();
            let token = self.tasks[i].token;
            self.fail_attempt(i);
            out.push((
                self.tasks[i].id.clone(),
                holder,
                token,
                self.tasks[i].status.name(),
            ));
        }
        out.sort();
        out
    }

    /// Spec 6.3, as `Task::check_token` implements it.
    ///
    /// Disagreement with the spec, reported: spec 6.3 step 2 says a current
    /// token on a task that is no longer `claimed` gets `wrong_state`; the
    /// code (commit 35d342a, "lease lost for a gone lease") answers
    /// `lease_lost` when the task is `pending`, `dead` or `cancelled` and
    /// was claimed at least once, and `wrong_state` otherwise. Both are
    /// exit 4; the model follows the code.
    fn check_token(&self, i: usize, token: u64) -> Result<(), &'static str> {
        let t = &self.tasks[i];
        if token != t.token {
            return Err("lease_lost");
        }
        if t.status != St::Claimed {
            return match t.status {
                St::Pending | St::Dead | St::Cancelled if t.token > 0 => Err("lease_lost"),
                _ => Err("wrong_state"),
            };
        }
        if t.lease_expires_at.is_none_or(|exp| exp <= self.now) {
            return Err("lease_lost");
        }
        Ok(())
    }

    fn take(&mut self, i: usize, agent: &str, lease_ms: Option<u64>) -> Outcome {
        let now = self.now;
        let t = &mut self.tasks[i];
        t.status = St::Claimed;
        t.claimed_by = Some(agent.to_string());
        t.token += 1;
        t.attempts += 1;
        t.lease_expires_at = Some(now + lease_ms.unwrap_or(LEASE_MS) as i64);
        t.not_before = None;
        Outcome::Claimed {
            id: t.id.clone(),
            token: t.token,
        }
    }

    fn claim(&mut self, agent: &str, named: Option<&str>, lease_ms: Option<u64>) -> Outcome {
        if let Some(id) = named {
            return match self.find(id) {
                None => Outcome::Err("task_not_found"),
                Some(i) if self.is_ready(i) => self.take(i, agent, lease_ms),
                Some(_) => Outcome::Err("wrong_state"),
            };
        }
        // Claim order (spec 6.1): priority, then seq (creation order).
        let best = (0..self.tasks.len())
            .filter(|&i| self.is_ready(i))
            .min_by_key(|&i| (self.tasks[i].priority, i));
        if let Some(i) = best {
            return self.take(i, agent, lease_ms);
        }
        // The reason, the first that applies (spec 6.1; no tag filters here).
        let next_ready_at = (0..self.tasks.len())
            .filter(|&i| self.backing_off(i))
            .filter_map(|i| self.tasks[i].not_before)
            .min();
        let reason = if next_ready_at.is_some() {
            "backing_off"
        } else if self.tasks.iter().any(|t| t.status == St::Pending) {
            "waiting_on_dependencies"
        } else if self.tasks.iter().any(|t| t.status == St::Claimed) {
            "all_claimed"
        } else {
            "empty"
        };
        Outcome::NothingReady {
            reason,
            next_ready_at,
        }
    }

    /// Spec 5.7, as `Txn::retry` implements it.
    ///
    /// Disagreement with the spec, reported: spec 5.7 says a retried `dead`
    /// or `cancelled` task with a dependency that is `dead`, `cancelled`,
    /// `blocked` or missing "is blocked again (5.6) rather than left
    /// `pending`"; the code refuses such a retry with `wrong_state` ("retry
    /// the dependency first"), as it does for a `blocked` task. The model
    /// follows the code; see `spec_5_7_retry_of_cancelled_task_with_cancelled_dependency_blocks_it`.
    fn retry(&mut self, i: usize) -> Outcome {
        let t = &self.tasks[i];
        if !matches!(t.status, St::Dead | St::Cancelled | St::Blocked) {
            return Outcome::Err("wrong_state");
        }
        if t.deps
            .iter()
            .any(|&d| self.tasks[d].status.blocks_dependents())
        {
            return Outcome::Err("wrong_state");
        }
        self.revive(i);
        // Unblocking: blocked dependents, directly or through tasks
        // unblocked here, none of whose dependencies still blocks them.
        let mut rest = BTreeSet::new();
        let mut queue = VecDeque::from([i]);
        while let Some(cur) = queue.pop_front() {
            for d in 0..self.tasks.len() {
                let t = &self.tasks[d];
                if t.status == St::Blocked
                    && t.deps.contains(&cur)
                    && !t
                        .deps
                        .iter()
                        .any(|&x| self.tasks[x].status.blocks_dependents())
                {
                    self.revive(d);
                    rest.insert(self.tasks[d].id.clone());
                    queue.push_back(d);
                }
            }
        }
        Outcome::Tasks {
            first: self.tasks[i].id.clone(),
            rest,
        }
    }

    fn cancel(&mut self, i: usize) -> Outcome {
        let t = &mut self.tasks[i];
        if !matches!(t.status, St::Pending | St::Claimed | St::Blocked) {
            return Outcome::Err("wrong_state");
        }
        // `not_before` is kept (spec 5.8: a cancelled backing-off task keeps it).
        t.status = St::Cancelled;
        t.has_error = true;
        t.claimed_by = None;
        t.lease_expires_at = None;
        let blocked = self.block_dependents(i);
        Outcome::Tasks {
            first: self.tasks[i].id.clone(),
            rest: blocked
                .into_iter()
                .map(|d| self.tasks[d].id.clone())
                .collect(),
        }
    }

    fn create(
        &mut self,
        id: &str,
        priority: u8,
        deps: &[String],
        max_attempts: Option<u32>,
        backoff: Option<ModelBackoff>,
    ) -> Outcome {
        if self.find(id).is_some() {
            return Outcome::Err("id_taken");
        }
        let mut dep_ix = Vec::new();
        for d in deps {
            if d == id {
                return Outcome::Err("cycle");
            }
            match self.find(d) {
                None => return Outcome::Err("invalid"),
                Some(j) if !dep_ix.contains(&j) => dep_ix.push(j),
                Some(_) => {}
            }
        }
        let blocked = dep_ix
            .iter()
            .any(|&d| self.tasks[d].status.blocks_dependents());
        let status = if blocked { St::Blocked } else { St::Pending };
        self.tasks.push(ModelTask {
            id: id.to_string(),
            priority,
            deps: dep_ix,
            max_attempts: max_attempts.unwrap_or(CONFIG_MAX_ATTEMPTS),
            backoff,
            status,
            attempts: 0,
            token: 0,
            claimed_by: None,
            lease_expires_at: None,
            not_before: None,
            has_error: blocked,
        });
        Outcome::Created {
            id: id.to_string(),
            status: status.name(),
        }
    }

    /// Runs `call` as one mutation (spec 4.5): lazy reaping, then the
    /// operation.
    fn exec(&mut self, call: &Call) -> Outcome {
        let reaped = self.reap();
        let held = |m: &Self, id: &str| m.find(id).ok_or("task_not_found");
        let checked = |m: &Self, id: &str, token: u64| {
            let i = held(m, id)?;
            m.check_token(i, token)?;
            Ok::<usize, &'static str>(i)
        };
        let task = |m: &Self, i: usize| Outcome::Task {
            id: m.tasks[i].id.clone(),
            status: m.tasks[i].status.name(),
        };
        match call {
            Call::Create {
                id,
                priority,
                deps,
                max_attempts,
                backoff,
            } => self.create(id, *priority, deps, *max_attempts, *backoff),
            Call::Claim {
                agent,
                task,
                lease_ms,
            } => self.claim(agent, task.as_deref(), *lease_ms),
            Call::Heartbeat {
                id,
                token,
                lease_ms,
            } => match checked(self, id, *token) {
                Err(k) => Outcome::Err(k),
                Ok(i) => {
                    let exp = self.now + lease_ms.unwrap_or(LEASE_MS) as i64;
                    self.tasks[i].lease_expires_at = Some(exp);
                    task(self, i)
                }
            },
            Call::Complete { id, token } => match checked(self, id, *token) {
                Err(k) => Outcome::Err(k),
                Ok(i) => {
                    let t = &mut self.tasks[i];
                    t.status = St::Completed;
                    t.has_error = false;
                    t.lease_expires_at = None;
                    // `claimed_by` keeps the completing agent (spec 5.3).
                    task(self, i)
                }
            },
            Call::Fail { id, token } => match checked(self, id, *token) {
                Err(k) => Outcome::Err(k),
                Ok(i) => {
                    self.fail_attempt(i);
                    task(self, i)
                }
            },
            Call::Release { id, token } => match checked(self, id, *token) {
                Err(k) => Outcome::Err(k),
                Ok(i) => {
                    let t = &mut self.tasks[i];
                    t.status = St::Pending;
                    t.attempts = t.attempts.saturating_sub(1);
                    t.claimed_by = None;
                    t.lease_expires_at = None;
                    t.not_before = None;
                    task(self, i)
                }
            },
            Call::Cancel { id } => match held(self, id) {
                Err(k) => Outcome::Err(k),
                Ok(i) => self.cancel(i),
            },
            Call::Retry { id } => match held(self, id) {
                Err(k) => Outcome::Err(k),
                Ok(i) => self.retry(i),
            },
            Call::Reap => Outcome::Reaped(reaped),
        }
    }
}

// ---------------------------------------------------------------------------
// Transitions: symbolic, resolved against the model's state when applied, so
// that a shrunk sequence stays meaningful.
// ---------------------------------------------------------------------------

/// How far the clock moves before a step.
#[derive(Clone, Debug)]
enum Advance {
    Ms(u64),
    /// To the `k`-th upcoming deadline (a lease expiry or a `not_before`),
    /// plus `delta` ms (-1, 0 or +1): the boundaries of spec 6.4 and 6.1.
    ToDeadline {
        k: usize,
        delta: i64,
    },
}

/// Which tasks a [`TaskRef`] prefers; falls back to any task.
#[derive(Clone, Copy, Debug)]
enum Prefer {
    Any,
    Claimed,
    Pending,
    /// Dead, cancelled or blocked.
    Failed,
}

#[derive(Clone, Copy, Debug)]
enum TaskRef {
    /// A valid id that does not exist.
    Missing,
    /// The `k`-th (modulo) task of the preferred ones.
    Pick(Prefer, usize),
}

/// The fencing token presented, relative to the task's current one.
#[derive(Clone, Copy, Debug)]
enum Tok {
    Current,
    /// One less (a holder from before the last claim).
    Previous,
    /// One more (never issued).
    Next,
}

/// A way to make a create fail.
#[derive(Clone, Copy, Debug)]
enum CreateFault {
    None,
    /// Reuse the id of the `k`-th task: `id_taken`.
    TakenId(usize),
    /// Depend on a task that does not exist: `invalid`.
    MissingDep,
    /// Depend on itself: `cycle`.
    SelfDep,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        priority: u8,
        /// Picked modulo the number of existing tasks.
        deps: Vec<usize>,
        max_attempts: Option<u32>,
        backoff: Option<ModelBackoff>,
        fault: CreateFault,
    },
    Claim {
        agent: usize,
        named: Option<TaskRef>,
        lease_ms: Option<u64>,
    },
    Heartbeat {
        task: TaskRef,
        tok: Tok,
        lease_ms: Option<u64>,
    },
    Complete {
        task: TaskRef,
        tok: Tok,
    },
    Fail {
        task: TaskRef,
        tok: Tok,
    },
    Release {
        task: TaskRef,
        tok: Tok,
    },
    Cancel {
        task: TaskRef,
    },
    Retry {
        task: TaskRef,
    },
    Reap,
}

#[derive(Clone, Debug)]
struct Transition {
    advance: Advance,
    op: Op,
}

impl Model {
    fn resolve_advance(&self, a: &Advance) -> u64 {
        match *a {
            Advance::Ms(ms) => ms,
            Advance::ToDeadline { k, delta } => {
                let mut deadlines: Vec<i64> = self
                    .tasks
                    .iter()
                    .flat_map(|t| [t.lease_expires_at, t.not_before])
                    .flatten()
                    .filter(|&d| d >= self.now)
                    .collect();
                deadlines.sort_unstable();
                deadlines.dedup();
                if deadlines.is_empty() {
                    return 0;
                }
                let d = deadlines[k % deadlines.len()];
                (d + delta - self.now).max(0) as u64
            }
        }
    }

    fn resolve_task(&self, r: TaskRef) -> Option<usize> {
        let TaskRef::Pick(prefer, k) = r else {
            return None;
        };
        let wanted = |t: &ModelTask| match prefer {
            Prefer::Any => true,
            Prefer::Claimed => t.status == St::Claimed,
            Prefer::Pending => t.status == St::Pending,
            Prefer::Failed => matches!(t.status, St::Dead | St::Cancelled | St::Blocked),
        };
        let mut cands: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| wanted(&self.tasks[i]))
            .collect();
        if cands.is_empty() {
            cands = (0..self.tasks.len()).collect();
        }
        if cands.is_empty() {
            None
        } else {
            Some(cands[k % cands.len()])
        }
    }

    fn id_of(&self, r: TaskRef) -> (String, Option<usize>) {
        match self.resolve_task(r) {
            Some(i) => (self.tasks[i].id.clone(), Some(i)),
            None => (MISSING_ID.to_string(), None),
        }
    }

    fn token_for(&self, i: Option<usize>, tok: Tok) -> u64 {
        let cur = i.map_or(1, |i| self.tasks[i].token);
        match tok {
            Tok::Current => cur,
            Tok::Previous => cur.saturating_sub(1),
            Tok::Next => cur + 1,
        }
    }

    fn resolve(&self, op: &Op) -> Call {
        let with_token = |task: TaskRef, tok: Tok| {
            let (id, i) = self.id_of(task);
            let token = self.token_for(i, tok);
            (id, token)
        };
        match op {
            Op::Create {
                priority,
                deps,
                max_attempts,
                backoff,
                fault,
            } => {
                let n = self.tasks.len();
                let mut id = format!("t{n:02}");
                let mut dep_ids: Vec<String> = if n == 0 {
                    Vec::new()
                } else {
                    deps.iter().map(|&k| self.tasks[k % n].id.clone()).collect()
                };
                match *fault {
                    CreateFault::None => {}
                    CreateFault::TakenId(k) if n > 0 => id = self.tasks[k % n].id.clone(),
                    CreateFault::TakenId(_) => {}
                    CreateFault::MissingDep => dep_ids.push(MISSING_ID.to_string()),
                    CreateFault::SelfDep => dep_ids.push(id.clone()),
                }
                Call::Create {
                    id,
                    priority: *priority,
                    deps: dep_ids,
                    max_attempts: *max_attempts,
                    backoff: *backoff,
                }
            }
            Op::Claim {
                agent,
                named,
                lease_ms,
            } => Call::Claim {
                agent: AGENTS[agent % AGENTS.len()].to_string(),
                task: named.map(|r| self.id_of(r).0),
                lease_ms: *lease_ms,
            },
            Op::Heartbeat {
                task,
                tok,
                lease_ms,
            } => {
                let (id, token) = with_token(*task, *tok);
                Call::Heartbeat {
                    id,
                    token,
                    lease_ms: *lease_ms,
                }
            }
            Op::Complete { task, tok } => {
                let (id, token) = with_token(*task, *tok);
                Call::Complete { id, token }
            }
            Op::Fail { task, tok } => {
                let (id, token) = with_token(*task, *tok);
                Call::Fail { id, token }
            }
            Op::Release { task, tok } => {
                let (id, token) = with_token(*task, *tok);
                Call::Release { id, token }
            }
            Op::Cancel { task } => Call::Cancel {
                id: self.id_of(*task).0,
            },
            Op::Retry { task } => Call::Retry {
                id: self.id_of(*task).0,
            },
            Op::Reap => Call::Reap,
        }
    }
}

fn task_ref(prefer: Prefer) -> impl Strategy<Value = TaskRef> {
    prop_oneof![
        1 => Just(TaskRef::Missing),
        10 => (0..PICK).prop_map(move |k| TaskRef::Pick(prefer, k)),
        3 => (0..PICK).prop_map(|k| TaskRef::Pick(Prefer::Any, k)),
    ]
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        8 => Just(Tok::Current),
        1 => Just(Tok::Previous),
        1 => Just(Tok::Next),
    ]
}

fn lease() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        1 => (1..=2 * LEASE_MS).prop_map(Some),
    ]
}

fn advance() -> impl Strategy<Value = Advance> {
    prop_oneof![
        3 => (0..=2 * LEASE_MS).prop_map(Advance::Ms),
        3 => (0..=LEASE_MS / 5).prop_map(Advance::Ms),
        1 => Just(Advance::Ms(0)),
        2 => (0..PICK, -1i64..=1).prop_map(|(k, delta)| Advance::ToDeadline { k, delta }),
    ]
}

/// The next operation; the weights follow the state so that few steps are
/// wasted (a complete with no claimed task, a claim with nothing pending).
fn op(m: &Model) -> BoxedStrategy<Op> {
    let count = |st: St| m.tasks.iter().filter(|t| t.status == st).count() as u32;
    let (pending, claimed) = (count(St::Pending), count(St::Claimed));
    let failed = count(St::Dead) + count(St::Cancelled) + count(St::Blocked);
    let create = (
        1u8..=3,
        prop::collection::vec(0..PICK, 0..=2),
        prop_oneof![1 => Just(None), 3 => (1u32..=3).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => Just(Some(TASK_BACKOFF))],
        prop_oneof![
            12 => Just(CreateFault::None),
            1 => (0..PICK).prop_map(CreateFault::TakenId),
            1 => Just(CreateFault::MissingDep),
            1 => Just(CreateFault::SelfDep),
        ],
    )
        .prop_map(
            |(priority, deps, max_attempts, backoff, fault)| Op::Create {
                priority,
                deps,
                max_attempts,
                backoff,
                fault,
            },
        );
    let claim = (
        0..AGENTS.len(),
        prop_oneof![4 => Just(None), 1 => task_ref(Prefer::Pending).prop_map(Some)],
        lease(),
    )
        .prop_map(|(agent, named, lease_ms)| Op::Claim {
            agent,
            named,
            lease_ms,
        });
    let held = if claimed > 0 { 4 } else { 1 };
    prop_oneof![
        if m.tasks.len() < 4 { 8 } else { 4 } => create,
        if pending > 0 { 8 } else { 2 } => claim,
        held => (task_ref(Prefer::Claimed), tok(), lease())
            .prop_map(|(task, tok, lease_ms)| Op::Heartbeat { task, tok, lease_ms }),
        2 * held => (task_ref(Prefer::Claimed), tok()).prop_map(|(task, tok)| Op::Complete { task, tok }),
        2 * held => (task_ref(Prefer::Claimed), tok()).prop_map(|(task, tok)| Op::Fail { task, tok }),
        held => (task_ref(Prefer::Claimed), tok()).prop_map(|(task, tok)| Op::Release { task, tok }),
        1 => task_ref(Prefer::Any).prop_map(|task| Op::Cancel { task }),
        if failed > 0 { 3 } else { 1 } => task_ref(Prefer::Failed).prop_map(|task| Op::Retry { task }),
        1 => Just(Op::Reap),
    ]
    .boxed()
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::new()).boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<Transition> {
        (advance(), op(m))
            .prop_map(|(advance, op)| Transition { advance, op })
            .boxed()
    }

    fn apply(mut state: Model, t: &Transition) -> Model {
        let advance_ms = state.resolve_advance(&t.advance);
        state.now += advance_ms as i64;
        let call = state.resolve(&t.op);
        let expect = state.exec(&call);
        state.last = Some(Step {
            advance_ms,
            call,
            expect,
        });
        state
    }
}

// ---------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------

struct Sut {
    _tmp: tempfile::TempDir,
    c: Coordination,
    clock: ManualClock,
}

/// A fresh coordination directory with the test's config (jitter 0,
/// relaxed durability), opened with a manual clock at [`T0_MS`].
fn open_dir() -> Sut {
    let tmp = tempfile::Builder::new()
        .prefix("orchestrate-model-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().join(".coordination");
    Coordination::init(&dir, Some("model test".into())).expect("init");
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read config")).expect("parse config");
    cfg["lease_ms"] = LEASE_MS.into();
    cfg["max_attempts"] = CONFIG_MAX_ATTEMPTS.into();
    cfg["durability"] = "relaxed".into();
    cfg["backoff"] = serde_json::json!({
        "base_ms": CONFIG_BACKOFF.base_ms,
        "factor": CONFIG_BACKOFF.factor as f64,
        "max_ms": CONFIG_BACKOFF.max_ms,
        "jitter": 0.0,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
    let clock = ManualClock::new(chrono::DateTime::from_timestamp_millis(T0_MS).expect("t0"));
    let c = Coordination::open(&dir)
        .expect("open")
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(c.config().backoff.jitter, 0.0);
    Sut {
        _tmp: tmp,
        c,
        clock,
    }
}

fn ms(t: Option<orchestrate::Timestamp>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn err(e: Error) -> Outcome {
    Outcome::Err(e.kind())
}

fn task_outcome(r: orchestrate::Result<Task>) -> Outcome {
    match r {
        Ok(t) => Outcome::Task {
            id: t.id.to_string(),
            status: t.status.as_str(),
        },
        Err(e) => err(e),
    }
}

fn tasks_outcome(r: orchestrate::Result<Vec<Task>>) -> Outcome {
    match r {
        Ok(v) => {
            let mut it = v.into_iter().map(|t| t.id.to_string());
            let first = it.next().unwrap_or_default();
            Outcome::Tasks {
                first,
                rest: it.collect(),
            }
        }
        Err(e) => err(e),
    }
}

fn reason_name(r: NotReadyReason) -> &'static str {
    match r {
        NotReadyReason::Empty => "empty",
        NotReadyReason::WaitingOnDependencies => "waiting_on_dependencies",
        NotReadyReason::BackingOff => "backing_off",
        NotReadyReason::AllClaimed => "all_claimed",
        NotReadyReason::NoMatch => "no_match",
        NotReadyReason::AgentBusy => "agent_busy",
    }
}

impl Sut {
    fn run(&self, call: &Call) -> Outcome {
        let c = &self.c;
        match call {
            Call::Create {
                id,
                priority,
                deps,
                max_attempts,
                backoff,
            } => match c.create(NewTask {
                id: Some(id.clone()),
                description: format!("task {id}"),
                priority: Some(*priority),
                dependencies: deps.clone(),
                max_attempts: *max_attempts,
                backoff: backoff.map(ModelBackoff::to_lib),
                ..Default::default()
            }) {
                Ok(t) => Outcome::Created {
                    id: t.id.to_string(),
                    status: t.status.as_str(),
                },
                Err(e) => err(e),
            },
            Call::Claim {
                agent,
                task,
                lease_ms,
            } => match c.claim(&ClaimRequest {
                agent: agent.clone(),
                task_id: task.clone(),
                tags: Vec::new(),
                lease_ms: *lease_ms,
                only_if_idle: false,
            }) {
                Ok(ClaimOutcome::Claimed(t)) => Outcome::Claimed {
                    id: t.id.to_string(),
                    token: t.fencing_token,
                },
                Ok(ClaimOutcome::NothingReady(nr)) => Outcome::NothingReady {
                    reason: reason_name(nr.reason),
                    next_ready_at: ms(nr.next_ready_at),
                },
                Err(e) => err(e),
            },
            Call::Heartbeat {
                id,
                token,
                lease_ms,
            } => task_outcome(c.heartbeat(id, *token, *lease_ms)),
            Call::Complete { id, token } => task_outcome(c.complete(id, *token, None)),
            Call::Fail { id, token } => task_outcome(c.fail(id, *token, "model test failure")),
            Call::Release { id, token } => task_outcome(c.release(id, *token)),
            Call::Cancel { id } => tasks_outcome(c.cancel(id, None)),
            Call::Retry { id } => tasks_outcome(c.retry(id)),
            Call::Reap => match c.reap() {
                Ok(v) => {
                    let mut v: Vec<_> = v
                        .into_iter()
                        .map(|r| {
                            (
                                r.task_id.to_string(),
                                r.agent_id,
                                r.fencing_token,
                                r.status.as_str(),
                            )
                        })
                        .collect();
                    v.sort();
                    Outcome::Reaped(v)
                }
                Err(e) => err(e),
            },
        }
    }
}

/// The fields the model tracks, from either side.
#[derive(Debug, PartialEq, Eq)]
struct View {
    id: String,
    status: &'static str,
    priority: u8,
    deps: Vec<String>,
    max_attempts: u32,
    attempts: u32,
    fencing_token: u64,
    claimed_by: Option<String>,
    lease_expires_at: Option<i64>,
    not_before: Option<i64>,
    has_error: bool,
}

fn view_of_model(m: &Model, t: &ModelTask) -> View {
    View {
        id: t.id.clone(),
        status: t.status.name(),
        priority: t.priority,
        deps: t.deps.iter().map(|&d| m.tasks[d].id.clone()).collect(),
        max_attempts: t.max_attempts,
        attempts: t.attempts,
        fencing_token: t.token,
        claimed_by: t.claimed_by.clone(),
        lease_expires_at: t.lease_expires_at,
        not_before: t.not_before,
        has_error: t.has_error,
    }
}

fn view_of_task(t: &Task) -> View {
    View {
        id: t.id.to_string(),
        status: t.status.as_str(),
        priority: t.priority,
        deps: t.dependencies.iter().map(|d| d.to_string()).collect(),
        max_attempts: t.max_attempts,
        attempts: t.attempts,
        fencing_token: t.fencing_token,
        claimed_by: t.claimed_by.clone(),
        lease_expires_at: ms(t.lease_expires_at),
        not_before: ms(t.not_before),
        has_error: t.error.is_some(),
    }
}

/// The per-status field invariants of spec 5.8.
fn check_field_invariants(t: &Task) {
    let (holder, lease, not_before, completed_at) = match t.status {
        Status::Pending => (Some(false), Some(false), None, Some(false)),
        Status::Claimed => (Some(true), Some(true), Some(false), Some(false)),
        Status::Completed => (Some(true), Some(false), Some(false), Some(true)),
        Status::Dead => (Some(false), Some(false), Some(false), Some(true)),
        Status::Cancelled => (Some(false), Some(false), None, Some(true)),
        Status::Blocked => (Some(false), Some(false), Some(false), Some(false)),
    };
    let check = |what: &str, want: Option<bool>, has: bool| {
        if let Some(w) = want {
            assert_eq!(has, w, "spec 5.8: {what} of a {} task: {t:#?}", t.status);
        }
    };
    check("claimed_by", holder, t.claimed_by.is_some());
    check("lease_expires_at", lease, t.lease_expires_at.is_some());
    check("not_before", not_before, t.not_before.is_some());
    check("completed_at", completed_at, t.completed_at.is_some());
    if t.fencing_token > 0 && matches!(t.status, Status::Claimed | Status::Completed) {
        assert!(t.claimed_at.is_some(), "spec 5.8: claimed_at: {t:#?}");
    }
    assert!(t.attempts <= t.max_attempts, "spec 5.8: attempts: {t:#?}");
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(_: &Model) -> Sut {
        open_dir()
    }

    fn apply(sut: Sut, model: &Model, _: Transition) -> Sut {
        let step = model.last.as_ref().expect("the model recorded the step");
        sut.clock.advance_ms(step.advance_ms as i64);
        assert_eq!(sut.c.now().timestamp_millis(), model.now, "clocks");
        let got = sut.run(&step.call);
        assert_eq!(
            got,
            step.expect,
            "outcome of {:?} at now = T0 + {} ms (left: library, right: model)",
            step.call,
            model.now - T0_MS
        );
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let listing = sut.c.list().expect("list");
        assert!(
            listing.errors.is_empty(),
            "unreadable tasks: {:?}",
            listing.errors
        );
        for t in &listing.tasks {
            check_field_invariants(t);
        }
        let got: Vec<View> = listing.tasks.iter().map(view_of_task).collect();
        let want: Vec<View> = model
            .tasks
            .iter()
            .map(|t| view_of_model(model, t))
            .collect();
        let after = || {
            format!(
                "after {:?} at now = T0 + {} ms",
                model.last.as_ref().map(|s| &s.call),
                model.now - T0_MS
            )
        };
        assert_eq!(
            got.iter().map(|v| &v.id).collect::<Vec<_>>(),
            want.iter().map(|v| &v.id).collect::<Vec<_>>(),
            "task ids {} (left: library, right: model)",
            after()
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g,
                w,
                "state of task {} {} (left: library, right: model)",
                w.id,
                after()
            );
        }
        // Model invariant (spec 5.6): no pending task has a dependency that
        // is dead, cancelled or blocked.
        for t in &model.tasks {
            if t.status == St::Pending {
                assert!(
                    !t.deps
                        .iter()
                        .any(|&d| model.tasks[d].status.blocks_dependents()),
                    "model: pending {} has a failed dependency",
                    t.id
                );
            }
        }
        let ready = (0..model.tasks.len())
            .filter(|&i| model.is_ready(i))
            .count();
        let status = sut.c.status().expect("status");
        assert_eq!(status.ready, ready, "status().ready");
    }
}

/// Cases from `PROPTEST_CASES`, else [`DEFAULT_CASES`]; failures saved in
/// `tests/model.proptest-regressions`.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::with_cases(cases)
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    /// The library agrees with the model on every outcome and every task's
    /// state after every step.
    #[test]
    fn library_follows_the_model(sequential 1..MAX_STEPS => Sut);
}

/// Spec 5.7: a task whose dependency is dead, cancelled or blocked cannot
/// be retried (retry the dependency first); the refusal changes nothing.
#[test]
fn spec_5_7_retry_is_refused_while_a_dependency_is_cancelled() {
    let sut = open_dir();
    let new = |id: &str, deps: &[&str]| NewTask {
        id: Some(id.into()),
        description: format!("task {id}"),
        dependencies: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    };
    sut.c.create(new("a", &[])).expect("create a");
    sut.c.create(new("b", &["a"])).expect("create b");
    sut.c.cancel("b", None).expect("cancel b");
    sut.c.cancel("a", None).expect("cancel a");
    let before = sut.c.get("b").expect("get b");
    let err = sut.c.retry("b").expect_err("retry of b must be refused");
    assert_eq!(err.kind(), "wrong_state");
    assert!(err.to_string().contains("retry `a` first"), "{err}");
    assert_eq!(
        sut.c.get("b").expect("get b"),
        before,
        "a refusal changes nothing"
    );
    // Retrying the dependency first, then the task, works.
    sut.c.retry("a").expect("retry a");
    sut.c.retry("b").expect("retry b");
    assert_eq!(sut.c.get("b").expect("get b").status, Status::Pending);
}
