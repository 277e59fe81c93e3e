//! Claim benchmark: what a claim costs through the library, through the CLI
//! and under contention, side by side with a SQLite baseline
//! (DESIGN.md section 8).
//!
//! ```text
//! cargo bench --bench claim                        # full run (~1.5 min on 2 cores)
//! cargo bench --bench claim -- --quick             # short run for CI
//! cargo bench --bench claim -- --scenario single   # single | cli | contend | all
//! cargo bench --bench claim -- --tasks 20000 --cycles 1500 --rounds 3 --cli-large 50000
//! cargo bench --bench claim -- --priorities 1     # all tasks at one priority (default 10 levels)
//! ```
//!
//! Scenarios (run in the order 1, 3, 2 so that the 100,000-task queue
//! comes last):
//! 1. `single`: durable claim+complete cycles per second in one process with
//!    `--tasks` (10,000) tasks queued, through the library, against SQLite
//!    (WAL, `synchronous=FULL`, one `BEGIN IMMEDIATE` transaction per claim
//!    and per complete), plus the library in `relaxed` durability (not
//!    power-loss safe), complete+claim-next, and durable without the commit
//!    log (`ORCHESTRATE_COMMIT_LOG=0`, spec 4.8: the write path before it).
//!    They run interleaved in `--rounds` rounds; the
//!    median round is reported, with the CPU time per cycle.
//! 2. `cli`: latency of `orchestrate claim --json` (a fresh process per
//!    claim) with 100 and with `--cli-large` (100,000) tasks queued; an
//!    untimed library create after each claim keeps the queue at its size.
//! 3. `contend`: 4, then 16 processes (this executable re-run with the
//!    hidden `--child DIR AGENT`) claim+complete over one durable queue; the
//!    event log is then checked for double claims and lost completions, and
//!    the least-served process's share of an equal share is printed. The
//!    same number of processes then do the same on SQLite (`--child-sqlite
//!    DB AGENT`). One process alone on a quarter of the queue is measured
//!    first, as a same-conditions reference.
//!
//! Queues are created in `relaxed` mode, flushed with sync(2), then switched
//! to the durability measured (by editing `config.json` and re-opening).
//!
//! Bench directories live under the system temp dir when it is on the same
//! file system as this crate (not tmpfs), else under `target/bench-tmp/`;
//! `BENCH_DIR` overrides. They are removed at the end unless `--keep`.
//!
//! A probe of raw create+write+rename times runs at the start and at the
//! end. On ext4 without a journal, every freed inode slows later inode
//! allocations for 1 to 6 minutes, and every atomic write allocates one: the
//! figures drop while anything on the file system has just deleted many
//! files, including the clean-up of a previous run of this bench.

use orchestrate::protocol::events;
use orchestrate::{
    BatchIds, ClaimOutcome, ClaimRequest, Coordination, NewTask, NotReadyReason, Report, Task,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Lease granted by every claim; long enough that nothing expires mid-run.
const LEASE_MS: u64 = 300_000;
/// Numbers of contending processes in scenario 3, one run each.
const PROCS: &[usize] = &[4, 16];

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    scenario: String,
    tasks: usize,
    cycles: usize,
    rounds: usize,
    cli_small: usize,
    cli_large: usize,
    cli_claims: usize,
    contend_tasks: usize,
    keep: bool,
}

impl Opts {
    fn parse(args: &[String]) -> BoxResult<Self> {
        let mut o = Opts {
            quick: false,
            scenario: "all".into(),
            tasks: 10_000,
            cycles: 600,
            rounds: 5,
            cli_small: 100,
            cli_large: 100_000,
            cli_claims: 200,
            contend_tasks: 4_000,
            keep: false,
        };
        // Explicit sizes win over --quick, whatever their order.
        let mut explicit: HashMap<&str, usize> = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = || -> BoxResult<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value").into()),
                }
            };
            match flag {
                // `cargo bench` passes `--bench` to harness-less benches.
                "--bench" => {}
                "--quick" => o.quick = true,
                "--keep" => o.keep = true,
                "--scenario" => o.scenario = value()?,
                "--tasks" => {
                    explicit.insert("tasks", value()?.parse()?);
                }
                "--cycles" => {
                    explicit.insert("cycles", value()?.parse()?);
                }
                "--rounds" => {
                    explicit.insert("rounds", value()?.parse()?);
                }
                "--cli-large" => {
                    explicit.insert("cli_large", value()?.parse()?);
                }
                "--cli-claims" => {
                    explicit.insert("cli_claims", value()?.parse()?);
                }
                "--priorities" => {
                    let n: usize = value()?.parse()?;
                    if !(1..=10).contains(&n) {
                        return Err("--priorities must be 1 to 10".into());
                    }
                    PRIORITIES.store(n, Ordering::Relaxed);
                }
                "--contend-tasks" => {
                    explicit.insert("contend_tasks", value()?.parse()?);
                }
                "-h" | "--help" => {
                    println!("{}", USAGE);
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
            }
        }
        if o.quick {
            o.tasks = 2_000;
            o.cycles = 200;
            o.rounds = 1;
            o.cli_large = 10_000;
            o.cli_claims = 40;
            o.contend_tasks = 400;
        }
        for (k, v) in explicit {
            match k {
                "tasks" => o.tasks = v,
                "cycles" => o.cycles = v,
                "rounds" => o.rounds = v,
                "cli_large" => o.cli_large = v,
                "cli_claims" => o.cli_claims = v,
                _ => o.contend_tasks = v,
            }
        }
        if !["all", "single", "cli", "contend"].contains(&o.scenario.as_str()) {
            return Err(format!("unknown scenario `{}`\n{USAGE}", o.scenario).into());
        }
        o.rounds = o.rounds.max(1);
        let needed = o.rounds * (o.cycles + WARMUP);
        if o.tasks < needed {
            return Err(format!(
                "--tasks {} is too small for {} rounds of {} cycles",
                o.tasks, o.rounds, o.cycles
            )
            .into());
        }
        Ok(o)
    }

    fn runs(&self, s: &str) -> bool {
        self.scenario == "all" || self.scenario == s
    }
}

