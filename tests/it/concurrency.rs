//! Real processes racing on one directory: many claimers, one named task,
//! a holder killed with SIGKILL, a lock holder killed mid-operation.

use crate::support::{bin, serial, ts, wait_for, Claim, TestEnv};
use orchestrate::{BatchIds, Coordination, NewTask};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The claim loop of one racing agent: `claim --json` then `complete`, until
/// a claim exits 3. Prints every claim document on stdout; any other exit
/// code ends the loop with that code.
const CLAIM_LOOP: &str = r#"
B="$1"; D="$2"; A="$3"; L="$4"
while :; do
  out=$("$B" --dir "$D" claim --agent "$A" --lease "$L" --json); rc=$?
  if [ "$rc" -eq 3 ]; then exit 0; fi
  if [ "$rc" -ne 0 ]; then echo "$A: claim exited $rc" >&2; exit "$rc"; fi
  printf '%s\n' "$out"
  id=${out#*\"id\": \"}; id=${id%%\"*}
  tok=${out##*\"fencing_token\": }; tok=${tok%%,*}
  "$B" --dir "$D" complete "$id" --token "$tok" >/dev/null \
    || { echo "$A: complete $id --token $tok exited $?" >&2; exit 90; }
done
"#;

fn claim_loop(env: &TestEnv, agent: &str, lease: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(CLAIM_LOOP)
        .arg("claim-loop")
        .arg(bin())
        .arg(env.dir())
        .arg(agent)
        .arg(lease)
        .current_dir(env.root())
        .env_remove("ORCHESTRATE_CRASH_AT")
        .env_remove("ORCHESTRATE_AGENT_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    c
}

/// Parses a stream of pretty-printed JSON documents.
fn claims_in(stdout: &[u8]) -> Vec<Claim> {
    serde_json::Deserializer::from_slice(stdout)
        .into_iter::<Value>()
        .map(|v| Claim::from_json(&v.expect("claim loop stdout is JSON documents")))
        .collect()
}

/// Creates `n` tasks in one batch through the library, with relaxed
/// durability (set in config.json first) to keep the setup fast.
fn create_many(env: &TestEnv, n: usize) -> Vec<String> {
    env.edit_config(|c| c["durability"] = json!("relaxed"));
    let c = Coordination::open(env.dir()).unwrap();
    let specs = (0..n)
        .map(|i| NewTask {
            description: format!("task number {i}"),
            priority: Some((i % 10) as u8 + 1),
            ..Default::default()
        })
        .collect();
    c.create_batch(specs, BatchIds::LocalKeys)
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect()
}

/// Waits for every child at most `timeout` in all, draining their pipes on
/// threads (a child blocked on a full pipe would otherwise never exit). On
/// timeout kills every child's process group and panics: a deadlock detector.
fn wait_all(children: Vec<(String, Child)>, timeout: Duration) -> Vec<(String, Output)> {
    let deadline = Instant::now() + timeout;
    let pids: Vec<(String, u32)> = children.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let receivers: Vec<mpsc::Receiver<Output>> = children
        .into_iter()
        .map(|(_, child)| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(child.wait_with_output().expect("wait for child"));
            });
            rx
        })
        .collect();
    let mut outs = Vec::new();
    for ((name, _), rx) in pids.iter().zip(receivers) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(out) => outs.push((name.clone(), out)),
            Err(_) => {
                for (_, pid) in &pids {
                    // SAFETY: kill(2) of process groups this test created.
                    unsafe { libc::kill(-(*pid as i32), libc::SIGKILL) };
                }
                panic!("{name} still running after {timeout:?} (deadlock?)");
            }
        }
    }
    outs
}

/// [`wait_all`] for one child.
fn wait_one(child: Child, what: &str, timeout: Duration) -> Output {
    wait_all(vec![(what.to_string(), child)], timeout)
        .pop()
        .expect("one output")
        .1
}

