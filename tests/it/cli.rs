//! Every command of the CLI: stdout, `--json` shape, exit code, and the task
//! files on disk afterwards. Then bad input and bad data, where nothing may
//! be written.

use crate::support::{ts, Claim, TestEnv};
use orchestrate::{BatchIds, Coordination, NewTask};
use serde_json::{json, Value};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn assert_close(t: chrono::DateTime<chrono::Utc>, want: chrono::DateTime<chrono::Utc>, what: &str) {
    let diff = (t - want).num_milliseconds().abs();
    assert!(diff < 5_000, "{what}: {t} is {diff} ms from {want}");
}

// ---------------------------------------------------------------- init

#[test]
fn init_creates_the_directory_and_a_default_config() {
    let env = TestEnv::uninit();
    let out = env.ok(&["init", "Build it"]);
    assert!(out.starts_with("Initialized "), "{out}");
    for d in ["tasks", "logs", "agents"] {
        assert!(env.dir().join(d).is_dir(), "{d}/ missing");
    }
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["schema_version"], 1);
    assert_eq!(cfg["goal"], "Build it");
    assert_eq!(cfg["lease_ms"], 300_000);
    assert_eq!(cfg["max_attempts"], 3);
    assert_eq!(cfg["durability"], "durable");
    assert_eq!(
        cfg["backoff"],
        json!({"base_ms": 1000, "factor": 2.0, "max_ms": 60000, "jitter": 0.5})
    );
    assert_close(ts(&cfg["created_at"]), now(), "created_at");
}

#[test]
fn init_twice_changes_nothing() {
    let env = TestEnv::uninit();
    let first = env.json(&["init", "first goal", "--json"], 0);
    assert_eq!(first["created"], true);
    assert_eq!(first["config_file"], Value::Null);
    assert_eq!(first["config"]["goal"], "first goal");
    let id = env.create("a task", &[]);
    let before = env.snapshot();
    let cfg_before = std::fs::read(env.dir().join("config.json")).unwrap();

    let out = env.ok(&["init", "second goal"]);
    assert!(out.contains("already initialized"), "{out}");
    let second = env.json(&["init", "third goal", "--json"], 0);
    assert_eq!(second["created"], false);
    assert_eq!(second["config"]["goal"], "first goal");

    assert_eq!(
        std::fs::read(env.dir().join("config.json")).unwrap(),
        cfg_before,
        "config.json bytes changed"
    );
    assert_eq!(env.snapshot(), before);
    assert_eq!(env.task_json(&id)["status"], "pending");
}

#[test]
fn init_output_writes_a_run_configuration_and_refuses_to_overwrite_it() {
    let env = TestEnv::uninit();
    let file = env.root().join("orchestration.json");
    let wd = env.root().join("work");
    std::fs::create_dir(&wd).unwrap();
    let out = env.ok(&[
        "init",
        "Ship it",
        "-o",
        file.to_str().unwrap(),
        "-C",
        wd.to_str().unwrap(),
    ]);
    assert!(out.contains("Config created"), "{out}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["goal"], "Ship it");
    assert_eq!(doc["working_directory"], wd.to_str().unwrap());
    assert_eq!(doc["tasks"], json!([]));
    assert!(doc["max_workers"].is_u64());
    assert!(env.dir().join("config.json").is_file());

    let bytes = std::fs::read(&file).unwrap();
    let snap = env.snapshot();
    let out = env.expect(&["init", "Other goal", "-o", file.to_str().unwrap()], 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "the message should suggest --force"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "file overwritten without --force"
    );
    assert_eq!(env.snapshot(), snap);

    env.ok(&[
        "init",
        "Other goal",
        "-o",
        file.to_str().unwrap(),
        "--force",
    ]);
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["goal"], "Other goal");
}

#[test]
fn commands_on_a_missing_directory_exit_3_and_create_nothing() {
    let env = TestEnv::uninit();
    for args in [
        vec!["list"],
        vec!["status"],
        vec!["show", "x"],
        vec!["create-task", "x"],
        vec!["claim", "--agent", "a"],
        vec!["reap"],
    ] {
        let out = env.expect(&args, 3);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("orchestrate init"),
            "{args:?}: the message should say to run init"
        );
    }
    assert!(
        !env.dir().exists(),
        "a read or failed command created the directory"
    );
}

// ---------------------------------------------------------------- create-task

#[test]
fn create_task_prints_the_id_and_writes_the_task_file() {
    let env = TestEnv::new();
    let out = env.ok(&["create-task", "Write the parser"]);
    let id = out.trim();
    assert_eq!(out, format!("{id}\n"), "stdout must be the id alone");
    assert!(id.starts_with("task-"), "{id}");
    let t = env.task_json(id);
    assert_eq!(t["schema_version"], 1);
    assert_eq!(t["id"], id);
    assert_eq!(t["description"], "Write the parser");
    assert_eq!(t["priority"], 5);
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 0);
    assert_eq!(t["max_attempts"], 3);
    assert_eq!(t["fencing_token"], 0);
    assert_eq!(t["claimed_by"], Value::Null);
    assert_eq!(t["dependencies"], json!([]));
    assert_close(ts(&t["created_at"]), now(), "created_at");
    // Pretty-printed, one field per line, trailing newline (DESIGN 2).
    let text = String::from_utf8(env.task_bytes(id)).unwrap();
    assert!(text.starts_with("{\n  \"schema_version\": 1,\n"), "{text}");
    assert!(text.ends_with("}\n"));
}

#[test]
fn create_task_json_prints_the_whole_task_as_on_disk() {
    let env = TestEnv::new();
    let dep = env.create("first", &["--id", "dep-1"]);
    let printed = env.json(
        &[
            "create-task",
            "second",
            "--id",
            "t-2",
            "-p",
            "2",
            "-d",
            &dep,
            "-f",
            "src/a.rs",
            "-f",
            "src/b.rs",
            "--hints",
            "be careful",
            "--tag",
            "rust",
            "--tag",
            "parser",
            "--command",
            "make test",
            "--max-attempts",
            "7",
            "--json",
        ],
        0,
    );
    assert_eq!(
        printed,
        env.task_json("t-2"),
        "--json output differs from the file"
    );
    assert_eq!(printed["id"], "t-2");
    assert_eq!(printed["priority"], 2);
    assert_eq!(printed["dependencies"], json!(["dep-1"]));
    assert_eq!(printed["context"]["files"], json!(["src/a.rs", "src/b.rs"]));
    assert_eq!(printed["context"]["hints"], "be careful");
    assert_eq!(printed["context"]["tags"], json!(["rust", "parser"]));
    assert_eq!(printed["command"], "make test");
    assert_eq!(printed["max_attempts"], 7);
    assert!(printed["seq"].as_u64().unwrap() > env.task_json("dep-1")["seq"].as_u64().unwrap());
}

#[test]
fn create_task_with_config_appends_to_the_file_and_not_the_queue() {
    let env = TestEnv::new();
    let file = env.root().join("orch.json");
    env.ok(&["init", "g", "-o", file.to_str().unwrap()]);
    let before = env.snapshot();
    let out = env.ok(&[
        "create-task",
        "first",
        "-c",
        file.to_str().unwrap(),
        "-p",
        "2",
        "--id",
        "s1",
    ]);
    assert!(out.contains("Task added"), "{out}");
    let v = env.json(
        &[
            "create-task",
            "second",
            "-c",
            file.to_str().unwrap(),
            "--id",
            "s2",
            "-d",
            "s1",
            "--json",
        ],
        0,
    );
    assert_eq!(v["index"], 1);
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let tasks = doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["description"], "first");
    assert_eq!(tasks[0]["priority"], 2);
    assert_eq!(tasks[1]["id"], "s2");
    assert_eq!(tasks[1]["dependencies"], json!(["s1"]));
    assert_eq!(doc["goal"], "g", "other fields of the file are kept");
    assert_eq!(env.snapshot(), before, "-c must not touch the queue");

    let missing = env.root().join("nope.json");
    env.expect(&["create-task", "x", "-c", missing.to_str().unwrap()], 2);
    assert!(!missing.exists());

    // The checks `from-config` would make, made now: nothing is written.
    let bytes = std::fs::read(&file).unwrap();
    let f = file.to_str().unwrap();
    let v = env.json(&["create-task", "x", "-c", f, "-d", "nope", "--json"], 2);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`nope`") && msg.contains("nothing was written"),
        "{msg}"
    );
    let out = env.expect(&["create-task", "x", "-c", f, "--id", "s3", "-d", "s3"], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cycle"), "{err}");
    env.expect(&["create-task", "x", "-c", f, "--id", "s1"], 2);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "a refused task changes nothing"
    );
}

// ---------------------------------------------------------------- claim

