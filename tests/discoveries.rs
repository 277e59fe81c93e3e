//! `discover`, `discoveries`, `example` and `status -c` through the binary
//! (`spec/PROTOCOL.md` sections 3.6 and 11): `--json` output, exit codes
//! and what is left on disk.

use serde_json::{json, Value};
use std::path::PathBuf;

mod common;
use common::Env;

fn env() -> Env {
    Env::new("find things")
}

/// The binary in the project, without the variables `discover` reads.
fn cmd(e: &Env) -> assert_cmd::Command {
    let mut c = e.cmd();
    c.env_remove("ORCHESTRATE_TASK_ID")
        .env_remove("ORCHESTRATE_CORRELATION_ID")
        .env_remove("ORCHESTRATE_FENCING_TOKEN")
        .env_remove("CLAUDE_MODEL");
    c
}

#[track_caller]
fn run(e: &Env, args: &[&str], code: i32) -> (String, String) {
    let out = cmd(e).args(args).output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(code), "{args:?}:\n{so}\n{se}");
    (so, se)
}

#[track_caller]
fn json_of(e: &Env, args: &[&str]) -> Value {
    let (so, _) = run(e, args, 0);
    serde_json::from_str(&so).unwrap_or_else(|err| panic!("{err}: {so}"))
}

fn file(e: &Env) -> PathBuf {
    e.coord().join("discoveries.json")
}

fn on_disk(e: &Env) -> Value {
    serde_json::from_slice(&std::fs::read(file(e)).unwrap()).unwrap()
}

