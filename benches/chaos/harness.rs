//! Chaos harness: worker processes claim, heartbeat, complete, fail and
//! release tasks through the library while a killer thread SIGKILLs (and
//! sometimes SIGSTOPs past their lease) random workers; an invariant checker
//! then reads every task file, `events.jsonl` and the workers' own logs.
//!
//! Shared by `benches/chaos.rs` (the big runs) and `tests/chaos.rs` (a small
//! configuration inside `cargo test`) through `#[path]`.
//!
//! # The run
//!
//! 1. `init` a coordination directory under `target/chaos/run-*/coord`, then
//!    edit `config.json` (atomic replace, as the spec allows a person to):
//!    short `lease_ms`, fast backoff (10 ms base, 100 ms cap) and the chosen
//!    `durability`.
//! 2. Create the tasks with `create_batch` (ids `cNNNNNNN`, random priority,
//!    `max_attempts` 1 to 4). With `--claims N`, more waves are created while
//!    the workers run, until about N claims happened.
//! 3. Spawn the workers: this executable again, with the hidden arguments
//!    `--worker DIR AGENT SEED`. Each loops through the library: claim; then
//!    a deliberate stale attempt (sleep past the lease, then complete, fail,
//!    heartbeat or release with the old token: it must be refused with
//!    `lease_lost` or `wrong_state`), or sometimes heartbeat, then complete
//!    (most), fail or release. Nothing ready: sleep and claim again; stop when
//!    the reason is `empty` and the last wave was created.
//! 4. The killer thread sends SIGKILL to a random worker every
//!    `--kill-ms` (20-200 ms) and starts a replacement with a new agent id;
//!    `--pause-pct` of its actions are a SIGSTOP for lease + 100-300 ms
//!    instead (the paused process may hold the lock, or resume and act on a
//!    lease that expired meanwhile: Kleppmann's scenario). For a SIGKILL it
//!    freezes the other workers (SIGSTOP), kills and reaps the victim, takes
//!    the lock without waiting and looks for `tasks/.tmp-write`: seen then,
//!    it is a crash leftover, and on a later look (no kill in between) the
//!    first write into `tasks/` must have removed it. Then it thaws them.
//! 5. Every worker appends one line per successful library call (and per
//!    refusal) to `logs/<agent>.log`, one `write(2)` per line.
//! 6. When every worker has stopped: record whether a kill left
//!    `tasks/.tmp-write`, run `reap`, create one more task (a mutation that
//!    writes a task file, which must remove the leftover), claim and
//!    complete it, run the checker and `orchestrate doctor --json`.
//!
//! # What the checker accepts as "missing, not contradicting"
//!
//! A process killed after its task file was renamed into place and before its
//! events were appended loses those events (spec 3.4, 4.4). The checker never
//! requires an event for a mutation whose process may have died in that
//! window, and never accepts one that contradicts the files or the logs:
//!
//! - A `task_claimed` event may be missing only when its claimer was killed
//!   before it could log the claim: if any worker logged that claim, or the
//!   holder of that token went on to heartbeat, complete, fail or release,
//!   the event must be there. A missing claim whose token later expired
//!   names its holder in `task_expired`: that agent must have been killed.
//! - A `task_completed` event may be missing only when the completing agent
//!   (the file's `claimed_by`) was killed.
//! - `task_expired` and `task_dead` events are written by whichever process
//!   reaped; their loss is counted, not attributed.
//! - A SIGKILL can cut an append short between two pages, and the next
//!   process's line then continues the torn one. The checker salvages the
//!   last `{"ts":` object of such a line and counts it.
//!
//! Everything else is a violation: an event order the state machine cannot
//! produce, a token that goes back, a second completion, an event after a
//! terminal state, a holder event with a token older than the latest claim,
//! a log and event history of one claim that disagree, a task file that does
//! not parse, is missing, or is not `completed` (or `dead` with every attempt
//! spent) at the end.