#[test]
fn claim_json_shape_and_task_file() {
    let env = TestEnv::new();
    let id = env.create("work", &[]);
    let start = now();
    let v = env.json(&["claim", "--agent", "agent-a", "--json"], 0);
    for k in ["task", "fencing_token", "attempt", "lease_expires_at"] {
        assert!(v.get(k).is_some(), "claim --json lacks `{k}`: {v}");
    }
    assert_eq!(v["task"]["id"], id.as_str());
    assert_eq!(v["fencing_token"], 1);
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["lease_expires_at"], v["task"]["lease_expires_at"]);
    let lease = ts(&v["lease_expires_at"]);
    assert_close(
        lease,
        start + chrono::TimeDelta::milliseconds(300_000),
        "default lease",
    );

    let t = env.task_json(&id);
    assert_eq!(v["task"], t, "claim --json task differs from the file");
    assert_eq!(t["status"], "claimed");
    assert_eq!(t["claimed_by"], "agent-a");
    assert_eq!(t["fencing_token"], 1);
    assert_eq!(t["attempts"], 1);
    assert_eq!(ts(&t["lease_expires_at"]), lease);
}

#[test]
fn claim_human_output() {
    let env = TestEnv::new();
    let id = env.create("the description", &[]);
    let out = env.ok(&["claim", "--agent", "a", "--lease", "90s"]);
    assert!(
        out.starts_with(&format!("claimed {id} (token 1, attempt 1/3")),
        "{out}"
    );
    assert!(out.contains("the description"), "{out}");
    let t = env.task_json(&id);
    let lease = ts(&t["lease_expires_at"]) - ts(&t["claimed_at"]);
    assert_eq!(lease.num_milliseconds(), 90_000);
}

#[test]
fn claim_takes_most_urgent_then_oldest() {
    let env = TestEnv::new();
    let low = env.create("low", &["-p", "9"]);
    let old5 = env.create("old five", &["-p", "5"]);
    let urgent = env.create("urgent", &["-p", "1"]);
    let new5 = env.create("new five", &["-p", "5"]);
    let got: Vec<String> = (0..4).map(|_| env.claim("a", &[]).id).collect();
    assert_eq!(got, vec![urgent, old5, new5, low]);
}

#[test]
fn claim_with_nothing_ready_exits_3_with_a_reason() {
    let env = TestEnv::new();
    // Empty queue.
    let snap = env.snapshot();
    let v = env.json(&["claim", "--agent", "a", "--json"], 3);
    assert_eq!(v["task"], Value::Null);
    assert_eq!(v["reason"], "empty");
    assert_eq!(v["next_ready_at"], Value::Null);
    assert!(v["message"].is_string());
    assert_eq!(env.snapshot(), snap);
    let out = env.expect(&["claim", "--agent", "a"], 3);
    assert!(out.stdout.is_empty(), "human nothing-ready goes to stderr");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing ready"));

    // Only a task whose dependency is held by someone.
    let a = env.create("a", &[]);
    let b = env.create("b", &["-d", &a]);
    env.claim("x", &[]);
    let snap = env.snapshot();
    let v = env.json(&["claim", "--agent", "y", "--json"], 3);
    assert_eq!(v["task"], Value::Null);
    assert_eq!(v["reason"], "waiting_on_dependencies");
    assert_eq!(env.snapshot(), snap);
    assert_eq!(env.task_json(&b)["status"], "pending");
}

#[test]
fn claim_reports_backing_off_with_next_ready_at() {
    let env = TestEnv::new();
    let id = env.create("flaky", &[]);
    let c = env.claim("a", &[]);
    env.ok(&["fail", &id, "--token", &c.token_arg(), "--error", "boom"]);
    let not_before = env.task_json(&id)["not_before"].clone();
    let v = env.json(&["claim", "--agent", "b", "--json"], 3);
    assert_eq!(v["task"], Value::Null);
    assert_eq!(v["reason"], "backing_off");
    assert_eq!(v["next_ready_at"], not_before);
    assert!(ts(&v["next_ready_at"]) > now() - chrono::TimeDelta::milliseconds(1));
}

#[test]
fn claim_reports_all_claimed_and_no_match() {
    let env = TestEnv::new();
    env.create("a", &["--tag", "rust"]);
    let v = env.json(&["claim", "--agent", "a", "--tag", "go", "--json"], 3);
    assert_eq!(v["reason"], "no_match");
    let c = env.claim("a", &["--tag", "rust"]);
    assert_eq!(c.doc["task"]["context"]["tags"], json!(["rust"]));
    let v = env.json(&["claim", "--agent", "b", "--json"], 3);
    assert_eq!(v["reason"], "all_claimed");
}

#[test]
fn claim_by_tag_skips_untagged_tasks() {
    let env = TestEnv::new();
    let _urgent = env.create("untagged but urgent", &["-p", "1"]);
    let tagged = env.create("tagged", &["-p", "9", "--tag", "docs"]);
    assert_eq!(env.claim("a", &["--tag", "docs"]).id, tagged);
}

#[test]
fn claim_named_task() {
    let env = TestEnv::new();
    let first = env.create("first", &["-p", "1"]);
    let second = env.create("second", &["-p", "9"]);
    assert_eq!(env.claim("a", &[&second]).id, second);
    assert_eq!(env.task_json(&first)["status"], "pending");
    let snap = env.snapshot();
    let out = env.expect(&["claim", "--agent", "b", &second], 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by a"));
    env.expect(&["claim", "--agent", "b", "no-such-task"], 3);
    assert_eq!(env.snapshot(), snap);
}

#[test]
fn claim_needs_an_agent() {
    let env = TestEnv::new();
    env.create("x", &[]);
    let snap = env.snapshot();
    env.expect(&["claim"], 2);
    env.expect(&["claim", "--agent", "../evil"], 2);
    env.expect(&["claim", "--agent", "a/b"], 2);
    env.expect(&["claim", "--agent", "a", "--lease", "0s"], 2);
    assert_eq!(env.snapshot(), snap);
    // The environment variable works as well.
    env.cmd()
        .args(["claim", "--json"])
        .env("ORCHESTRATE_AGENT_ID", "from-env")
        .assert()
        .success();
}

// ---------------------------------------------------------------- heartbeat

#[test]
fn heartbeat_extends_the_lease() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &["--lease", "1m"]);
    let before = ts(&env.task_json(&id)["lease_expires_at"]);
    let start = now();
    let v = env.json(
        &[
            "heartbeat",
            &id,
            "--token",
            &c.token_arg(),
            "--lease",
            "10m",
            "--json",
        ],
        0,
    );
    let t = env.task_json(&id);
    assert_eq!(v, t);
    let after = ts(&t["lease_expires_at"]);
    assert!(after > before);
    assert_close(after, start + chrono::TimeDelta::minutes(10), "new lease");
    assert_eq!(t["status"], "claimed");
    assert_eq!(t["fencing_token"], 1);
    assert_eq!(t["attempts"], 1);
    let out = env.ok(&["heartbeat", &id, "--token", "1"]);
    assert!(out.contains("extended until"), "{out}");
}

#[test]
fn heartbeat_with_a_stale_token_is_refused() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c1 = env.claim("a", &[]);
    env.ok(&["release", &id, "--token", &c1.token_arg()]);
    let c2 = env.claim("b", &[]);
    assert_eq!(c2.token, 2);
    let bytes = env.task_bytes(&id);
    let v = env.json(&["heartbeat", &id, "--token", "1", "--json"], 4);
    assert_eq!(v["error"]["kind"], "lease_lost");
    assert_eq!(v["error"]["exit_code"], 4);
    env.expect(&["heartbeat", &id, "--token", "3"], 4);
    env.expect(&["heartbeat", "missing", "--token", "1"], 3);
    assert_eq!(env.task_bytes(&id), bytes);
}

// ---------------------------------------------------------------- complete

#[test]
fn complete_with_result_text() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &[]);
    let out = env.ok(&[
        "complete",
        &id,
        "--token",
        &c.token_arg(),
        "--result",
        "all good",
    ]);
    assert_eq!(out, format!("completed {id}\n"));
    let t = env.task_json(&id);
    assert_eq!(t["status"], "completed");
    assert_eq!(t["result"], "all good");
    assert_eq!(t["lease_expires_at"], Value::Null);
    assert_eq!(t["fencing_token"], 1);
    assert_close(ts(&t["completed_at"]), now(), "completed_at");
    // Completing again is a conflict, and changes nothing.
    let bytes = env.task_bytes(&id);
    env.expect(&["complete", &id, "--token", "1"], 4);
    assert_eq!(env.task_bytes(&id), bytes);
}

