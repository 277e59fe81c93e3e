//! Observability: JSON logs with ids, metrics against a scripted history,
//! `watch --json`, `claim --wait`, `graph`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{bin, Env};

fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    })
}

#[test]
fn json_logs_parse_and_carry_task_agent_attempt_and_correlation_ids() {
    let e = Env::new("observe");
    let tasks = e.dir.path().join("t.json");
    std::fs::write(
        &tasks,
        r#"[{"id": "x", "description": "x", "command": "true"}]"#,
    )
    .unwrap();
    let out = e
        .cmd()
        .args([
            "-v",
            "--log-format",
            "json",
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "-q",
            "--tasks",
        ])
        .arg(&tasks)
        .env("ORCHESTRATE_LOG", "debug")
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {l}"))
        })
        .collect();
    let about_task: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["task_id"] == "x")
        .collect();
    assert!(
        !about_task.is_empty(),
        "no log line about the task: {stderr}"
    );
    for l in about_task {
        assert_eq!(l["span"]["attempt"], 1);
        assert!(l["span"]["agent_id"].as_str().unwrap().contains("-worker-"));
        assert!(l["span"]["correlation_id"]
            .as_str()
            .unwrap()
            .starts_with("run-"));
    }
    // stdout stays data: nothing of the logs there.
    assert!(!String::from_utf8(out.stdout).unwrap().contains("\"level\""));
    // events.jsonl carries the same correlation id.
    let ev = std::fs::read_to_string(e.coord().join("events.jsonl")).unwrap();
    let claimed: Value = ev
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "task_claimed")
        .unwrap();
    assert!(claimed["correlation_id"]
        .as_str()
        .unwrap()
        .starts_with("run-"));
    assert_eq!(claimed["task_id"], "x");
    assert_eq!(claimed["attempt"], 1);
}

