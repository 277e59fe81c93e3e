//! `archive` (spec 18), the event-log segments and the metrics checkpoint
//! (spec 3.7), and the streamed `list --json` (spec 11).

use crate::harness::{no_core_cmd, output_within, streams};
use crate::support::TestEnv;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    out.sort();
    out
}

fn complete(env: &TestEnv, id: &str) {
    let c = env.claim("w", &[id]);
    env.ok(&["complete", id, "--token", &c.token_arg()]);
}

/// a (completed) <- b (pending); c cancelled; d completed.
fn queue() -> TestEnv {
    let env = TestEnv::new();
    env.ok(&["create-task", "--id", "a", "A"]);
    env.ok(&["create-task", "--id", "b", "-d", "a", "B"]);
    env.ok(&["create-task", "--id", "c", "C"]);
    env.ok(&["create-task", "--id", "d", "D"]);
    complete(&env, "a");
    complete(&env, "d");
    env.ok(&["cancel", "c"]);
    env
}

fn events(env: &TestEnv) -> Vec<Value> {
    let out = env.ok(&["events", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("event line"))
        .collect()
}

#[test]
fn archive_moves_finished_tasks_keeps_what_live_tasks_need() {
    let env = queue();
    let before = events(&env);
    let r = env.json(&["archive", "--older-than", "0", "--json"], 0);
    assert_eq!(r["dry_run"], false);
    let moved: Vec<&str> = r["archived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(moved, ["c", "d"]);
    assert_eq!(r["archived"][0]["status"], "cancelled");
    assert_eq!(r["archived"][0]["path"], "archive/c.json");
    assert_eq!(r["kept"][0]["id"], "a");
    assert_eq!(r["kept"][0]["needed_by"], "b");
    assert_eq!(r["rotated_segment"], 1);
    // On disk: moved, not copied; the intent is gone.
    for id in ["c", "d"] {
        assert!(!env.task_path(id).exists(), "{id} still in tasks/");
        assert!(env.dir().join(format!("archive/{id}.json")).is_file());
    }
    assert!(env.task_path("a").exists() && env.task_path("b").exists());
    assert!(!env.dir().join("archive/.archive-intent.json").exists());
    // Readers still find them.
    let c = env.json(&["show", "c", "--json"], 0);
    assert_eq!(c["status"], "cancelled");
    assert_eq!(c["archived"], true);
    assert!(env.ok(&["show", "d"]).contains("archive/d.json"));
    assert_eq!(
        ids(&env.json(&["list", "--archived", "--json"], 0)),
        ["c", "d"]
    );
    assert_eq!(ids(&env.json(&["list", "--json"], 0)), ["a", "b"]);
    // Ids stay unique: an archived id is taken (exit 4), nothing written.
    env.expect(&["create-task", "--id", "c", "again"], 4);
    assert!(!env.task_path("c").exists());
    // A new task cannot depend on an archived one.
    let out = env.expect(&["create-task", "-d", "d", "E"], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("archived"));
    // The log was rotated into events/000000000001.jsonl, and `events`
    // reads across the segment: everything before, then the archive events.
    assert!(env.dir().join("events/000000000001.jsonl").is_file());
    let after = events(&env);
    assert_eq!(&after[..before.len()], &before[..]);
    let archived: Vec<&str> = after
        .iter()
        .filter(|e| e["event"] == "task_archived")
        .map(|e| e["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(archived, ["c", "d"]);
    // doctor finds nothing wrong (index rebuilt, no dangling dependency).
    let d = env.json(&["doctor", "--json"], 0);
    assert_eq!(d["clean"], true, "{d}");
    assert!(!env.dir().join("index/dependents/d").exists());
    // The claim index knows nothing of them; the queue still works.
    let claim = env.claim("w", &[]);
    assert_eq!(claim.id, "b");
}

#[test]
fn archive_dry_run_age_and_bad_input_change_nothing() {
    let env = queue();
    let snap = env.snapshot();
    let r = env.json(&["archive", "--older-than", "0", "--dry-run", "--json"], 0);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["archived"].as_array().unwrap().len(), 2);
    assert_eq!(r["rotated_segment"], Value::Null);
    // Just finished: nothing is a week old (the default).
    let r = env.json(&["archive", "--json"], 0);
    assert_eq!(r["archived"].as_array().unwrap().len(), 0);
    let r = env.json(&["archive", "--older-than", "30m", "--json"], 0);
    assert_eq!(r["archived"].as_array().unwrap().len(), 0);
    for bad in [
        &["archive", "--older-than", "5x"][..],
        &["archive", "--status", "pending"],
        &["archive", "--status", "nope"],
    ] {
        env.expect(bad, 2);
    }
    assert!(!env.dir().join("archive").exists());
    let mut now = env.snapshot();
    // Mutations above appended events and may have rebuilt the index.
    now.retain(|k, _| k.starts_with("tasks/"));
    let mut was = snap;
    was.retain(|k, _| k.starts_with("tasks/"));
    assert_eq!(now, was);
}

#[test]
fn archive_status_filter_takes_a_comma_list() {
    let env = queue();
    let r = env.json(
        &[
            "archive",
            "--older-than",
            "0",
            "--status",
            "cancelled",
            "--json",
        ],
        0,
    );
    assert_eq!(r["archived"][0]["id"], "c");
    assert_eq!(r["archived"].as_array().unwrap().len(), 1);
    let r = env.json(
        &[
            "archive",
            "--older-than",
            "0",
            "-s",
            "dead,completed",
            "--json",
        ],
        0,
    );
    assert_eq!(r["archived"][0]["id"], "d");
    assert_eq!(r["rotated_segment"], 2);
}

/// A crash between the archive copies and the unlinks leaves each task
/// under both names: readers see it once, and the next mutation finishes
/// the move (spec 18.2).
#[test]
fn archive_crash_between_unlinks_is_rolled_forward() {
    let env = queue();
    let mut cmd = no_core_cmd(&env);
    cmd.args(["archive", "--older-than", "0"])
        .env("ORCHESTRATE_CRASH_AT", "between_archive_unlinks");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        streams(&out)
    );
    assert!(env.dir().join("archive/.archive-intent.json").exists());
    assert!(!env.task_path("c").exists());
    assert!(env.task_path("d").exists() && env.dir().join("archive/d.json").exists());
    // Once each: d in list (still in tasks/), c in list --archived.
    assert_eq!(ids(&env.json(&["list", "--json"], 0)), ["a", "b", "d"]);
    assert_eq!(ids(&env.json(&["list", "--archived", "--json"], 0)), ["c"]);
    assert_eq!(env.json(&["show", "d", "--json"], 0)["status"], "completed");
    // doctor reports it; --fix (a mutation) rolls it forward.
    let d = env.json(&["doctor", "--json"], 0);
    assert!(
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "archive_intent"),
        "{d}"
    );
    env.ok(&["doctor", "--fix"]);
    assert!(!env.task_path("d").exists());
    assert!(!env.dir().join("archive/.archive-intent.json").exists());
    assert_eq!(
        ids(&env.json(&["list", "--archived", "--json"], 0)),
        ["c", "d"]
    );
    let recovered: Vec<Value> = events(&env)
        .into_iter()
        .filter(|e| e["event"] == "task_archived" && e["recovered"] == true)
        .collect();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["task_id"], "d");
}