#[test]
fn complete_with_result_file_and_stdin() {
    let env = TestEnv::new();
    let a = env.create("a", &[]);
    let b = env.create("b", &[]);
    let file = env.root().join("result.txt");
    std::fs::write(&file, "line 1\nline 2 ünïcode\n").unwrap();
    let ca = env.claim("w", &[]);
    let v = env.json(
        &[
            "complete",
            &a,
            "--token",
            &ca.token_arg(),
            "--result-file",
            file.to_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(v["result"], "line 1\nline 2 ünïcode\n");
    assert_eq!(env.task_json(&a)["result"], "line 1\nline 2 ünïcode\n");

    let cb = env.claim("w", &[]);
    env.cmd()
        .args([
            "complete",
            &b,
            "--token",
            &cb.token_arg(),
            "--result-file",
            "-",
        ])
        .write_stdin("from stdin")
        .assert()
        .success();
    assert_eq!(env.task_json(&b)["result"], "from stdin");
}

#[test]
fn complete_bad_result_file_writes_nothing() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("w", &[]);
    let snap = env.snapshot();
    // A file that cannot be opened or read is a bad argument (2).
    let missing = env.root().join("missing.txt");
    for f in [&missing, &env.root().to_path_buf()] {
        let out = env.expect(
            &[
                "complete",
                &id,
                "--token",
                &c.token_arg(),
                "--result-file",
                f.to_str().unwrap(),
            ],
            2,
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read result"));
    }
    let big = env.root().join("big.txt");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    env.expect(
        &[
            "complete",
            &id,
            "--token",
            &c.token_arg(),
            "--result-file",
            big.to_str().unwrap(),
        ],
        2,
    );
    env.expect(
        &[
            "complete",
            &id,
            "--token",
            &c.token_arg(),
            "--result",
            "a",
            "--result-file",
            "-",
        ],
        2,
    );
    assert_eq!(env.snapshot(), snap);
    assert_eq!(env.task_json(&id)["status"], "claimed");
}

#[test]
fn complete_makes_dependents_claimable() {
    let env = TestEnv::new();
    let a = env.create("a", &["-p", "9"]);
    let b = env.create("b", &["-p", "1", "-d", &a]);
    let ca = env.claim("w", &[]);
    assert_eq!(ca.id, a, "b waits for a despite its priority");
    env.json(&["claim", "--agent", "w", "--json"], 3);
    env.ok(&["complete", &a, "--token", &ca.token_arg()]);
    assert_eq!(env.claim("w", &[]).id, b);
}

/// `complete --claim-next` (spec 5.10, 11): the completion and the claim of
/// the dependent it made ready are one mutation, one event append; exit 3
/// when the report is done and nothing is left.
#[test]
fn complete_claim_next_claims_the_dependent_in_the_same_mutation() {
    let env = TestEnv::new();
    let a = env.create("a", &[]);
    let b = env.create("b", &["-d", &a]);
    let ca = env.claim("w", &[]);
    let events_before = std::fs::read_to_string(env.dir().join("events.jsonl")).unwrap();
    let doc = env.json(
        &[
            "complete",
            &a,
            "--token",
            &ca.token_arg(),
            "--result",
            "done",
            "--claim-next",
            "--agent",
            "w2",
            "--json",
        ],
        0,
    );
    assert_eq!(doc["reported"]["id"], a.as_str());
    assert_eq!(doc["reported"]["status"], "completed");
    assert_eq!(doc["reported"]["result"], "done");
    assert_eq!(doc["next"]["task"]["id"], b.as_str());
    assert_eq!(doc["next"]["fencing_token"], 1);
    assert_eq!(env.task_json(&a)["status"], "completed");
    let tb = env.task_json(&b);
    assert_eq!(tb["status"], "claimed");
    assert_eq!(tb["claimed_by"], "w2");
    let events = std::fs::read_to_string(env.dir().join("events.jsonl")).unwrap();
    let new: Vec<Value> = events[events_before.len()..]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = new.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["task_completed", "task_claimed"],
        "report first, then claim"
    );
    assert_eq!(new[0]["ts"], new[1]["ts"], "one mutation reads `now` once");

    // Nothing left: the report is done, exit 3 with claim's document.
    let doc = env.json(
        &[
            "complete",
            &b,
            "--token",
            "1",
            "--claim-next",
            "--agent",
            "w2",
            "--json",
        ],
        3,
    );
    assert_eq!(doc["reported"]["status"], "completed");
    assert_eq!(doc["next"]["task"], Value::Null);
    assert_eq!(doc["next"]["reason"], "empty");
    assert_eq!(env.task_json(&b)["status"], "completed");
}

/// A report that fails claims nothing; `--claim-next` needs an agent; its
/// claim flags need `--claim-next`.
#[test]
fn claim_next_after_a_failed_report_claims_nothing() {
    let env = TestEnv::new();
    let a = env.create("a", &[]);
    let b = env.create("b", &[]);
    let ca = env.claim("w", &[]);
    let before = env.task_bytes(&b);
    let doc = env.json(
        &[
            "complete",
            &a,
            "--token",
            "7",
            "--claim-next",
            "--agent",
            "w",
            "--json",
        ],
        4,
    );
    assert_eq!(doc["error"]["kind"], "lease_lost");
    assert_eq!(env.task_bytes(&b), before, "nothing claimed");
    let out = env
        .cmd()
        .args(["complete", &a, "--token", &ca.token_arg(), "--claim-next"])
        .env_remove("ORCHESTRATE_AGENT_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        env.task_json(&a)["status"],
        "claimed",
        "a usage error changes nothing"
    );
    env.expect(
        &["complete", &a, "--token", &ca.token_arg(), "--tag", "x"],
        2,
    );
    assert_eq!(env.task_json(&a)["status"], "claimed");
    // Inside a worker's attempt the worker claims the next task itself:
    // refused, nothing reported.
    let out = env
        .cmd()
        .args([
            "complete",
            &a,
            "--token",
            &ca.token_arg(),
            "--claim-next",
            "--agent",
            "w",
        ])
        .env("ORCHESTRATE_FENCING_TOKEN", ca.token_arg())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside a worker's attempt"));
    assert_eq!(env.task_json(&a)["status"], "claimed");
    assert_eq!(env.task_bytes(&b), before);
    // fail --claim-next: the failed task backs off, the other one is claimed.
    let doc = env.json(
        &[
            "fail",
            &a,
            "--token",
            &ca.token_arg(),
            "--error",
            "boom",
            "--claim-next",
            "--agent",
            "w",
            "--json",
        ],
        0,
    );
    assert_eq!(doc["reported"]["status"], "pending");
    assert_eq!(doc["reported"]["error"], "boom");
    assert_eq!(doc["next"]["task"]["id"], b.as_str());
}

/// A task with many dependencies (fan-in) keeps `index/unmet/<id>`, so
/// completions of all but the last dependency skip reading its file
/// (spec 9). The counter may only err low: deleted or lowered by hand, the
/// task still becomes ready exactly when its last dependency completes; set
/// above the truth, `doctor` reports it and `--fix` repairs it.
#[test]
fn fan_in_counter_promotes_exactly_at_the_last_dependency() {
    let env = TestEnv::new();
    let deps: Vec<String> = (0..20)
        .map(|i| env.create(&format!("dep {i}"), &["--id", &format!("d{i:02}")]))
        .collect();
    // Most urgent, so an unnamed claim (which goes through the index) takes
    // it the moment it is ready.
    let mut args = vec!["--id", "z", "-p", "1"];
    for d in &deps {
        args.extend_from_slice(&["-d", d.as_str()]);
    }
    env.create("fan-in", &args);
    let unmet = env.dir().join("index/unmet/z");
    for (i, d) in deps.iter().enumerate() {
        let c = env.claim("w", &[d]);
        env.ok(&["complete", d, "--token", &c.token_arg()]);
        match i {
            0 => assert_eq!(std::fs::read_to_string(&unmet).unwrap().trim(), "19"),
            5 => std::fs::remove_file(&unmet).unwrap(),
            10 => std::fs::write(&unmet, "2\n").unwrap(),
            _ => {}
        }
        let next = env.claim("x", &[]);
        if i < 19 {
            assert_ne!(next.id, "z", "ready after {} of 20 dependencies", i + 1);
            env.ok(&["release", &next.id, "--token", &next.token_arg()]);
        } else {
            assert_eq!(next.id, "z", "ready once all 20 completed");
        }
    }
}

/// A queue of `n` tasks `d00`, `d01`, ... and a task `z` that depends on
/// all of them.
fn fan_in_queue(n: usize) -> TestEnv {
    let env = TestEnv::new();
    let mut args = vec!["--id".to_string(), "z".to_string()];
    for i in 0..n {
        let d = env.create("dep", &["--id", &format!("d{i:02}")]);
        args.extend(["-d".to_string(), d]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.create("fan-in", &args);
    env
}

/// From the break-it trial: with the index's `dependents/` lines of the
/// last dependency deleted by hand (or the counter set too high), the
/// dependent is still found ready by the first claim that comes up empty,
/// which judges the first waiting task from the task files.
#[test]
fn a_ready_task_lost_from_the_index_is_promoted_by_an_empty_claim() {
    for damage in ["dependents", "unmet"] {
        let env = fan_in_queue(16);
        for i in 0..16 {
            let d = format!("d{i:02}");
            if i == 15 {
                match damage {
                    "dependents" => {
                        std::fs::remove_file(env.dir().join("index/dependents").join(&d)).unwrap()
                    }
                    _ => std::fs::write(env.dir().join("index/unmet/z"), "99\n").unwrap(),
                }
            }
            let c = env.claim("w", &[&d]);
            env.ok(&["complete", &d, "--token", &c.token_arg()]);
        }
        assert_eq!(env.claim("w", &[]).id, "z", "{damage}");
    }
}

#[test]
fn doctor_reports_a_fan_in_counter_above_the_truth() {
    let env = fan_in_queue(16);
    let c = env.claim("w", &["d00"]);
    env.ok(&["complete", "d00", "--token", &c.token_arg()]);
    let unmet = env.dir().join("index/unmet/z");
    assert_eq!(std::fs::read_to_string(&unmet).unwrap().trim(), "15");
    env.ok(&["doctor"]);
    std::fs::write(&unmet, "16\n").unwrap();
    let v = env.json(&["doctor", "--json"], 65);
    assert!(v.to_string().contains("index/unmet/z"), "{v}");
    env.ok(&["doctor", "--fix"]);
    env.ok(&["doctor"]);
}

// ---------------------------------------------------------------- fail

#[test]
fn fail_goes_back_to_pending_with_backoff_then_dead() {
    let env = TestEnv::new();
    let id = env.create("flaky", &["--max-attempts", "2"]);
    // Make the backoff short so the second attempt comes quickly.
    env.edit_config(|c| {
        c["backoff"] = json!({"base_ms": 50, "factor": 2.0, "max_ms": 100, "jitter": 0.0})
    });
    let c1 = env.claim("a", &[]);
    let before_fail = now();
    let v = env.json(
        &[
            "fail",
            &id,
            "--token",
            &c1.token_arg(),
            "--error",
            "exit 1",
            "--json",
        ],
        0,
    );
    let t = env.task_json(&id);
    assert_eq!(v, t);
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 1);
    assert_eq!(t["error"], "exit 1");
    assert_eq!(t["claimed_by"], Value::Null);
    assert_eq!(t["lease_expires_at"], Value::Null);
    let nb = ts(&t["not_before"]);
    let delay = (nb - before_fail).num_milliseconds();
    assert!(
        (0..5_000).contains(&delay),
        "not_before {delay} ms after the failure"
    );
    // The failed holder's token is useless now.
    env.expect(&["complete", &id, "--token", &c1.token_arg()], 4);

    let c2 = crate::support::wait_for("backoff to end", Duration::from_secs(10), || {
        let out = env.run(&["claim", "--agent", "b", "--json"]);
        match out.status.code() {
            Some(0) => Some(Claim::from_json(
                &serde_json::from_slice(&out.stdout).unwrap(),
            )),
            Some(3) => None,
            other => panic!("claim exited {other:?}"),
        }
    });
    assert_eq!((c2.id.as_str(), c2.token, c2.attempt), (id.as_str(), 2, 2));
    let out = env.ok(&["fail", &id, "--token", "2", "--error", "again"]);
    assert!(out.contains("dead"), "{out}");
    let t = env.task_json(&id);
    assert_eq!(t["status"], "dead");
    assert_eq!(t["attempts"], 2);
    assert_eq!(t["error"], "again");
    assert_eq!(t["not_before"], Value::Null);
    assert!(t["completed_at"].is_string());
    env.json(&["claim", "--agent", "c", "--json"], 3);
}

#[test]
fn fail_with_max_attempts_one_is_dead_at_once() {
    let env = TestEnv::new();
    let id = env.create("once", &["--max-attempts", "1"]);
    let c = env.claim("a", &[]);
    let v = env.json(
        &[
            "fail",
            &id,
            "--token",
            &c.token_arg(),
            "--error",
            "no",
            "--json",
        ],
        0,
    );
    assert_eq!(v["status"], "dead");
    assert_eq!(env.task_json(&id)["status"], "dead");
}

// ---------------------------------------------------------------- release

#[test]
fn release_does_not_spend_an_attempt() {
    let env = TestEnv::new();
    let id = env.create("x", &["--max-attempts", "1"]);
    let c = env.claim("a", &[]);
    let out = env.ok(&["release", &id, "--token", &c.token_arg()]);
    assert_eq!(out, format!("released {id}\n"));
    let t = env.task_json(&id);
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 0);
    assert_eq!(
        t["not_before"],
        Value::Null,
        "a release is claimable at once"
    );
    assert_eq!(t["claimed_by"], Value::Null);
    let c2 = env.claim("b", &[]);
    assert_eq!((c2.token, c2.attempt), (2, 1));
    // Releasing with the old token is a conflict.
    let bytes = env.task_bytes(&id);
    env.expect(&["release", &id, "--token", "1"], 4);
    assert_eq!(env.task_bytes(&id), bytes);
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancel_blocks_dependents_transitively() {
    let env = TestEnv::new();
    let a = env.create("a", &[]);
    let b = env.create("b", &["-d", &a]);
    let c = env.create("c", &["-d", &b]);
    let other = env.create("independent", &[]);
    let v = env.json(&["cancel", &a, "--reason", "not needed", "--json"], 0);
    assert_eq!(v["task"]["id"], a.as_str());
    assert_eq!(v["task"]["status"], "cancelled");
    let mut affected: Vec<&str> = v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    affected.sort_unstable();
    let mut want = vec![b.as_str(), c.as_str()];
    want.sort_unstable();
    assert_eq!(affected, want);

    let ta = env.task_json(&a);
    assert_eq!(ta["status"], "cancelled");
    assert_eq!(ta["error"], "not needed");
    for id in [&b, &c] {
        let t = env.task_json(id);
        assert_eq!(t["status"], "blocked", "{id}");
        assert!(t["error"]
            .as_str()
            .unwrap()
            .contains("dead, cancelled or blocked"));
    }
    assert_eq!(env.task_json(&other)["status"], "pending");
    assert_eq!(env.claim("w", &[]).id, other);
    env.json(&["claim", "--agent", "w", "--json"], 3);
}

#[test]
fn cancel_of_a_claimed_task_fences_the_holder() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &[]);
    let out = env.ok(&["cancel", &id]);
    assert_eq!(out, format!("cancelled {id}\n"));
    let bytes = env.task_bytes(&id);
    env.expect(&["complete", &id, "--token", &c.token_arg()], 4);
    env.expect(&["heartbeat", &id, "--token", &c.token_arg()], 4);
    assert_eq!(env.task_bytes(&id), bytes);
    assert_eq!(env.task_json(&id)["status"], "cancelled");
}

