//! One `.coordination/` on a real shared file system, used through two
//! mounts as two hosts would (issue 14; README "Several machines"): a
//! GlusterFS volume mounted twice by `.ci/shared-fs up`, which `.ci/run`
//! starts before the tests and removes after them.
//!
//! `ORCHESTRATE_TEST_SHARED_MOUNTS=A:B` names the two mounts. Without it
//! these tests say so and pass, unless `ORCHESTRATE_REQUIRE_SHARED=1` (set
//! by `.ci/run`), which makes a missing mount a failure: CI never skips
//! them silently.
//!
//! Every process here is a real `orchestrate` process (or this test binary
//! run again as a child for the library's batch create); the "hosts" differ
//! by the mount they use and, in the skew test, by their clocks
//! (libfaketime, 5 minutes ahead and 5 minutes behind).

use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_orchestrate")
}

/// The two mounts, or `None` (with a note) when they are not configured.
fn mounts(test: &str) -> Option<(PathBuf, PathBuf)> {
    match std::env::var("ORCHESTRATE_TEST_SHARED_MOUNTS") {
        Ok(v) if v.contains(':') => {
            let (a, b) = v.split_once(':').unwrap();
            Some((PathBuf::from(a), PathBuf::from(b)))
        }
        _ => {
            assert!(
                std::env::var("ORCHESTRATE_REQUIRE_SHARED").as_deref() != Ok("1"),
                "{test}: ORCHESTRATE_REQUIRE_SHARED=1 but ORCHESTRATE_TEST_SHARED_MOUNTS is not set (run `.ci/shared-fs up DIR`)"
            );
            eprintln!("NOT RUN {test}: no shared mounts (set ORCHESTRATE_TEST_SHARED_MOUNTS=A:B; .ci/shared-fs up DIR makes them)");
            None
        }
    }
}

/// One project seen through both mounts: `<mount>/<name>/.coordination`.
struct Shared {
    a: PathBuf,
    b: PathBuf,
}

