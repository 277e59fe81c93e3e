//! Reads that do not grow with history or with the task count (issue 13,
//! items 5 and 6).
//!
//! 1. `orchestrate metrics --json` on a 100-task queue after 1,000 and after
//!    1,000,000 events (synthetic but spec-valid `task_claimed` /
//!    `task_released` lines appended to `events.jsonl`, spec 3.4): the
//!    median of the runs after the first (which writes the checkpoint,
//!    spec 3.7) must be within 2x. The first run's time is printed too.
//! 2. At 10,000 and 100,000 tasks: max RSS of `orchestrate status --json`
//!    (target < 32 MiB at 100,000) and of `orchestrate list --json`
//!    (streamed: about the same at both sizes), per child with wait4(2).
//!
//! Run: `cargo bench --bench history` (`-- --events 100000 --tasks 20000`
//! for a quick one). Exits 1 when a target is missed.

use orchestrate::{BatchIds, ClaimOutcome, ClaimRequest, Coordination, NewTask};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn bin() -> PathBuf {
    // benches run from target/<profile>/deps; the binary is one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("orchestrate")
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A relaxed-durability queue at `dir` with `n` tasks created through the
/// library in batches of 1,000.
fn queue(dir: &Path, n: usize) -> BoxResult<Coordination> {
    Coordination::init(dir, None)?;
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["durability"] = serde_json::Value::from("relaxed");
    std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    let c = Coordination::open(dir)?;
    let mut i = 0;
    while i < n {
        let specs: Vec<NewTask> = (i..n.min(i + 1000))
            .map(|k| NewTask {
                id: Some(format!("t{k:06}")),
                description: format!("task {k}: a description of ordinary length for a task"),
                ..Default::default()
            })
            .collect();
        i += specs.len();
        c.create_batch(specs, BatchIds::Exact)?;
    }
    Ok(c)
}

/// Runs `orchestrate --dir DIR ARGS` with stdout to /dev/null; returns
/// (seconds, max RSS in MiB) of that child alone (wait4).
fn run(dir: &Path, args: &[&str]) -> BoxResult<(f64, f64)> {
    let start = Instant::now();
    let child = Command::new(bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: wait4 on our own child, filling structs we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("orchestrate {args:?} failed (status {status})").into());
    }
    Ok((secs, ru.ru_maxrss as f64 / 1024.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Appends `n` events: claim/release pairs over the 100 tasks, a
/// millisecond apart, ending an hour ago.
fn history(dir: &Path, n: usize) -> BoxResult<()> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("events.jsonl"))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    let start = chrono::Utc::now()
        - chrono::TimeDelta::hours(1)
        - chrono::TimeDelta::milliseconds(n as i64);
    for i in 0..n {
        let t = start + chrono::TimeDelta::milliseconds(i as i64);
        let ts = t.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let id = format!("t{:06}", (i / 2) % 100);
        let token = i / 200 + 1;
        if i % 2 == 0 {
            writeln!(
                out,
                r#"{{"ts":"{ts}","event":"task_claimed","task_id":"{id}","agent_id":"bench","attempt":0,"fencing_token":{token},"from":"pending","to":"claimed","lease_expires_at":"{ts}"}}"#
            )?;
        } else {
            writeln!(
                out,
                r#"{{"ts":"{ts}","event":"task_released","task_id":"{id}","agent_id":"bench","attempt":0,"fencing_token":{token},"from":"claimed","to":"pending"}}"#
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> BoxResult<()> {
    let big_events = arg("--events", 1_000_000);
    let big_tasks = arg("--tasks", 100_000);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base)?;
    let mut failed = false;

    // 1. metrics after 1,000 vs 1,000,000 events.
    let mut med = Vec::new();
    for n in [1_000, big_events] {
        let tmp = tempfile::tempdir_in(base)?;
        let dir = tmp.path().join(".coordination");
        let c = queue(&dir, 100)?;
        // One real claim and complete, so the counters have something.
        if let ClaimOutcome::Claimed(t) = c.claim(&ClaimRequest {
            agent: "bench".into(),
            ..Default::default()
        })? {
            c.complete(t.id.as_str(), t.fencing_token, None)?;
        }
        let t0 = Instant::now();
        history(&dir, n)?;
        let built = t0.elapsed().as_secs_f64();
        let size = std::fs::metadata(dir.join("events.jsonl"))?.len() as f64 / 1048576.0;
        let (first, first_rss) = run(&dir, &["metrics", "--json"])?;
        let mut times = Vec::new();
        let mut rss: f64 = 0.0;
        for _ in 0..15 {
            let (s, r) = run(&dir, &["metrics", "--json"])?;
            times.push(s);
            rss = rss.max(r);
        }
        let m = median(times);
        println!(
            "metrics after {n} events ({size:.1} MiB log, built in {built:.1} s): first run {:.1} ms / {first_rss:.1} MiB (writes the checkpoint), then median {:.1} ms, max RSS {rss:.1} MiB",
            first * 1000.0,
            m * 1000.0
        );
        med.push(m);
    }
    let ratio = med[1] / med[0];
    println!("metrics {big_events} / 1000 events = {ratio:.2} (target <= 2)");
    failed |= ratio > 2.0;

    // 2. status and list --json at 10,000 and 100,000 tasks.
    let mut list_rss = Vec::new();
    for n in [10_000, big_tasks] {
        let tmp = tempfile::tempdir_in(base)?;
        let dir = tmp.path().join(".coordination");
        let t0 = Instant::now();
        queue(&dir, n)?;
        let built = t0.elapsed().as_secs_f64();
        let (ss, sr) = run(&dir, &["status", "--json"])?;
        let (ls, lr) = run(&dir, &["list", "--json"])?;
        println!(
            "{n} tasks (built in {built:.1} s): status {:.2} s / {sr:.1} MiB max RSS; list --json {:.2} s / {lr:.1} MiB",
            ss, ls
        );
        if n == big_tasks {
            println!("status at {n} tasks: {sr:.1} MiB (target < 32)");
            failed |= sr >= 32.0;
        }
        list_rss.push(lr);
    }
    println!(
        "list --json max RSS {big_tasks} / 10000 tasks = {:.2} (streamed: the per-task key of the seq sort grows, the tasks do not)",
        list_rss[1] / list_rss[0]
    );
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