use orchestrate::protocol::events::LogReader;
use orchestrate::protocol::store;
use orchestrate::{
    BatchIds, ClaimOutcome, ClaimRequest, Coordination, Error, NewTask, NotReadyReason, Report,
    Status, TaskId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Agent id of the parent process (the sentinel task's claimer).
const PARENT_AGENT: &str = "chaos-parent";
/// The task created after the workers stopped, to make one more write.
const SENTINEL: &str = "chaos-sentinel";
/// Marker file in the run directory: no more waves will be created.
const LAST_WAVE: &str = "last-wave";
/// Workers and the parent wait this long for the lock: a SIGSTOPped holder
/// keeps it for up to a second, and a lock timeout is reported as a violation.
const LOCK_TIMEOUT_MS: u64 = 120_000;
/// How many violations get their evidence printed in full.
const EVIDENCE_TASKS: usize = 8;

/// Which entry point runs the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each of the two binaries constructs one variant
pub enum Mode {
    /// `cargo bench --bench chaos`: large defaults, unknown flags are errors.
    Bench,
    /// `cargo test --test chaos`: small defaults, libtest flags ignored.
    Test,
}

/// Run parameters. Also written to `params.json`, which workers read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opts {
    procs: usize,
    tasks: usize,
    claims: Option<u64>,
    lease_ms: u64,
    durability: String,
    kill_min_ms: u64,
    kill_max_ms: u64,
    kills: bool,
    pause_pct: u32,
    stale_permille: u32,
    fail_pct: u32,
    release_pct: u32,
    heartbeat_pct: u32,
    work_max_ms: u64,
    seed: u64,
    dir: Option<PathBuf>,
    keep: bool,
    timeout_s: u64,
    batch: usize,
    check_only: Option<PathBuf>,
    self_test: bool,
}

impl Opts {
    fn defaults(mode: Mode) -> Self {
        let bench = Opts {
            procs: 16,
            tasks: 5_000,
            claims: None,
            lease_ms: 500,
            durability: "durable".into(),
            kill_min_ms: 20,
            kill_max_ms: 200,
            kills: true,
            pause_pct: 10,
            stale_permille: 30,
            fail_pct: 10,
            release_pct: 3,
            heartbeat_pct: 20,
            work_max_ms: 2,
            seed: 0,
            dir: None,
            keep: false,
            timeout_s: 0,
            batch: 250,
            check_only: None,
            self_test: false,
        };
        match mode {
            Mode::Bench => bench,
            Mode::Test => Opts {
                procs: 6,
                tasks: 1_000,
                lease_ms: 400,
                kill_min_ms: 50,
                kill_max_ms: 150,
                stale_permille: 50,
                timeout_s: 150,
                self_test: true,
                ..bench
            },
        }
    }

    fn parse(mode: Mode, args: &[String]) -> BoxResult<Self> {
        let mut o = Opts::defaults(mode);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let takes_value = matches!(
                flag.as_str(),
                "--procs"
                    | "--tasks"
                    | "--claims"
                    | "--lease-ms"
                    | "--durability"
                    | "--kill-ms"
                    | "--pause-pct"
                    | "--stale-permille"
                    | "--fail-pct"
                    | "--release-pct"
                    | "--heartbeat-pct"
                    | "--work-ms"
                    | "--seed"
                    | "--dir"
                    | "--timeout-s"
                    | "--batch"
                    | "--check"
            );
            let val = if takes_value {
                match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?,
                }
            } else {
                String::new()
            };
            let num = |v: &str| -> BoxResult<u64> {
                Ok(v.replace('_', "")
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {v}: {e}"))?)
            };
            match flag.as_str() {
                "--procs" => o.procs = num(&val)?.max(1) as usize,
                "--tasks" => o.tasks = num(&val)?.max(1) as usize,
                "--claims" => o.claims = Some(num(&val)?),
                "--lease-ms" => o.lease_ms = num(&val)?.max(50),
                "--durability" => {
                    if val != "durable" && val != "relaxed" {
                        return Err("--durability is durable or relaxed".into());
                    }
                    o.durability = val;
                }
                "--kill-ms" => {
                    let (a, b) = val.split_once('-').unwrap_or((&val, &val));
                    o.kill_min_ms = num(a)?.max(1);
                    o.kill_max_ms = num(b)?.max(o.kill_min_ms);
                }
                "--no-kill" => o.kills = false,
                "--pause-pct" => o.pause_pct = num(&val)?.min(100) as u32,
                "--stale-permille" => o.stale_permille = num(&val)?.min(1000) as u32,
                "--fail-pct" => o.fail_pct = num(&val)?.min(100) as u32,
                "--release-pct" => o.release_pct = num(&val)?.min(100) as u32,
                "--heartbeat-pct" => o.heartbeat_pct = num(&val)?.min(100) as u32,
                "--work-ms" => o.work_max_ms = num(&val)?,
                "--seed" => o.seed = num(&val)?,
                "--dir" => o.dir = Some(PathBuf::from(val)),
                "--keep" => o.keep = true,
                "--timeout-s" => o.timeout_s = num(&val)?,
                "--batch" => o.batch = num(&val)?.max(1) as usize,
                "--check" => o.check_only = Some(PathBuf::from(val)),
                "--self-test" => o.self_test = true,
                "--bench" => {}
                "-h" | "--help" => {
                    print!("{}", USAGE);
                    std::process::exit(0);
                }
                _ if mode == Mode::Test => {} // libtest flags and filters
                _ => return Err(format!("unknown argument `{a}`\n{USAGE}").into()),
            }
        }
        if o.fail_pct + o.release_pct > 100 {
            return Err("--fail-pct + --release-pct must be at most 100".into());
        }
        if o.seed == 0 {
            o.seed = std::env::var("CHAOS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(rand::random::<u64>)
                | 1;
        }
        if o.timeout_s == 0 {
            let claims = o.claims.unwrap_or(o.tasks as u64 * 13 / 10);
            o.timeout_s = 300 + claims / 20;
        }
        Ok(o)
    }
}

const USAGE: &str = "\
chaos: SIGKILL/SIGSTOP workers while they claim and complete, then check every invariant

  cargo bench --bench chaos -- [--procs 16] [--tasks 5000] [--claims N]
      --procs N            worker processes alive at once (16)
      --tasks N            tasks (per wave with --claims) (5000)
      --claims N           keep creating waves of --tasks until about N claims happened
      --lease-ms N         lease_ms in config.json (500)
      --durability D       durable | relaxed (durable)
      --kill-ms A-B        a chaos action every A to B ms (20-200)
      --no-kill            no chaos actions
      --pause-pct N        % of chaos actions that SIGSTOP past the lease instead of SIGKILL (10)
      --stale-permille N   claims per 1000 held past the lease, then used with the old token (30)
      --fail-pct N         % of claims failed (10); --release-pct N released (3)
      --heartbeat-pct N    % of claims heartbeated once or twice (20)
      --work-ms N          work time per claim, 0 to N ms (2)
      --batch N            tasks per create_batch call (250)
      --seed N             RNG seed (random; also $CHAOS_SEED)
      --timeout-s N        give up (a violation) after N s (300 + claims/20)
      --dir PATH           parent of the run directory (target/chaos)
      --keep               keep the run directory after a clean run
      --check RUN_DIR      only run the checker on a kept run directory
      --self-test          after the run, plant faults one at a time and check each is caught
                           (always on in tests/chaos.rs)
";

/// Entry point of both binaries: dispatches the hidden worker mode, the
/// checker-only mode and the run.
pub fn main(mode: Mode) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker_main(&args[1..]);
    }
    if mode == Mode::Test && !selected_by_libtest_args(&args) {
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse(mode, &args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &opts.check_only {
        Some(run) => check_only(run),
        None => run(&opts, mode),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("chaos: FAILED with {n} violation(s)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chaos: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// In `tests/chaos.rs`, behaves like a libtest binary with one test named
/// `chaos`: `--list` prints it, a name filter or `--skip` that does not
/// select it (`cargo test claim`), or `--ignored`, skips the run.
fn selected_by_libtest_args(args: &[String]) -> bool {
    const NAME: &str = "chaos";
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut ignored, mut list) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exact" => exact = true,
            "--ignored" => ignored = true,
            "--list" => list = true,
            "--skip" => skips.extend(it.next().cloned()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--shuffle-seed"
            | "--report-time" => {
                it.next();
            }
            // Our own flags with a value (`cargo test --test chaos -- --procs 8`).
            "--procs" | "--tasks" | "--claims" | "--lease-ms" | "--durability" | "--kill-ms"
            | "--pause-pct" | "--stale-permille" | "--fail-pct" | "--release-pct"
            | "--heartbeat-pct" | "--work-ms" | "--seed" | "--dir" | "--timeout-s" | "--batch"
            | "--check" => {
                it.next();
            }
            f if f.starts_with('-') => {}
            f => filters.push(f.to_string()),
        }
    }
    let hit = |f: &String| {
        if exact {
            f == NAME
        } else {
            NAME.contains(f.as_str())
        }
    };
    let selected = !ignored
        && (filters.is_empty() || filters.iter().any(hit))
        && !skips.iter().any(|s| {
            if exact {
                s == NAME
            } else {
                NAME.contains(s.as_str())
            }
        });
    if list {
        // cargo-nextest and `cargo test -- --list` ask for the test names.
        if selected {
            println!("{NAME}: test");
        }
        return false;
    }
    if !selected {
        println!("running 0 tests (the chaos test is filtered out)");
    }
    selected
}

// ---------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------

/// One line per call, one `write(2)` per line, no buffering: a SIGKILL
/// loses at most the line of the call in flight.
struct WorkerLog {
    f: File,
}

impl WorkerLog {
    fn open(path: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(WorkerLog { f })
    }

    fn line(&mut self, s: &str) -> std::io::Result<()> {
        let mut b = String::with_capacity(s.len() + 1);
        b.push_str(s);
        b.push('\n');
        self.f.write_all(b.as_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Heartbeat,
    Complete,
    Fail,
    Release,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Heartbeat => "heartbeat",
            Op::Complete => "complete",
            Op::Fail => "fail",
            Op::Release => "release",
        }
    }
}

fn do_op(c: &Coordination, op: Op, id: &str, tok: u64) -> orchestrate::Result<Status> {
    let t = match op {
        Op::Heartbeat => c.heartbeat(id, tok, None)?,
        Op::Complete => c.complete(id, tok, Some(serde_json::Value::from("ok")))?,
        Op::Fail => c.fail(id, tok, "chaos: deliberate failure")?,
        Op::Release => c.release(id, tok)?,
    };
    Ok(t.status)
}

/// The refusals a fenced-off holder must get (spec 6.3).
fn fenced(e: &Error) -> bool {
    matches!(e, Error::LeaseLost { .. } | Error::WrongState { .. })
}

fn success_line(op: Op, id: &str, tok: u64, st: Status) -> String {
    match op {
        Op::Fail => format!("fail {id} {tok} {st}"),
        _ => format!("{} {id} {tok}", op.name()),
    }
}

fn error_line(op: &str, id: &str, tok: &str, e: &Error) -> String {
    let msg = e.to_string().replace('\n', " ");
    format!("error {op} {id} {tok} {} {msg}", e.kind())
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn worker_main(args: &[String]) -> ExitCode {
    let [dir, agent, seed] = args else {
        eprintln!("usage: --worker DIR AGENT SEED");
        return ExitCode::from(2);
    };
    let seed = seed.parse().unwrap_or(1);
    match worker(Path::new(dir), agent, seed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker {agent}: {e}");
            ExitCode::from(70)
        }
    }
}

fn worker(coord: &Path, agent: &str, seed: u64) -> BoxResult<()> {
    let run = coord.parent().ok_or("coordination dir has no parent")?;
    let opts: Opts = serde_json::from_slice(&std::fs::read(run.join("params.json"))?)?;
    let c = Coordination::open(coord)?.with_lock_timeout_ms(LOCK_TIMEOUT_MS);
    let lease = c.config().lease_ms;
    let mut log = WorkerLog::open(&run.join("logs").join(format!("{agent}.log")))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let last_wave = run.join(LAST_WAVE);
    log.line(&format!("start {agent} {}", std::process::id()))?;
    let req = ClaimRequest {
        agent: agent.to_string(),
        ..Default::default()
    };
    // A task claimed in the mutation of the last report (spec 5.10).
    let mut next: Option<(String, u64)> = None;
    loop {
        if let Some((id, tok)) = next.take() {
            log.line(&format!("claim {id} {tok}"))?;
            next = hold(&c, &mut log, &mut rng, &opts, lease, &req, &id, tok)?;
            continue;
        }
        match c.claim(&req) {
            Ok(ClaimOutcome::Claimed(t)) => {
                let id = t.id.to_string();
                let tok = t.fencing_token;
                log.line(&format!("claim {id} {tok}"))?;
                next = hold(&c, &mut log, &mut rng, &opts, lease, &req, &id, tok)?;
            }
            Ok(ClaimOutcome::NothingReady(nr)) => match nr.reason {
                NotReadyReason::Empty if last_wave.exists() => {
                    log.line("exit empty")?;
                    return Ok(());
                }
                NotReadyReason::BackingOff => {
                    let ms = nr
                        .next_ready_at
                        .map(|t| (t - c.now()).num_milliseconds())
                        .unwrap_or(5);
                    sleep_ms(ms.clamp(1, 50) as u64);
                }
                _ => sleep_ms(rng.random_range(5..=25)),
            },
            Err(e) => {
                log.line(&error_line("claim", "-", "-", &e))?;
                sleep_ms(10);
            }
        }
    }
}

/// What a worker does with a task it holds. Half of its completions and
/// failures claim the next task in the same mutation (spec 5.10); that
/// task is returned.
#[allow(clippy::too_many_arguments)]
fn hold(
    c: &Coordination,
    log: &mut WorkerLog,
    rng: &mut StdRng,
    opts: &Opts,
    lease: u64,
    req: &ClaimRequest,
    id: &str,
    tok: u64,
) -> BoxResult<Option<(String, u64)>> {
    if rng.random_range(0..1000) < opts.stale_permille {
        // Deliberately outlive the lease, then act with the old token.
        if rng.random_range(0..100) < opts.heartbeat_pct {
            match c.heartbeat(id, tok, None) {
                Ok(_) => log.line(&format!("heartbeat {id} {tok}"))?,
                Err(e) if fenced(&e) => {
                    log.line(&format!("lost heartbeat {id} {tok} {}", e.kind()))?;
                    return Ok(None);
                }
                Err(e) => {
                    log.line(&error_line("heartbeat", id, &tok.to_string(), &e))?;
                    return Ok(None);
                }
            }
        }
        sleep_ms(lease + rng.random_range(20..=80));
        let op = match rng.random_range(0..10) {
            0..=5 => Op::Complete,
            6 | 7 => Op::Fail,
            8 => Op::Heartbeat,
            _ => Op::Release,
        };
        match do_op(c, op, id, tok) {
            Ok(st) => {
                log.line(&format!("accepted-stale {} {id} {tok}", op.name()))?;
                log.line(&success_line(op, id, tok, st))?;
            }
            Err(e) if fenced(&e) => {
                log.line(&format!("stale {} {id} {tok} {}", op.name(), e.kind()))?
            }
            Err(e) => log.line(&error_line(op.name(), id, &tok.to_string(), &e))?,
        }
        return Ok(None);
    }
    sleep_ms(rng.random_range(0..=opts.work_max_ms));
    if rng.random_range(0..100) < opts.heartbeat_pct {
        for _ in 0..rng.random_range(1..=2) {
            match c.heartbeat(id, tok, None) {
                Ok(_) => log.line(&format!("heartbeat {id} {tok}"))?,
                Err(e) if fenced(&e) => {
                    log.line(&format!("lost heartbeat {id} {tok} {}", e.kind()))?;
                    return Ok(None);
                }
                Err(e) => {
                    log.line(&error_line("heartbeat", id, &tok.to_string(), &e))?;
                    return Ok(None);
                }
            }
            sleep_ms(rng.random_range(0..=opts.work_max_ms));
        }
    }
    let r = rng.random_range(0..100);
    let op = if r < opts.fail_pct {
        Op::Fail
    } else if r < opts.fail_pct + opts.release_pct {
        Op::Release
    } else {
        Op::Complete
    };
    if matches!(op, Op::Complete | Op::Fail) && rng.random_bool(0.5) {
        let report = if op == Op::Complete {
            Report::Complete {
                result: Some(serde_json::Value::from("ok")),
            }
        } else {
            Report::Fail {
                error: "chaos: deliberate failure".into(),
                result: None,
                permanent: false,
            }
        };
        match c.report_and_claim(id, tok, report, None, req, &|| true) {
            Ok((t, claimed)) => {
                log.line(&success_line(op, id, tok, t.status))?;
                match claimed {
                    Some(Ok(ClaimOutcome::Claimed(n))) => {
                        return Ok(Some((n.id.to_string(), n.fencing_token)))
                    }
                    Some(Err(e)) => log.line(&error_line("claim", "-", "-", &e))?,
                    _ => {}
                }
            }
            Err(e) if fenced(&e) => {
                log.line(&format!("lost {} {id} {tok} {}", op.name(), e.kind()))?
            }
            Err(e) => log.line(&error_line(op.name(), id, &tok.to_string(), &e))?,
        }
        return Ok(None);
    }
    match do_op(c, op, id, tok) {
        Ok(st) => log.line(&success_line(op, id, tok, st))?,
        Err(e) if fenced(&e) => log.line(&format!("lost {} {id} {tok} {}", op.name(), e.kind()))?,
        Err(e) => log.line(&error_line(op.name(), id, &tok.to_string(), &e))?,
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Parent: setup, workers, killer
// ---------------------------------------------------------------------------

struct Proc {
    agent: String,
    child: Child,
    paused: bool,
}

struct Shared {
    exe: PathBuf,
    run: PathBuf,
    coord: PathBuf,
    seed: u64,
    kids: Mutex<Vec<Proc>>,
    next_agent: AtomicU64,
    stop: AtomicBool,
    kills: AtomicU64,
    pauses: AtomicU64,
    kill_log: Mutex<File>,
    leftovers_seen: AtomicU64,
    leftovers_cleaned: AtomicU64,
    found: Mutex<Vec<Violation>>,
}

/// Watches for `tasks/.tmp-write` left by a SIGKILL, and checks that the
/// next write into `tasks/` removes it (spec 4.2 step 1). Looks only while
/// holding the directory lock (taken without waiting), when no writer can
/// be in the middle of a write, so a temp file seen then is a leftover.
#[derive(Default)]
struct LeftoverWatch {
    /// `tasks/` mtime when a leftover was seen and not yet judged.
    pending: Option<SystemTime>,
}

impl LeftoverWatch {
    /// `judge`: no kill happened since the last look, so a temp file that
    /// is still there after `tasks/` changed was not cleaned by that write.
    fn look(&mut self, sh: &Shared, judge: bool) {
        let Ok(lock) = OpenOptions::new()
            .read(true)
            .write(true)
            .open(sh.coord.join("lock"))
        else {
            return;
        };
        // Judging may wait for the lock (a paused holder is resumed by its
        // own thread); the look right after a kill must not, the others
        // being frozen (one of them may hold the lock).
        let locked = if judge {
            lock.lock().is_ok()
        } else {
            lock.try_lock().is_ok()
        };
        if !locked {
            return;
        }
        let tasks = sh.coord.join("tasks");
        let Ok(mtime) = std::fs::metadata(&tasks).and_then(|m| m.modified()) else {
            return;
        };
        let exists = std::fs::symlink_metadata(tasks.join(".tmp-write")).is_ok();
        if let Some(m0) = self.pending {
            if mtime != m0 {
                if !exists {
                    sh.leftovers_cleaned.fetch_add(1, Ordering::SeqCst);
                } else if judge {
                    sh.found.lock().unwrap_or_else(|e| e.into_inner()).push(Violation::new(
                        None,
                        "tasks/.tmp-write left by a SIGKILL survived a later write into tasks/ (spec 4.2 step 1)".into(),
                    ));
                }
                self.pending = None;
            }
        }
        if self.pending.is_none() && exists {
            sh.leftovers_seen.fetch_add(1, Ordering::SeqCst);
            self.pending = Some(mtime);
        }
        drop(lock);
    }
}

impl Shared {
    /// Starts one worker with a fresh agent id. Caller holds `kids`.
    fn spawn(&self, kids: &mut Vec<Proc>) -> BoxResult<()> {
        let n = self.next_agent.fetch_add(1, Ordering::SeqCst);
        let agent = format!("w{n}");
        let err = File::create(self.run.join("logs").join(format!("{agent}.stderr")))?;
        let child = Command::new(&self.exe)
            .arg("--worker")
            .arg(&self.coord)
            .arg(&agent)
            .arg(mix(self.seed, n).to_string())
            .env_remove("ORCHESTRATE_CRASH_AT")
            .env_remove("ORCHESTRATE_HANG_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()?;
        kids.push(Proc {
            agent,
            child,
            paused: false,
        });
        Ok(())
    }
}

fn mix(seed: u64, n: u64) -> u64 {
    // splitmix64 of seed + n
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn killer(sh: Arc<Shared>, opts: Opts) -> LeftoverWatch {
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, u64::MAX));
    let pause_for = opts.lease_ms;
    let mut watch = LeftoverWatch::default();
    while !sh.stop.load(Ordering::SeqCst) {
        sleep_ms(rng.random_range(opts.kill_min_ms..=opts.kill_max_ms));
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        watch.look(&sh, true);
        let mut kids = sh.kids.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<usize> = (0..kids.len())
            .filter(|&i| matches!(kids[i].child.try_wait(), Ok(None)))
            .collect();
        if live.is_empty() {
            continue;
        }
        let i = live[rng.random_range(0..live.len())];
        let pid = kids[i].child.id() as libc::pid_t;
        if rng.random_range(0..100) < opts.pause_pct && !kids[i].paused {
            kids[i].paused = true;
            let agent = kids[i].agent.clone();
            let ms = pause_for + rng.random_range(100..=300);
            // SAFETY: kill(2) on our own, not yet waited-for child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            sh.pauses.fetch_add(1, Ordering::SeqCst);
            let sh2 = Arc::clone(&sh);
            std::thread::spawn(move || {
                sleep_ms(ms);
                let mut kids = sh2.kids.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = kids.iter_mut().find(|p| p.agent == agent) {
                    p.paused = false;
                    // Not waited for yet (it is still in `kids`), so the pid is ours.
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGCONT) };
                }
            });
        } else {
            let agent = kids[i].agent.clone();
            {
                let mut kl = sh.kill_log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = kl.write_all(format!("{agent}\n").as_bytes());
            }
            // Freeze the others so that none takes the lock between the
            // victim's death and our look: a temp file the victim left is
            // then still there to be seen (and must go with the next write).
            let mut frozen = Vec::new();
            for (j, k) in kids.iter_mut().enumerate() {
                if j != i && !k.paused && matches!(k.child.try_wait(), Ok(None)) {
                    let pid = k.child.id() as libc::pid_t;
                    // SAFETY: kill(2) on our own, not yet waited-for child.
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    frozen.push(pid);
                }
            }
            let _ = kids[i].child.kill();
            // Reap it: its flock is released only once it is gone.
            let _ = kids[i].child.wait();
            watch.look(&sh, false);
            for pid in frozen {
                // SAFETY: as above; none of them has been waited for.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            sh.kills.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = sh.spawn(&mut kids) {
                eprintln!("chaos: could not start a replacement worker: {e}");
            }
        }
    }
    watch
}

/// The directory that holds `target/<profile>/deps/<this exe>`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|p| p.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn is_tmpfs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) with a valid NUL-terminated path and a zeroed buffer.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == 0x0102_1994
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn setup(run: &Path, opts: &Opts) -> BoxResult<Coordination> {
    let coord = run.join("coord");
    Coordination::init(&coord, Some("chaos".into()))?;
    let p = coord.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["lease_ms"] = opts.lease_ms.into();
    v["max_attempts"] = 3.into();
    v["backoff"] = serde_json::json!({"base_ms": 10, "factor": 2.0, "max_ms": 100, "jitter": 0.5});
    v["durability"] = opts.durability.clone().into();
    let mut bytes = serde_json::to_vec_pretty(&v)?;
    bytes.push(b'\n');
    let tmp = coord.join(".config-edit");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &p)?;
    std::fs::write(run.join("params.json"), serde_json::to_vec_pretty(opts)?)?;
    Ok(Coordination::open(&coord)?.with_lock_timeout_ms(LOCK_TIMEOUT_MS))
}

/// Creates `n` tasks in batches of `opts.batch`, appending their ids to
/// `created.txt` once each batch is committed.
fn create_tasks(
    c: &Coordination,
    run: &Path,
    next: &mut u64,
    n: usize,
    opts: &Opts,
    rng: &mut StdRng,
) -> BoxResult<()> {
    let mut created = OpenOptions::new()
        .append(true)
        .create(true)
        .open(run.join("created.txt"))?;
    let mut left = n;
    while left > 0 {
        let k = left.min(opts.batch);
        let specs: Vec<NewTask> = (0..k)
            .map(|_| {
                let id = format!("c{:07}", *next);
                *next += 1;
                let max_attempts = match rng.random_range(0..10) {
                    0 => 1,
                    1 | 2 => 2,
                    3..=7 => 3,
                    _ => 4,
                };
                NewTask {
                    id: Some(id),
                    description: format!("chaos task {next}"),
                    priority: Some(rng.random_range(1..=10)),
                    max_attempts: Some(max_attempts),
                    ..Default::default()
                }
            })
            .collect();
        let tasks = c.create_batch(specs, BatchIds::Exact)?;
        let mut s = String::new();
        for t in &tasks {
            s.push_str(t.id.as_str());
            s.push('\n');
        }
        created.write_all(s.as_bytes())?;
        left -= k;
    }
    Ok(())
}

/// Follows `events.jsonl` for progress and wave control: counts claims,
/// completions and deaths, and the tasks whose last event left them
/// `pending` (substring scans, no JSON parsing).
struct Tail {
    reader: LogReader,
    claimed: u64,
    completed: u64,
    dead: u64,
    pending: HashSet<String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let end = line[at..].find('"')?;
    Some(&line[at..at + end])
}

impl Tail {
    /// A follower of the whole history of `path` (rotated segments too,
    /// `spec` 3.7), from the start.
    fn new(path: &Path) -> Self {
        Tail {
            reader: LogReader::history(path),
            claimed: 0,
            completed: 0,
            dead: 0,
            pending: HashSet::new(),
        }
    }

    fn poll(&mut self) {
        let (reader, counts) = (
            &mut self.reader,
            (
                &mut self.claimed,
                &mut self.completed,
                &mut self.dead,
                &mut self.pending,
            ),
        );
        let (claimed, completed, dead, pending) = counts;
        let _ = reader.read_lines(
            |line| -> std::result::Result<(), orchestrate::error::Error> {
                let line = String::from_utf8_lossy(line);
                match field(&line, "\"event\":\"") {
                    Some("task_claimed") => *claimed += 1,
                    Some("task_completed") => *completed += 1,
                    Some("task_dead") => *dead += 1,
                    _ => {}
                }
                if let (Some(id), Some(to)) =
                    (field(&line, "\"task_id\":\""), field(&line, "\"to\":\""))
                {
                    if to == "pending" {
                        pending.insert(id.to_string());
                    } else {
                        pending.remove(id);
                    }
                }
                Ok(())
            },
        );
    }
}

fn run(opts: &Opts, mode: Mode) -> BoxResult<usize> {
    let t0 = Instant::now();
    let base = opts
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("chaos"));
    let run = base.join(format!("run-{}-{}", unix_ms(), std::process::id()));
    std::fs::create_dir_all(run.join("logs"))?;
    let run = run.canonicalize()?;
    let tmpfs = is_tmpfs(&run);
    println!(
        "chaos: {} procs, {} tasks{}, lease {} ms, durability {}, {}, seed {}",
        opts.procs,
        opts.tasks,
        opts.claims
            .map(|c| format!(" per wave until {c} claims"))
            .unwrap_or_default(),
        opts.lease_ms,
        opts.durability,
        if opts.kills {
            format!(
                "a chaos action every {}-{} ms ({}% SIGSTOP past the lease, else SIGKILL)",
                opts.kill_min_ms, opts.kill_max_ms, opts.pause_pct
            )
        } else {
            "no kills".to_string()
        },
        opts.seed
    );
    println!(
        "chaos: run directory {}{}",
        run.display(),
        if tmpfs {
            " (WARNING: tmpfs; fsync costs nothing here)"
        } else {
            ""
        }
    );
    let c = setup(&run, opts)?;
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, u64::MAX - 1));
    let mut next_id = 0u64;
    let first = match opts.claims {
        Some(target) => opts.tasks.min(target.max(1) as usize),
        None => opts.tasks,
    };
    create_tasks(&c, &run, &mut next_id, first, opts, &mut rng)?;
    if opts.claims.is_none() {
        std::fs::write(run.join(LAST_WAVE), b"")?;
    }
    let setup_s = t0.elapsed().as_secs_f64();
    println!("chaos: created {first} tasks in {setup_s:.1} s; starting workers");

    // Workers run a copy of this executable, so that a rebuild of the bench
    // during a long run (cargo replaces the file) cannot stop replacements
    // from starting or mix two builds in one run.
    let exe = run.join("worker-exe");
    std::fs::copy(std::env::current_exe()?, &exe)?;
    let sh = Arc::new(Shared {
        exe,
        run: run.clone(),
        coord: run.join("coord"),
        seed: opts.seed,
        kids: Mutex::new(Vec::new()),
        next_agent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        kills: AtomicU64::new(0),
        pauses: AtomicU64::new(0),
        kill_log: Mutex::new(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(run.join("kills.txt"))?,
        ),
        leftovers_seen: AtomicU64::new(0),
        leftovers_cleaned: AtomicU64::new(0),
        found: Mutex::new(Vec::new()),
    });
    let t_work = Instant::now();
    {
        let mut kids = sh.kids.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..opts.procs {
            sh.spawn(&mut kids)?;
        }
    }
    let killer_handle = if opts.kills {
        let sh2 = Arc::clone(&sh);
        let o2 = opts.clone();
        Some(std::thread::spawn(move || killer(sh2, o2)))
    } else {
        None
    };

    let mut failures: Vec<Violation> = Vec::new();
    let mut tail = Tail::new(&run.join("coord").join("events.jsonl"));
    let mut last_print = Instant::now();
    let mut last_claims = 0u64;
    let mut last_progress = Instant::now();
    let mut last_wave_done = opts.claims.is_none();
    let mut created_total = first as u64;
    let mut stalled = false;
    loop {
        sleep_ms(50);
        let live = {
            let mut kids = sh.kids.lock().unwrap_or_else(|e| e.into_inner());
            let mut i = 0;
            while i < kids.len() {
                match kids[i].child.try_wait() {
                    Ok(Some(st)) => {
                        let p = kids.swap_remove(i);
                        if let Some(v) = judge_exit(&run, &p.agent, st) {
                            failures.push(v);
                        }
                    }
                    _ => i += 1,
                }
            }
            kids.len()
        };
        if live == 0 {
            break;
        }
        tail.poll();
        if tail.claimed != last_claims {
            last_claims = tail.claimed;
            last_progress = Instant::now();
        }
        if !last_wave_done {
            let target = opts.claims.unwrap_or(0) as f64;
            let terminal = tail.completed + tail.dead;
            let per_task = if terminal > 1000 {
                (tail.claimed as f64 / terminal as f64).max(1.0)
            } else {
                1.25
            };
            let pending = tail.pending.len() as u64;
            let projected = tail.claimed as f64 + pending as f64 * per_task;
            let idle = last_progress.elapsed() > Duration::from_millis(2 * opts.lease_ms + 500);
            if projected >= target {
                std::fs::write(run.join(LAST_WAVE), b"")?;
                last_wave_done = true;
                println!(
                    "chaos: last wave created ({created_total} tasks, {} claims so far)",
                    tail.claimed
                );
            } else if pending < (opts.tasks as u64 / 2).max(opts.procs as u64 * 4) || idle {
                let want = ((target - projected) / per_task).ceil().max(1.0) as usize;
                let n = want.min(opts.tasks);
                create_tasks(&c, &run, &mut next_id, n, opts, &mut rng)?;
                created_total += n as u64;
                last_progress = Instant::now();
            }
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "chaos: {:>6.0} s  claims {}  completed {}  dead {}  kills {}  pauses {}  live {}",
                t_work.elapsed().as_secs_f64(),
                tail.claimed,
                tail.completed,
                tail.dead,
                sh.kills.load(Ordering::SeqCst),
                sh.pauses.load(Ordering::SeqCst),
                live
            );
        }
        if t0.elapsed() > Duration::from_secs(opts.timeout_s) {
            stalled = true;
            break;
        }
    }
    sh.stop.store(true, Ordering::SeqCst);
    // On a stall, kill the workers first: one may hold the lock the
    // killer's last look waits for.
    if stalled {
        let mut kids = sh.kids.lock().unwrap_or_else(|e| e.into_inner());
        for p in kids.iter_mut() {
            let _ = sh
                .kill_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(format!("{}\n", p.agent).as_bytes());
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        failures.push(Violation::new(
            None,
            format!(
                "stalled: the workers had not finished after {} s (--timeout-s); they were killed",
                opts.timeout_s
            ),
        ));
    }
    if let Some(h) = killer_handle {
        if let Ok(mut watch) = h.join() {
            // No kill since its last look: judge what it last saw.
            watch.look(&sh, true);
        }
    }
    let work_s = t_work.elapsed().as_secs_f64();
    failures.append(&mut sh.found.lock().unwrap_or_else(|e| e.into_inner()));
    let kills = sh.kills.load(Ordering::SeqCst);
    let pauses = sh.pauses.load(Ordering::SeqCst);
    let started = sh.next_agent.load(Ordering::SeqCst);

    // Leftovers of the kills, then one more mutation that writes a task file.
    let tmp = run.join("coord").join("tasks").join(".tmp-write");
    let tmp_left = tmp.exists();
    sleep_ms(opts.lease_ms + 50);
    let reaped = c.reap()?;
    let mut plog = WorkerLog::open(&run.join("logs").join(format!("{PARENT_AGENT}.log")))?;
    plog.line(&format!("start {PARENT_AGENT} {}", std::process::id()))?;
    c.create(NewTask {
        id: Some(SENTINEL.into()),
        description: "one more mutation after the chaos".into(),
        ..Default::default()
    })?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("created.txt"))?
        .write_all(format!("{SENTINEL}\n").as_bytes())?;
    let tmp_after = tmp.exists();
    if tmp_after {
        failures.push(Violation::new(
            None,
            "tasks/.tmp-write still exists after one more task write (spec 4.2 step 1)".into(),
        ));
    }
    match c.claim(&ClaimRequest {
        agent: PARENT_AGENT.into(),
        task_id: Some(SENTINEL.into()),
        ..Default::default()
    })? {
        ClaimOutcome::Claimed(t) => {
            plog.line(&format!("claim {} {}", t.id, t.fencing_token))?;
            c.complete(SENTINEL, t.fencing_token, None)?;
            plog.line(&format!("complete {} {}", t.id, t.fencing_token))?;
        }
        ClaimOutcome::NothingReady(nr) => failures.push(Violation::new(
            Some(SENTINEL.into()),
            format!("the sentinel task could not be claimed: {}", nr.message),
        )),
    }
    plog.line("exit done")?;

    let t_check = Instant::now();
    let mut check = check_dir(&run)?;
    failures.append(&mut check.violations);
    check.violations = failures;
    let doctor = run_doctor(&run.join("coord"), &mut check.violations);
    let check_s = t_check.elapsed().as_secs_f64();
    let s = &check.stats;
    let claims = s.claims;

    println!();
    println!("chaos report ({mode:?} configuration, seed {})", opts.seed);
    println!(
        "  config         {} procs, {} tasks created{}, lease_ms {}, durability {}, backoff 10-100 ms",
        opts.procs,
        s.tasks,
        opts.claims
            .map(|c| format!(" (target {c} claims)"))
            .unwrap_or_default(),
        opts.lease_ms,
        opts.durability
    );
    println!(
        "  wall time      {:.1} s total: setup {setup_s:.1} s, workers {work_s:.1} s, check {check_s:.1} s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  claims         {claims} (sum of fencing tokens; {} task_claimed events), {:.0} claims/s",
        s.claim_events,
        claims as f64 / work_s.max(0.001)
    );
    println!(
        "  outcomes       {} completed, {} dead (attempts exhausted)",
        s.completed, s.dead
    );
    println!(
        "  events         {} task_completed, {} task_failed, {} task_expired, {} task_released, {} task_heartbeat, {} task_dead",
        s.completed_events, s.failed_events, s.expired_events, s.released_events, s.heartbeat_events, s.dead_events
    );
    println!(
        "  worker logs    {} claims, {} completes, {} fails, {} releases, {} heartbeats; {} stale-token calls refused as required; {} calls refused after losing the lease otherwise",
        s.log_claims, s.log_completes, s.log_fails, s.log_releases, s.log_heartbeats, s.stale_refused, s.lost
    );
    println!(
        "  chaos          {kills} SIGKILLs, {pauses} SIGSTOP/SIGCONT pauses, {started} worker processes started"
    );
    println!(
        "  lost to kills  (tolerated) {} task_claimed events of killed claimers ({} unattributed), {} task_completed events of killed completers, {} attempt-end events, {} torn event lines ({} salvaged), {} torn log lines",
        s.missing_claim_events, s.unattributed_claim_events, s.missing_completion_events, s.missing_end_events,
        s.torn_event_lines, s.salvaged_event_lines, s.torn_log_lines
    );
    println!(
        "  leftovers      tasks/.tmp-write seen under the lock after a SIGKILL {} times, seen removed by the next write {} times (the rest: another kill came first); after the workers: {}; after one more write: {}; reap at the end reaped {}",
        sh.leftovers_seen.load(Ordering::SeqCst),
        sh.leftovers_cleaned.load(Ordering::SeqCst),
        if tmp_left { "present" } else { "absent" },
        if tmp_after { "PRESENT" } else { "gone" },
        reaped.len()
    );
    println!("  doctor         {doctor}");
    println!("  violations     {}", check.violations.len());
    print_violations(&run, &check.violations);
    let mut n = check.violations.len();
    if opts.self_test {
        let missed = self_test(&run)?;
        for m in &missed {
            println!("SELF-TEST: the checker did not catch: {m}");
        }
        n += missed.len();
    }
    if n == 0 && !opts.keep {
        let _ = std::fs::remove_dir_all(&run);
    } else {
        println!(
            "chaos: kept {} (re-check with `cargo bench --bench chaos -- --check {}`)",
            run.display(),
            run.display()
        );
    }
    Ok(n)
}