/// Reads `child`'s stdout lines on a thread; the receiver is the
/// readiness channel, used with `recv_timeout` as a deadlock detector.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// (a) Eight claim loops race over 2,000 tasks: every task is claimed
/// exactly once, with token 1, and ends completed.
#[test]
fn eight_processes_claim_two_thousand_tasks_exactly_once() {
    let _serial = serial();
    const TASKS: usize = 2_000;
    const AGENTS: usize = 8;
    let env = TestEnv::new();
    let ids = create_many(&env, TASKS);
    let start = Instant::now();
    let children: Vec<(String, Child)> = (0..AGENTS)
        .map(|i| {
            let agent = format!("racer-{i}");
            let child = claim_loop(&env, &agent, "5m").spawn().unwrap();
            (agent, child)
        })
        .collect();
    let mut claimed_by: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for (agent, out) in wait_all(children, Duration::from_secs(180)) {
        assert!(
            out.status.success(),
            "{agent} exited {:?}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let claims = claims_in(&out.stdout);
        per_agent.insert(agent.clone(), claims.len());
        for c in claims {
            assert_eq!(c.doc["task"]["claimed_by"], agent.as_str());
            claimed_by
                .entry(c.id.clone())
                .or_default()
                .push((agent.clone(), c.token));
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "{TASKS} tasks, {AGENTS} racing processes: {elapsed:?}; claims per agent {per_agent:?}"
    );

    let twice: Vec<_> = claimed_by.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    let never: Vec<_> = ids
        .iter()
        .filter(|id| !claimed_by.contains_key(*id))
        .collect();
    assert!(
        never.is_empty(),
        "{} tasks never claimed: {:?}",
        never.len(),
        never
    );
    assert_eq!(claimed_by.len(), TASKS);
    assert!(
        claimed_by.values().all(|v| v[0].1 == 1),
        "a first claim had a token other than 1"
    );
    assert!(
        per_agent.values().filter(|&&n| n > 0).count() > 1,
        "only one process ever won: {per_agent:?}"
    );

    for id in &ids {
        let t = env.task_json(id);
        assert_eq!(t["status"], "completed", "{id}");
        assert_eq!(t["fencing_token"], 1, "{id}");
        assert_eq!(t["attempts"], 1, "{id}");
        assert_eq!(t["claimed_by"], claimed_by[id][0].0.as_str(), "{id}");
    }
    let st = env.json(&["status", "--json"], 0);
    assert_eq!(st["counts"]["completed"], TASKS);
    assert_eq!(st["total"], TASKS);
}

/// (b) Eight processes claim the same named task at once: exactly one wins
/// (exit 0), the other seven get a conflict (exit 4).
#[test]
fn eight_processes_race_for_one_named_task() {
    let _serial = serial();
    let env = TestEnv::new();
    for round in 0..3 {
        let id = env.create("contended", &["--id", &format!("prize-{round}")]);
        // Each racer waits on its stdin; closing them all is the start gun.
        let mut racers: Vec<(String, Child)> = (0..8)
            .map(|i| {
                let agent = format!("p{i}");
                let child = Command::new("sh")
                    .arg("-c")
                    .arg(r#"read _go; exec "$0" --dir "$1" claim --agent "$2" --json "$3""#)
                    .arg(bin())
                    .arg(env.dir())
                    .arg(&agent)
                    .arg(&id)
                    .env_remove("ORCHESTRATE_AGENT_ID")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0)
                    .spawn()
                    .unwrap();
                (agent, child)
            })
            .collect();
        for (_, c) in racers.iter_mut() {
            drop(c.stdin.take());
        }
        let mut winners = vec![];
        let mut codes = vec![];
        for (agent, out) in wait_all(racers, Duration::from_secs(30)) {
            codes.push(out.status.code());
            match out.status.code() {
                Some(0) => {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                    winners.push((agent, Claim::from_json(&v)));
                }
                Some(4) => {
                    let v: Value = serde_json::from_slice(&out.stdout)
                        .expect("a loser with --json prints an error document");
                    assert_eq!(v["error"]["kind"], "wrong_state", "{v}");
                }
                other => panic!(
                    "{agent} exited {other:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exit codes {codes:?}");
        assert_eq!(
            codes.iter().filter(|c| **c == Some(4)).count(),
            7,
            "{codes:?}"
        );
        let (agent, claim) = &winners[0];
        assert_eq!(
            (claim.id.as_str(), claim.token, claim.attempt),
            (id.as_str(), 1, 1)
        );
        let t = env.task_json(&id);
        assert_eq!(t["claimed_by"], agent.as_str());
        assert_eq!(t["fencing_token"], 1);
        assert_eq!(t["attempts"], 1);
    }
}

/// (c) A holder killed with SIGKILL: its task stays held until the lease
/// runs out, then another agent gets it, and the dead holder's token is
/// refused without changing the file.
#[test]
fn killed_holder_loses_its_task_after_the_lease() {
    let _serial = serial();
    let env = TestEnv::new();
    env.edit_config(|c| {
        c["backoff"] = json!({"base_ms": 50, "factor": 2.0, "max_ms": 200, "jitter": 0.0})
    });
    let id = env.create("long job", &[]);
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" --dir "$1" claim --agent holder --lease 1s --json && echo READY && exec sleep 100"#)
        .arg(bin())
        .arg(env.dir())
        .env_remove("ORCHESTRATE_AGENT_ID")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut holder);
    let mut doc = String::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the holder never became ready");
        if line == "READY" {
            break;
        }
        doc.push_str(&line);
        doc.push('\n');
    }
    let held = Claim::from_json(&serde_json::from_str(&doc).unwrap());
    assert_eq!((held.id.as_str(), held.token), (id.as_str(), 1));
    let expiry = ts(&held.doc["lease_expires_at"]);

    holder.kill().unwrap(); // SIGKILL
    let status = holder.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // Before the lease runs out, nobody else gets it.
    let out = env.run(&["claim", "--agent", "rescuer", "--json"]);
    let finished = chrono::Utc::now();
    if finished < expiry {
        assert_eq!(
            out.status.code(),
            Some(3),
            "claimed before the lease ran out"
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["reason"], "all_claimed");
        assert_eq!(env.task_json(&id)["claimed_by"], "holder");
    } else {
        eprintln!("note: the machine was too slow to check the claim before expiry");
    }

    // After it, the rescuer gets the task with a new token.
    let rescued = wait_for("the rescuer's claim", Duration::from_secs(20), || {
        let out = env.run(&["claim", "--agent", "rescuer", "--json"]);
        match out.status.code() {
            Some(0) => Some(Claim::from_json(
                &serde_json::from_slice(&out.stdout).unwrap(),
            )),
            Some(3) => None,
            other => panic!(
                "claim exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    });
    assert!(chrono::Utc::now() >= expiry);
    assert_eq!(
        (rescued.id.as_str(), rescued.token, rescued.attempt),
        (id.as_str(), 2, 2)
    );

    // The dead holder's token is fenced off and changes nothing.
    let bytes = env.task_bytes(&id);
    let v = env.json(
        &["complete", &id, "--token", &held.token_arg(), "--json"],
        4,
    );
    assert_eq!(v["error"]["kind"], "lease_lost");
    env.expect(&["heartbeat", &id, "--token", &held.token_arg()], 4);
    env.expect(
        &["fail", &id, "--token", &held.token_arg(), "--error", "x"],
        4,
    );
    assert_eq!(env.task_bytes(&id), bytes);

    env.ok(&[
        "complete",
        &id,
        "--token",
        &rescued.token_arg(),
        "--result",
        "saved",
    ]);
    let t = env.task_json(&id);
    assert_eq!(t["status"], "completed");
    assert_eq!(t["claimed_by"], "rescuer");
    assert_eq!(t["result"], "saved");
}

/// (d) A process that holds the directory lock is SIGKILLed in the middle of
/// a mutation: other commands time out (exit 5) while it lives, and work as
/// soon as it is dead, because the kernel drops the flock.
///
/// The holder is made to block while holding the lock with the debug-build
/// fault point `ORCHESTRATE_HANG_AT=before_event_append`: `create-task`
/// writes the task file, then sleeps before it appends the event and
/// releases the lock.
#[test]
fn killed_lock_holder_releases_the_lock() {
    let _serial = serial();
    let env = TestEnv::new();
    let first = env.create("first", &[]);
    let mut writer = env
        .std_cmd()
        .env("ORCHESTRATE_HANG_AT", "before_event_append")
        .args(["create-task", "stuck writer", "--id", "stuck"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the stuck writer's task file",
        Duration::from_secs(30),
        || env.task_path("stuck").exists().then_some(()),
    );
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the writer should be blocked"
    );

    let start = Instant::now();
    let out = env.expect(&["reap", "--lock-timeout", "300ms"], 5);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));
    let v = env.json(
        &["claim", "--agent", "a", "--lock-timeout", "200ms", "--json"],
        5,
    );
    assert_eq!(v["error"]["kind"], "lock_timeout");
    // Reads take no lock.
    assert_eq!(env.json(&["status", "--json"], 0)["total"], 2);

    writer.kill().unwrap();
    writer.wait().unwrap();

    let start = Instant::now();
    let c = env.claim("a", &["--lock-timeout", "5s"]);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(c.id, first);
    let c2 = env.claim("a", &[]);
    assert_eq!(c2.id, "stuck", "the killed writer's task was written whole");
    assert_eq!(env.task_json("stuck")["description"], "stuck writer");
}

/// (d, continued) Claim loops SIGKILLed at random points, over and over: the
/// next command always gets the lock, no task file is ever torn, and after
/// the leases of the interrupted claims run out every task is completed
/// exactly once.
#[test]
fn killed_claim_loops_leave_a_consistent_directory() {
    let _serial = serial();
    const TASKS: usize = 120;
    let env = TestEnv::new();
    let ids = create_many(&env, TASKS);
    env.edit_config(|c| {
        c["durability"] = json!("durable");
        c["backoff"] = json!({"base_ms": 10, "factor": 1.0, "max_ms": 10, "jitter": 0.0});
    });
    let mut completions: HashMap<String, u64> = HashMap::new();
    for round in 0..6 {
        // Its own process group (set by `claim_loop`), so that the kill
        // reaches the orchestrate process the shell is running.
        let mut child = claim_loop(&env, &format!("victim-{round}"), "1s")
            .spawn()
            .unwrap();
        let lines = stdout_lines(&mut child);
        // Let it get going: wait for a few claims, then kill the whole group
        // (the shell and whatever orchestrate process is running).
        let mut seen = 0;
        while seen < 3 + round {
            let l = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the claim loop stalled");
            if l.starts_with("  \"fencing_token\"") {
                seen += 1;
            }
        }
        // SAFETY: plain kill(2) of the group we created.
        let r = unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        assert_eq!(r, 0);
        child.wait().unwrap();
        // The lock is free again at once.
        let start = Instant::now();
        env.ok(&["reap", "--lock-timeout", "5s"]);
        assert!(start.elapsed() < Duration::from_secs(5));
        let v = env.json(&["list", "--json"], 0);
        assert_eq!(
            v["errors"],
            json!([]),
            "a task file is unreadable after a kill"
        );
        assert_eq!(v["tasks"].as_array().unwrap().len(), TASKS);
    }
    // Finish the rest; interrupted claims come back after their 1 s lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = wait_one(
            claim_loop(&env, "finisher", "1m").spawn().unwrap(),
            "finisher",
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for c in claims_in(&out.stdout) {
            *completions.entry(c.id).or_default() += 1;
        }
        let st = env.json(&["status", "--json"], 0);
        if st["counts"]["completed"] == TASKS {
            break;
        }
        assert!(Instant::now() < deadline, "tasks never finished: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &ids {
        let t = env.task_json(id);
        assert_eq!(t["status"], "completed", "{id}");
    }
    assert!(
        completions.values().all(|&n| n == 1),
        "the finisher claimed a task twice"
    );
    assert_eq!(
        env.temps(),
        Vec::<String>::new(),
        "a temp file survived a later write"
    );
}

/// A writer that dies at each crash point of the atomic write (while it
/// holds the lock) leaves either the old or the new task file, never a torn
/// one, and the next command proceeds. Without the commit log
/// (`ORCHESTRATE_COMMIT_LOG=0`) the rename is the commit point; with it
/// (the default, `spec` 4.8) the task file is written after the commit, so
/// the completion stands at every one of these points: the file may still
/// be the old one right after the crash, and the next mutation replays it.
#[test]
fn crash_inside_a_write_leaves_old_or_new_file() {
    let _serial = serial();
    for (log, points) in [
        (
            "0",
            &[
                "before_temp_write",
                "after_temp_write",
                "after_fsync",
                "after_rename",
            ][..],
        ),
        (
            "1",
            &[
                "before_temp_write",
                "after_temp_write",
                "after_fsync",
                "after_rename",
            ][..],
        ),
    ] {
        for &point in points {
            let env = TestEnv::new();
            let id = env.create("x", &[]);
            let c = env.claim("a", &[]);
            let before = env.task_json(&id);
            let out = env
                .cmd()
                .args(["complete", &id, "--token", &c.token_arg(), "--result", "r"])
                .env("ORCHESTRATE_CRASH_AT", point)
                .env("ORCHESTRATE_COMMIT_LOG", log)
                .output()
                .unwrap();
            assert!(
                out.status.signal().is_some(),
                "{point} (commit log {log}): did not crash: {:?}",
                out.status
            );
            let committed = log == "1" || point == "after_rename";
            let after = env.task_json(&id);
            match after["status"].as_str() {
                Some("claimed") => {
                    assert_eq!(after, before, "{point}");
                    assert!(log == "1" || !committed, "{point}: the rename was lost");
                }
                Some("completed") => {
                    assert_eq!(point, "after_rename");
                    assert_eq!(after["result"], "r");
                }
                other => panic!("{point}: status {other:?}"),
            }
            // The lock is free, and the holder can retry its completion.
            let out = env
                .cmd()
                .args([
                    "complete",
                    &id,
                    "--token",
                    &c.token_arg(),
                    "--lock-timeout",
                    "5s",
                ])
                .env("ORCHESTRATE_COMMIT_LOG", log)
                .output()
                .unwrap();
            let want = if committed { 4 } else { 0 };
            assert_eq!(
                out.status.code(),
                Some(want),
                "{point} (commit log {log}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let t = env.task_json(&id);
            assert_eq!(t["status"], "completed", "{point} (commit log {log})");
            if committed {
                assert_eq!(t["result"], "r", "{point} (commit log {log})");
            }
            assert_eq!(env.temps(), Vec::<String>::new(), "{point}");
            assert_eq!(env.json(&["list", "--json"], 0)["errors"], json!([]));
        }
    }
}

/// Issue 10 (1): someone deletes `.coordination/lock` again and again while
/// four processes claim and complete. A process that waited on the old,
/// unlinked file must notice that it no longer is the lock (device and
/// inode differ from the path's) and lock again, so no two processes are
/// ever inside at once: no (task, token) granted twice, no task file
/// holding another task, no complete refused.
#[test]
fn deleting_the_lock_file_never_lets_two_processes_in() {
    let _serial = serial();
    const TASKS: usize = 400;
    const AGENTS: usize = 4;
    let env = TestEnv::new();
    let ids = create_many(&env, TASKS);
    let lock = env.dir().join("lock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleter = {
        let stop = stop.clone();
        let lock = lock.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if std::fs::remove_file(&lock).is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    let children: Vec<(String, Child)> = (0..AGENTS)
        .map(|i| {
            let agent = format!("racer-{i}");
            (
                agent.clone(),
                claim_loop(&env, &agent, "5m").spawn().unwrap(),
            )
        })
        .collect();
    let results = wait_all(children, Duration::from_secs(240));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let deletions = deleter.join().unwrap();
    assert!(
        deletions > 10,
        "the lock file was deleted only {deletions} times"
    );
    let mut grants: HashMap<(String, u64), String> = HashMap::new();
    for (agent, out) in results {
        assert!(
            out.status.success(),
            "{agent} exited {:?}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for c in claims_in(&out.stdout) {
            if let Some(other) = grants.insert((c.id.clone(), c.token), agent.clone()) {
                panic!("({}, {}) granted to {other} and {agent}", c.id, c.token);
            }
        }
    }
    for id in &ids {
        let t = env.task_json(id);
        assert_eq!(t["id"], id.as_str(), "tasks/{id}.json holds another task");
        assert_eq!(t["status"], "completed", "{id}");
    }
    eprintln!("{TASKS} tasks, {AGENTS} processes, the lock file deleted {deletions} times: 0 double grants");
}

/// Issue 10 (3): cancelling a task that a `run` worker is executing kills
/// the attempt's process group within about a second, and the run reports
/// the task cancelled.
#[test]
fn cancel_stops_the_running_process_within_a_second() {
    let env = TestEnv::new();
    let out = env.root().join("ticks");
    let tasks = env.root().join("tasks.json");
    std::fs::write(
        &tasks,
        serde_json::to_vec(&json!([{
            "id": "long",
            "description": "a long loop",
            "command": format!("for i in $(seq 40); do echo $i >> {}; sleep 0.25; done", out.display())
        }]))
        .unwrap(),
    )
    .unwrap();
    let mut run = env.shell_run_cmd(&tasks);
    run.arg("-o")
        .arg(env.root().join("report.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = run.spawn().unwrap();
    wait_for("the loop to start", Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.lines().count() >= 2)
    });
    env.ok(&["cancel", "long", "--reason", "not needed"]);
    let at_cancel = Instant::now();
    let out_run = wait_one(child, "run", Duration::from_secs(30));
    let stopped_after = at_cancel.elapsed();
    let lines_then = std::fs::read_to_string(&out).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(800));
    let lines_later = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(
        lines_then, lines_later,
        "the loop went on after the run ended"
    );
    assert!(lines_later < 20, "the loop ran {lines_later} of 40 rounds");
    assert!(
        stopped_after < Duration::from_secs(3),
        "run ended {stopped_after:?} after the cancel"
    );
    assert_eq!(out_run.status.code(), Some(1));
    let report: Value =
        serde_json::from_slice(&std::fs::read(env.root().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["tasks"][0]["status"], "cancelled");
    assert_eq!(env.task_json("long")["status"], "cancelled");
}

/// Issue 10 item 3, the reclaim half: a worker that was stopped (SIGSTOP)
/// past its lease, while another agent reclaimed the task, notices the new
/// fencing token when it resumes and kills its attempt's process group
/// within about a second; the new holder's claim is left untouched.
#[test]
fn a_reclaimed_task_stops_the_stale_holders_process() {
    let env = TestEnv::new();
    env.edit_config(|c| {
        c["lease_ms"] = json!(1500);
        c["backoff"] = json!({"base_ms": 50, "factor": 2.0, "max_ms": 100, "jitter": 0.0});
    });
    let out = env.root().join("ticks");
    env.ok(&[
        "create-task",
        "a long loop",
        "--id",
        "long",
        "--command",
        &format!(
            "for i in $(seq 80); do echo $i >> {}; sleep 0.1; done",
            out.display()
        ),
    ]);
    let mut work = env.std_cmd();
    work.args([
        "work",
        "--adapter",
        "shell",
        "--until-empty",
        "--agent",
        "stale",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = work.spawn().unwrap();
    let pid = child.id() as i32;
    wait_for("the loop to start", Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.lines().count() >= 2)
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(2500));
    // The expired lease is reaped (back to pending, backing off 50 ms),
    // then claimed afresh.
    let fresh = wait_for("the reclaim", Duration::from_secs(10), || {
        let o = env.run(&["claim", "--agent", "fresh", "--json", "long"]);
        o.status
            .success()
            .then(|| Claim::from_json(&serde_json::from_slice(&o.stdout).unwrap()))
    });
    assert_eq!(fresh.token, 2, "reclaimed with the next fencing token");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = Instant::now();
    let out_work = wait_one(child, "work", Duration::from_secs(30));
    let lines_then = std::fs::read_to_string(&out).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(600));
    let lines_later = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(lines_then, lines_later, "the stale attempt went on");
    assert!(lines_later < 70, "the loop ran {lines_later} of 80 rounds");
    assert!(
        resumed.elapsed() < Duration::from_secs(4),
        "work ended {:?} after it resumed",
        resumed.elapsed()
    );
    assert!(out_work.status.code().is_some(), "{:?}", out_work.status);
    let t = env.task_json("long");
    assert_eq!(t["status"], "claimed");
    assert_eq!(t["claimed_by"], "fresh");
    assert_eq!(t["fencing_token"], 2);
}

/// From the break-it trial: a foreign writer that does not keep the index
/// removes `index/version` (spec 9, rule 6) and renames a task file into
/// `tasks/`; a `claim --wait` waiter wakes and claims it (the stale index
/// sends it to the lock, whose mutation rebuilds the index).
#[test]
fn a_waiter_claims_a_task_written_by_a_foreign_writer() {
    let env = TestEnv::new();
    env.create("template", &["--id", "template"]);
    let template = std::fs::read_to_string(env.task_path("template")).unwrap();
    env.ok(&["cancel", "template"]);
    let waiter = env
        .std_cmd()
        .args(["claim", "--agent", "w", "--wait", "20s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let foreign = template
        .replace("\"template\"", "\"foreign\"")
        .replace("\"cancelled\"", "\"pending\"");
    std::fs::remove_file(env.dir().join("index/version")).unwrap();
    let tmp = env.tasks_dir().join(".foreign-tmp");
    std::fs::write(&tmp, foreign).unwrap();
    let written = Instant::now();
    std::fs::rename(&tmp, env.task_path("foreign")).unwrap();
    let out = wait_one(waiter, "waiter", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task"]["id"], "foreign");
    assert!(
        written.elapsed() < Duration::from_secs(5),
        "{:?}",
        written.elapsed()
    );
}