#[test]
fn metrics_match_a_scripted_history_and_pass_the_real_parser() {
    let e = Env::new("observe");
    // Fast backoff so the failed task can be claimed again at once.
    let cfg = e.coord().join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["backoff"] = serde_json::json!({"base_ms": 1, "factor": 1.0, "max_ms": 1, "jitter": 0.0});
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    for id in ["a", "b", "c", "d"] {
        e.ok(&["create-task", id, "--id", id, "--max-attempts", "2"]);
    }
    // a: completed. b: failed once then completed. c: failed twice -> dead. d: pending.
    e.ok(&["claim", "a", "--agent", "w1"]);
    e.ok(&["complete", "a", "--token", "1"]);
    e.ok(&["claim", "b", "--agent", "w1"]);
    e.ok(&["fail", "b", "--token", "1", "--error", "boom"]);
    std::thread::sleep(Duration::from_millis(20));
    e.ok(&["claim", "b", "--agent", "w2"]);
    e.ok(&["complete", "b", "--token", "2"]);
    e.ok(&["claim", "c", "--agent", "w1"]);
    e.ok(&["fail", "c", "--token", "1", "--error", "boom"]);
    std::thread::sleep(Duration::from_millis(20));
    e.ok(&["claim", "c", "--agent", "w1"]);
    e.ok(&["fail", "c", "--token", "2", "--error", "boom"]);
    let m = e.json(&["metrics", "--json"]);
    assert_eq!(m["counters"]["created"], 4);
    assert_eq!(m["counters"]["claims"], 5);
    assert_eq!(m["counters"]["completions"], 2);
    assert_eq!(m["counters"]["failures"], 3);
    assert_eq!(m["counters"]["retries"], 2);
    assert_eq!(m["counters"]["dead"], 1);
    assert_eq!(m["tasks_by_state"]["completed"], 2);
    assert_eq!(m["tasks_by_state"]["dead"], 1);
    assert_eq!(m["tasks_by_state"]["pending"], 1);
    assert_eq!(m["queue_size"]["total"], 4);
    assert_eq!(m["queue_size"]["available"], 1);
    assert_eq!(m["queue_size"]["failed"], 1);
    assert_eq!(m["throughput"]["tasks_per_minute"], 2);
    assert_eq!(m["histograms"]["task_run_seconds"]["count"], 5);
    assert_eq!(m["histograms"]["task_wait_seconds"]["count"], 5);
    assert!(m["timing_seconds"]["avg_execution_time"].as_f64().unwrap() >= 0.0);
    let text = e.ok(&["metrics"]);
    assert!(text.contains("orchestrate_claims_total 5\n"), "{text}");
    assert!(
        text.contains("orchestrate_tasks{state=\"dead\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrate_task_run_seconds_count 5\n"),
        "{text}"
    );
    // The textfile collector form, written atomically.
    let tf = e.dir.path().join("textfile");
    e.cmd()
        .args(["metrics", "--textfile", tf.to_str().unwrap()])
        .assert()
        .code(2);
    std::fs::create_dir(&tf).unwrap();
    e.ok(&["metrics", "--textfile", tf.to_str().unwrap()]);
    let strip_age = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("orchestrate_oldest_pending_age_seconds "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_age(&std::fs::read_to_string(tf.join("orchestrate.prom")).unwrap()),
        strip_age(&text)
    );
    match promtool() {
        Some(p) => {
            let mut child = std::process::Command::new(p)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is required in CI (.ci/run installs it)")
        }
        None => {
            eprintln!("promtool not installed here; .ci/run installs it and this check runs there")
        }
    }
    // Archived tasks leave the state counts and are counted on their own.
    assert_eq!(m["archived"], 0);
    e.ok(&["archive", "--older-than", "0s", "-s", "completed"]);
    let m = e.json(&["metrics", "--json"]);
    assert_eq!(m["archived"], 2);
    assert_eq!(m["tasks_by_state"]["completed"], 0);
    assert_eq!(m["counters"]["completions"], 2);
    let text = e.ok(&["metrics"]);
    assert!(text.contains("orchestrate_archived_tasks 2\n"), "{text}");
    // What is not a regular file there is not a task (spec 2).
    let archive = e.coord().join("archive");
    std::fs::create_dir(archive.join("zz.json")).unwrap();
    std::os::unix::fs::symlink("a.json", archive.join("lk.json")).unwrap();
    std::fs::write(archive.join("notes.txt"), "x").unwrap();
    assert_eq!(e.json(&["metrics", "--json"])["archived"], 2);
    // An archive/ that is not a directory is bad data (65), not I/O.
    let tmp = e.coord().join("archive.moved");
    std::fs::rename(&archive, &tmp).unwrap();
    std::fs::write(&archive, "not a directory").unwrap();
    e.cmd().args(["metrics"]).assert().code(65);
    e.cmd().args(["create-task", "later"]).assert().code(65);
    // doctor says so, and --fix moves it to quarantine/.
    let out = e.cmd().args(["doctor", "--json"]).assert().code(65);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["file"] == "archive" && f["severity"] == "error"),
        "{v}"
    );
    e.cmd().args(["doctor", "--fix"]).assert().success();
    assert!(!archive.exists());
    std::fs::rename(&tmp, &archive).unwrap();
    assert_eq!(e.json(&["metrics", "--json"])["archived"], 2);
}