fn events(e: &Env, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(e.coord().join("events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

#[test]
fn discover_records_the_agent_and_task_and_discoveries_lists_it() {
    let e = env();
    e.ok(&["create-task", "Write the client", "--id", "client"]);
    let d = json_of(
        &e,
        &[
            "--json",
            "discover",
            "The API needs a token",
            "--content",
            "Send it as X-Token; see docs/auth.md",
            "--agent",
            "w1",
            "--task",
            "client",
            "--tag",
            "api",
        ],
    );
    let id = d["id"].as_str().unwrap();
    assert!(
        id.len() == 13 && id.starts_with("disc-") && id[5..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(d["title"], "The API needs a token");
    assert_eq!(d["content"], "Send it as X-Token; see docs/auth.md");
    assert_eq!(d["agent_id"], "w1");
    assert_eq!(d["related_task"], "client");
    assert_eq!(d["tags"], json!(["api"]));
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    // The file holds exactly that record, in the Python tool's shape plus a
    // schema version.
    let f = on_disk(&e);
    assert_eq!(f["schema_version"], 1);
    assert_eq!(f["discoveries"], json!([d.clone()]));
    // One event.
    let ev = events(&e, "discovery_recorded");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["discovery_id"], d["id"]);
    assert_eq!(ev[0]["task_id"], "client");
    assert_eq!(ev[0]["agent_id"], "w1");
    // From the environment, as an agent process of `run`/`work` has it.
    let out = cmd(&e)
        .args(["--json", "discover", "Second"])
        .env("ORCHESTRATE_AGENT_ID", "w2")
        .env("ORCHESTRATE_TASK_ID", "client")
        .env("ORCHESTRATE_CORRELATION_ID", "run-12345678")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let d2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d2["agent_id"], "w2");
    assert_eq!(d2["related_task"], "client");
    assert_eq!(d2["correlation_id"], "run-12345678");
    assert_eq!(d2["content"], "");
    // Without agent or task.
    let d3 = json_of(&e, &["--json", "discover", "Third"]);
    assert_eq!(d3["agent_id"], Value::Null);
    assert_eq!(d3["related_task"], Value::Null);

    let all = json_of(&e, &["--json", "discoveries"]);
    let ids: Vec<&Value> = all["discoveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, vec![&d["id"], &d2["id"], &d3["id"]], "oldest first");
    let by_task = json_of(&e, &["--json", "discoveries", "--task", "client"]);
    assert_eq!(by_task["discoveries"].as_array().unwrap().len(), 2);
    let last = json_of(&e, &["--json", "discoveries", "--last", "1"]);
    assert_eq!(last["discoveries"], json!([d3]));
    let (human, _) = run(&e, &["discoveries"], 0);
    assert!(human.contains("The API needs a token") && human.contains("task client"));
    let (log, _) = run(&e, &["events"], 0);
    assert!(
        log.lines()
            .any(|l| l.contains("discovery_recorded") && l.contains("The API needs a token")),
        "{log}"
    );
    let (id_line, _) = run(&e, &["discover", "Fourth"], 0);
    assert!(id_line.trim().starts_with("disc-"), "{id_line}");
}

#[test]
fn bad_discoveries_are_refused_and_change_nothing() {
    let e = env();
    e.ok(&["create-task", "t", "--id", "t"]);
    let events_before = std::fs::read(e.coord().join("events.jsonl")).unwrap();
    let long = "x".repeat(64 * 1024 + 1);
    for args in [
        vec!["discover", "   "],
        vec!["discover", "ok", "--task", "nope"],
        vec!["discover", "ok", "--task", "../t"],
        vec!["discover", "ok", "--agent", "a/b"],
        vec!["discover", "ok", "--content", long.as_str()],
    ] {
        let mut a = vec!["--json"];
        a.extend(&args);
        let (so, _) = run(&e, &a, 2);
        let doc: Value = serde_json::from_str(&so).unwrap();
        assert_eq!(doc["error"]["kind"], "invalid", "{args:?}");
        assert!(!file(&e).exists(), "{args:?} wrote discoveries.json");
    }
    assert_eq!(
        std::fs::read(e.coord().join("events.jsonl")).unwrap(),
        events_before
    );
    // No directory: exit 3.
    let empty = tempfile::tempdir().unwrap();
    let out = cmd(&e)
        .current_dir(empty.path())
        .args(["discoveries"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_corrupt_or_newer_file_is_bad_data_and_left_alone() {
    let e = env();
    for (bytes, kind) in [
        (&b"{\"discoveries\": [ {"[..], "corrupt"),
        (&b"[]"[..], "corrupt"),
        (&b"{\"discoveries\": {}}"[..], "corrupt"),
        (
            &b"{\"schema_version\": 2, \"discoveries\": []}"[..],
            "newer_schema",
        ),
    ] {
        std::fs::write(file(&e), bytes).unwrap();
        for args in [
            &["--json", "discover", "x"][..],
            &["--json", "discoveries"][..],
        ] {
            let (so, _) = run(&e, args, 65);
            let doc: Value = serde_json::from_str(&so).unwrap();
            assert_eq!(doc["error"]["kind"], kind, "{args:?}");
            assert_eq!(std::fs::read(file(&e)).unwrap(), bytes);
        }
    }
}

#[test]
fn a_python_file_without_schema_version_is_read_and_kept() {
    let e = env();
    // The Python tool's shape, with a member of its own we must keep.
    std::fs::write(
        file(&e),
        r#"{"discoveries": [{"id": "disc-0000abcd", "title": "Old", "content": "from python", "agent_id": "agent-1", "created_at": "2026-01-02T03:04:05.123456", "tags": [], "confidence": 0.9}], "note": "kept"}"#,
    )
    .unwrap();
    let v = json_of(&e, &["--json", "discoveries"]);
    assert_eq!(v["discoveries"][0]["title"], "Old");
    assert_eq!(v["discoveries"][0]["related_task"], Value::Null);
    // Its naive local time is read as UTC, in the canonical form.
    assert_eq!(
        v["discoveries"][0]["created_at"],
        "2026-01-02T03:04:05.123Z"
    );
    json_of(&e, &["--json", "discover", "New"]);
    let f = on_disk(&e);
    assert_eq!(f["schema_version"], 1);
    assert_eq!(f["note"], "kept");
    assert_eq!(f["discoveries"][0]["confidence"], 0.9);
    assert_eq!(f["discoveries"][1]["title"], "New");
}

#[test]
fn the_file_is_capped_at_the_newest_thousand() {
    let e = env();
    let old: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"id": format!("disc-{i:08x}"), "title": format!("d{i}"), "content": "", "agent_id": null,
                   "related_task": null, "tags": [], "created_at": "2026-01-01T00:00:00.000Z"})
        })
        .collect();
    std::fs::write(
        file(&e),
        serde_json::to_vec(&json!({"schema_version": 1, "discoveries": old})).unwrap(),
    )
    .unwrap();
    json_of(&e, &["--json", "discover", "newest"]);
    let f = on_disk(&e);
    let v = f["discoveries"].as_array().unwrap();
    assert_eq!(v.len(), 1000);
    assert_eq!(v[0]["title"], "d1", "the oldest was dropped");
    assert_eq!(v[999]["title"], "newest");
}

#[test]
fn concurrent_discoverers_lose_nothing() {
    // The Python tool wrote discoveries without the lock and lost updates.
    let e = env();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let mut c = std::process::Command::new(common::bin());
            c.current_dir(e.root())
                .env_remove("COORDINATION_DIR")
                .env_remove("ORCHESTRATE_TASK_ID")
                .arg("discover")
                .arg(format!("from {i}"))
                .arg("--agent")
                .arg(format!("a{i}"));
            c
        })
        .collect();
    let mut running = Vec::new();
    for _round in 0..4 {
        for c in &children {
            let mut c2 = std::process::Command::new(c.get_program());
            c2.args(c.get_args()).current_dir(e.root());
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => c2.env(k, v),
                    None => c2.env_remove(k),
                };
            }
            running.push(c2.stdout(std::process::Stdio::null()).spawn().unwrap());
        }
    }
    for mut ch in running {
        assert!(ch.wait().unwrap().success());
    }
    let f = on_disk(&e);
    let v = f["discoveries"].as_array().unwrap();
    assert_eq!(v.len(), 24);
    let ids: std::collections::HashSet<&str> =
        v.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 24, "ids are unique");
    assert_eq!(events(&e, "discovery_recorded").len(), 24);
}