#[test]
fn cancel_of_a_finished_task_is_a_conflict() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &[]);
    env.ok(&["complete", &id, "--token", &c.token_arg()]);
    let snap = env.snapshot();
    env.expect(&["cancel", &id], 4);
    env.expect(&["cancel", "nope"], 3);
    assert_eq!(env.snapshot(), snap);
}

// ---------------------------------------------------------------- retry

#[test]
fn retry_revives_a_dead_task_and_unblocks_its_dependents() {
    let env = TestEnv::new();
    let a = env.create("a", &["--max-attempts", "1"]);
    let b = env.create("b", &["-d", &a]);
    let c = env.create("c", &["-d", &b]);
    let ca = env.claim("w", &[]);
    env.ok(&["fail", &a, "--token", &ca.token_arg(), "--error", "broken"]);
    assert_eq!(env.task_json(&a)["status"], "dead");
    assert_eq!(env.task_json(&b)["status"], "blocked");
    assert_eq!(env.task_json(&c)["status"], "blocked");

    // A blocked task cannot be retried while its dependency is dead.
    let snap = env.snapshot();
    env.expect(&["retry", &b], 4);
    assert_eq!(env.snapshot(), snap);

    let v = env.json(&["retry", &a, "--json"], 0);
    assert_eq!(v["task"]["id"], a.as_str());
    assert_eq!(v["affected"].as_array().unwrap().len(), 2);
    let ta = env.task_json(&a);
    assert_eq!(ta["status"], "pending");
    assert_eq!(ta["attempts"], 0);
    assert_eq!(ta["error"], Value::Null);
    assert_eq!(ta["fencing_token"], 1);
    for id in [&b, &c] {
        assert_eq!(env.task_json(id)["status"], "pending", "{id}");
    }
    // The chain runs in order with new tokens.
    let ca2 = env.claim("w", &[]);
    assert_eq!((ca2.id.as_str(), ca2.token), (a.as_str(), 2));
    env.json(&["claim", "--agent", "w", "--json"], 3);
    env.ok(&["complete", &a, "--token", "2"]);
    assert_eq!(env.claim("w", &[]).id, b);
}

#[test]
fn retry_of_a_live_task_is_a_conflict() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let snap = env.snapshot();
    env.expect(&["retry", &id], 4);
    env.expect(&["retry", "nope"], 3);
    assert_eq!(env.snapshot(), snap);
    env.claim("a", &[]);
    env.expect(&["retry", &id], 4);
    let out = env.ok(&["cancel", &id]);
    assert!(out.contains("cancelled"));
    let out = env.ok(&["retry", &id]);
    assert_eq!(out, format!("{id} is pending again\n"));
    assert_eq!(env.task_json(&id)["status"], "pending");
}

// ---------------------------------------------------------------- reap

fn sleep_until_past(t: chrono::DateTime<chrono::Utc>) {
    let ms = (t - now()).num_milliseconds() + 20;
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms as u64));
    }
}

