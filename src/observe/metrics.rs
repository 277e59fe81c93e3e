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
#[derive(Debug, Clone, Default, Serialize)]
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

/// Reads the task files and the event log and computes [`Metrics`].
///
/// # Errors
/// I/O errors reading `tasks/` or `events.jsonl`.
pub fn collect(c: &Coordination) -> Result<Metrics> {
    let status = c.status()?;
    let now = c.now();
    let mut counters: BTreeMap<String, u64> = [
        "created",
        "claims",
        "completions",
        "failures",
        "retries",
        "lease_expiries",
        "dead",
        "cancelled",
        "releases",
    ]
    .iter()
    .map(|k| (k.to_string(), 0))
    .collect();
    let mut wait = Histogram::default();
    let mut run = Histogram::default();
    let mut claimable_since: HashMap<String, Timestamp> = HashMap::new();
    let mut claimed_at: HashMap<String, Timestamp> = HashMap::new();
    let (mut last_min, mut last_hour) = (0, 0);
    events::for_each(&c.layout().events(), |e| {
        let e = &e;
        let (Some(id), Some(t)) = (e.task_id.clone(), ts(e)) else {
            return;
        };
        let bump = |counters: &mut BTreeMap<String, u64>, k: &str| {
            *counters.entry(k.into()).or_default() += 1
        };
        match e.event.as_str() {
            "task_created" => {
                bump(&mut counters, "created");
                claimable_since.insert(id, t);
            }
            "task_claimed" => {
                bump(&mut counters, "claims");
                if let Some(since) = claimable_since.remove(&id) {
                    wait.observe(clock::ms_between(since, t) as f64 / 1000.0);
                }
                claimed_at.insert(id, t);
            }
            "task_completed" | "task_failed" | "task_expired" | "task_released" => {
                match e.event.as_str() {
                    "task_completed" => {
                        bump(&mut counters, "completions");
                        let age = clock::ms_between(t, now);
                        if age <= 60_000 {
                            last_min += 1;
                        }
                        if age <= 3_600_000 {
                            last_hour += 1;
                        }
                    }
                    "task_failed" => bump(&mut counters, "failures"),
                    "task_expired" => bump(&mut counters, "lease_expiries"),
                    _ => bump(&mut counters, "releases"),
                }
                if let Some(start) = claimed_at.remove(&id) {
                    if e.event != "task_released" {
                        run.observe(clock::ms_between(start, t) as f64 / 1000.0);
                    }
                }
                if e.to.as_deref() == Some("pending") {
                    if e.event != "task_released" {
                        bump(&mut counters, "retries");
                    }
                    claimable_since.insert(id, t);
                }
            }
            "task_retried" | "task_unblocked" => {
                if e.event == "task_retried" {
                    bump(&mut counters, "retries");
                }
                claimable_since.insert(id, t);
            }
            "task_dead" => bump(&mut counters, "dead"),
            "task_cancelled" => bump(&mut counters, "cancelled"),
            _ => {}
        }
    })?;
    Ok(Metrics {
        tasks_by_state: status
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), *v as u64))
            .collect(),
        ready: status.ready as u64,
        active_agents: status.agents.len() as u64,
        counters,
        wait_seconds: wait,
        run_seconds: run,
        completed_last_minute: last_min,
        completed_last_hour: last_hour,
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
            "counters": self.counters,
            "histograms": {
                "bucket_bounds_seconds": BUCKETS_S,
                "task_wait_seconds": self.wait_seconds,
                "task_run_seconds": self.run_seconds,
            },
        })
    }
}