impl Shared {
    fn new(test: &str) -> Option<Self> {
        let (ma, mb) = mounts(test)?;
        let name = format!("{test}-{}", std::process::id());
        let a = ma.join(&name);
        std::fs::create_dir_all(&a).unwrap();
        let s = Shared {
            a: a.join(".coordination"),
            b: mb.join(&name).join(".coordination"),
        };
        s.cmd_a().args(["init", "shared"]).output().unwrap();
        assert!(
            s.b.join("config.json").is_file(),
            "mount B does not see A's init"
        );
        Some(s)
    }
    fn cmd(dir: &Path) -> Command {
        let mut c = Command::new(bin());
        c.arg("--dir")
            .arg(dir)
            .env_remove("COORDINATION_DIR")
            .env_remove("ORCHESTRATE_AGENT_ID")
            .current_dir(dir.parent().unwrap());
        c
    }
    fn cmd_a(&self) -> Command {
        Self::cmd(&self.a)
    }
    fn cmd_b(&self) -> Command {
        Self::cmd(&self.b)
    }
    fn task(&self, id: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.a.join("tasks").join(format!("{id}.json"))).unwrap(),
        )
        .unwrap()
    }
    /// Changes `config.json` in place (the test is the only writer).
    fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let p = self.a.join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    fn set_lease_ms(&self, ms: u64) {
        self.edit_config(|v| v["lease_ms"] = json!(ms));
    }
    /// Retries after 10 ms: a lease expiry is a failed attempt with a
    /// backoff (spec 6.4), which these tests are not about.
    fn fast_backoff(&self) {
        self.edit_config(|v| {
            v["backoff"] = json!({"base_ms": 10, "factor": 2.0, "max_ms": 20, "jitter": 0.0})
        });
    }
    fn events(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.a.join("events"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        files.sort();
        files.push(self.a.join("events.jsonl"));
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
    /// `doctor` through both mounts: clean.
    fn assert_doctor_clean(&self) {
        for c in [self.cmd_a(), self.cmd_b()].iter_mut() {
            let out = c.arg("doctor").output().unwrap();
            assert!(out.status.success(), "doctor: {}", text(&out));
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every claim of every task has its own fencing token, tokens grow, and
/// no task completed twice: no task was held by two claimers at once.
fn assert_no_double_claims(events: &[Value]) -> HashMap<String, usize> {
    let mut tokens: HashMap<String, Vec<u64>> = HashMap::new();
    let mut completed: HashMap<String, usize> = HashMap::new();
    for e in events {
        let Some(id) = e["task_id"].as_str() else {
            continue;
        };
        match e["event"].as_str() {
            Some("task_claimed") => tokens
                .entry(id.to_string())
                .or_default()
                .push(e["fencing_token"].as_u64().unwrap()),
            Some("task_completed") => *completed.entry(id.to_string()).or_default() += 1,
            _ => {}
        }
    }
    for (id, t) in &tokens {
        assert!(t.windows(2).all(|w| w[0] < w[1]), "{id}: tokens {t:?}");
    }
    for (id, n) in &completed {
        assert_eq!(*n, 1, "{id} completed {n} times");
    }
    completed
}

#[test]
fn a_named_claim_raced_from_two_mounts_is_granted_once() {
    let Some(s) = Shared::new("named-race") else {
        return;
    };
    for round in 0..10 {
        let id = format!("n{round}");
        s.cmd_a()
            .args(["create-task", "race", "--id", &id])
            .output()
            .unwrap();
        let children: Vec<Child> = (0..8u32)
            .map(|i| {
                let mut c = if i.is_multiple_of(2) {
                    s.cmd_a()
                } else {
                    s.cmd_b()
                };
                c.args([
                    "claim",
                    &id,
                    "--agent",
                    &format!("h{}-{i}", i % 2),
                    "--json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let winners = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(
            winners,
            1,
            "round {round}: {}",
            outs.iter().map(text).collect::<Vec<_>>().join("\n")
        );
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert!(matches!(o.status.code(), Some(3 | 4)), "{}", text(o));
        }
        assert_eq!(s.task(&id)["fencing_token"], 1);
    }
    assert_no_double_claims(&s.events());
    s.assert_doctor_clean();
}

/// The child half of the batch test: this binary run again, creating one
/// batch through the library in the directory `ORCHESTRATE_SHARED_CHILD`.
#[test]
#[ignore = "run by concurrent_batch_creates_from_two_mounts_get_distinct_seq as a child process"]
fn child_batch_create() {
    let dir = std::env::var("ORCHESTRATE_SHARED_CHILD").expect("child only");
    let tag = std::env::var("ORCHESTRATE_SHARED_TAG").unwrap();
    // Four batches queue for one lock on a network file system.
    let c = orchestrate::Coordination::open(&dir)
        .unwrap()
        .with_lock_timeout_ms(120_000);
    let specs = (0..100)
        .map(|i| orchestrate::NewTask {
            description: format!("{tag} {i}"),
            ..Default::default()
        })
        .collect();
    c.create_batch(specs, orchestrate::BatchIds::LocalKeys)
        .unwrap();
}

#[test]
fn concurrent_batch_creates_from_two_mounts_get_distinct_seq() {
    let Some(s) = Shared::new("batches") else {
        return;
    };
    let me = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..4u32)
        .map(|i| {
            Command::new(&me)
                .args(["--exact", "child_batch_create", "--ignored", "--nocapture"])
                .env(
                    "ORCHESTRATE_SHARED_CHILD",
                    if i.is_multiple_of(2) { &s.a } else { &s.b },
                )
                .env("ORCHESTRATE_SHARED_TAG", format!("batch{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let out = s.cmd_b().args(["list", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 400);
    let seqs: HashSet<u64> = tasks.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 400, "every task has its own seq");
    s.assert_doctor_clean();
}

#[test]
fn workers_on_two_mounts_drain_600_tasks_through_sigkills() {
    let Some(s) = Shared::new("drain") else {
        return;
    };
    // Short leases, so a killed worker's task comes back within seconds.
    s.set_lease_ms(3_000);
    s.fast_backoff();
    let c = orchestrate::Coordination::open(&s.a).unwrap();
    let specs = (0..600)
        .map(|i| orchestrate::NewTask {
            id: Some(format!("t{i:03}")),
            description: format!("task {i}"),
            command: Some("true".into()),
            ..Default::default()
        })
        .collect();
    c.create_batch(specs, orchestrate::BatchIds::Exact).unwrap();
    let spawn = |n: usize| -> Child {
        let mut c = if n.is_multiple_of(2) {
            s.cmd_a()
        } else {
            s.cmd_b()
        };
        c.args([
            "work",
            "--adapter",
            "shell",
            "--until-empty",
            "-q",
            "--agent",
            &format!("w{n}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let mut next = 0;
    let mut workers: Vec<Child> = (0..8)
        .map(|_| {
            next += 1;
            spawn(next)
        })
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(150);
    let mut kills = 0;
    let mut last_kill = Instant::now();
    let mut last_look = Instant::now();
    loop {
        // Progress from the task files, every 2 s (reading all 600 five
        // times a second slowed the workers it watched).
        let done = if last_look.elapsed() >= Duration::from_secs(2) {
            last_look = Instant::now();
            std::fs::read_dir(s.a.join("tasks"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read(e.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .is_some_and(|t| t["status"] == "completed")
                })
                .count()
        } else {
            0
        };
        if done >= 600 {
            eprintln!(
                "600 tasks drained through {kills} SIGKILLs in {:?}",
                started.elapsed()
            );
            break;
        }
        if Instant::now() >= deadline {
            let open: Vec<String> = std::fs::read_dir(s.a.join("tasks"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(|t| t["status"] != "completed")
                .map(|t| {
                    format!(
                        "{} {} {} {}",
                        t["id"], t["status"], t["claimed_by"], t["lease_expires_at"]
                    )
                })
                .collect();
            panic!("not all 600 completed in time; still open: {open:?}");
        }
        if kills < 6 && last_kill.elapsed() > Duration::from_millis(1500) {
            let k = kills % workers.len();
            let _ = workers[k].kill(); // SIGKILL
            let _ = workers[k].wait();
            kills += 1;
            last_kill = Instant::now();
        }
        // Keep 8 workers: replace the killed ones.
        for w in workers.iter_mut() {
            if w.try_wait().unwrap().is_some() {
                next += 1;
                *w = spawn(next);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert_eq!(kills, 6);
    // No task completed twice (the event log's view); the task files say
    // every one is completed.
    let completed = assert_no_double_claims(&s.events());
    eprintln!("{} tasks have a task_completed event", completed.len());
    let out = s.cmd_b().args(["status", "--json"]).output().unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["counts"]["completed"], 600, "{st:#}");
    s.assert_doctor_clean();
}

#[test]
fn a_lease_expired_on_one_host_is_reclaimed_by_the_other_and_the_old_holder_is_fenced() {
    let Some(s) = Shared::new("lease") else {
        return;
    };
    s.fast_backoff();
    s.cmd_a()
        .args(["create-task", "x", "--id", "x"])
        .output()
        .unwrap();
    let claim = |c: &mut Command, agent: &str| {
        c.args(["claim", "--agent", agent, "--lease", "2s", "--json"])
            .output()
            .unwrap()
    };
    // The claim that finds the lease expired reaps it first: the task then
    // backs off for 10 ms (spec 6.4), so a claim that is meant to get it waits.
    let claim_wait = |c: &mut Command, agent: &str| {
        c.args([
            "claim", "--agent", agent, "--lease", "2s", "--wait", "5s", "--json",
        ])
        .output()
        .unwrap()
    };
    let first = claim(&mut s.cmd_a(), "host-a");
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        claim(&mut s.cmd_b(), "host-b").status.code(),
        Some(3),
        "held by A"
    );
    std::thread::sleep(Duration::from_millis(2_500));
    let second = claim_wait(&mut s.cmd_b(), "host-b");
    assert!(second.status.success(), "{}", text(&second));
    let v: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(v["fencing_token"], 2);
    let before = std::fs::read(s.a.join("tasks/x.json")).unwrap();
    let stale = s
        .cmd_a()
        .args(["complete", "x", "--token", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(stale.status.code(), Some(4), "{}", text(&stale));
    let e: Value = serde_json::from_slice(&stale.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "lease_lost");
    assert_eq!(
        std::fs::read(s.a.join("tasks/x.json")).unwrap(),
        before,
        "the stale holder changed nothing"
    );
    let ok = s
        .cmd_b()
        .args(["complete", "x", "--token", "2"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    assert_no_double_claims(&s.events());
    s.assert_doctor_clean();
}

#[test]
fn a_waiter_on_one_mount_wakes_for_a_task_created_on_the_other() {
    let Some(s) = Shared::new("wake") else { return };
    let waiter = s
        .cmd_b()
        .args(["claim", "--agent", "waiter", "--wait", "30s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    let created = Instant::now();
    s.cmd_a()
        .args(["create-task", "late", "--id", "late"])
        .output()
        .unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let woke = created.elapsed();
    assert!(woke < Duration::from_secs(10), "woke after {woke:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task"]["id"], "late");
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A command on a "host" whose clock is `offset` off (libfaketime's
/// `FAKETIME` syntax, e.g. `+5m`), monotonic time left alone.
fn skewed(mut c: Command, offset: &str) -> Command {
    c.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    c
}

#[test]
fn leases_are_measured_on_the_servers_clock_whatever_the_hosts_clocks_say() {
    let Some(s) = Shared::new("skew") else { return };
    s.fast_backoff();
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "libfaketime is missing (Debian: libfaketime); the skew test cannot run"
    );
    // The skew is real: a lock-free reader on host A sees a task created
    // a moment ago as 5 minutes old.
    s.cmd_a()
        .args(["create-task", "probe", "--id", "probe"])
        .output()
        .unwrap();
    let st = skewed(s.cmd_a(), "+5m")
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    let age = v["oldest_pending_age_ms"].as_i64().unwrap();
    assert!(age > 290_000, "host A's clock is not skewed: age {age} ms");
    s.cmd_a().args(["cancel", "probe"]).output().unwrap();

    let claim = |c: Command, agent: &str, lease: &str| {
        let mut c = c;
        c.args(["claim", "--agent", agent, "--lease", lease, "--json"])
            .output()
            .unwrap()
    };
    // A claim that finds the lease expired reaps it first, and the task
    // then backs off for 10 ms (spec 6.4): the claims meant to get it wait.
    let claim_wait = |c: Command, agent: &str, lease: &str| {
        let mut c = c;
        c.args([
            "claim", "--agent", agent, "--lease", lease, "--wait", "5s", "--json",
        ])
        .output()
        .unwrap()
    };
    // Host B (5 minutes behind) claims with a 3 s lease. Host A (5 minutes
    // ahead) would see it as expired long ago on its own clock: the lease
    // must not be cut short.
    s.cmd_a()
        .args(["create-task", "one", "--id", "one"])
        .output()
        .unwrap();
    let b = claim(skewed(s.cmd_b(), "-5m"), "host-b", "3s");
    assert!(b.status.success(), "{}", text(&b));
    let a_early = claim(skewed(s.cmd_a(), "+5m"), "host-a", "3s");
    assert_eq!(
        a_early.status.code(),
        Some(3),
        "lease cut short by skew: {}",
        text(&a_early)
    );
    std::thread::sleep(Duration::from_millis(3_500));
    let a_late = claim_wait(skewed(s.cmd_a(), "+5m"), "host-a", "3s");
    assert!(a_late.status.success(), "{}", text(&a_late));
    let v: Value = serde_json::from_slice(&a_late.stdout).unwrap();
    assert_eq!(
        (v["task"]["id"].as_str(), v["fencing_token"].as_u64()),
        (Some("one"), Some(2))
    );
    // Now A (ahead) holds it for 3 s. B (behind) would see 10 more minutes
    // on its clock: the lease must not be kept alive by skew.
    let b_early = claim(skewed(s.cmd_b(), "-5m"), "host-b", "3s");
    assert_eq!(b_early.status.code(), Some(3), "{}", text(&b_early));
    std::thread::sleep(Duration::from_millis(3_500));
    let b_late = claim_wait(skewed(s.cmd_b(), "-5m"), "host-b", "3s");
    assert!(
        b_late.status.success(),
        "lease kept alive by skew: {}",
        text(&b_late)
    );
    // The lease written is on the server's clock: within seconds of the
    // real time, not 5 minutes off.
    let t = s.task("one");
    let exp =
        chrono::DateTime::parse_from_rfc3339(t["lease_expires_at"].as_str().unwrap()).unwrap();
    let off = (exp.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    assert!(
        (-1_000..=4_000).contains(&off),
        "lease_expires_at is {off} ms from now"
    );
    assert_no_double_claims(&s.events());
    s.assert_doctor_clean();
}

#[test]
fn doctor_shared_passes_the_coherent_mounts_and_flags_a_caching_one() {
    let Some(s) = Shared::new("probe") else {
        return;
    };
    for c in [s.cmd_a(), s.cmd_b()].iter_mut() {
        let out = c.args(["doctor", "--shared", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["mount"]["verdict"], "coherent", "{v:#}");
        assert_eq!(v["mount"]["fs_type"], "fuse.glusterfs");
    }
    // The same volume mounted with GlusterFS's default caching.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_a = s.a.parent().unwrap().parent().unwrap();
    let source = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(root_a.to_str().unwrap()))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|p| p.split(' ').nth(1))
        .expect("mount A in mountinfo")
        .to_string();
    let plain = tempfile::tempdir().unwrap();
    let m = Command::new("mount")
        .args(["-t", "glusterfs", &source])
        .arg(plain.path())
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", text(&m));
    let dir = plain
        .path()
        .join(s.a.parent().unwrap().file_name().unwrap())
        .join(".coordination");
    let out = Shared::cmd(&dir)
        .args(["doctor", "--shared", "--json"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(plain.path()).status();
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mount"]["verdict"], "not_coherent");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "mount_not_coherent")
        .unwrap();
    assert!(
        f["fix"].as_str().unwrap().contains("direct-io-mode=enable"),
        "{f}"
    );
}