#[test]
fn reap_reclaims_an_expired_lease() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let keep = env.create("held", &[]);
    let c = env.claim("sleepy", &[&id, "--lease", "200ms"]);
    env.claim("busy", &[&keep]);
    assert_eq!(env.json(&["reap", "--json"], 0), json!({"reaped": []}));
    sleep_until_past(ts(&c.doc["lease_expires_at"]));
    let v = env.json(&["reap", "--json"], 0);
    assert_eq!(
        v,
        json!({"reaped": [{"task_id": id, "agent_id": "sleepy", "fencing_token": 1, "status": "pending"}]})
    );
    let t = env.task_json(&id);
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 1, "an expiry spends the attempt");
    assert_eq!(t["claimed_by"], Value::Null);
    assert!(
        t["error"].as_str().unwrap().contains("lease expired"),
        "{t}"
    );
    assert!(t["not_before"].is_string());
    assert_eq!(env.task_json(&keep)["status"], "claimed");
    // The sleepy holder is fenced off.
    let bytes = env.task_bytes(&id);
    env.expect(&["complete", &id, "--token", &c.token_arg()], 4);
    assert_eq!(env.task_bytes(&id), bytes);
    assert_eq!(env.ok(&["reap"]), "no expired leases\n");
}

#[test]
fn reap_of_the_last_attempt_makes_the_task_dead() {
    let env = TestEnv::new();
    let id = env.create("x", &["--max-attempts", "1"]);
    let dep = env.create("after", &["-d", &id]);
    let c = env.claim("a", &["--lease", "200ms"]);
    sleep_until_past(ts(&c.doc["lease_expires_at"]));
    let out = env.ok(&["reap"]);
    assert!(out.contains(&id) && out.contains("dead"), "{out}");
    assert_eq!(env.task_json(&id)["status"], "dead");
    assert_eq!(env.task_json(&dep)["status"], "blocked");
}

#[test]
fn any_mutation_reaps_expired_leases() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &["--lease", "200ms"]);
    sleep_until_past(ts(&c.doc["lease_expires_at"]));
    env.create("unrelated", &[]);
    assert_eq!(env.task_json(&id)["status"], "pending");
}

// ---------------------------------------------------------------- list

#[test]
fn list_filters_and_json() {
    let env = TestEnv::new();
    let a = env.create("alpha task", &["--tag", "x"]);
    let b = env.create("beta task", &[]);
    let c = env.create("gamma task", &["--tag", "x"]);
    env.claim("w", &[&b]);

    let out = env.ok(&["list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with(&a) && lines[2].starts_with(&b) && lines[3].starts_with(&c));
    assert!(
        lines[2].contains("claimed") && lines[2].contains(" w "),
        "{out}"
    );

    let v = env.json(&["list", "--json"], 0);
    let ids: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![a.as_str(), b.as_str(), c.as_str()],
        "creation order"
    );
    assert_eq!(v["errors"], json!([]));
    assert_eq!(v["tasks"][1], env.task_json(&b));

    let v = env.json(&["list", "--status", "pending", "--json"], 0);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);
    let v = env.json(&["list", "-s", "claimed", "-s", "completed", "--json"], 0);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    let v = env.json(&["list", "--tag", "x", "--status", "pending", "--json"], 0);
    let ids: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), c.as_str()]);
    assert_eq!(env.ok(&["list", "--status", "dead"]), "no tasks\n");
    env.expect(&["list", "--status", "bogus"], 2);
}

// ---------------------------------------------------------------- edit

#[test]
fn edit_changes_a_waiting_task_and_claims_follow_the_new_definition() {
    let env = TestEnv::new();
    let a = env.create("first", &["--id", "a", "-p", "5"]);
    let b = env.create("second", &["--id", "b", "-p", "5"]);
    // Raising b's priority moves it ahead of the older a.
    let v = env.json(
        &[
            "edit",
            &b,
            "-p",
            "1",
            "--command",
            "make b",
            "--tag",
            "x",
            "--json",
        ],
        0,
    );
    assert_eq!(v["changed"], json!(["command", "priority", "tags"]));
    let t = env.task_json(&b);
    assert_eq!(
        (t["priority"].as_u64(), t["command"].as_str()),
        (Some(1), Some("make b"))
    );
    assert_eq!(t["context"]["tags"], json!(["x"]));
    assert_eq!(env.json(&["ready", "--json"], 0)["tasks"][0]["id"], "b");
    // A new dependency on a pending task makes a wait for it.
    env.ok(&["edit", &b, "-d", &a]);
    assert_eq!(env.task_json(&b)["dependencies"], json!(["a"]));
    let claimed = env.claim("w", &[]);
    assert_eq!(claimed.id, a, "b waits on a now");
    assert_eq!(
        env.json(&["claim", "--agent", "w2", "--json"], 3)["reason"],
        "waiting_on_dependencies"
    );
    // Claimed and completed tasks are refused.
    let v = env.json(&["edit", &a, "-p", "2", "--json"], 4);
    assert_eq!(v["error"]["kind"], "wrong_state");
    env.ok(&["complete", &a, "--token", &claimed.token.to_string()]);
    env.expect(&["edit", &a, "-p", "2"], 4);
    // b became ready when a completed, with its edited priority.
    assert_eq!(env.claim("w", &[]).id, b);
    let events = std::fs::read_to_string(env.dir().join("events.jsonl")).unwrap();
    let edited: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "task_edited")
        .collect();
    assert_eq!(edited.len(), 2, "one event per edit");
    assert_eq!(edited[1]["changed"], json!(["dependencies"]));
    env.ok(&["doctor"]);
}

#[test]
fn dropping_dependencies_of_a_fan_in_task_keeps_its_counter_safe() {
    // 16 dependencies: the task keeps an `index/unmet/` counter (spec 9),
    // which must not stay at 16 once 15 of them are dropped.
    let env = TestEnv::new();
    let deps: Vec<String> = (0..16)
        .map(|i| env.create("dep", &["--id", &format!("d{i}")]))
        .collect();
    let mut args = vec!["fan", "--id", "fan", "-p", "1"];
    for d in &deps {
        args.extend(["-d", d.as_str()]);
    }
    env.create(args[0], &args[1..]);
    let c = env.claim("w", &["d0"]);
    env.ok(&["complete", "d0", "--token", &c.token.to_string()]);
    env.ok(&["edit", "fan", "-d", "d0", "-d", "d1"]);
    let c = env.claim("w", &["d1"]);
    env.ok(&["complete", "d1", "--token", &c.token.to_string()]);
    assert_eq!(
        env.claim("w", &[]).id,
        "fan",
        "ready once its two dependencies completed"
    );
    env.ok(&["doctor"]);
}

#[test]
fn a_refused_edit_writes_nothing() {
    let env = TestEnv::new();
    let a = env.create("a", &["--id", "a"]);
    let b = env.create("b", &["--id", "b", "-d", "a"]);
    let c = env.create("c", &["--id", "c", "-d", "b"]);
    let before = env.snapshot();
    let events = std::fs::read(env.dir().join("events.jsonl")).unwrap();
    let cycle = env.json(&["edit", &a, "-d", &c, "--json"], 4);
    assert_eq!(cycle["error"]["kind"], "cycle");
    assert!(
        cycle["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a -> c -> b -> a"),
        "{cycle}"
    );
    env.expect(&["edit", &a, "-d", &a], 4);
    let unknown = env.json(&["edit", &a, "-d", "nope", "--json"], 2);
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`nope`"));
    env.expect(&["edit", &a, "-p", "11"], 2);
    env.expect(&["edit", &a, "--description", " "], 2);
    env.expect(&["edit", &a], 2);
    env.expect(&["edit", &a, "--tag", "x", "--no-tags"], 2);
    env.expect(&["edit", "nope", "-p", "1"], 3);
    env.expect(&["edit", "../x", "-p", "1"], 2);
    // Same values: no change, no write, no event.
    let same = env.json(&["edit", &b, "-d", &a, "--json"], 0);
    assert_eq!(same["changed"], json!([]));
    assert_eq!(env.snapshot(), before, "nothing written");
    assert_eq!(
        std::fs::read(env.dir().join("events.jsonl")).unwrap(),
        events
    );
}

#[test]
fn edit_fixes_a_dead_tasks_command_for_retry_and_a_dead_dependency_blocks() {
    let env = TestEnv::new();
    let bad = env.create(
        "bad",
        &["--id", "bad", "--max-attempts", "1", "--command", "false"],
    );
    let after = env.create("after", &["--id", "after"]);
    let last = env.create("last", &["--id", "last", "-d", "after"]);
    let c = env.claim("w", &["bad"]);
    env.ok(&[
        "fail",
        &bad,
        "--token",
        &c.token.to_string(),
        "--error",
        "boom",
    ]);
    assert_eq!(env.task_json(&bad)["status"], "dead");
    // Depending on a dead task blocks, and blocks what depends on it.
    let v = env.json(&["edit", &after, "-d", &bad, "--json"], 0);
    assert_eq!(v["task"]["status"], "blocked");
    assert_eq!(v["blocked"], json!(["last"]));
    assert_eq!(env.task_json(&last)["status"], "blocked");
    // Fix the dead task's command, retry it: the blocked ones come back.
    env.ok(&["edit", &bad, "--command", "true", "--max-attempts", "2"]);
    let t = env.task_json(&bad);
    assert_eq!(
        (t["command"].as_str(), t["status"].as_str()),
        (Some("true"), Some("dead"))
    );
    env.ok(&["retry", &bad]);
    assert_eq!(env.task_json(&after)["status"], "pending");
    assert_eq!(env.task_json(&last)["status"], "pending");
    // An attempt budget below the attempts had is refused.
    env.expect(&["edit", &bad, "--max-attempts", "0"], 2);
    env.ok(&["doctor"]);
}