fn judge_exit(run: &Path, agent: &str, st: ExitStatus) -> Option<Violation> {
    if st.success() || st.signal() == Some(libc::SIGKILL) {
        // SIGKILL is ours: the kill log says whom we killed, and the
        // checker relies on that list, not on this status.
        return None;
    }
    let err = std::fs::read_to_string(run.join("logs").join(format!("{agent}.stderr")))
        .unwrap_or_default();
    let tail: String = err
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    Some(Violation::agent(
        agent,
        format!("worker {agent} exited with {st}: {tail}"),
    ))
}

fn check_only(run: &Path) -> BoxResult<usize> {
    let mut check = check_dir(run)?;
    let doctor = run_doctor(&run.join("coord"), &mut check.violations);
    let s = &check.stats;
    println!(
        "chaos check of {}: {} tasks, {} claims, {} completed, {} dead; doctor: {doctor}; violations: {}",
        run.display(),
        s.tasks,
        s.claims,
        s.completed,
        s.dead,
        check.violations.len()
    );
    print_violations(run, &check.violations);
    Ok(check.violations.len())
}

/// Runs `orchestrate doctor --json` when the binary has that subcommand.
fn run_doctor(coord: &Path, violations: &mut Vec<Violation>) -> String {
    let bin = env!("CARGO_BIN_EXE_orchestrate");
    let help = Command::new(bin).args(["doctor", "--help"]).output();
    match help {
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("unrecognized subcommand") || err.contains("unexpected argument") {
                return format!(
                    "SKIPPED: `{bin} doctor` does not exist in this build (`doctor --help` exited {})",
                    o.status.code().unwrap_or(-1)
                );
            }
        }
        Err(e) => return format!("SKIPPED: could not run {bin}: {e}"),
        Ok(_) => {}
    }
    match Command::new(bin)
        .arg("--dir")
        .arg(coord)
        .args(["doctor", "--json"])
        .output()
    {
        Ok(o) if o.status.code() == Some(0) => "exit 0 (clean)".to_string(),
        Ok(o) => {
            let out = String::from_utf8_lossy(&o.stdout);
            violations.push(Violation::new(
                None,
                format!(
                    "`orchestrate doctor --json` exited {}: {}{}",
                    o.status.code().unwrap_or(-1),
                    out.chars().take(4000).collect::<String>(),
                    String::from_utf8_lossy(&o.stderr)
                        .chars()
                        .take(1000)
                        .collect::<String>()
                ),
            ));
            format!("exit {} (VIOLATION)", o.status.code().unwrap_or(-1))
        }
        Err(e) => {
            violations.push(Violation::new(None, format!("could not run doctor: {e}")));
            "could not run".into()
        }
    }
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