/// A crash right after the intent moved nothing: the roll-forward leaves
/// every task in tasks/.
#[test]
fn archive_crash_after_intent_keeps_every_task() {
    let env = queue();
    let mut cmd = no_core_cmd(&env);
    cmd.args(["archive", "--older-than", "0"])
        .env("ORCHESTRATE_CRASH_AT", "after_archive_intent");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        streams(&out)
    );
    env.ok(&["reap"]);
    assert_eq!(ids(&env.json(&["list", "--json"], 0)), ["a", "b", "c", "d"]);
    assert!(!env.dir().join("archive/.archive-intent.json").exists());
    assert_eq!(
        ids(&env.json(&["list", "--archived", "--json"], 0)),
        Vec::<String>::new()
    );
}

/// Real processes: `show` of a task being archived never fails.
#[test]
fn show_never_loses_a_task_while_it_is_archived() {
    let env = TestEnv::new();
    let c = orchestrate::Coordination::open(env.dir()).unwrap();
    let specs: Vec<orchestrate::NewTask> = (0..150)
        .map(|i| orchestrate::NewTask {
            id: Some(format!("t{i}")),
            description: "x".into(),
            ..Default::default()
        })
        .collect();
    c.create_batch(specs, orchestrate::BatchIds::Exact).unwrap();
    for i in 0..150 {
        c.cancel(&format!("t{i}"), None).unwrap();
    }
    let mut archiver = env.std_cmd();
    archiver.args(["archive", "--older-than", "0", "--json"]);
    let child = archiver
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn archive");
    let mut shows = 0;
    loop {
        let finished = !env.task_path("t149").exists()
            && !env.dir().join("archive/.archive-intent.json").exists();
        for id in ["t0", "t75", "t149"] {
            env.expect(&["show", id, "--json"], 0);
            shows += 1;
        }
        if finished {
            break;
        }
    }
    let out = child.wait_with_output().expect("archive");
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["archived"].as_array().unwrap().len(), 150);
    assert!(shows >= 3);
}