// ---------------------------------------------------------------- show

#[test]
fn show_human_and_json() {
    let env = TestEnv::new();
    let id = env.create("show me", &["--hints", "look here", "--tag", "t1"]);
    let out = env.ok(&["show", &id]);
    assert!(out.contains(&format!("id:            {id}")), "{out}");
    assert!(out.contains("status:        pending"), "{out}");
    assert!(out.contains("show me") && out.contains("look here") && out.contains("t1"));
    assert_eq!(env.json(&["show", &id, "--json"], 0), env.task_json(&id));
    assert!(
        out.contains("claimed_at:    -\ncompleted_at:  -\n"),
        "{out}"
    );
    let c = env.json(&["claim", "--agent", "a", "--json"], 0);
    let token = c["task"]["fencing_token"].to_string();
    env.ok(&["complete", &id, "--token", &token, "--result", "ok"]);
    let out = env.ok(&["show", &id]);
    let t = env.task_json(&id);
    for field in ["claimed_at", "completed_at"] {
        let v = t[field].as_str().expect(field);
        assert!(
            out.contains(&format!("{field}:")) && out.contains(v),
            "{field} {v}: {out}"
        );
    }
    let v = env.json(&["show", "nope", "--json"], 3);
    assert_eq!(v["error"]["kind"], "task_not_found");
    assert_eq!(v["error"]["exit_code"], 3);
}

// ---------------------------------------------------------------- status

