//! Metrics (`spec/PROTOCOL.md` section 16): gauges from the task files,
//! counters and histograms from `events.jsonl`, so every process that asks
//! gets the same numbers. Rendered in the Prometheus text exposition format
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>) or as
//! JSON that also carries the Python orchestrator's field names.

use crate::error::Result;
use crate::protocol::clock::{self, Timestamp};
use crate::protocol::events::{self, Event};
use crate::protocol::task::Status;
use crate::protocol::Coordination;
use chrono::DateTime;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Upper bounds of the histogram buckets, in seconds.
pub const BUCKETS_S: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

/// A cumulative histogram in seconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Count per bucket of [`BUCKETS_S`] (cumulative, as Prometheus wants).
    pub buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS_S.len()];
        }
        let secs = secs.max(0.0);
        for (i, b) in BUCKETS_S.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// Every number `orchestrate metrics` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Tasks per state (every state present).
    pub tasks_by_state: BTreeMap<String, u64>,
    /// Tasks a claim could take now.
    pub ready: u64,
    /// Tasks moved to `archive/` (`spec` 18), which `tasks_by_state` no
    /// longer counts.
    pub archived: u64,
    /// Agents holding at least one live lease.
    pub active_agents: u64,
    /// Counters from the event log.
    pub counters: BTreeMap<String, u64>,
    /// Seconds from becoming claimable (created or put back) to claimed.
    pub wait_seconds: Histogram,
    /// Seconds from claimed to completed, failed or expired.
    pub run_seconds: Histogram,
    /// Completions in the last 60 s.
    pub completed_last_minute: u64,
    /// Completions in the last 3600 s.
    pub completed_last_hour: u64,
    /// Age of the oldest pending task, in seconds.
    pub oldest_pending_age_seconds: f64,
    /// When these numbers were taken.
    pub timestamp: String,
}

fn ts(e: &Event) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(&e.ts)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Version of the checkpoint file this build writes and reads (`spec` 3.7).
pub const CHECKPOINT_VERSION: u64 = 1;

/// A checkpoint is written when at least this many events were read past
/// the previous one, so `metrics` reads at most about this many events of
/// the log however long the history (`spec` 3.7).
pub const CHECKPOINT_EVERY_EVENTS: u64 = 1000;

/// The counters' state as of a position in the event history, kept in
/// `events/checkpoint.json` (`spec` 3.7) so that `metrics` reads only the
/// events after it: its time and memory do not grow with history.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`]; another value: the file is ignored.
    pub version: u64,
    /// Every event before this position is counted in, none after it.
    pub position: events::Position,
    /// When it was written (RFC 3339).
    pub written_at: String,
    /// The counters (`created`, `claims`, ...), as in [`Metrics::counters`].
    pub counters: BTreeMap<String, u64>,
    /// Wait-time histogram so far.
    pub wait_seconds: Histogram,
    /// Run-time histogram so far.
    pub run_seconds: Histogram,
    /// Tasks waiting to be claimed: id to the Unix milliseconds since when.
    pub claimable_since_ms: BTreeMap<String, i64>,
    /// Tasks claimed: id to the Unix milliseconds of the claim.
    pub claimed_at_ms: BTreeMap<String, i64>,
    /// Completions per Unix second, for the seconds within an hour of
    /// `written_at` (throughput over the last minute and hour).
    pub completions_per_second: BTreeMap<i64, u64>,
}

const COUNTERS: [&str; 9] = [
    "created",
    "claims",
    "completions",
    "failures",
    "retries",
    "lease_expiries",
    "dead",
    "cancelled",
    "releases",
];

/// The running fold of events into counters (spec 16.2): what a checkpoint
/// holds. Its memory is bounded by the live tasks and an hour of seconds.
#[derive(Debug, Clone)]
struct Fold {
    counters: BTreeMap<String, u64>,
    wait: Histogram,
    run: Histogram,
    claimable_since: HashMap<String, i64>,
    claimed_at: HashMap<String, i64>,
    completions: BTreeMap<i64, u64>,
}