/// `metrics` counts the same before and after a rotation, from a
/// checkpoint or from the segments.
#[test]
fn metrics_counters_survive_rotation_and_checkpoint() {
    let env = queue();
    let before = env.json(&["metrics", "--json"], 0);
    env.ok(&["archive", "--older-than", "0"]);
    let after = env.json(&["metrics", "--json"], 0);
    assert_eq!(before["counters"], after["counters"]);
    assert_eq!(after["counters"]["completions"], 2);
    assert_eq!(after["counters"]["cancelled"], 1);
    assert_eq!(after["throughput"]["tasks_per_minute"], 2);
    // A checkpoint written after many events gives the same numbers, and
    // so does a deleted one.
    let lines: String = (0..1200)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"task_heartbeat\",\"task_id\":\"b{i}\",\"to\":\"claimed\"}}\n"
            )
        })
        .collect();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(env.dir().join("events.jsonl"))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let first = env.json(&["metrics", "--json"], 0);
    assert!(env.dir().join("events/checkpoint.json").is_file());
    let second = env.json(&["metrics", "--json"], 0);
    assert_eq!(first["counters"], after["counters"]);
    assert_eq!(second["counters"], after["counters"]);
    assert_eq!(second["histograms"], first["histograms"]);
    std::fs::remove_file(env.dir().join("events/checkpoint.json")).unwrap();
    assert_eq!(
        env.json(&["metrics", "--json"], 0)["counters"],
        after["counters"]
    );
    // Old segments may go once a checkpoint covers them (all but the
    // newest, which carries the numbering; spec 3.7).
    let c = orchestrate::Coordination::open(env.dir()).unwrap();
    assert_eq!(c.rotate_events().unwrap(), Some(2));
    env.json(&["metrics", "--json"], 0);
    std::fs::remove_file(env.dir().join("events/000000000001.jsonl")).unwrap();
    assert_eq!(
        env.json(&["metrics", "--json"], 0)["counters"],
        after["counters"]
    );
}

/// `list --json` streams and keeps its shape: `tasks` in creation order,
/// then `errors`.
#[test]
fn list_json_streams_in_creation_order_with_errors() {
    let env = TestEnv::new();
    for id in ["z", "m", "a"] {
        env.ok(&["create-task", "--id", id, "x"]);
    }
    std::fs::write(env.tasks_dir().join("broken.json"), b"{").unwrap();
    let v = env.json(&["list", "--json"], 0);
    let order: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["z", "m", "a"]);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    assert_eq!(v.as_object().unwrap().len(), 2);
    let v = env.json(&["list", "--json", "-s", "claimed"], 0);
    assert_eq!(v["tasks"], serde_json::json!([]));
}

/// Real processes: `events --follow --json` started before an archive
/// keeps printing across the rotation, every event once and in order.
#[test]
fn events_follow_reads_across_a_rotation() {
    use std::io::BufRead;
    let env = queue();
    let mut follower = env
        .std_cmd()
        .args(["events", "--follow", "--json", "--poll", "100ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn events --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let wait_for = |seen: &mut Vec<Value>, what: &dyn Fn(&Value) -> bool| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("events --follow stopped printing");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        let hit = what(&v);
        seen.push(v);
        if hit {
            return;
        }
    };
    wait_for(&mut seen, &|v| v["event"] == "task_cancelled");
    env.ok(&["archive", "--older-than", "0"]);
    assert!(env.dir().join("events/000000000001.jsonl").is_file());
    env.ok(&["create-task", "--id", "after", "after the rotation"]);
    wait_for(&mut seen, &|v| v["task_id"] == "after");
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seen, events(&env));
}

/// A checkpoint ahead of the log (the history deleted, or replaced by a
/// shorter one) is ignored: the counters restart from what is left.
#[test]
fn metrics_ignores_a_checkpoint_ahead_of_the_log() {
    let env = queue();
    let lines: String = (0..1100)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"task_created\",\"task_id\":\"x{i}\",\"to\":\"pending\"}}\n"
            )
        })
        .collect();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(env.dir().join("events.jsonl"))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let m = env.json(&["metrics", "--json"], 0);
    assert_eq!(m["counters"]["created"], 1104);
    assert!(env.dir().join("events/checkpoint.json").is_file());
    // The log replaced by a shorter one: one task_created line.
    std::fs::write(
        env.dir().join("events.jsonl"),
        "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"task_created\",\"task_id\":\"y\",\"to\":\"pending\"}\n",
    )
    .unwrap();
    let m = env.json(&["metrics", "--json"], 0);
    assert_eq!(m["counters"]["created"], 1);
}