#[test]
fn watch_json_sees_create_claim_complete_in_order() {
    let e = Env::new("observe");
    let mut child = std::process::Command::new(bin())
        .current_dir(e.dir.path())
        .env_remove("COORDINATION_DIR")
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(20))
            .expect("first status"),
    )
    .unwrap();
    assert_eq!(first["type"], "status");
    e.ok(&["create-task", "w", "--id", "w"]);
    e.ok(&["claim", "--agent", "a1"]);
    e.ok(&["complete", "w", "--token", "1"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "event" && v["data"]["task_id"] == "w" {
                seen.push(v["data"]["event"].as_str().unwrap().to_string());
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["task_created", "task_claimed", "task_completed"]);
}

#[test]
fn claim_wait_wakes_on_create_and_times_out_with_exit_5() {
    let e = Env::new("observe");
    let start = Instant::now();
    e.cmd()
        .args(["claim", "--agent", "a", "--wait", "300ms"])
        .assert()
        .code(5);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let child = std::process::Command::new(bin())
        .current_dir(e.dir.path())
        .env_remove("COORDINATION_DIR")
        .args(["claim", "--agent", "a", "--wait", "20s", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    e.ok(&["create-task", "late", "--id", "late"]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task"]["id"], "late");
}

#[test]
fn claim_wait_also_wakes_when_a_backoff_ends() {
    let e = Env::new("observe");
    let cfg = e.coord().join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["backoff"] = serde_json::json!({"base_ms": 400, "factor": 1.0, "max_ms": 400, "jitter": 0.0});
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    e.ok(&["create-task", "b", "--id", "b"]);
    e.ok(&["claim", "--agent", "a"]);
    e.ok(&["fail", "b", "--token", "1", "--error", "x"]);
    let start = Instant::now();
    let v: Value =
        serde_json::from_str(&e.ok(&["claim", "--agent", "a", "--wait", "10s", "--json"])).unwrap();
    assert_eq!(v["task"]["id"], "b");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn eight_waiters_one_task_exactly_one_claims_it() {
    let e = Env::new("observe");
    let children: Vec<_> = (0..8)
        .map(|i| {
            std::process::Command::new(bin())
                .current_dir(e.dir.path())
                .env_remove("COORDINATION_DIR")
                .args([
                    "claim",
                    "--agent",
                    &format!("w{i}"),
                    "--wait",
                    "3s",
                    "--json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    e.ok(&["create-task", "only", "--id", "only"]);
    let mut winners = 0;
    let mut timeouts = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => {
                winners += 1;
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["task"]["id"], "only");
            }
            Some(5) => timeouts += 1,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!((winners, timeouts), (1, 7));
    let t: Value =
        serde_json::from_slice(&std::fs::read(e.coord().join("tasks/only.json")).unwrap()).unwrap();
    assert_eq!(t["fencing_token"], 1);
}

#[test]
fn graph_of_a_fixture_dag_in_dot_and_mermaid() {
    let e = Env::new("observe");
    e.ok(&["create-task", "first", "--id", "a"]);
    e.ok(&["create-task", "second", "--id", "b", "-d", "a"]);
    e.ok(&[
        "create-task",
        "third \"quoted\"",
        "--id",
        "c",
        "-d",
        "a",
        "-d",
        "b",
    ]);
    e.ok(&["claim", "a", "--agent", "x"]);
    e.ok(&["complete", "a", "--token", "1"]);
    let dot = e.ok(&["graph", "--format", "dot"]);
    assert!(dot.starts_with("digraph tasks {"));
    assert!(dot.contains("\"a\" -> \"b\";"));
    assert!(dot.contains("\"a\" -> \"c\";"));
    assert!(dot.contains("\"b\" -> \"c\";"));
    assert!(dot.contains("third \\\"quoted\\\""));
    assert!(
        dot.contains("\"a\" [label=\"a\\ncompleted · p5\\nfirst\", fillcolor=\"#95d5b2\"];"),
        "{dot}"
    );
    let mm = e.ok(&["graph", "--format", "mermaid"]);
    assert!(mm.starts_with("flowchart LR\n"));
    assert!(mm.contains("t_a --> t_b"));
    assert!(mm.contains(":::completed"));
    assert!(mm.contains(":::pending"));
    assert!(mm.contains("classDef dead fill:#f28482"));
    if let Ok(p) = which_dot() {
        let out = std::process::Command::new(p)
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn();
        if let Ok(mut child) = out {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), dot.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "graphviz rejected the DOT");
        }
    }
}

fn which_dot() -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("dot"))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

#[test]
fn events_filters_by_task_agent_and_since() {
    let e = Env::new("observe");
    e.ok(&["create-task", "one", "--id", "one"]);
    e.ok(&["create-task", "two", "--id", "two"]);
    e.ok(&["claim", "two", "--agent", "z"]);
    let lines = e.ok(&["events", "--task", "two", "--json"]);
    let evs: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|v| v["task_id"] == "two"));
    let by_agent = e.ok(&["events", "--agent", "z", "--json"]);
    assert_eq!(by_agent.lines().count(), 1);
    let future = e.ok(&["events", "--since", "2999-01-01T00:00:00Z", "--json"]);
    assert!(future.is_empty());
    let recent = e.ok(&["events", "--since", "1h", "--json"]);
    assert!(recent.lines().count() >= 3);
    e.cmd()
        .args(["events", "--since", "yesterday-ish"])
        .assert()
        .code(2);
    let _ = Path::new("");
}