impl Fold {
    fn new() -> Self {
        Fold {
            counters: COUNTERS.iter().map(|k| (k.to_string(), 0)).collect(),
            wait: Histogram::default(),
            run: Histogram::default(),
            claimable_since: HashMap::new(),
            claimed_at: HashMap::new(),
            completions: BTreeMap::new(),
        }
    }

    fn from_checkpoint(cp: Checkpoint) -> Self {
        let mut f = Fold::new();
        f.counters.extend(cp.counters);
        f.wait = cp.wait_seconds;
        f.run = cp.run_seconds;
        f.claimable_since = cp.claimable_since_ms.into_iter().collect();
        f.claimed_at = cp.claimed_at_ms.into_iter().collect();
        f.completions = cp.completions_per_second;
        f
    }

    fn bump(&mut self, k: &str) {
        *self.counters.entry(k.into()).or_default() += 1
    }

    fn apply(&mut self, e: &Event, now_ms: i64) {
        let (Some(id), Some(t)) = (e.task_id.clone(), ts(e)) else {
            return;
        };
        let t = t.timestamp_millis();
        match e.event.as_str() {
            "task_created" => {
                self.bump("created");
                self.claimable_since.insert(id, t);
            }
            "task_claimed" => {
                self.bump("claims");
                if let Some(since) = self.claimable_since.remove(&id) {
                    self.wait.observe((t - since) as f64 / 1000.0);
                }
                self.claimed_at.insert(id, t);
            }
            "task_completed" | "task_failed" | "task_expired" | "task_released" => {
                match e.event.as_str() {
                    "task_completed" => {
                        self.bump("completions");
                        if now_ms - t <= 3_600_000 {
                            *self.completions.entry(t.div_euclid(1000)).or_default() += 1;
                        }
                    }
                    "task_failed" => self.bump("failures"),
                    "task_expired" => self.bump("lease_expiries"),
                    _ => self.bump("releases"),
                }
                if let Some(start) = self.claimed_at.remove(&id) {
                    if e.event != "task_released" {
                        self.run.observe((t - start) as f64 / 1000.0);
                    }
                }
                if e.to.as_deref() == Some("pending") {
                    if e.event != "task_released" {
                        self.bump("retries");
                    }
                    self.claimable_since.insert(id, t);
                }
            }
            "task_retried" | "task_unblocked" => {
                if e.event == "task_retried" {
                    self.bump("retries");
                }
                self.claimable_since.insert(id, t);
            }
            "task_dead" => {
                self.bump("dead");
                self.claimable_since.remove(&id);
            }
            "task_cancelled" => {
                self.bump("cancelled");
                self.claimable_since.remove(&id);
                self.claimed_at.remove(&id);
            }
            // No longer waiting (blocked: measured again from the unblock;
            // archived: gone), so the maps hold only live tasks.
            "task_blocked" | "task_archived" => {
                self.claimable_since.remove(&id);
                self.claimed_at.remove(&id);
            }
            _ => {}
        }
    }

    /// Completions within `window_ms` of `now_ms` (one-second resolution).
    fn completed_within(&self, now_ms: i64, window_ms: i64) -> u64 {
        self.completions
            .range((now_ms - window_ms).div_euclid(1000)..)
            .map(|(_, n)| n)
            .sum()
    }

    fn checkpoint(&self, position: events::Position, now_ms: i64, now: &Timestamp) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            position,
            written_at: clock::format(now),
            counters: self.counters.clone(),
            wait_seconds: self.wait.clone(),
            run_seconds: self.run.clone(),
            claimable_since_ms: self
                .claimable_since
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            claimed_at_ms: self
                .claimed_at
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            completions_per_second: self
                .completions
                .range((now_ms - 3_600_000).div_euclid(1000)..)
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }
}