#[test]
fn status_json_counts_ready_agents_and_age() {
    let env = TestEnv::new();
    let v = env.json(&["status", "--json"], 0);
    assert_eq!(v["goal"], "test goal");
    assert_eq!(v["total"], 0);
    assert_eq!(v["ready"], 0);
    assert_eq!(v["oldest_pending_age_ms"], Value::Null);
    assert_eq!(
        v["counts"],
        json!({"pending": 0, "claimed": 0, "completed": 0, "dead": 0, "cancelled": 0, "blocked": 0})
    );

    let a = env.create("a", &[]);
    let b = env.create("b", &[]);
    let c = env.create("c", &[]);
    let _waits = env.create("d", &["-d", &a]);
    let e = env.create("e", &[]);
    let f = env.create("f", &["--max-attempts", "1"]);
    env.create("g", &[]);
    env.claim("w1", &[&a]);
    env.claim("w1", &[&b]);
    env.claim("w2", &[&c]);
    let ce = env.claim("w2", &[&e]);
    env.ok(&["complete", &e, "--token", &ce.token_arg()]);
    let cf = env.claim("w3", &[&f]);
    env.ok(&["fail", &f, "--token", &cf.token_arg(), "--error", "x"]);

    let v = env.json(&["status", "--json"], 0);
    assert_eq!(v["total"], 7);
    assert_eq!(
        v["counts"],
        json!({"pending": 2, "claimed": 3, "completed": 1, "dead": 1, "cancelled": 0, "blocked": 0})
    );
    assert_eq!(v["ready"], 1, "g is ready; d waits on a");
    let mut w1: Vec<&str> = v["agents"]["w1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    w1.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(w1, want);
    assert_eq!(v["agents"]["w2"], json!([c]));
    assert!(v["agents"].get("w3").is_none(), "w3 holds nothing");
    let age = v["oldest_pending_age_ms"].as_i64().unwrap();
    assert!((0..60_000).contains(&age), "age {age}");
    assert_eq!(v["unreadable"], json!([]));

    let out = env.ok(&["status"]);
    assert!(
        out.contains("goal: test goal") && out.contains("tasks: 7"),
        "{out}"
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn unknown_dependency_writes_nothing() {
    let env = TestEnv::new();
    env.create("x", &[]);
    let snap = env.snapshot();
    let out = env.expect(&["create-task", "y", "-d", "no-such-task"], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-task"));
    assert_eq!(env.snapshot(), snap);
}

#[test]
fn bad_priority_writes_nothing() {
    let env = TestEnv::new();
    let snap = env.snapshot();
    for p in ["0", "11", "-1", "high", "256"] {
        env.expect(&["create-task", "y", "-p", p], 2);
    }
    assert_eq!(env.snapshot(), snap);
    for p in ["1", "10"] {
        env.create("y", &["-p", p]);
    }
}

#[test]
fn taken_id_is_a_conflict_and_writes_nothing() {
    let env = TestEnv::new();
    env.create("original", &["--id", "mine"]);
    let snap = env.snapshot();
    let out = env.expect(&["create-task", "impostor", "--id", "mine"], 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already taken"));
    assert_eq!(env.snapshot(), snap);
    assert_eq!(env.task_json("mine")["description"], "original");
}

#[test]
fn ids_with_path_characters_are_refused() {
    let env = TestEnv::new();
    env.create("x", &["--id", "ok"]);
    let snap = env.snapshot();
    for bad in ["..", "../escape", "a/b", "/tmp/abs", ".hidden", "a\\b", ""] {
        env.expect(&["create-task", "y", "--id", bad], 2);
        env.expect(&["create-task", "y", "-d", bad], 2);
        env.expect(&["show", bad], 2);
        env.expect(&["cancel", bad], 2);
        env.expect(&["complete", bad, "--token", "1"], 2);
    }
    env.expect(&["create-task", "y", "--id", &"x".repeat(129)], 2);
    assert_eq!(env.snapshot(), snap);
    assert!(!env.root().join("escape.json").exists());
    env.create("y", &["--id", &"x".repeat(128)]);
}

#[test]
fn oversized_description_is_refused_and_writes_nothing() {
    // A single argv string is limited to 128 KiB on Linux (MAX_ARG_STRLEN),
    // below the 1 MiB description limit, so the CLI cannot even be handed a
    // 10 MB description; the library path is what enforces the limit.
    let env = TestEnv::new();
    env.create("x", &[]);
    let snap = env.snapshot();
    let c = Coordination::open(env.dir()).unwrap();
    let err = c
        .create(NewTask {
            description: "d".repeat(10 << 20),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let err = c
        .create_batch(
            vec![
                NewTask {
                    description: "fine".into(),
                    ..Default::default()
                },
                NewTask {
                    description: "d".repeat((1 << 20) + 1),
                    ..Default::default()
                },
            ],
            BatchIds::LocalKeys,
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert_eq!(env.snapshot(), snap);
    // The largest description the CLI can pass is accepted.
    let big = "d".repeat(100 * 1024);
    let id = env.create(&big, &[]);
    assert_eq!(
        env.task_json(&id)["description"].as_str().unwrap().len(),
        big.len()
    );
}

#[test]
fn dependency_cycle_in_a_batch_writes_nothing() {
    let env = TestEnv::new();
    let snap = env.snapshot();
    let c = Coordination::open(env.dir()).unwrap();
    let t = |id: &str, dep: &str| NewTask {
        id: Some(id.into()),
        description: id.into(),
        dependencies: vec![dep.into()],
        ..Default::default()
    };
    let err = c
        .create_batch(
            vec![t("a", "c"), t("b", "a"), t("c", "b")],
            BatchIds::LocalKeys,
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("cycle"), "{err}");
    let err = c
        .create_batch(vec![t("s", "s")], BatchIds::Exact)
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert_eq!(env.snapshot(), snap);
    env.json(&["claim", "--agent", "a", "--json"], 3);
}

// ---------------------------------------------------------------- bad data

/// Creates tasks `good-1`, `bad`, `good-2` (in that claim order) and returns
/// the env; the caller then damages `tasks/bad.json`.
fn env_with_bad_in_the_middle() -> TestEnv {
    let env = TestEnv::new();
    env.create("one", &["--id", "good-1", "-p", "1"]);
    env.create("bad", &["--id", "bad", "-p", "2"]);
    env.create("two", &["--id", "good-2", "-p", "3"]);
    env
}

/// Checks that a damaged `tasks/bad.json` is reported by `show` (65), that
/// `list` still lists the others, and that claims skip it; its bytes never
/// change.
fn check_bad_file_is_contained(env: &TestEnv) {
    let bad = env.task_path("bad");
    let bytes = std::fs::symlink_metadata(&bad)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| std::fs::read(&bad).unwrap());

    let out = env.expect(&["show", "bad"], 65);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.json"),
        "the error must name the file"
    );
    let v = env.json(&["show", "bad", "--json"], 65);
    assert_eq!(v["error"]["exit_code"], 65);

    let v = env.json(&["list", "--json"], 0);
    let ids: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["good-1", "good-2"]);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("bad.json"));
    let out = env.expect(&["list"], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));

    let st = env.json(&["status", "--json"], 0);
    assert_eq!(st["total"], 2);
    assert_eq!(st["unreadable"].as_array().unwrap().len(), 1);

    assert_eq!(env.claim("a", &[]).id, "good-1");
    assert_eq!(
        env.claim("a", &[]).id,
        "good-2",
        "the claim skips the bad file"
    );
    env.json(&["claim", "--agent", "a", "--json"], 3);
    env.expect(&["claim", "--agent", "a", "bad"], 65);
    env.expect(&["cancel", "bad"], 65);
    env.expect(&["complete", "bad", "--token", "1"], 65);
    env.ok(&["reindex"]);
    assert_eq!(env.json(&["status", "--json"], 0)["total"], 2);

    if let Some(bytes) = bytes {
        assert_eq!(
            std::fs::read(&bad).unwrap(),
            bytes,
            "the bad file was rewritten"
        );
    }
}

#[test]
fn truncated_task_file() {
    let env = env_with_bad_in_the_middle();
    let bytes = env.task_bytes("bad");
    std::fs::write(env.task_path("bad"), &bytes[..bytes.len() / 2]).unwrap();
    check_bad_file_is_contained(&env);
}

#[test]
fn garbage_and_wrong_shape_task_files() {
    for content in [
        &b""[..],
        b"not json at all",
        b"[1, 2, 3]",
        b"{\"schema_version\": 1}",
        b"{\"schema_version\": \"1\", \"id\": \"bad\"}",
    ] {
        let env = env_with_bad_in_the_middle();
        std::fs::write(env.task_path("bad"), content).unwrap();
        check_bad_file_is_contained(&env);
    }
}

#[test]
fn task_file_whose_id_does_not_match_its_name() {
    let env = env_with_bad_in_the_middle();
    let mut v = env.task_json("bad");
    v["id"] = json!("good-1");
    std::fs::write(env.task_path("bad"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    check_bad_file_is_contained(&env);
}

#[test]
fn non_utf8_byte_in_a_task_file() {
    let env = env_with_bad_in_the_middle();
    let text = String::from_utf8(env.task_bytes("bad")).unwrap();
    let mut bytes = text.replace("\"bad\",", "\"b\u{e9}d\",").into_bytes();
    // Replace the UTF-8 encoding of é (C3 A9) by a lone Latin-1 byte.
    let pos = bytes.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap();
    bytes.splice(pos..pos + 2, [0xE9]);
    std::fs::write(env.task_path("bad"), &bytes).unwrap();
    assert!(std::str::from_utf8(&bytes).is_err());
    check_bad_file_is_contained(&env);
    let out = env.expect(&["show", "bad"], 65);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
}

#[test]
fn oversized_task_file() {
    let env = env_with_bad_in_the_middle();
    let mut v = env.task_json("bad");
    v["description"] = json!("x".repeat(17 << 20));
    std::fs::write(env.task_path("bad"), serde_json::to_vec(&v).unwrap()).unwrap();
    check_bad_file_is_contained(&env);
}

#[test]
fn newer_schema_version_is_refused_and_left_alone() {
    let env = env_with_bad_in_the_middle();
    let mut v = env.task_json("bad");
    v["schema_version"] = json!(99);
    v["field_from_the_future"] = json!({"x": 1});
    std::fs::write(env.task_path("bad"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let out = env.expect(&["show", "bad"], 65);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema_version 99"), "{err}");
    let v = env.json(&["show", "bad", "--json"], 65);
    assert_eq!(v["error"]["kind"], "newer_schema");
    check_bad_file_is_contained(&env);
}

#[test]
fn newer_config_schema_is_refused() {
    let env = TestEnv::new();
    env.create("x", &[]);
    env.edit_config(|c| c["schema_version"] = json!(2));
    let snap = env.snapshot();
    for args in [
        vec!["list"],
        vec!["create-task", "y"],
        vec!["claim", "--agent", "a"],
        vec!["init", "again"],
    ] {
        env.expect(&args, 65);
    }
    assert_eq!(env.snapshot(), snap);
}

#[test]
fn corrupt_config_is_bad_data() {
    let env = TestEnv::new();
    std::fs::write(
        env.dir().join("config.json"),
        b"{\"schema_version\": 1, \"goal\": ",
    )
    .unwrap();
    let snap = env.snapshot();
    env.expect(&["status"], 65);
    env.expect(&["init", "again"], 65);
    assert_eq!(env.snapshot(), snap);
}

#[test]
fn symlink_at_a_task_path_is_refused_and_not_followed() {
    let env = env_with_bad_in_the_middle();
    let outside = env.root().join("outside.json");
    // A valid task file outside: following the link would "work".
    std::fs::copy(env.task_path("bad"), &outside).unwrap();
    let outside_bytes = std::fs::read(&outside).unwrap();
    std::fs::remove_file(env.task_path("bad")).unwrap();
    std::os::unix::fs::symlink(&outside, env.task_path("bad")).unwrap();

    let out = env.expect(&["show", "bad"], 65);
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
    check_bad_file_is_contained(&env);
    env.expect(&["create-task", "x", "--id", "bad"], 4);
    env.expect(&["heartbeat", "bad", "--token", "0"], 65);
    env.expect(&["retry", "bad"], 65);

    let meta = std::fs::symlink_metadata(env.task_path("bad")).unwrap();
    assert!(meta.file_type().is_symlink(), "the link was replaced");
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        outside_bytes,
        "the target was written"
    );
}

#[test]
fn symlinked_subdirectories_are_refused() {
    for sub in ["tasks", "index"] {
        let env = TestEnv::new();
        let id = env.create("x", &[]);
        let outside = env.root().join("elsewhere");
        // Move the real directory outside and link to it: following the link
        // would work, and write outside `.coordination/`.
        std::fs::rename(env.dir().join(sub), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, env.dir().join(sub)).unwrap();
        let before = std::fs::read_dir(&outside).unwrap().count();
        for args in [
            vec!["create-task", "escape", "--id", "esc"],
            vec!["claim", "--agent", "a"],
            vec!["cancel", id.as_str()],
        ] {
            let out = env.expect(&args, 65);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("symlink"), "{sub}: {err}");
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            before,
            "{sub}: something was written through the symlink"
        );
        assert!(!outside.join("esc.json").exists());
        if sub == "tasks" {
            let t: Value =
                serde_json::from_slice(&std::fs::read(outside.join(format!("{id}.json"))).unwrap())
                    .unwrap();
            assert_eq!(
                t["status"], "pending",
                "the task behind the link was changed"
            );
        }
    }
}

#[test]
fn leftover_temp_file_is_ignored_then_cleaned() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let tmp = env.tasks_dir().join(".tmp-write");
    std::fs::write(&tmp, b"{\"schema_version\": 1, \"id\": \"half").unwrap();
    let v = env.json(&["list", "--json"], 0);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(v["errors"], json!([]));
    assert_eq!(env.json(&["status", "--json"], 0)["total"], 1);
    env.ok(&["show", &id]);
    assert!(tmp.exists(), "a read must not touch it");
    env.create("y", &[]);
    assert!(!tmp.exists(), "the next write leaves no temp file");
    let names: Vec<String> = std::fs::read_dir(env.tasks_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".json") && !n.starts_with('.')),
        "{names:?}"
    );
}

#[test]
fn non_utf8_file_name_in_tasks_is_skipped() {
    let env = TestEnv::new();
    env.create("x", &[]);
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfe.json");
    std::fs::write(env.tasks_dir().join(name), b"{}").unwrap();
    let v = env.json(&["list", "--json"], 0);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    env.claim("a", &[]);
}

#[test]
fn lost_index_is_rebuilt_from_the_task_files() {
    let env = TestEnv::new();
    let a = env.create("a", &["-p", "3"]);
    let b = env.create("b", &["-p", "1", "-d", &a]);
    let c = env.create("c", &["-p", "2"]);
    std::fs::remove_dir_all(env.dir().join("index")).unwrap();
    assert_eq!(env.claim("w", &[]).id, c);
    let ca = env.claim("w", &[]);
    assert_eq!(ca.id, a);
    env.json(&["claim", "--agent", "w", "--json"], 3);
    env.ok(&["complete", &a, "--token", &ca.token_arg()]);
    assert_eq!(env.claim("w", &[]).id, b);
    // A new task after the rebuild gets a fresh seq.
    let d = env.create("d", &[]);
    let seqs: Vec<u64> = [&a, &b, &c, &d]
        .iter()
        .map(|id| env.task_json(id)["seq"].as_u64().unwrap())
        .collect();
    let mut uniq = seqs.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 4, "seqs {seqs:?}");
    assert!(seqs[3] > seqs[2]);
}

#[test]
fn every_transition_is_one_event() {
    let env = TestEnv::new();
    let id = env.create("x", &[]);
    let c = env.claim("a", &[]);
    env.ok(&["heartbeat", &id, "--token", &c.token_arg()]);
    env.ok(&["complete", &id, "--token", &c.token_arg()]);
    let text = std::fs::read_to_string(env.dir().join("events.jsonl")).unwrap();
    let names: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"].as_str().unwrap().to_string()
        })
        .filter(|n| n.starts_with("task_"))
        .collect();
    assert_eq!(
        names,
        vec![
            "task_created",
            "task_claimed",
            "task_heartbeat",
            "task_completed"
        ]
    );
}