/// One broken promise, with the task and agent it concerns.
#[derive(Debug, Clone)]
struct Violation {
    task: Option<String>,
    agent: Option<String>,
    what: String,
}

impl Violation {
    fn new(task: Option<String>, what: String) -> Self {
        Violation {
            task,
            agent: None,
            what,
        }
    }
    fn task(task: &str, what: String) -> Self {
        Violation::new(Some(task.to_string()), what)
    }
    fn agent(agent: &str, what: String) -> Self {
        Violation {
            task: None,
            agent: Some(agent.to_string()),
            what,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    tasks: u64,
    completed: u64,
    dead: u64,
    claims: u64,
    claim_events: u64,
    completed_events: u64,
    failed_events: u64,
    expired_events: u64,
    released_events: u64,
    heartbeat_events: u64,
    dead_events: u64,
    log_claims: u64,
    log_completes: u64,
    log_fails: u64,
    log_releases: u64,
    log_heartbeats: u64,
    stale_refused: u64,
    lost: u64,
    missing_claim_events: u64,
    unattributed_claim_events: u64,
    missing_completion_events: u64,
    missing_end_events: u64,
    torn_event_lines: u64,
    salvaged_event_lines: u64,
    torn_log_lines: u64,
}

struct Check {
    violations: Vec<Violation>,
    stats: Stats,
}

/// Interned names (task and agent ids) so that a million claims fit in
/// small maps.
#[derive(Default)]
struct Names {
    map: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.map.insert(s.to_string(), i);
        i
    }
    fn find(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }
    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

/// The final task file, reduced to what the checks need.
struct FileState {
    status: Status,
    token: u64,
    max_attempts: u32,
    claimed_by: Option<String>,
}

/// How a worker's hold of one (task, token) ended, per its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogEnd {
    Open,
    Complete,
    Fail,
    Release,
    Refused,
    Error,
}

struct LogTT {
    agent: u32,
    heartbeats: u32,
    end: LogEnd,
    /// Every call the worker made for this claim returned and was logged.
    settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvEnd {
    Completed,
    Failed,
    Released,
}

#[derive(Default)]
struct EvTT {
    claim_agent: Option<u32>,
    heartbeats: u32,
    end: Option<(EvEnd, Option<u32>)>,
    expired_agent: Option<Option<u32>>,
}

/// Per-task state while walking the event log.
#[derive(Default, Clone)]
struct TaskEv {
    created: u32,
    last_token: u64,
    last_claim: u64,
    ended: Option<u64>,
    completed: u32,
    completion_token: u64,
    completion_agent: Option<u32>,
    dead: bool,
    last_to: Option<String>,
}

#[derive(Deserialize)]
struct Ev {
    #[allow(dead_code)]
    ts: String,
    event: String,
    task_id: Option<String>,
    agent_id: Option<String>,
    attempt: Option<u32>,
    fencing_token: Option<u64>,
    from: Option<String>,
    to: Option<String>,
}

fn parse_event(line: &[u8], stats: &mut Stats) -> Option<Ev> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    if let Ok(e) = serde_json::from_slice::<Ev>(line) {
        return Some(e);
    }
    stats.torn_event_lines += 1;
    // A torn line continued by the next append: keep the last whole object.
    let pat = b"{\"ts\":";
    let at = line.windows(pat.len()).rposition(|w| w == pat)?;
    if at == 0 {
        return None;
    }
    let e = serde_json::from_slice::<Ev>(&line[at..]).ok()?;
    stats.salvaged_event_lines += 1;
    Some(e)
}

fn check_dir(run: &Path) -> BoxResult<Check> {
    let coord = run.join("coord");
    let tasks_dir = coord.join("tasks");
    let mut v: Vec<Violation> = Vec::new();
    let mut st = Stats::default();
    let mut tasks = Names::default();
    let mut agents = Names::default();

    // Created tasks and killed agents.
    let created_txt = std::fs::read_to_string(run.join("created.txt"))?;
    for l in created_txt.lines().filter(|l| !l.is_empty()) {
        tasks.intern(l);
    }
    let n_tasks = tasks.names.len();
    st.tasks = n_tasks as u64;
    let killed: HashSet<String> = std::fs::read_to_string(run.join("kills.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let is_killed = |a: &str| killed.contains(a);

    // 1. Task files: every one parses; every created task has one; none else.
    let mut files: Vec<Option<FileState>> = (0..n_tasks).map(|_| None).collect();
    for ent in std::fs::read_dir(&tasks_dir)? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            if name != ".tmp-write" {
                v.push(Violation::new(
                    None,
                    format!("leftover `tasks/{name}` at the end (a batch intent or unknown hidden file)"),
                ));
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".json") else {
            v.push(Violation::new(
                None,
                format!("unexpected file `tasks/{name}`"),
            ));
            continue;
        };
        let id = match TaskId::new(stem) {
            Ok(id) => id,
            Err(e) => {
                v.push(Violation::new(None, format!("`tasks/{name}`: {e}")));
                continue;
            }
        };
        let t = match store::read_task(&ent.path(), &id) {
            Ok(Some(t)) => t,
            Ok(None) => continue, // renamed away between listing and reading
            Err(e) => {
                v.push(Violation::task(
                    stem,
                    format!("task file does not read: {e}"),
                ));
                continue;
            }
        };
        let Some(ti) = tasks.find(stem) else {
            v.push(Violation::task(
                stem,
                "a task file exists that no create returned".into(),
            ));
            continue;
        };
        // Field invariants of spec 5.8 for the final states.
        let mut bad = Vec::new();
        match t.status {
            Status::Completed => {
                st.completed += 1;
                if t.claimed_by.is_none() || t.fencing_token == 0 || t.completed_at.is_none() {
                    bad.push("completed without claimed_by, a token or completed_at");
                }
                if t.lease_expires_at.is_some() || t.not_before.is_some() {
                    bad.push("completed with a lease or not_before");
                }
            }
            Status::Dead => {
                st.dead += 1;
                if t.attempts != t.max_attempts {
                    v.push(Violation::task(
                        stem,
                        format!(
                            "dead with attempts {} != max_attempts {}",
                            t.attempts, t.max_attempts
                        ),
                    ));
                }
                if t.claimed_by.is_some()
                    || t.lease_expires_at.is_some()
                    || t.completed_at.is_none()
                {
                    bad.push("dead with a holder, a lease or no completed_at");
                }
            }
            s => v.push(Violation::task(
                stem,
                format!(
                    "stuck `{s}` after the workers finished and leases were reaped (lost task)"
                ),
            )),
        }
        if t.attempts > t.max_attempts {
            bad.push("attempts > max_attempts");
        }
        for b in bad {
            v.push(Violation::task(
                stem,
                format!("field invariant broken: {b}"),
            ));
        }
        st.claims += t.fencing_token;
        files[ti as usize] = Some(FileState {
            status: t.status,
            token: t.fencing_token,
            max_attempts: t.max_attempts,
            claimed_by: t.claimed_by.clone(),
        });
    }
    for (i, f) in files.iter().enumerate() {
        if f.is_none()
            && !v
                .iter()
                .any(|x| x.task.as_deref() == Some(tasks.name(i as u32)))
        {
            v.push(Violation::task(
                tasks.name(i as u32),
                "lost task: created, but its file is gone".into(),
            ));
        }
    }

    // 2. Worker logs.
    let mut log_tt: HashMap<(u32, u64), LogTT> = HashMap::new();
    let mut log_completes: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    let mut log_files: Vec<PathBuf> = std::fs::read_dir(run.join("logs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    log_files.sort();
    for path in &log_files {
        let agent_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ai = agents.intern(&agent_name);
        let killed_agent = is_killed(&agent_name);
        let text = std::fs::read(path)?;
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let ends_with_nl = text.last().is_none_or(|&b| b == b'\n');
        let mut cur: Option<(u32, u64)> = None;
        for (ln, raw) in lines.iter().enumerate() {
            let last = ln + 1 == lines.len();
            let line = String::from_utf8_lossy(raw);
            let f: Vec<&str> = line.split(' ').collect();
            let torn = |v: &mut Vec<Violation>, st: &mut Stats| {
                if last && killed_agent && !ends_with_nl {
                    st.torn_log_lines += 1;
                } else {
                    v.push(Violation::agent(
                        &agent_name,
                        format!("unparseable log line {}: `{line}`", ln + 1),
                    ));
                }
            };
            if last && !ends_with_nl {
                torn(&mut v, &mut st);
                break;
            }
            let tt = |i: usize| -> Option<(u32, u64)> {
                let t = tasks.find(f.get(i)?)?;
                let k = f.get(i + 1)?.parse().ok()?;
                Some((t, k))
            };
            match f[0] {
                "start" => {}
                "exit" => {
                    if let Some(key) = cur.take() {
                        if let Some(r) = log_tt.get_mut(&key) {
                            r.settled = true;
                        }
                    }
                }
                "claim" => {
                    let Some(key) = tt(1) else {
                        torn(&mut v, &mut st);
                        continue;
                    };
                    st.log_claims += 1;
                    if let Some(prev) = cur.replace(key) {
                        if let Some(r) = log_tt.get_mut(&prev) {
                            r.settled = true;
                        }
                    }
                    if let Some(other) = log_tt.get(&key) {
                        v.push(Violation::task(
                            tasks.name(key.0),
                            format!(
                                "double claim: token {} was returned to {} and to {}",
                                key.1,
                                agents.name(other.agent),
                                agent_name
                            ),
                        ));
                        continue;
                    }
                    log_tt.insert(
                        key,
                        LogTT {
                            agent: ai,
                            heartbeats: 0,
                            end: LogEnd::Open,
                            settled: false,
                        },
                    );
                }
                "heartbeat" | "complete" | "fail" | "release" | "stale" | "lost"
                | "accepted-stale" | "error" => {
                    let at = if matches!(f[0], "stale" | "lost" | "accepted-stale" | "error") {
                        2
                    } else {
                        1
                    };
                    if f[0] == "error" {
                        v.push(Violation::agent(
                            &agent_name,
                            format!("unexpected library error: `{line}`"),
                        ));
                        if f.get(2) == Some(&"-") {
                            continue;
                        }
                    }
                    let Some(key) = tt(at) else {
                        torn(&mut v, &mut st);
                        continue;
                    };
                    if cur != Some(key) {
                        v.push(Violation::task(
                            tasks.name(key.0),
                            format!(
                                "{agent_name} logged `{line}` for a claim it does not hold (its current claim: {cur:?})"
                            ),
                        ));
                        continue;
                    }
                    let r = log_tt.get_mut(&key).ok_or("log state")?;
                    match f[0] {
                        "heartbeat" => {
                            st.log_heartbeats += 1;
                            r.heartbeats += 1;
                        }
                        "complete" => {
                            st.log_completes += 1;
                            r.end = LogEnd::Complete;
                            r.settled = true;
                            log_completes.entry(key.0).or_default().push((ai, key.1));
                        }
                        "fail" => {
                            st.log_fails += 1;
                            r.end = LogEnd::Fail;
                            r.settled = true;
                        }
                        "release" => {
                            st.log_releases += 1;
                            r.end = LogEnd::Release;
                            r.settled = true;
                        }
                        "stale" | "lost" => {
                            if f[0] == "stale" {
                                st.stale_refused += 1;
                            } else {
                                st.lost += 1;
                            }
                            let kind = f.get(4).copied().unwrap_or("");
                            if kind != "lease_lost" && kind != "wrong_state" {
                                v.push(Violation::task(
                                    tasks.name(key.0),
                                    format!("refused with kind `{kind}`: `{line}`"),
                                ));
                            }
                            r.end = LogEnd::Refused;
                            r.settled = true;
                        }
                        "accepted-stale" => v.push(Violation::task(
                            tasks.name(key.0),
                            format!(
                                "{agent_name} outlived its lease and its `{}` with the stale token {} was ACCEPTED",
                                f[1], key.1
                            ),
                        )),
                        _ => {
                            r.end = LogEnd::Error;
                            r.settled = false;
                        }
                    }
                }
                _ => torn(&mut v, &mut st),
            }
        }
        // A worker that was not killed returned from every call it made.
        if !killed_agent {
            if let Some(key) = cur {
                if let Some(r) = log_tt.get_mut(&key) {
                    if r.end != LogEnd::Error {
                        r.settled = true;
                    }
                }
            }
        }
    }

    // 3. The event log, in file order.
    let mut tev: Vec<TaskEv> = vec![TaskEv::default(); n_tasks];
    let mut ev_tt: HashMap<(u32, u64), EvTT> = HashMap::new();
    // The whole history: rotated segments (`spec` 3.7), then the live log.
    let mut lineno = 0u64;
    LogReader::history(&coord.join("events.jsonl")).read_lines(|line| -> BoxResult<()> {
        lineno += 1;
        let Some(e) = parse_event(line, &mut st) else {
            return Ok(());
        };
        let Some(task_id) = e.task_id.as_deref() else {
            return Ok(());
        };
        let Some(ti) = tasks.find(task_id) else {
            v.push(Violation::task(
                task_id,
                format!(
                    "events:{lineno}: event `{}` for a task no create returned",
                    e.event
                ),
            ));
            return Ok(());
        };
        let k = e.fencing_token.unwrap_or(0);
        let agent = e.agent_id.as_deref().map(|a| agents.intern(a));
        let s = &mut tev[ti as usize];
        let mut bad = |what: String| {
            v.push(Violation::task(
                task_id,
                format!("events:{lineno}: {what}"),
            ))
        };
        if k < s.last_token {
            bad(format!(
                "`{}` with fencing_token {k} after an event with token {}: tokens never decrease",
                e.event, s.last_token
            ));
        }
        if s.completed > 0 {
            bad(format!(
                "`{}` after the task was completed (terminal)",
                e.event
            ));
        } else if s.dead {
            bad(format!(
                "`{}` after the task went dead (nothing here retries)",
                e.event
            ));
        }
        let from_claimed = e.from.as_deref() == Some("claimed");
        match e.event.as_str() {
            "task_created" => {
                s.created += 1;
                if s.created > 1 {
                    bad("second `task_created`".into());
                }
                if k != 0 {
                    bad(format!("created with fencing_token {k}"));
                }
            }
            "task_claimed" => {
                st.claim_events += 1;
                if k <= s.last_claim {
                    bad(format!(
                        "DOUBLE CLAIM: `task_claimed` with token {k}, but token {} was already granted",
                        s.last_claim
                    ));
                }
                if e.from.as_deref() != Some("pending") || e.to.as_deref() != Some("claimed") {
                    bad(format!("`task_claimed` from {:?} to {:?}", e.from, e.to));
                }
                s.last_claim = s.last_claim.max(k);
                s.ended = None;
                let r = ev_tt.entry((ti, k)).or_default();
                if r.claim_agent.is_some() {
                    bad(format!("two `task_claimed` events with token {k}"));
                }
                r.claim_agent = agent;
                if e.attempt.is_some_and(|a| {
                    files[ti as usize]
                        .as_ref()
                        .is_some_and(|f| a > f.max_attempts)
                }) {
                    bad(format!(
                        "claimed as attempt {:?}, beyond max_attempts",
                        e.attempt
                    ));
                }
            }
            "task_heartbeat" | "task_completed" | "task_failed" | "task_released"
            | "task_expired" => {
                let holder_op = e.event != "task_expired";
                match e.event.as_str() {
                    "task_heartbeat" => st.heartbeat_events += 1,
                    "task_completed" => st.completed_events += 1,
                    "task_failed" => st.failed_events += 1,
                    "task_released" => st.released_events += 1,
                    _ => st.expired_events += 1,
                }
                if k < s.last_claim {
                    bad(format!(
                        "STALE TOKEN ACCEPTED: `{}` with token {k} after token {} was granted",
                        e.event, s.last_claim
                    ));
                } else if k > s.last_claim && holder_op {
                    bad(format!(
                        "`{}` by the holder of token {k}, but no `task_claimed` event has that token although its claimer lived on to act",
                        e.event
                    ));
                }
                if s.ended == Some(k) {
                    bad(format!(
                        "`{}` with token {k} after that attempt had already ended",
                        e.event
                    ));
                }
                if e.event != "task_heartbeat" && !from_claimed {
                    bad(format!("`{}` from {:?}", e.event, e.from));
                }
                let r = ev_tt.entry((ti, k)).or_default();
                match e.event.as_str() {
                    "task_heartbeat" => r.heartbeats += 1,
                    "task_expired" => r.expired_agent = Some(agent),
                    name => {
                        let end = match name {
                            "task_completed" => EvEnd::Completed,
                            "task_failed" => EvEnd::Failed,
                            _ => EvEnd::Released,
                        };
                        if r.end.is_some() {
                            bad(format!("a second attempt-ending event for token {k}"));
                        }
                        r.end = Some((end, agent));
                    }
                }
                if holder_op {
                    if let (Some(ca), Some(a)) = (r.claim_agent, agent) {
                        if ca != a {
                            bad(format!(
                                "`{}` names {} as holder of token {k}, which was granted to {}",
                                e.event,
                                agents.name(a),
                                agents.name(ca)
                            ));
                        }
                    }
                }
                if e.event != "task_heartbeat" {
                    s.ended = Some(k);
                }
                if e.event == "task_completed" {
                    s.completed += 1;
                    s.completion_token = k;
                    s.completion_agent = agent;
                }
            }
            "task_dead" => {
                st.dead_events += 1;
                if s.ended != Some(k) || s.last_to.as_deref() != Some("dead") {
                    bad(format!(
                        "`task_dead` with token {k} not right after the failure that exhausted the attempts"
                    ));
                }
                s.dead = true;
            }
            other => bad(format!(
                "unexpected event `{other}` (nothing in this run causes it)"
            )),
        }
        s.last_token = s.last_token.max(k);
        s.last_to = e.to.clone();
        Ok(())
    })?;

    // 4. Per task: events against the final file.
    for ti in 0..n_tasks as u32 {
        let name = tasks.name(ti);
        let s = &tev[ti as usize];
        let Some(f) = &files[ti as usize] else {
            continue;
        };
        if s.created != 1 {
            v.push(Violation::task(
                name,
                format!(
                    "{} `task_created` events (the creator was never killed)",
                    s.created
                ),
            ));
        }
        if s.last_token > f.token {
            v.push(Violation::task(
                name,
                format!(
                    "events carry token {} but the file's fencing_token is {}",
                    s.last_token, f.token
                ),
            ));
        }
        match f.status {
            Status::Completed => {
                if s.completed == 0 {
                    match &f.claimed_by {
                        Some(a) if is_killed(a) => st.missing_completion_events += 1,
                        a => v.push(Violation::task(
                            name,
                            format!(
                                "completed, but no `task_completed` event, and its completer {a:?} was not killed"
                            ),
                        )),
                    }
                } else if s.completion_token != f.token {
                    v.push(Violation::task(
                        name,
                        format!(
                            "`task_completed` with token {} but the file's final token is {}",
                            s.completion_token, f.token
                        ),
                    ));
                } else if s.completion_agent.map(|a| agents.name(a)) != f.claimed_by.as_deref() {
                    v.push(Violation::task(
                        name,
                        format!(
                            "`task_completed` by {:?} but the file says completed by {:?}",
                            s.completion_agent.map(|a| agents.name(a)),
                            f.claimed_by
                        ),
                    ));
                }
                if s.dead {
                    v.push(Violation::task(
                        name,
                        "completed file, dead in events".into(),
                    ));
                }
            }
            Status::Dead => {
                if s.completed > 0 {
                    v.push(Violation::task(
                        name,
                        "dead file, but a `task_completed` event exists".into(),
                    ));
                }
                if !s.dead {
                    st.missing_end_events += 1;
                }
            }
            _ => {}
        }
        // Every token granted: its claim event, or a killed claimer.
        for k in 1..=f.token {
            let r = ev_tt.get(&(ti, k));
            if r.is_some_and(|r| r.claim_agent.is_some()) {
                continue;
            }
            st.missing_claim_events += 1;
            if let Some(l) = log_tt.get(&(ti, k)) {
                v.push(Violation::task(
                    name,
                    format!(
                        "no `task_claimed` event for token {k}, although {} logged that claim (it was alive after the claim returned)",
                        agents.name(l.agent)
                    ),
                ));
                continue;
            }
            match r.and_then(|r| r.expired_agent) {
                Some(Some(a)) if !is_killed(agents.name(a)) => v.push(Violation::task(
                    name,
                    format!(
                        "no `task_claimed` event for token {k}; its lease expired naming {}, which was never killed",
                        agents.name(a)
                    ),
                )),
                Some(Some(_)) => {}
                _ => st.unattributed_claim_events += 1,
            }
        }
        // Attempt ends: a claim superseded without an end event lost one.
        for k in 1..f.token {
            if let Some(r) = ev_tt.get(&(ti, k)) {
                if r.end.is_none() && r.expired_agent.is_none() {
                    st.missing_end_events += 1;
                }
            }
        }
    }

    // 5. Worker logs against events and files.
    let mut tt_keys: Vec<&(u32, u64)> = log_tt.keys().collect();
    tt_keys.sort();
    for key in tt_keys {
        let l = &log_tt[key];
        let (ti, k) = *key;
        let name = tasks.name(ti);
        let an = agents.name(l.agent);
        let r = ev_tt.get(key);
        let mut bad =
            |what: String| v.push(Violation::task(name, format!("{an}, token {k}: {what}")));
        if let Some(f) = &files[ti as usize] {
            if k > f.token {
                bad(format!(
                    "logged a claim of token {k}, beyond the file's token {}",
                    f.token
                ));
            }
            if l.end == LogEnd::Complete
                && (f.status != Status::Completed
                    || f.token != k
                    || f.claimed_by.as_deref() != Some(an))
            {
                bad(format!(
                    "complete was accepted, but the file is {} with token {} by {:?}",
                    f.status, f.token, f.claimed_by
                ));
            }
            if l.settled
                && l.end != LogEnd::Complete
                && f.status == Status::Completed
                && f.token == k
            {
                bad(format!(
                    "the file is completed with this token, but the holder's log says {:?}",
                    l.end
                ));
            }
        }
        if let Some(ca) = r.and_then(|r| r.claim_agent) {
            if ca != l.agent {
                bad(format!(
                    "DOUBLE CLAIM: logged by {an}, but `task_claimed` names {}",
                    agents.name(ca)
                ));
            }
        }
        if !l.settled {
            // Killed while holding: events may go beyond the log.
            if r.map_or(0, |r| r.heartbeats) < l.heartbeats {
                bad("fewer `task_heartbeat` events than logged heartbeats".into());
            }
            continue;
        }
        let ev_hb = r.map_or(0, |r| r.heartbeats);
        if ev_hb != l.heartbeats {
            bad(format!(
                "{} heartbeats accepted per the log, {ev_hb} `task_heartbeat` events",
                l.heartbeats
            ));
        }
        let ev_end = r.and_then(|r| r.end);
        let want = match l.end {
            LogEnd::Complete => Some(EvEnd::Completed),
            LogEnd::Fail => Some(EvEnd::Failed),
            LogEnd::Release => Some(EvEnd::Released),
            _ => None,
        };
        if ev_end.map(|(e, _)| e) != want {
            bad(format!(
                "the holder's log ends {:?}, the events end {:?} (a refused call must change nothing; an accepted one must be recorded)",
                l.end,
                ev_end.map(|(e, _)| e)
            ));
        }
    }
    for (ti, list) in &log_completes {
        if list.len() > 1 {
            v.push(Violation::task(
                tasks.name(*ti),
                format!(
                    "COMPLETED TWICE per the worker logs: {}",
                    list.iter()
                        .map(|(a, k)| format!("{} with token {k}", agents.name(*a)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    // Claims in events whose claimer never logged them must come from a
    // killed claimer (or the parent).
    let mut ev_keys: Vec<(&(u32, u64), &EvTT)> = ev_tt.iter().collect();
    ev_keys.sort_by_key(|(k, _)| **k);
    for (key, r) in ev_keys {
        let Some(ca) = r.claim_agent else { continue };
        if log_tt.contains_key(key) {
            continue;
        }
        let an = agents.name(ca);
        if !is_killed(an) {
            v.push(Violation::task(
                tasks.name(key.0),
                format!(
                    "`task_claimed` token {} for {an}, which never logged it and was not killed (a claim its claimer was not told about)",
                    key.1
                ),
            ));
        }
    }
    Ok(Check {
        violations: v,
        stats: st,
    })
}

/// Prints every violation, and for the first few tasks concerned the
/// evidence: the task file, its events and the worker log lines naming it.
fn print_violations(run: &Path, v: &[Violation]) {
    if v.is_empty() {
        return;
    }
    println!();
    let mut classes: std::collections::BTreeMap<String, usize> = Default::default();
    for x in v {
        let class: String = x
            .what
            .split([':', '('])
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *classes.entry(class.trim().to_string()).or_default() += 1;
    }
    println!("VIOLATION CLASSES:");
    for (class, n) in &classes {
        println!("  {n:>7}  {class}");
    }
    println!("VIOLATIONS ({}):", v.len());
    for x in v.iter().take(200) {
        println!(
            "  - {}{}{}",
            x.task
                .as_deref()
                .map(|t| format!("[task {t}] "))
                .unwrap_or_default(),
            x.agent
                .as_deref()
                .map(|a| format!("[agent {a}] "))
                .unwrap_or_default(),
            x.what
        );
    }
    if v.len() > 200 {
        println!("  ... and {} more", v.len() - 200);
    }
    let ids: BTreeSet<String> = v
        .iter()
        .filter_map(|x| x.task.clone())
        .take(EVIDENCE_TASKS)
        .collect();
    if ids.is_empty() {
        return;
    }
    let coord = run.join("coord");
    let needles: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), format!("\"task_id\":\"{id}\"")))
        .collect();
    let mut ev_lines: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0u64;
    let _ = LogReader::history(&coord.join("events.jsonl")).read_lines(
        |line| -> std::result::Result<(), orchestrate::error::Error> {
            n += 1;
            let s = String::from_utf8_lossy(line);
            for (id, needle) in &needles {
                if s.contains(needle.as_str()) {
                    ev_lines
                        .entry(id.clone())
                        .or_default()
                        .push(format!("{n}: {s}"));
                }
            }
            Ok(())
        },
    );
    let mut log_lines: HashMap<String, Vec<String>> = HashMap::new();
    let killed: HashSet<String> = std::fs::read_to_string(run.join("kills.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    if let Ok(rd) = std::fs::read_dir(run.join("logs")) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_none_or(|x| x != "log") {
                continue;
            }
            let agent = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                for id in &ids {
                    if line.split(' ').any(|w| w == id) {
                        log_lines.entry(id.clone()).or_default().push(format!(
                            "{agent}{}:{}: {line}",
                            if killed.contains(&agent) {
                                " (killed)"
                            } else {
                                ""
                            },
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    for id in &ids {
        println!();
        println!("evidence for task {id}:");
        let p = coord.join("tasks").join(format!("{id}.json"));
        match std::fs::read_to_string(&p) {
            Ok(s) => println!("  file {}:\n{}", p.display(), indent(&s)),
            Err(e) => println!("  file {}: {e}", p.display()),
        }
        println!("  events:");
        for l in ev_lines.get(id).map(Vec::as_slice).unwrap_or_default() {
            println!("    {l}");
        }
        println!("  worker log lines:");
        for l in log_lines.get(id).map(Vec::as_slice).unwrap_or_default() {
            println!("    {l}");
        }
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Self-test: the checker must catch planted faults
// ---------------------------------------------------------------------------

/// Plants one fault, runs the checker, restores the touched files, and
/// tells whether a violation containing `expect` appeared.
fn planted(
    run: &Path,
    name: &str,
    expect: &str,
    touched: &[&Path],
    plant: impl FnOnce() -> BoxResult<()>,
) -> BoxResult<bool> {
    let saved: Vec<(PathBuf, Option<Vec<u8>>)> = touched
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).ok()))
        .collect();
    let before = check_dir(run)?
        .violations
        .iter()
        .filter(|v| v.what.contains(expect))
        .count();
    plant()?;
    let after = check_dir(run)
        .map(|c| {
            c.violations
                .iter()
                .filter(|v| v.what.contains(expect))
                .count()
        })
        .unwrap_or(0);
    for (p, data) in saved {
        match data {
            Some(d) => std::fs::write(&p, d)?,
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let found = after > before;
    println!("  {:<58} {}", name, if found { "caught" } else { "MISSED" });
    Ok(found)
}

/// Plants one fault of each kind the checker claims to catch, one at a
/// time, and returns the ones it missed. Faults whose raw material the run
/// did not produce (no dead task, no task claimed twice) are skipped.
fn self_test(run: &Path) -> BoxResult<Vec<String>> {
    println!();
    println!("checker self-test (each fault planted alone, then undone):");
    let coord = run.join("coord");
    let tasks_dir = coord.join("tasks");
    let events_p = coord.join("events.jsonl");
    let events = std::fs::read_to_string(&events_p)?;
    let listing = Coordination::open(&coord)?.list()?;
    let completed: Vec<&orchestrate::Task> = listing
        .tasks
        .iter()
        .filter(|t| t.status == Status::Completed && t.id.as_str() != SENTINEL)
        .collect();
    if completed.len() < 4 {
        return Err("self-test needs at least 4 completed tasks".into());
    }
    let task_path = |id: &str| tasks_dir.join(format!("{id}.json"));
    let mut missed = Vec::new();
    let mut note = |ok: bool, what: &str| {
        if !ok {
            missed.push(what.to_string());
        }
    };

    // 1. A torn task file.
    let p = task_path(completed[0].id.as_str());
    let ok = planted(
        run,
        "torn task file (cut in half)",
        "task file does not read",
        &[p.as_path()],
        || {
            let b = std::fs::read(&p)?;
            std::fs::write(&p, &b[..b.len() / 2])?;
            Ok(())
        },
    )?;
    note(ok, "torn task file");

    // 2. A lost task.
    let p = task_path(completed[1].id.as_str());
    let ok = planted(
        run,
        "lost task (file removed)",
        "lost task",
        &[p.as_path()],
        || {
            std::fs::remove_file(&p)?;
            Ok(())
        },
    )?;
    note(ok, "lost task");

    // 3. A task stuck pending.
    let p = task_path(completed[2].id.as_str());
    let ok = planted(
        run,
        "task left pending",
        "stuck `pending`",
        &[p.as_path()],
        || {
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
            v["status"] = "pending".into();
            v["claimed_by"] = serde_json::Value::Null;
            v["completed_at"] = serde_json::Value::Null;
            std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
            Ok(())
        },
    )?;
    note(ok, "task left pending");

    // 4. A second completion.
    let done_line = events
        .lines()
        .find(|l| l.contains("\"event\":\"task_completed\"") && !l.contains(SENTINEL))
        .map(str::to_string);
    if let Some(line) = done_line {
        let ok = planted(
            run,
            "task completed twice (event appended)",
            "after the task was completed",
            &[events_p.as_path()],
            || {
                let mut f = OpenOptions::new().append(true).open(&events_p)?;
                f.write_all(format!("{line}\n").as_bytes())?;
                Ok(())
            },
        )?;
        note(ok, "task completed twice");
    }

    // 5. A completion accepted with a stale token.
    let stale = completed
        .iter()
        .filter(|t| t.fencing_token >= 2)
        .find_map(|t| {
            let needle = format!("\"task_id\":\"{}\"", t.id);
            events
                .lines()
                .position(|l| l.contains("\"event\":\"task_completed\"") && l.contains(&needle))
                .map(|i| (i, t.fencing_token))
        });
    match stale {
        Some((i, k)) => {
            let ok = planted(
                run,
                "completion event with the previous token",
                "STALE TOKEN ACCEPTED",
                &[events_p.as_path()],
                || {
                    let out: Vec<String> = events
                        .lines()
                        .enumerate()
                        .map(|(j, l)| {
                            if j == i {
                                l.replace(
                                    &format!("\"fencing_token\":{k},"),
                                    &format!("\"fencing_token\":{},", k - 1),
                                )
                            } else {
                                l.to_string()
                            }
                        })
                        .collect();
                    std::fs::write(&events_p, out.join("\n") + "\n")?;
                    Ok(())
                },
            )?;
            note(ok, "completion with a stale token");
        }
        None => println!(
            "  {:<58} skipped (no task was claimed twice)",
            "completion event with the previous token"
        ),
    }

    // 6. A claim event dropped although its claimer lived on.
    let ok = planted(
        run,
        "task_claimed event removed (claimer not killed)",
        "no `task_claimed` event for token",
        &[events_p.as_path()],
        || {
            let needle = format!("\"agent_id\":\"{PARENT_AGENT}\"");
            let out: Vec<&str> = events
                .lines()
                .filter(|l| !(l.contains("\"event\":\"task_claimed\"") && l.contains(&needle)))
                .collect();
            std::fs::write(&events_p, out.join("\n") + "\n")?;
            Ok(())
        },
    )?;
    note(ok, "claim event missing without a kill");

    // 7. A heartbeat in the events that its holder was refused (or never made).
    let ok = planted(
        run,
        "task_heartbeat event the holder never got",
        "heartbeats accepted per the log",
        &[events_p.as_path()],
        || {
            let needle = format!("\"agent_id\":\"{PARENT_AGENT}\"");
            let mut out = Vec::new();
            for l in events.lines() {
                out.push(l.to_string());
                if l.contains("\"event\":\"task_claimed\"") && l.contains(&needle) {
                    out.push(
                        l.replace("\"event\":\"task_claimed\"", "\"event\":\"task_heartbeat\"")
                            .replace("\"from\":\"pending\",", ""),
                    );
                }
            }
            std::fs::write(&events_p, out.join("\n") + "\n")?;
            Ok(())
        },
    )?;
    note(ok, "heartbeat event without a logged heartbeat");

    // 8. Two workers told they hold the same (task, token).
    let logs = run.join("logs");
    let claim = std::fs::read_to_string(logs.join("w0.log"))?
        .lines()
        .find(|l| l.starts_with("claim "))
        .map(str::to_string);
    if let Some(claim) = claim {
        let p = logs.join("wplant.log");
        let ok = planted(
            run,
            "a second worker logs the same claim",
            "double claim",
            &[p.as_path()],
            || {
                std::fs::write(&p, format!("start wplant 1\n{claim}\nexit empty\n"))?;
                Ok(())
            },
        )?;
        note(ok, "double claim in the worker logs");
    }

    // 9. A worker told its complete succeeded when it did not.
    let fail_line = std::fs::read_dir(&logs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .find_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let l = text.lines().find(|l| l.starts_with("fail "))?.to_string();
            Some((p, text, l))
        });
    if let Some((p, text, l)) = fail_line {
        let ok = planted(
            run,
            "worker log: complete where the library said fail",
            "complete was accepted, but the file is",
            &[p.as_path()],
            || {
                let f: Vec<&str> = l.split(' ').collect();
                let swapped = format!("complete {} {}", f[1], f[2]);
                std::fs::write(&p, text.replacen(&l, &swapped, 1))?;
                Ok(())
            },
        )?;
        note(ok, "complete reported for a failed attempt");
    }

    // 10. A leftover batch intent.
    let p = tasks_dir.join(".batch-intent.json");
    let ok = planted(
        run,
        "leftover tasks/.batch-intent.json",
        "leftover `tasks/.batch-intent.json`",
        &[p.as_path()],
        || {
            std::fs::write(&p, b"{\"schema_version\": 1, \"task_ids\": []}\n")?;
            Ok(())
        },
    )?;
    note(ok, "leftover batch intent");

    // 11. A dead task with attempts left.
    match listing
        .tasks
        .iter()
        .find(|t| t.status == Status::Dead && t.max_attempts >= 2)
    {
        Some(t) => {
            let p = task_path(t.id.as_str());
            let ok = planted(
                run,
                "dead task with attempts < max_attempts",
                "dead with attempts",
                &[p.as_path()],
                || {
                    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
                    v["attempts"] = (t.max_attempts - 1).into();
                    std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
                    Ok(())
                },
            )?;
            note(ok, "dead task with attempts left");
        }
        None => println!(
            "  {:<58} skipped (no dead task with max_attempts >= 2)",
            "dead task with attempts < max_attempts"
        ),
    }
    Ok(missed)
}