/// `events/checkpoint.json` of `c` (`spec` 3.7).
pub fn checkpoint_path(c: &Coordination) -> std::path::PathBuf {
    c.layout().event_segments_dir().join("checkpoint.json")
}

/// Reads the checkpoint and checks it against the history: `None` when it
/// is missing, unreadable, of another version, or ahead of the log (a log
/// truncated or replaced), in which case the whole history is read.
fn load_checkpoint(c: &Coordination) -> Option<Checkpoint> {
    let p = checkpoint_path(c);
    let bytes = crate::protocol::store::read_bytes(&p).ok()??;
    let cp: Checkpoint = serde_json::from_slice(&bytes).ok()?;
    if cp.version != CHECKPOINT_VERSION {
        return None;
    }
    let live = c.layout().events();
    let segs = events::segments(&live).ok()?;
    let live_no = segs.last().copied().unwrap_or(0) + 1;
    let pos = cp.position;
    let len_of = |p: &std::path::Path| {
        crate::protocol::fsroot::symlink_metadata(p)
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let ok = if pos.segment == live_no {
        len_of(&live) >= pos.offset
    } else if pos.segment < live_no {
        // A deleted segment is fine: the checkpoint is why it may go.
        !segs.contains(&pos.segment)
            || len_of(&events::segment_path(&live, pos.segment)) >= pos.offset
    } else {
        false
    };
    ok.then_some(cp)
}

/// Reads the task files, the checkpoint and the events after it, and
/// computes [`Metrics`] (`spec` 16.2, 3.7). When more than
/// [`CHECKPOINT_EVERY_EVENTS`] events were read past the checkpoint, a new
/// one is written (best effort, without the lock: a failure only costs the
/// next reader time).
///
/// # Errors
/// I/O errors reading `tasks/` or the event log.
pub fn collect(c: &Coordination) -> Result<Metrics> {
    // Before `tasks/` is read: see `count_archived`.
    let archived = c.count_archived()?;
    let status = c.status()?;
    let now = c.now();
    let now_ms = now.timestamp_millis();
    let live = c.layout().events();
    let (mut fold, mut reader) = match load_checkpoint(c) {
        Some(cp) => {
            let pos = cp.position;
            (Fold::from_checkpoint(cp), events::LogReader::at(&live, pos))
        }
        None => (Fold::new(), events::LogReader::history(&live)),
    };
    let mut read = 0u64;
    reader.read_events(|e| {
        fold.apply(&e, now_ms);
        read += 1;
        Ok::<(), crate::Error>(())
    })?;
    if read >= CHECKPOINT_EVERY_EVENTS {
        let cp = fold.checkpoint(reader.position(), now_ms, &now);
        let r =
            crate::protocol::store::ensure_dir(&c.layout().event_segments_dir()).and_then(|()| {
                crate::protocol::store::write_atomic(
                    &checkpoint_path(c),
                    &crate::protocol::store::to_pretty(&cp)?,
                    false,
                    false,
                )
            });
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not write the metrics checkpoint");
        }
    }
    Ok(Metrics {
        tasks_by_state: status
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), *v as u64))
            .collect(),
        ready: status.ready as u64,
        archived,
        active_agents: status.agents.len() as u64,
        completed_last_minute: fold.completed_within(now_ms, 60_000),
        completed_last_hour: fold.completed_within(now_ms, 3_600_000),
        counters: fold.counters,
        wait_seconds: fold.wait,
        run_seconds: fold.run,
        oldest_pending_age_seconds: status.oldest_pending_age_ms.unwrap_or(0).max(0) as f64
            / 1000.0,
        timestamp: clock::format(&now),
    })
}