/// Issue 10 (8): counters read from disk are never wrapped. At its
/// maximum the operation is refused with exit 65 and nothing changes.
#[test]
fn counters_at_their_maximum_are_refused_not_wrapped() {
    let env = TestEnv::new();
    env.ok(&["create-task", "a", "--id", "a"]);
    let p = env.task_path("a");
    let mut v = env.task_json("a");
    v["fencing_token"] = serde_json::json!(u64::MAX);
    v["attempts"] = serde_json::json!(1);
    v["max_attempts"] = serde_json::json!(5);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let before = std::fs::read(&p).unwrap();
    let out = env.expect(&["claim", "a", "--agent", "x"], 65);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maximum"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "the refused claim changed the file"
    );

    v["fencing_token"] = serde_json::json!(3);
    v["attempts"] = serde_json::json!(u32::MAX);
    v["max_attempts"] = serde_json::json!(u32::MAX);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    env.expect(&["claim", "a", "--agent", "x"], 65);

    v["attempts"] = serde_json::json!(0);
    v["seq"] = serde_json::json!(u64::MAX);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    env.expect(&["reindex"], 65);
    // The live index still has a next seq below the maximum: a new task
    // gets that one, never a wrapped 0 or the one already taken.
    env.ok(&["create-task", "b", "--id", "b"]);
    let seq = env.task_json("b")["seq"].as_u64().unwrap();
    assert!(seq > 0 && seq < u64::MAX, "seq {seq}");
}

/// Issue 10 (9): `--adapter` picks the adapter in `run` (the Python tool's
/// `--agent shell` still works there), and `-v --log-format json` logs one
/// line per transition with the task, agent, attempt and correlation id.
#[test]
fn adapter_flag_and_transition_log_lines() {
    let env = TestEnv::new();
    let tasks = env.root().join("tasks.json");
    std::fs::write(
        &tasks,
        br#"[{"id": "x", "description": "x", "command": "true"}]"#,
    )
    .unwrap();
    let t = tasks.to_str().unwrap();
    env.ok(&["run", "g", "--adapter", "shell", "--no-plan", "--tasks", t]);
    std::fs::write(
        &tasks,
        br#"[{"id": "y", "description": "y", "command": "true"}]"#,
    )
    .unwrap();
    env.ok(&["run", "g", "--agent", "shell", "--no-plan", "--tasks", t]);
    assert_eq!(env.task_json("x")["status"], "completed");
    assert_eq!(env.task_json("y")["status"], "completed");

    env.ok(&["create-task", "z", "--id", "z"]);
    let out = env
        .cmd()
        .env("ORCHESTRATE_CORRELATION_ID", "corr-7")
        .args(["-v", "--log-format", "json", "claim", "z", "--agent", "bob"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.contains("task_claimed"))
        .map(str::to_string)
        .expect("a log line for the claim");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["task_id"], "z");
    assert_eq!(v["agent_id"], "bob");
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["correlation_id"], "corr-7", "{line}");
}

/// Issue 11 (8): human output escapes control characters and bidi
/// overrides from task text; `--json` keeps the text exact.
#[test]
fn terminal_output_escapes_control_and_bidi_characters() {
    let env = TestEnv::new();
    let evil = "title\u{1b}]0;TITLE-HIJACK\u{7}\u{1b}[2K\rhidden \u{202e}txet";
    env.ok(&[
        "create-task",
        evil,
        "--id",
        "e",
        "--command",
        "echo ok\r\u{1b}[8mrm -rf ~",
    ]);
    env.ok(&["create-task", "other", "--id", "o"]);
    let c = env.claim("x", &["e"]);
    env.ok(&[
        "fail",
        "e",
        "--token",
        &c.token_arg(),
        "--error",
        "bad \u{1b}[31mred",
    ]);
    for args in [
        vec!["list"],
        vec!["show", "e"],
        vec!["graph"],
        vec!["graph", "--format", "dot"],
        vec!["events"],
        vec!["status"],
    ] {
        let out = env.expect(&args, 0);
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(
            !s.chars()
                .any(|ch| (ch.is_control() && ch != '\n' && ch != '\t') || ch == '\u{202e}'),
            "{args:?} printed a control character: {s:?}"
        );
    }
    let shown = String::from_utf8(env.expect(&["show", "e"], 0).stdout).unwrap();
    assert!(shown.contains("\\x1b]0;TITLE-HIJACK\\x07"), "{shown}");
    assert!(shown.contains("\\u{202e}"), "{shown}");
    assert!(shown.contains("echo ok\\x0d\\x1b[8mrm -rf ~"), "{shown}");
    // JSON stays exact.
    assert_eq!(env.json(&["show", "e", "--json"], 0)["description"], evil);
    // A newline cannot forge a field of `show`.
    env.ok(&[
        "create-task",
        "fix bug\nstatus:        completed",
        "--id",
        "spoof",
    ]);
    let shown = String::from_utf8(env.expect(&["show", "spoof"], 0).stdout).unwrap();
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("status:")).count(),
        1,
        "{shown}"
    );
}

/// Issue 13 (1): `ready` (= `list --ready`) lists the claimable tasks in
/// claim order (priority, then creation), leaving out those waiting on
/// dependencies or backing off; `status` names the first ones; `list
/// --blocked` says what each held-back task waits on, and in what state.
#[test]
fn ready_and_blocked_at_a_glance() {
    let env = TestEnv::new();
    env.create("a", &["--id", "a", "-p", "3"]);
    env.create("b", &["--id", "b", "-p", "1"]);
    env.create("c", &["--id", "c", "-d", "a"]);
    env.create("f", &["--id", "f", "--max-attempts", "1"]);
    env.create("g", &["--id", "g", "-d", "f", "-d", "b"]);
    let ids = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let snap = env.snapshot();
    let ready = env.json(&["ready", "--json"], 0);
    assert_eq!(ids(&ready), ["b", "a", "f"], "claim order");
    assert_eq!(
        ids(&env.json(&["list", "--ready", "--json"], 0)),
        ["b", "a", "f"]
    );
    assert_eq!(env.snapshot(), snap, "a read changes nothing");
    // The first unnamed claim takes the first ready task.
    let c = env.claim("w", &[]);
    assert_eq!(c.id, "b");
    env.ok(&["complete", "b", "--token", &c.token_arg()]);
    let s = env.json(&["status", "--json"], 0);
    assert_eq!(s["ready"], 2);
    assert_eq!(s["ready_next"], json!(["a", "f"]));
    assert!(env.ok(&["status"]).contains("ready: 2 (next: a, f)"));
    // f fails for good: g is blocked by it; c still waits on a.
    let cf = env.claim("w", &["f"]);
    env.ok(&["fail", "f", "--token", &cf.token_arg(), "--error", "no"]);
    let b = env.json(&["list", "--blocked", "--json"], 0);
    assert_eq!(ids(&b), ["c", "g"]);
    assert_eq!(
        b["waiting_on"]["c"],
        json!([{"id": "a", "status": "pending"}])
    );
    assert_eq!(b["waiting_on"]["g"], json!([{"id": "f", "status": "dead"}]));
    let human = env.ok(&["list", "--blocked"]);
    assert!(
        human.contains("f (dead)") && human.contains("a (pending)"),
        "{human}"
    );
    assert_eq!(ids(&env.json(&["ready", "--json"], 0)), ["a"]);
    // --ready with --status is a usage error.
    env.expect(&["list", "--ready", "-s", "pending"], 2);
}

/// From the new-user trial: `run` in a subdirectory of a project uses the
/// project's queue (found upwards, as every other command finds it) instead
/// of making a second one there; and `complete` of a task never claimed
/// says so (the kind stays `lease_lost`: the token is not the current one).
#[test]
fn run_in_a_subdirectory_uses_the_projects_queue() {
    let env = TestEnv::new();
    let sub = env.root().join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("t.json"),
        r#"[{"id": "s1", "description": "from below", "command": "true"}]"#,
    )
    .unwrap();
    let mut c = std::process::Command::new(crate::support::bin());
    c.current_dir(&sub)
        .env_remove("COORDINATION_DIR")
        .env_remove("ORCHESTRATE_AGENT_ID")
        .args([
            "run",
            "g",
            "--adapter",
            "shell",
            "--no-plan",
            "-w",
            "1",
            "-q",
            "--tasks",
            "t.json",
        ]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !sub.join(".coordination").exists(),
        "a second queue was made"
    );
    assert_eq!(env.task_json("s1")["status"], "completed");

    env.create("never claimed", &["--id", "y"]);
    let v = env.json(&["complete", "y", "--token", "1", "--json"], 4);
    assert_eq!(v["error"]["kind"], "lease_lost", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never claimed"),
        "{v}"
    );
}

/// Issue 13 (7): `init` keeps the queue out of commits: `.coordination/`
/// holds a `.gitignore` of `*`, so `git status` in the project does not
/// list it (checked with git itself).
#[test]
fn init_keeps_the_queue_out_of_git() {
    let env = TestEnv::new();
    let ignore = std::fs::read_to_string(env.dir().join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    env.create("x", &[]);
    env.ok(&["doctor"]);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(env.root())
            .args(args)
            .output()
    };
    let init = git(&["init", "-q"]).expect("git must be installed for this test");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let st = git(&["status", "--porcelain", "--untracked-files=all"]).unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(!st.contains(".coordination"), "git sees the queue: {st}");
}