#[test]
fn example_prints_files_that_from_config_and_run_accept() {
    let e = env();
    let (config, comments) = run(&e, &["example"], 0);
    let doc: Value = serde_json::from_str(&config).expect("stdout is the JSON alone");
    assert!(comments.contains("working_directory") && comments.starts_with('#'));
    std::fs::write(e.root().join("orchestration.json"), &config).unwrap();
    let report = json_of(
        &e,
        &[
            "--json",
            "-q",
            "from-config",
            "orchestration.json",
            "--adapter",
            "shell",
        ],
    );
    assert_eq!(report["success"], true, "{report:#}");
    assert_eq!(report["goal"], doc["goal"]);
    assert_eq!(report["totals"]["completed"], 3);
    let (tasks, _) = run(&e, &["example", "tasks"], 0);
    let arr: Value = serde_json::from_str(&tasks).unwrap();
    assert_eq!(arr, doc["tasks"]);
    std::fs::write(e.root().join("tasks.json"), &tasks).unwrap();
    let report = json_of(
        &e,
        &[
            "--json",
            "-q",
            "run",
            "again",
            "--tasks",
            "tasks.json",
            "--adapter",
            "shell",
        ],
    );
    assert_eq!(report["totals"]["completed"], 3, "{report:#}");
    // --json: both files and the comments, one document.
    let all = json_of(&e, &["--json", "example"]);
    assert_eq!(all["config"], doc);
    assert_eq!(all["tasks"], arr);
    assert!(all["comments"]["config"]["goal"].is_string());
    assert!(all["comments"]["task"]["dependencies"].is_string());
    // -q: no comments.
    let (_, quiet) = run(&e, &["-q", "example"], 0);
    assert_eq!(quiet, "");
}

#[test]
fn status_c_shows_a_configurations_tasks_without_a_queue() {
    let e = env();
    let (config, _) = run(&e, &["example"], 0);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("orchestration.json");
    std::fs::write(&f, &config).unwrap();
    let fs = f.display().to_string();
    let out = cmd(&e)
        .current_dir(dir.path())
        .args(["--json", "status", "-c", &fs])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["goal"], "Add a /health endpoint to the web server");
    assert_eq!(s["max_workers"], 3);
    assert_eq!(s["task_timeout"], 600);
    assert_eq!(s["total"], 3);
    assert_eq!(s["tasks"][1]["id"], "test");
    assert_eq!(s["tasks"][1]["dependencies"], json!(["handler"]));
    assert_eq!(s["tasks"][2]["priority"], 5);
    assert!(
        !dir.path().join(".coordination").exists(),
        "status -c opened a queue"
    );
    let out = cmd(&e)
        .current_dir(dir.path())
        .args(["status", "--config", &fs])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("tasks: 3") && human.contains("handler") && human.contains("DEPENDS"),
        "{human}"
    );
    // A configuration made by init has no tasks.
    e.ok(&["init", "plan me", "-o", "empty.json"]);
    let s = json_of(&e, &["--json", "status", "-c", "empty.json"]);
    assert_eq!(s["total"], 0);
    assert_eq!(s["goal"], "plan me");
    // Missing and invalid files are bad input.
    let (so, _) = run(&e, &["--json", "status", "-c", "nope.json"], 2);
    assert!(so.contains("\"invalid\""));
    std::fs::write(
        e.root().join("bad.json"),
        r#"{"goal": "g", "tasks": [{"priority": 11}]}"#,
    )
    .unwrap();
    let (so, _) = run(&e, &["--json", "status", "-c", "bad.json"], 2);
    assert!(
        so.contains("description") && so.contains("priority"),
        "{so}"
    );
}