const USAGE: &str =
    "usage: cargo bench --bench claim -- [--quick] [--scenario all|single|cli|contend]
       [--tasks N] [--cycles N] [--rounds N] [--cli-large N] [--cli-claims N]
       [--contend-tasks N] [--priorities 1-10] [--keep]";

/// Warm-up cycles per variant before the first measured round.
const WARMUP: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child-sqlite") {
        if let Err(e) = child_sqlite(&args[1..]) {
            eprintln!("child: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("--child") {
        if let Err(e) = child(&args[1..]) {
            eprintln!("child: {e}");
            std::process::exit(1);
        }
        return;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts) -> BoxResult<()> {
    let base = bench_base()?;
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("orchestrate-claim-bench-")
        .tempdir_in(&base)?;
    let root = tmp.path().to_path_buf();
    print_env(&root, o);
    let started = Instant::now();
    let probe_start = fs_probe(&root.join("probe-start"))?;
    println!(
        "fs probe:     create+write+rename {:.0} us, with fsync of file and directory {:.0} us (median of {PROBE_N})",
        probe_start.0, probe_start.1
    );
    if probe_start.0 > SLOW_CREATE_US {
        println!(
            "WARNING:      creating a file takes {:.0} us now (about 150 us when the file system is quiet): \
something deleted many files here in the last minutes (the end of a previous run of this bench \
does) or the disk is busy; expect low figures, or wait a minute and run again",
            probe_start.0
        );
    }

    // Order: the scenarios that compare throughput first, the 100,000-task
    // queue last; nothing is deleted before the end (see `fs_probe`).
    let mut single_durable = None;
    if o.runs("single") {
        single_durable = Some(scenario_single(&root, o)?);
    }
    if o.runs("contend") {
        scenario_contend(&root, o, single_durable)?;
    }
    if o.runs("cli") {
        scenario_cli(&root, o)?;
    }

    let probe_end = fs_probe(&root.join("probe-end"))?;
    println!();
    println!("== file system probe (no library code; median of {PROBE_N}) ==");
    println!("{:<44} {:>12} {:>12}", "", "at start us", "at end us");
    println!(
        "{:<44} {:>12.0} {:>12.0}",
        "create+write+rename (relaxed write)", probe_start.0, probe_end.0
    );
    println!(
        "{:<44} {:>12.0} {:>12.0}",
        "create+write+fsync+rename+fsync dir (durable)", probe_start.1, probe_end.1
    );
    println!(
        "total bench time {:.1} s; load now: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    if o.keep {
        let kept = tmp.keep();
        println!("bench directories kept in {}", kept.display());
    } else {
        let files = walk_count(&root);
        let t = Instant::now();
        tmp.close()?;
        // SAFETY: sync(2) has no preconditions. Written-back inode tables
        // shorten ext4's no-journal "recently deleted" window from ~6 to 1 min.
        unsafe { libc::sync() };
        println!(
            "removed {files} bench files in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            n += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Create+write+rename time above which the file system is reported busy.
const SLOW_CREATE_US: f64 = 500.0;

/// Iterations of each file system probe.
const PROBE_N: usize = 300;

/// Times the raw file operations a mutation is made of, without the
/// library: (relaxed, durable) medians in microseconds.
///
/// On ext4 without a journal (as on these machines), allocating an inode
/// skips every free inode of the group that was freed in the last 60 s
/// (360 s while its inode table block is not yet written back), scanning
/// from the start of the group. Every atomic write allocates one inode and
/// frees one, so results depend on how many files anything on this file
/// system deleted in the last minutes; this probe shows that state.
fn fs_probe(dir: &Path) -> BoxResult<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let body = vec![b'x'; 700];
    let mut relaxed = Vec::with_capacity(PROBE_N);
    let mut durable = Vec::with_capacity(PROBE_N);
    for i in 0..2 * PROBE_N {
        let sync = i % 2 == 1;
        let tmp = dir.join(".tmp-write");
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, dir.join(format!("f{}.json", i % 16)))?;
        if sync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        let us = t.elapsed().as_secs_f64() * 1e6;
        if sync {
            durable.push(us);
        } else {
            relaxed.push(us);
        }
    }
    Ok((median(&relaxed), median(&durable)))
}

// ---------------------------------------------------------------- environment

fn bench_base() -> BoxResult<PathBuf> {
    if let Some(d) = std::env::var_os("BENCH_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = std::env::temp_dir();
    let same_fs = match (std::fs::metadata(&tmp), std::fs::metadata(manifest)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    };
    if same_fs && !is_tmpfs(&tmp) {
        Ok(tmp)
    } else {
        Ok(manifest.join("target").join("bench-tmp"))
    }
}

fn is_tmpfs(p: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed, properly sized struct; the path
    // is a valid NUL-terminated string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC
    }
}

/// "none" for ext4 without a journal (from /sys/fs/ext4/<dev>/journal_task).
fn journal_state(dir: &Path) -> String {
    let Some(out) = cmd_line("df", &["--output=source,fstype", &dir.to_string_lossy()]) else {
        return "?".into();
    };
    let Some(line) = out.lines().nth(1) else {
        return "?".into();
    };
    let mut parts = line.split_whitespace();
    let (Some(src), Some(fstype)) = (parts.next(), parts.next()) else {
        return "?".into();
    };
    if fstype != "ext4" {
        return format!("{fstype} (not checked)");
    }
    let dev = src.rsplit('/').next().unwrap_or(src);
    match std::fs::read_to_string(format!("/sys/fs/ext4/{dev}/journal_task")) {
        Ok(s) if s.trim() == "<none>" => "none: ext4 without a journal (inode allocation skips \
inodes freed in the last 1-6 min; see the probe at the end)"
            .into(),
        Ok(s) => format!("ext4 journal thread {}", s.trim()),
        Err(_) => "?".into(),
    }
}

fn cmd_line(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Load average (1/5/15 min) and, where the kernel has PSI, the share of
/// the last 60 s in which some task waited for CPU or for I/O.
fn loadavg() -> String {
    let la = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    let psi = |what: &str| {
        std::fs::read_to_string(format!("/proc/pressure/{what}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("some"))
                    .and_then(|l| l.split_whitespace().find(|f| f.starts_with("avg60=")))
                    .map(|f| format!("{what} {}%", &f[6..]))
            })
    };
    match (psi("cpu"), psi("io")) {
        (Some(c), Some(i)) => format!("{la} (1/5/15 min); pressure avg60: {c}, {i}"),
        _ => format!("{la} (1/5/15 min)"),
    }
}

fn print_env(root: &Path, o: &Opts) {
    println!("== environment ==");
    println!(
        "rustc:        {}",
        cmd_line("rustc", &["-V"]).unwrap_or_else(|| "? (rustc not on PATH)".into())
    );
    println!(
        "cpus:         {} (nproc), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "kernel:       {}",
        cmd_line("uname", &["-sr"]).unwrap_or_else(|| "?".into())
    );
    println!("load:         {} at start", loadavg());
    let manifest = env!("CARGO_MANIFEST_DIR");
    let head = cmd_line("git", &["-C", manifest, "rev-parse", "--short", "HEAD"]);
    let dirty = cmd_line("git", &["-C", manifest, "status", "--porcelain", "src"]).map(|s| {
        if s.is_empty() {
            "clean"
        } else {
            "modified"
        }
    });
    println!(
        "source:       {manifest}, commit {} (src/ {})",
        head.as_deref().unwrap_or("?"),
        dirty.unwrap_or("?")
    );
    println!("bench dir:    {}", root.display());
    println!("fs journal:   {}", journal_state(root));
    if let Some(df) = cmd_line("df", &["-T", &root.to_string_lossy()]) {
        for l in df.lines() {
            println!("  df -T:      {l}");
        }
    }
    println!(
        "mode:         {}, task priorities cycle through 1..={}",
        if o.quick { "--quick" } else { "full" },
        PRIORITIES.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------- helpers

fn new_tasks(prefix: &str, from: usize, n: usize) -> Vec<NewTask> {
    (from..from + n)
        .map(|i| NewTask {
            id: Some(format!("{prefix}{i:06}")),
            description: format!("benchmark task {i}"),
            priority: Some(priority_of(i)),
            ..Default::default()
        })
        .collect()
}

/// Number of priority levels the benchmark tasks cycle through (`--priorities`).
static PRIORITIES: AtomicUsize = AtomicUsize::new(10);

/// Priorities cycle through 1..=`--priorities` (10) so that claims really
/// pick by priority.
fn priority_of(i: usize) -> u8 {
    (i % PRIORITIES.load(Ordering::Relaxed)) as u8 + 1
}

/// Edits `durability` in `config.json` (the handle must be re-opened).
fn set_durability(dir: &Path, mode: &str) -> BoxResult<()> {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["durability"] = serde_json::Value::from(mode);
    let mut bytes = serde_json::to_vec_pretty(&v)?;
    bytes.push(b'\n');
    std::fs::write(&p, bytes)?;
    Ok(())
}

/// A coordination directory with `n` ready tasks, created quickly in relaxed
/// mode, flushed to disk with sync(2), then switched to `mode`.
fn make_queue(dir: &Path, n: usize, mode: &str) -> BoxResult<(Coordination, Duration)> {
    Coordination::init(dir, Some("claim benchmark".into()))?;
    set_durability(dir, "relaxed")?;
    let c = Coordination::open(dir)?;
    let t = Instant::now();
    let created = c.create_batch(new_tasks("t", 0, n), BatchIds::Exact)?;
    let took = t.elapsed();
    assert_eq!(created.len(), n);
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    set_durability(dir, mode)?;
    let c = Coordination::open(dir)?;
    assert_eq!(
        format!("{:?}", c.config().durability).to_lowercase(),
        mode,
        "config edit did not take"
    );
    Ok((c, took))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------- scenario 1

/// One claim+complete loop implementation.
trait Cycler {
    /// One claim then one complete; returns (claim time, complete time).
    fn cycle(&mut self) -> BoxResult<(Duration, Duration)>;
}

struct Ours {
    c: Coordination,
    req: ClaimRequest,
}

impl Ours {
    fn new(c: Coordination, agent: &str) -> Self {
        Ours {
            c,
            req: ClaimRequest {
                agent: agent.into(),
                lease_ms: Some(LEASE_MS),
                ..Default::default()
            },
        }
    }
}

impl Cycler for Ours {
    fn cycle(&mut self) -> BoxResult<(Duration, Duration)> {
        let t0 = Instant::now();
        let t = match self.c.claim(&self.req)? {
            ClaimOutcome::Claimed(t) => t,
            ClaimOutcome::NothingReady(nr) => {
                return Err(format!("queue ran dry: {}", nr.message).into())
            }
        };
        let t1 = Instant::now();
        self.c.complete(t.id.as_str(), t.fencing_token, None)?;
        Ok((t1 - t0, t1.elapsed()))
    }
}

/// Ours as a busy worker runs (`spec` 5.10): each completion claims the
/// next task in the same mutation (`complete --claim-next`), so a cycle is
/// one mutation; the first cycle's claim is a mutation of its own.
struct OursChained {
    c: Coordination,
    req: ClaimRequest,
    held: Option<Task>,
}

impl Cycler for OursChained {
    fn cycle(&mut self) -> BoxResult<(Duration, Duration)> {
        let t0 = Instant::now();
        let t = match self.held.take() {
            Some(t) => t,
            None => match self.c.claim(&self.req)? {
                ClaimOutcome::Claimed(t) => *t,
                ClaimOutcome::NothingReady(nr) => {
                    return Err(format!("queue ran dry: {}", nr.message).into())
                }
            },
        };
        let t1 = Instant::now();
        let (_, next) = self.c.report_and_claim(
            t.id.as_str(),
            t.fencing_token,
            Report::Complete { result: None },
            None,
            &self.req,
            &|| true,
        )?;
        if let Some(ClaimOutcome::Claimed(n)) = next.transpose()? {
            self.held = Some(*n);
        }
        Ok((t1 - t0, t1.elapsed()))
    }
}

/// The SQLite baseline: the same claim and complete, one durable
/// transaction each.
struct Sqlite {
    conn: Connection,
    agent: String,
}

impl Sqlite {
    fn create(path: &Path, n: usize) -> BoxResult<Self> {
        let mut conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        assert_eq!(mode.to_lowercase(), "wal");
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE tasks(
                 id TEXT PRIMARY KEY,
                 seq INTEGER NOT NULL,
                 description TEXT NOT NULL,
                 priority INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 max_attempts INTEGER NOT NULL DEFAULT 3,
                 claimed_by TEXT,
                 fencing_token INTEGER NOT NULL DEFAULT 0,
                 lease_expires_at INTEGER,
                 not_before INTEGER,
                 result TEXT,
                 updated_at INTEGER NOT NULL);
             CREATE INDEX tasks_ready ON tasks(priority, seq) WHERE status = 'pending';
             CREATE INDEX tasks_leases ON tasks(lease_expires_at) WHERE status = 'claimed';
             CREATE TABLE events(
                 ts INTEGER NOT NULL, event TEXT NOT NULL, task_id TEXT,
                 agent_id TEXT, fencing_token INTEGER);",
        )?;
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        assert_eq!(sync, 2, "synchronous must be FULL");
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO tasks(id, seq, description, priority, status, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            )?;
            let now = now_ms();
            for i in 0..n {
                ins.execute(params![
                    format!("t{i:06}"),
                    i as i64,
                    format!("benchmark task {i}"),
                    priority_of(i),
                    now
                ])?;
            }
        }
        tx.commit()?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(Sqlite {
            conn,
            agent: "bench-sqlite".into(),
        })
    }

    /// Claim: lazily reap expired leases (as every mutation of ours does),
    /// pick the most urgent ready pending task, take it with token + 1.
    fn claim(&mut self) -> BoxResult<Option<(String, i64)>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = sqlite_claim(&tx, &self.agent)?;
        tx.commit()?;
        Ok(r)
    }

    /// Complete: check status, token and lease, then mark completed.
    fn complete(&mut self, id: &str, token: i64) -> BoxResult<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        sqlite_complete(&tx, &self.agent, id, token)?;
        tx.commit()?;
        Ok(())
    }

    /// Complete, then claim the next task, in one transaction (the
    /// baseline of [`OursChained`]).
    fn complete_then_claim(&mut self, id: &str, token: i64) -> BoxResult<Option<(String, i64)>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        sqlite_complete(&tx, &self.agent, id, token)?;
        let r = sqlite_claim(&tx, &self.agent)?;
        tx.commit()?;
        Ok(r)
    }
}

/// The claim of [`Sqlite::claim`], inside `tx`.
fn sqlite_claim(tx: &rusqlite::Transaction<'_>, agent: &str) -> BoxResult<Option<(String, i64)>> {
    let now = now_ms();
    {
        tx.prepare_cached(
            "UPDATE tasks SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL,
                 updated_at = ?1
             WHERE status = 'claimed' AND lease_expires_at <= ?1",
        )?
        .execute(params![now])?;
    }
    let picked: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT id, fencing_token FROM tasks
             WHERE status = 'pending' AND (not_before IS NULL OR not_before <= ?1)
             ORDER BY priority, seq LIMIT 1",
        )?
        .query_row(params![now], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((id, token)) = picked else {
        return Ok(None);
    };
    let token = token + 1;
    tx.prepare_cached(
        "UPDATE tasks SET status = 'claimed', claimed_by = ?2, fencing_token = ?3,
             lease_expires_at = ?4, attempts = attempts + 1, updated_at = ?5
         WHERE id = ?1",
    )?
    .execute(params![id, agent, token, now + LEASE_MS as i64, now])?;
    tx.prepare_cached(
        "INSERT INTO events(ts, event, task_id, agent_id, fencing_token)
         VALUES (?1, 'task_claimed', ?2, ?3, ?4)",
    )?
    .execute(params![now, id, agent, token])?;
    Ok(Some((id, token)))
}

/// The completion of [`Sqlite::complete`], inside `tx`: check status,
/// token and lease, then mark completed.
fn sqlite_complete(
    tx: &rusqlite::Transaction<'_>,
    agent: &str,
    id: &str,
    token: i64,
) -> BoxResult<()> {
    let now = now_ms();
    let (status, cur, lease): (String, i64, Option<i64>) = tx
        .prepare_cached("SELECT status, fencing_token, lease_expires_at FROM tasks WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if status != "claimed" || cur != token || lease.is_none_or(|l| l <= now) {
        return Err(format!("sqlite: lease lost on {id}").into());
    }
    tx.prepare_cached(
        "UPDATE tasks SET status = 'completed', lease_expires_at = NULL, result = NULL,
             updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    tx.prepare_cached(
        "INSERT INTO events(ts, event, task_id, agent_id, fencing_token)
         VALUES (?1, 'task_completed', ?2, ?3, ?4)",
    )?
    .execute(params![now, id, agent, token])?;
    Ok(())
}

/// [`Sqlite`] as a busy worker would use it: complete and claim the next
/// in one transaction.
struct SqliteChained {
    db: Sqlite,
    held: Option<(String, i64)>,
}

impl Cycler for SqliteChained {
    fn cycle(&mut self) -> BoxResult<(Duration, Duration)> {
        let t0 = Instant::now();
        let (id, token) = match self.held.take() {
            Some(h) => h,
            None => self.db.claim()?.ok_or("sqlite queue ran dry")?,
        };
        let t1 = Instant::now();
        self.held = self.db.complete_then_claim(&id, token)?;
        Ok((t1 - t0, t1.elapsed()))
    }
}

impl Cycler for Sqlite {
    fn cycle(&mut self) -> BoxResult<(Duration, Duration)> {
        let t0 = Instant::now();
        let (id, token) = self.claim()?.ok_or("sqlite queue ran dry")?;
        let t1 = Instant::now();
        self.complete(&id, token)?;
        Ok((t1 - t0, t1.elapsed()))
    }
}

#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    claim_ms: Vec<f64>,
    complete_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
}

/// CPU time (user + system) this process has used so far, in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills a zeroed struct of the right type.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What one measured run of cycles gave.
struct CycleRun {
    rate: f64,
    claim_ms: f64,
    complete_ms: f64,
    cpu_ms: f64,
}

fn run_cycles(c: &mut dyn Cycler, n: usize) -> BoxResult<CycleRun> {
    let (mut cl, mut co) = (Duration::ZERO, Duration::ZERO);
    let cpu0 = cpu_secs();
    let t = Instant::now();
    for _ in 0..n {
        let (a, b) = c.cycle()?;
        cl += a;
        co += b;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let per = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
    Ok(CycleRun {
        rate: n as f64 / secs,
        claim_ms: per(cl),
        complete_ms: per(co),
        cpu_ms: cpu * 1e3 / n as f64,
    })
}

fn scenario_single(root: &Path, o: &Opts) -> BoxResult<f64> {
    println!();
    println!(
        "== 1. claim+complete cycles/s, one process, {} tasks queued ==",
        o.tasks
    );
    let (durable, t_d) = make_queue(&root.join("single-durable"), o.tasks, "durable")?;
    let (relaxed, t_r) = make_queue(&root.join("single-relaxed"), o.tasks, "relaxed")?;
    let (chained, _) = make_queue(&root.join("single-chained"), o.tasks, "durable")?;
    // The write path before the commit log (spec 4.8): every rewrite
    // fsyncs its file and tasks/. The variable is read when a handle opens.
    std::env::set_var("ORCHESTRATE_COMMIT_LOG", "0");
    let no_log = make_queue(&root.join("single-no-log"), o.tasks, "durable");
    std::env::remove_var("ORCHESTRATE_COMMIT_LOG");
    let (no_log, _) = no_log?;
    std::fs::create_dir_all(root.join("sqlite"))?;
    let t = Instant::now();
    let sqlite = Sqlite::create(&root.join("sqlite").join("bench.db"), o.tasks)?;
    let t_s = t.elapsed();
    let sqlite_chained = Sqlite::create(&root.join("sqlite").join("chained.db"), o.tasks)?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    println!(
        "setup: {} tasks via create_batch in relaxed mode: {:.2} s and {:.2} s ({:.0} tasks/s); sqlite insert {:.2} s",
        o.tasks,
        t_d.as_secs_f64(),
        t_r.as_secs_f64(),
        o.tasks as f64 / t_d.as_secs_f64(),
        t_s.as_secs_f64()
    );

    let mut variants: Vec<(&str, Box<dyn Cycler>, Rounds)> = vec![
        (
            "orchestrate, durable (default)",
            Box::new(Ours::new(durable, "bench-durable")),
            Rounds::default(),
        ),
        (
            "sqlite WAL, synchronous=FULL",
            Box::new(sqlite),
            Rounds::default(),
        ),
        (
            "orchestrate, relaxed (NOT power-loss safe)",
            Box::new(Ours::new(relaxed, "bench-relaxed")),
            Rounds::default(),
        ),
        (
            "orchestrate, durable, complete+claim next",
            Box::new(OursChained {
                c: chained,
                req: ClaimRequest {
                    agent: "bench-chained".into(),
                    lease_ms: Some(LEASE_MS),
                    ..Default::default()
                },
                held: None,
            }),
            Rounds::default(),
        ),
        (
            "sqlite, complete+claim next in one txn",
            Box::new(SqliteChained {
                db: sqlite_chained,
                held: None,
            }),
            Rounds::default(),
        ),
        (
            "orchestrate, durable, no commit log",
            Box::new(Ours::new(no_log, "bench-no-log")),
            Rounds::default(),
        ),
    ];
    for (_, c, _) in variants.iter_mut() {
        run_cycles(c.as_mut(), WARMUP)?;
    }
    for _ in 0..o.rounds {
        for (_, c, r) in variants.iter_mut() {
            let run = run_cycles(c.as_mut(), o.cycles)?;
            r.rates.push(run.rate);
            r.claim_ms.push(run.claim_ms);
            r.complete_ms.push(run.complete_ms);
            r.cpu_ms.push(run.cpu_ms);
        }
    }
    println!(
        "{} round(s) x {} cycles per variant, interleaved, after {} warm-up cycles; median round shown",
        o.rounds, o.cycles, WARMUP
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}   rounds (cycles/s)",
        "variant", "cycles/s", "ms/cycle", "claim ms", "compl. ms", "cpu ms"
    );
    let mut med = Vec::new();
    for (name, _, r) in &variants {
        let m = median(&r.rates);
        med.push(m);
        println!(
            "{:<44} {:>9.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}   {}",
            name,
            m,
            1e3 / m,
            median(&r.claim_ms),
            median(&r.complete_ms),
            median(&r.cpu_ms),
            r.rates
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("(ms columns: wall time per cycle, per claim, per complete; cpu ms: user+system CPU per cycle)");
    for (what, a, b) in [
        ("ours/sqlite, both durable", 0, 1),
        ("ours relaxed/sqlite (unequal safety)", 2, 1),
        ("ours relaxed/durable", 2, 0),
        ("ours chained/sqlite (separate txns)", 3, 1),
        ("ours chained/sqlite chained", 3, 4),
        ("ours durable/no commit log", 0, 5),
        ("ours no commit log/sqlite", 5, 1),
    ] {
        println!("ratio {what:<37} {:.2}", med[a] / med[b]);
    }
    Ok(med[0])
}

// ---------------------------------------------------------------- scenario 2

fn orchestrate_bin() -> BoxResult<PathBuf> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_orchestrate"));
    if p.exists() {
        return Ok(p);
    }
    eprintln!("{} missing; building it", p.display());
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "orchestrate"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    if !st.success() || !p.exists() {
        return Err("cannot build the orchestrate binary".into());
    }
    Ok(p)
}

struct Lat {
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

fn lat(mut v: Vec<f64>) -> Lat {
    v.sort_by(|a, b| a.total_cmp(b));
    Lat {
        median: median(&v),
        p90: percentile(&v, 0.9),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Times `n` runs of `orchestrate claim --json`; after each, one untimed
/// library create keeps the ready queue at its size.
fn cli_claims(
    bin: &Path,
    dir: &Path,
    c: &Coordination,
    n: usize,
    refill: &mut usize,
) -> BoxResult<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    let dir_s = dir.to_string_lossy().to_string();
    for _ in 0..n {
        let t = Instant::now();
        let o = Command::new(bin)
            .args(["claim", "--dir", &dir_s, "--agent", "bench-cli", "--json"])
            .stdin(Stdio::null())
            .output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !o.status.success() {
            return Err(format!(
                "orchestrate claim failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )
            .into());
        }
        out.push(ms);
        c.create_batch(new_tasks("r", *refill, 1), BatchIds::Exact)?;
        *refill += 1;
    }
    Ok(out)
}

fn scenario_cli(root: &Path, o: &Opts) -> BoxResult<()> {
    println!();
    println!(
        "== 2. `orchestrate claim` latency, one process per claim, durable ({} claims per size) ==",
        o.cli_claims
    );
    let bin = orchestrate_bin()?;
    println!("binary: {}", bin.display());
    let mut spawn = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let st = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()?;
        spawn.push(t.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            return Err("orchestrate --version failed".into());
        }
    }
    let mut rows = vec![("spawn only: orchestrate --version".to_string(), lat(spawn))];
    let mut per_size = Vec::new();
    for &n in &[o.cli_small, o.cli_large] {
        let dir = root.join(format!("cli-{n}"));
        let (c, took) = make_queue(&dir, n, "durable")?;
        println!(
            "setup: {n} tasks created in {:.2} s (relaxed batch), then sync(2), then durable",
            took.as_secs_f64()
        );
        // Two untimed claims warm the binary and the page cache.
        let mut refill = 0;
        cli_claims(&bin, &dir, &c, 2, &mut refill)?;
        let v = lat(cli_claims(&bin, &dir, &c, o.cli_claims, &mut refill)?);
        per_size.push(v.median);
        rows.push((format!("claim, {n} tasks queued"), v));
    }
    println!("queue held at its size: an untimed library create follows each timed claim");
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "command", "median ms", "p90 ms", "min ms", "max ms"
    );
    for (name, l) in &rows {
        println!(
            "{:<40} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name, l.median, l.p90, l.min, l.max
        );
    }
    println!(
        "ratio median {}/{}: {:.2}",
        o.cli_large,
        o.cli_small,
        per_size[1] / per_size[0]
    );
    Ok(())
}

// ---------------------------------------------------------------- scenario 3

/// A child's start: says `ready` on `stdout`, then waits for the parent's
/// line on stdin, so that every child starts its loop at once.
fn wait_for_go(stdout: &mut std::io::Stdout) -> BoxResult<()> {
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    Ok(())
}

/// Child process: claim+complete until nothing is pending, then print the
/// number of cycles done.
fn child(args: &[String]) -> BoxResult<()> {
    let [dir, agent] = args else {
        return Err("usage: --child DIR AGENT".into());
    };
    let c = Coordination::open(dir)?;
    let req = ClaimRequest {
        agent: agent.clone(),
        lease_ms: Some(LEASE_MS),
        ..Default::default()
    };
    let mut stdout = std::io::stdout();
    wait_for_go(&mut stdout)?;
    let mut n = 0u64;
    loop {
        match c.claim(&req)? {
            ClaimOutcome::Claimed(t) => {
                c.complete(t.id.as_str(), t.fencing_token, None)?;
                n += 1;
            }
            ClaimOutcome::NothingReady(nr) => match nr.reason {
                NotReadyReason::Empty | NotReadyReason::AllClaimed => break,
                _ => std::thread::sleep(Duration::from_millis(1)),
            },
        }
    }
    writeln!(stdout, "{n}")?;
    Ok(())
}

/// Child process, the SQLite baseline of [`child`]: claim then complete,
/// one `BEGIN IMMEDIATE` transaction each (WAL, `synchronous=FULL`, a 60 s
/// busy timeout), until nothing is pending; prints the cycles done.
fn child_sqlite(args: &[String]) -> BoxResult<()> {
    let [db, agent] = args else {
        return Err("usage: --child-sqlite DB AGENT".into());
    };
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    // synchronous is a per-connection setting.
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    let mut db = Sqlite {
        conn,
        agent: agent.clone(),
    };
    let mut stdout = std::io::stdout();
    wait_for_go(&mut stdout)?;
    let mut n = 0u64;
    while let Some((id, token)) = db.claim()? {
        db.complete(&id, token)?;
        n += 1;
    }
    writeln!(stdout, "{n}")?;
    Ok(())
}

/// Starts `procs` children on `dir`, releases them together, and returns
/// (cycles per child, seconds from release to the last exit).
fn run_children(dir: &Path, procs: usize) -> BoxResult<(Vec<u64>, f64)> {
    run_children_as("--child", dir, procs)
}

/// [`run_children`] with the child's mode flag: `--child` (ours, on a
/// coordination directory) or `--child-sqlite` (on a database file).
fn run_children_as(mode: &str, dir: &Path, procs: usize) -> BoxResult<(Vec<u64>, f64)> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for k in 0..procs {
        let mut ch = Command::new(&exe)
            .arg(mode)
            .arg(dir)
            .arg(format!("agent-{k}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(ch.stdout.take().ok_or("no child stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("child {k} did not start: {line:?}").into());
        }
        children.push((ch, out));
    }
    let t = Instant::now();
    for (ch, _) in children.iter_mut() {
        writeln!(ch.stdin.as_mut().ok_or("no child stdin")?, "go")?;
    }
    let mut per_child = Vec::new();
    for (mut ch, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let st = ch.wait()?;
        if !st.success() {
            return Err(format!("a child failed: {st}").into());
        }
        per_child.push(line.trim().parse::<u64>()?);
    }
    Ok((per_child, t.elapsed().as_secs_f64()))
}

fn scenario_contend(root: &Path, o: &Opts, single: Option<f64>) -> BoxResult<()> {
    // Reference under the same conditions: one child process alone.
    let ref_tasks = (o.contend_tasks / PROCS[0]).max(1);
    let ref_dir = root.join("contend-1proc");
    make_queue(&ref_dir, ref_tasks, "durable")?;
    let (ref_done, ref_secs) = run_children(&ref_dir, 1)?;
    let ref_rate = ref_done.iter().sum::<u64>() as f64 / ref_secs;
    let mut ok = true;
    for &procs in PROCS {
        ok &= contend(root, o, procs, single, (ref_tasks, ref_rate))?;
    }
    if !ok {
        return Err("contention check failed".into());
    }
    Ok(())
}

/// The least-served process's share of an equal share: `min / (sum / n)`.
fn fairness(per_child: &[u64]) -> f64 {
    let total: u64 = per_child.iter().sum();
    let min = per_child.iter().copied().min().unwrap_or(0);
    if total == 0 {
        return 0.0;
    }
    min as f64 / (total as f64 / per_child.len() as f64)
}

/// One contention run with `procs` processes, ours then SQLite's on the
/// same number of tasks; prints the table, returns whether every check
/// held.
fn contend(
    root: &Path,
    o: &Opts,
    procs: usize,
    single: Option<f64>,
    (ref_tasks, ref_rate): (usize, f64),
) -> BoxResult<bool> {
    println!();
    println!(
        "== 3. {procs} processes contending, durable, {} tasks queued ==",
        o.contend_tasks
    );
    let dir = root.join(format!("contend-{procs}"));
    let (c, _) = make_queue(&dir, o.contend_tasks, "durable")?;
    let (per_child, secs) = run_children(&dir, procs)?;
    let total: u64 = per_child.iter().sum();
    let rate = total as f64 / secs;

    // The SQLite baseline: the same number of processes and tasks.
    let db = root.join(format!("sqlite-contend-{procs}.db"));
    drop(Sqlite::create(&db, o.contend_tasks)?);
    let (sq_child, sq_secs) = run_children_as("--child-sqlite", &db, procs)?;
    let sq_total: u64 = sq_child.iter().sum();
    let sq_rate = sq_total as f64 / sq_secs;
    let sq_done: i64 = Connection::open(&db)?.query_row(
        "SELECT count(*) FROM tasks WHERE status = 'completed'",
        [],
        |r| r.get(0),
    )?;

    // Check the history: no (task, token) claimed twice, one completion per task.
    let evs = events::read_all(&c.layout().events())?;
    let mut claims: HashSet<(String, u64)> = HashSet::new();
    let mut double = 0usize;
    let mut claimed_tasks: HashSet<String> = HashSet::new();
    let mut completed: HashMap<String, usize> = HashMap::new();
    for e in &evs {
        let (Some(id), Some(tok)) = (&e.task_id, e.fencing_token) else {
            continue;
        };
        match e.event.as_str() {
            "task_claimed" => {
                if !claims.insert((id.clone(), tok)) {
                    double += 1;
                }
                claimed_tasks.insert(id.clone());
            }
            "task_completed" => *completed.entry(id.clone()).or_default() += 1,
            _ => {}
        }
    }
    let ids: Vec<String> = (0..o.contend_tasks).map(|i| format!("t{i:06}")).collect();
    let not_once = ids
        .iter()
        .filter(|id| completed.get(*id).copied() != Some(1))
        .count();
    let files_done = c
        .list()?
        .tasks
        .iter()
        .filter(|t| t.status == orchestrate::Status::Completed)
        .count();
    let per = |v: &[u64]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };

    println!("{:<44} {:>10}", "measure", "value");
    println!("{:<44} {:>10.0}", "aggregate cycles/s", rate);
    println!("{:<44} {:>10.2}", "wall time s", secs);
    println!("{:<44} {:>10}", "cycles per process", per(&per_child));
    println!(
        "{:<44} {:>10.2}",
        "least-served process / equal share",
        fairness(&per_child)
    );
    println!(
        "{:<44} {:>10.0}   ({:.2} s; per process {}; least-served / equal share {:.2})",
        "sqlite WAL FULL aggregate cycles/s",
        sq_rate,
        sq_secs,
        per(&sq_child),
        fairness(&sq_child)
    );
    println!(
        "{:<44} {:>10.2}",
        "ratio aggregate ours / sqlite",
        rate / sq_rate
    );
    match single {
        Some(s) => println!(
            "{:<44} {:>10.2}   (scenario 1 durable: {s:.0} cycles/s)",
            "ratio aggregate / scenario 1 single process",
            rate / s
        ),
        None => println!("ratio to scenario 1: run scenario `single` too"),
    }
    println!(
        "{:<44} {:>10.2}   (1 child process alone, {ref_tasks} tasks, just before: {ref_rate:.0} cycles/s)",
        "ratio aggregate / 1 process, same conditions",
        rate / ref_rate
    );
    println!(
        "{:<44} {:>10}",
        "task_claimed events / distinct tasks",
        format!("{}/{}", claims.len() + double, claimed_tasks.len())
    );
    println!(
        "{:<44} {:>10}",
        "double claims (same task, same token)", double
    );
    println!(
        "{:<44} {:>10}",
        "tasks without exactly one task_completed", not_once
    );
    println!(
        "{:<44} {:>10}",
        "task files completed",
        format!("{files_done}/{}", o.contend_tasks)
    );
    let ok = double == 0
        && not_once == 0
        && total as usize == o.contend_tasks
        && files_done == o.contend_tasks
        && claimed_tasks.len() == o.contend_tasks
        && sq_total as usize == o.contend_tasks
        && sq_done as usize == o.contend_tasks;
    println!("check: {}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}