impl Metrics {
    /// The Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP orchestrate_tasks Tasks per state.");
        let _ = writeln!(s, "# TYPE orchestrate_tasks gauge");
        for st in Status::ALL {
            let v = self.tasks_by_state.get(st.as_str()).copied().unwrap_or(0);
            let _ = writeln!(s, "orchestrate_tasks{{state=\"{st}\"}} {v}");
        }
        let gauge = |s: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        };
        gauge(
            &mut s,
            "orchestrate_ready_tasks",
            "Tasks a claim could take now.",
            self.ready as f64,
        );
        gauge(
            &mut s,
            "orchestrate_archived_tasks",
            "Tasks moved to archive/ (not in orchestrate_tasks).",
            self.archived as f64,
        );
        gauge(
            &mut s,
            "orchestrate_active_agents",
            "Agents holding a live lease.",
            self.active_agents as f64,
        );
        gauge(
            &mut s,
            "orchestrate_oldest_pending_age_seconds",
            "Age of the oldest pending task.",
            self.oldest_pending_age_seconds,
        );
        gauge(
            &mut s,
            "orchestrate_throughput_per_minute",
            "Tasks completed in the last minute.",
            self.completed_last_minute as f64,
        );
        gauge(
            &mut s,
            "orchestrate_throughput_per_hour",
            "Tasks completed in the last hour.",
            self.completed_last_hour as f64,
        );
        let helps = [
            ("created", "Tasks created."),
            ("claims", "Claims granted."),
            ("completions", "Tasks completed."),
            ("failures", "Attempts reported failed."),
            (
                "retries",
                "Tasks put back for another attempt (after a failure or expiry, or by retry).",
            ),
            ("lease_expiries", "Leases that expired and were reclaimed."),
            ("dead", "Tasks that exhausted their attempts."),
            ("cancelled", "Tasks cancelled."),
            ("releases", "Tasks given back without spending an attempt."),
        ];
        for (k, help) in helps {
            let name = format!("orchestrate_{k}_total");
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", self.counters.get(k).copied().unwrap_or(0));
        }
        for (name, help, h) in [
            (
                "orchestrate_task_wait_seconds",
                "Time from claimable to claimed.",
                &self.wait_seconds,
            ),
            (
                "orchestrate_task_run_seconds",
                "Time from claimed to completed, failed or expired.",
                &self.run_seconds,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} histogram");
            for (i, b) in BUCKETS_S.iter().enumerate() {
                let v = h.buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {v}");
            }
            let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            // Whole milliseconds: the sum of many f64 seconds prints as
            // `1.0129999999999997` otherwise.
            let _ = writeln!(s, "{name}_sum {}", (h.sum * 1000.0).round() / 1000.0);
            let _ = writeln!(s, "{name}_count {}", h.count);
        }
        s
    }

    /// JSON: our fields plus the Python orchestrator's (`queue_size`,
    /// `throughput`, `timing_seconds`, `agents`, `timestamp`).
    pub fn to_json(&self) -> Value {
        let st = |k: &str| self.tasks_by_state.get(k).copied().unwrap_or(0);
        let total: u64 = self.tasks_by_state.values().sum();
        json!({
            "version": 1,
            "queue_size": {
                "total": total,
                "available": self.ready,
                "claimed": st("claimed"),
                "completed": st("completed"),
                "failed": st("dead"),
            },
            "throughput": {
                "tasks_per_minute": self.completed_last_minute,
                "tasks_per_hour": self.completed_last_hour,
            },
            "timing_seconds": {
                "avg_wait_time": self.wait_seconds.mean(),
                "avg_execution_time": self.run_seconds.mean(),
                "avg_total_time": self.wait_seconds.mean() + self.run_seconds.mean(),
                "oldest_pending_age": self.oldest_pending_age_seconds,
            },
            "agents": { "active": self.active_agents },
            "timestamp": self.timestamp,
            "tasks_by_state": self.tasks_by_state,
            "ready": self.ready,
            "archived": self.archived,
            "counters": self.counters,
            "histograms": {
                "bucket_bounds_seconds": BUCKETS_S,
                "task_wait_seconds": self.wait_seconds,
                "task_run_seconds": self.run_seconds,
            },
        })
    }
}
