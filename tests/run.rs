//! `run`, `from-config` and `work` end to end, with the stand-in
//! `fixtures/fake-claude` and with the shell adapter.

use assert_cmd::Command;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::bin;

fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude")
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn coord(&self) -> PathBuf {
        self.path().join(".coordination")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.path())
            .env_remove("COORDINATION_DIR")
            .env_remove("ORCHESTRATE_AGENT_ID")
            .env_remove("ORCHESTRATOR_MAX_WORKERS")
            .env_remove("ORCHESTRATOR_TASK_TIMEOUT")
            .env_remove("CLAUDE_MODEL")
            .env("ORCHESTRATE_CLAUDE_BIN", fake_claude())
            .timeout(Duration::from_secs(60));
        c
    }
    fn write(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    }
    /// A coordination dir with fast backoff so retries happen in the test's time.
    fn init_fast_backoff(&self) {
        self.cmd().args(["init", "goal"]).assert().success();
        let cfg = self.coord().join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        v["backoff"] = json!({"base_ms": 10, "factor": 2.0, "max_ms": 50, "jitter": 0.0});
        std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    /// Runs `args` then `extra`, asserting exit 0 (stderr in the message).
    fn run_ok(&self, args: &[&str], extra: &[&str]) -> std::process::Output {
        let out = self.cmd().args(args).args(extra).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn task_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.coord().join("tasks")) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    fn task(&self, id: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.coord().join("tasks").join(format!("{id}.json"))).unwrap(),
        )
        .unwrap()
    }
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).expect("report is JSON")
}

fn by_id<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("task {id} in report {r:#}"))
}

#[test]
fn leader_plans_then_workers_run_every_task() {
    let env = Env::new();
    let log = env.path().join("calls.log");
    let out = env
        .cmd()
        .args([
            "run",
            "Build a user authentication system",
            "-w",
            "2",
            "-m",
            "test-model",
            "-o",
            "report.json",
        ])
        .env("FAKE_CLAUDE_LOG", &log)
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 tasks: 4 completed"), "{stdout}");
    let r = report(&env.path().join("report.json"));
    assert_eq!(r["success"], true);
    assert_eq!(r["planned"], true);
    assert_eq!(r["totals"]["completed"], 4);
    let review = by_id(&r, "review");
    assert_eq!(review["result"]["result"], "Did: Review everything");
    assert_eq!(review["result"]["num_turns"], 1);
    // Dependencies were honoured: review ran after implement and docs completed.
    let t_review = env.task("review");
    let t_impl = env.task("implement");
    assert!(t_review["claimed_at"].as_str() >= t_impl["completed_at"].as_str());
    // hints given as a list became text.
    assert_eq!(
        t_impl["context"]["hints"],
        "write tests first\nsmall commits"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    // One leader call to plan, one per task and one for the summary, each
    // with the model, stdin closed (the fake reads stdin to EOF: an open
    // stdin would hang it).
    assert_eq!(calls.lines().count(), 6, "{calls}");
    assert_eq!(r["summary"], "Leader summary: the goal is met.");
    assert_eq!(r["summary_by"], "leader");
    assert!(
        stdout.contains("Summary (by the leader):\nLeader summary: the goal is met."),
        "{stdout}"
    );
    assert!(
        calls
            .lines()
            .all(|l| l.contains("model=test-model") && l.contains("stdin_bytes=0")),
        "{calls}"
    );
    assert!(
        calls
            .lines()
            .skip(1)
            .take(4)
            .all(|l| l.contains("token=1") && l.contains("corr=run-")),
        "{calls}"
    );
}

#[test]
fn failing_worker_is_retried_then_dead_and_dependents_blocked() {
    let env = Env::new();
    env.init_fast_backoff();
    let tasks = env.write(
        "tasks.json",
        &json!({"tasks": [
            {"id": "bad", "description": "FAIL always", "max_attempts": 2},
            {"id": "after", "description": "needs bad", "dependencies": ["bad"]},
            {"id": "fine", "description": "independent"}
        ]}),
    );
    let out = env
        .cmd()
        .args(["run", "g", "--no-plan", "--tasks"])
        .arg(&tasks)
        .args(["-o", "r.json"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 completed, 1 dead, 1 blocked"),
        "{stdout}"
    );
    assert!(stdout.contains("bad dead"), "{stdout}");
    let r = report(&env.path().join("r.json"));
    assert_eq!(r["success"], false);
    assert_eq!(by_id(&r, "bad")["status"], "dead");
    assert_eq!(by_id(&r, "bad")["attempts"], 2);
    assert!(by_id(&r, "bad")["error"]
        .as_str()
        .unwrap()
        .contains("claude reported an error"));
    assert_eq!(by_id(&r, "after")["status"], "blocked");
    assert_eq!(by_id(&r, "fine")["status"], "completed");
}

#[test]
fn timeout_kills_the_attempt_and_fails_it() {
    let env = Env::new();
    env.init_fast_backoff();
    let pidfile = env.path().join("hang.pid");
    let tasks = env.write(
        "t.json",
        &json!([{"id": "slow", "description": "HANG forever", "max_attempts": 1}]),
    );
    let start = Instant::now();
    env.cmd()
        .args([
            "run",
            "g",
            "--no-plan",
            "-t",
            "1",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .env("FAKE_CLAUDE_PIDFILE", &pidfile)
        .assert()
        .code(1);
    assert!(start.elapsed() < Duration::from_secs(20));
    let r = report(&env.path().join("r.json"));
    let slow = by_id(&r, "slow");
    assert_eq!(slow["status"], "dead");
    assert!(
        slow["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{slow}"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the hung agent was not killed"
    );
}

#[test]
fn broken_plan_twice_stops_with_nothing_written() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["run", "g"])
        .env("FAKE_CLAUDE_PLAN_MODE", "broken")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid twice"), "{stderr}");
    assert!(stderr.contains("no JSON array of tasks"), "{stderr}");
    assert!(env.task_files().is_empty(), "{:?}", env.task_files());
}

#[test]
fn broken_plan_once_is_sent_back_and_the_correction_runs() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["run", "g", "-o", "r.json"])
        .env("FAKE_CLAUDE_PLAN_MODE", "broken-once")
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plan rejected") && stderr.contains("dependency cycle"),
        "{stderr}"
    );
    assert_eq!(report(&env.path().join("r.json"))["totals"]["completed"], 4);
}

#[test]
fn missing_claude_binary_is_a_clear_error_before_any_task() {
    let env = Env::new();
    let tasks = env.write("t.json", &json!([{"description": "x"}]));
    let out = env
        .cmd()
        .args([
            "run",
            "g",
            "--no-plan",
            "--claude-bin",
            "/nonexistent/claude",
            "--tasks",
        ])
        .arg(&tasks)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--claude-bin") && stderr.contains("--adapter shell"),
        "{stderr}"
    );
    assert!(env.task_files().is_empty());
}

#[test]
fn ctrl_c_kills_children_releases_tasks_and_exits_130() {
    let env = Env::new();
    let pidfile = env.path().join("hang.pid");
    let tasks = env.write(
        "t.json",
        &json!([{"id": "long", "description": "HANG until interrupted"}]),
    );
    let mut child = std::process::Command::new(bin())
        .current_dir(env.path())
        .env("ORCHESTRATE_CLAUDE_BIN", fake_claude())
        .env("FAKE_CLAUDE_PIDFILE", &pidfile)
        .args(["run", "g", "--no-plan", "-o", "r.json", "--tasks"])
        .arg(&tasks)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "agent never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let t = env.task("long");
    assert_eq!(t["status"], "pending", "{t:#}");
    assert_eq!(
        t["attempts"], 0,
        "the interrupted attempt must not be spent"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "child not killed"
    );
    assert_eq!(report(&env.path().join("r.json"))["interrupted"], true);
}

#[test]
fn python_tasks_file_without_ids_but_with_dependencies_is_refused_not_spun() {
    let env = Env::new();
    let tasks = env.write(
        "tasks.json",
        &json!([{"description": "a"}, {"description": "b", "dependencies": ["task-1234abcd"]}]),
    );
    let out = env
        .cmd()
        .args(["run", "g", "--no-plan", "--tasks"])
        .arg(&tasks)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dependency `task-1234abcd`"), "{stderr}");
    assert!(env.task_files().is_empty());
}

#[test]
fn from_config_accepts_the_python_orchestration_json() {
    let env = Env::new();
    let cfg = env.write(
        "orchestration.json",
        &json!({
            "goal": "Add a /health endpoint",
            "working_directory": env.path(),
            "max_workers": 2,
            "model": "claude-sonnet-4-20250514",
            "task_timeout": 30,
            "tasks": [
                {"description": "Write the handler", "priority": 1, "hints": "return 200"},
                {"description": "Document endpoint", "context_files": ["README.md"], "hints": ["one", "two"]}
            ]
        }),
    );
    let log = env.path().join("calls.log");
    env.cmd()
        .args(["from-config"])
        .arg(&cfg)
        .args(["--json"])
        .env("FAKE_CLAUDE_LOG", &log)
        .assert()
        .success();
    let calls = std::fs::read_to_string(&log).unwrap();
    // Two tasks and the leader's summary.
    assert_eq!(calls.lines().count(), 3);
    assert!(calls.contains("model=claude-sonnet-4-20250514"));
}

#[test]
fn init_then_create_task_into_config_then_from_config() {
    let env = Env::new();
    env.cmd()
        .args(["init", "Ship it", "-o", "orchestration.json"])
        .assert()
        .success();
    env.cmd()
        .args(["init", "Ship it", "-o", "orchestration.json"])
        .assert()
        .code(2);
    env.cmd()
        .args([
            "create-task",
            "Create JWT utility",
            "-p",
            "1",
            "-c",
            "orchestration.json",
            "--id",
            "jwt",
        ])
        .assert()
        .success();
    env.cmd()
        .args([
            "create-task",
            "Use it",
            "-c",
            "orchestration.json",
            "-d",
            "jwt",
        ])
        .assert()
        .success();
    let v: Value =
        serde_json::from_slice(&std::fs::read(env.path().join("orchestration.json")).unwrap())
            .unwrap();
    assert_eq!(v["goal"], "Ship it");
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);
    assert!(
        env.task_files().is_empty(),
        "-c must not touch the live queue"
    );
    env.cmd()
        .args(["from-config", "orchestration.json"])
        .assert()
        .success();
    assert_eq!(env.task("jwt")["status"], "completed");
}

#[test]
fn shell_adapter_records_exit_status_output_and_log_and_env() {
    let env = Env::new();
    env.init_fast_backoff();
    let tasks = env.write(
        "t.json",
        &json!([
            {"id": "ok", "description": "echo env", "command": "echo \"id=$ORCHESTRATE_TASK_ID token=$ORCHESTRATE_FENCING_TOKEN agent=$ORCHESTRATE_AGENT_ID dir=$ORCHESTRATE_DIR\"; pwd"},
            {"id": "bad", "description": "exits 7", "command": "echo oops >&2; exit 7", "max_attempts": 1}
        ]),
    );
    env.cmd()
        .args([
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .assert()
        .code(1);
    let r = report(&env.path().join("r.json"));
    let ok = by_id(&r, "ok");
    assert_eq!(ok["status"], "completed");
    assert_eq!(ok["result"]["exit_code"], 0);
    let output = ok["result"]["output"].as_str().unwrap();
    assert!(output.contains("id=ok token=1 agent=run-"), "{output}");
    assert!(
        output.contains(&format!("dir={}", env.coord().display())),
        "{output}"
    );
    let log = env.coord().join(ok["log_file"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(log).unwrap(), output);
    let bad = by_id(&r, "bad");
    assert_eq!(bad["result"]["exit_code"], 7);
    assert_eq!(bad["result"]["output"], "oops\n");
    assert_eq!(
        bad["error"], "exit status 7: oops",
        "the reason is the last stderr line"
    );
    // No leader with the shell adapter: the summary is built from the
    // results.
    assert_eq!(r["summary_by"], "results");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Goal: g\n2 tasks: 1 completed, 1 dead"),
        "{summary}"
    );
    assert!(summary.contains("- bad (dead): exit status 7"), "{summary}");
}

#[test]
fn a_worker_replys_discoveries_are_recorded_and_reach_the_next_prompt() {
    let env = Env::new();
    let prompts = env.path().join("prompts.log");
    let tasks = env.write(
        "t.json",
        &json!([
            {"id": "first", "description": "DISCOVER the loader"},
            {"id": "second", "description": "Use the loader", "dependencies": ["first"]}
        ]),
    );
    env.cmd()
        .args([
            "run",
            "g",
            "-w",
            "2",
            "--no-summary",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .env("FAKE_CLAUDE_PROMPTS", &prompts)
        .assert()
        .success();
    // Recorded with the worker and the task, from the reply's section
    // only (the "none" item is dropped, the files section is not a
    // discovery).
    let f: Value =
        serde_json::from_slice(&std::fs::read(env.coord().join("discoveries.json")).unwrap())
            .unwrap();
    let list = f["discoveries"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{f:#}");
    let d = &list[0];
    assert_eq!(
        d["title"],
        "The cache in DISCOVER the loader is cold on start"
    );
    assert_eq!(d["related_task"], "first");
    assert!(d["agent_id"].as_str().unwrap().contains("-worker-"));
    let r = report(&env.path().join("r.json"));
    assert!(d["correlation_id"] == r["correlation_id"]);
    // The result keeps the sections, as the Python tool's result did.
    let first = by_id(&r, "first");
    assert_eq!(first["result"]["files_modified"], json!(["src/found.rs"]));
    assert_eq!(
        first["result"]["discoveries"],
        json!(["The cache in DISCOVER the loader is cold on start"])
    );
    assert_eq!(r["discoveries"], json!([d.clone()]));
    assert_eq!(r["summary"], Value::Null);
    assert_eq!(r["summary_by"], Value::Null);
    // The dependent's prompt shows it, fenced as data.
    let all = std::fs::read_to_string(&prompts).unwrap();
    let second = all
        .split("=== end\n")
        .find(|p| p.contains("## Task: second"))
        .expect("second's prompt");
    let pos = second
        .find("## What other workers found")
        .expect("no discoveries section");
    assert!(
        second[pos..].contains("The cache in DISCOVER the loader is cold on start (run-"),
        "{second}"
    );
    assert!(second[pos..].contains("<<<TASK-DATA-"));
    assert!(
        second.contains("Discoveries:"),
        "the prompt asks for the section"
    );
    // Each discovery is one event.
    let events = std::fs::read_to_string(env.coord().join("events.jsonl")).unwrap();
    assert_eq!(events.matches("\"discovery_recorded\"").count(), 1);
}

#[test]
fn a_failing_leader_summary_falls_back_to_the_results() {
    let env = Env::new();
    let tasks = env.write("t.json", &json!([{"id": "only", "description": "Do it"}]));
    let out = env
        .cmd()
        .args(["--json", "run", "g", "-w", "1", "--tasks"])
        .arg(&tasks)
        .env("FAKE_CLAUDE_SUMMARY", "fail")
        .assert()
        .success()
        .get_output()
        .clone();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["summary_by"], "results");
    assert!(r["summary"]
        .as_str()
        .unwrap()
        .contains("- only (completed): Did: Do it"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not write the summary"), "{stderr}");
    assert!(env
        .coord()
        .join(format!(
            "logs/leader-{}.summary.json",
            r["correlation_id"].as_str().unwrap()
        ))
        .is_file());
}

#[test]
fn bad_environment_defaults_are_usage_errors() {
    let env = Env::new();
    env.cmd()
        .args(["run", "g", "--agent", "shell", "--no-plan"])
        .env("ORCHESTRATOR_MAX_WORKERS", "many")
        .assert()
        .code(2);
    env.cmd()
        .args(["run", "g", "--agent", "shell", "--no-plan"])
        .env("ORCHESTRATOR_TASK_TIMEOUT", "-5")
        .assert()
        .code(2);
    env.cmd().args(["run", "g", "-w", "0"]).assert().code(2);
}

/// Runs `work --agent w1 --adapter shell --until-empty --json` to success;
/// its summary document.
fn work_until_empty(env: &Env) -> Value {
    let out = env
        .cmd()
        .args([
            "work",
            "--agent",
            "w1",
            "--adapter",
            "shell",
            "--until-empty",
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A task's own `complete --claim-next` is refused inside the worker's
/// attempt (spec 5.10, 11): it would claim a task under the worker's agent
/// id that nobody runs. The worker reports the task itself instead, and
/// nothing is left claimed.
#[test]
fn claim_next_from_inside_an_attempt_leaves_nothing_claimed() {
    let env = Env::new();
    env.cmd().args(["init", "g"]).assert().success();
    let cmd = format!("{} complete --claim-next --result self -q; true", bin());
    env.cmd()
        .args([
            "create-task",
            "a",
            "--id",
            "a",
            "-p",
            "1",
            "--command",
            &cmd,
        ])
        .assert()
        .success();
    for i in 1..=2 {
        let id = format!("b{i}");
        env.cmd()
            .args(["create-task", &id, "--id", &id, "--command", "true"])
            .assert()
            .success();
    }
    work_until_empty(&env);
    for id in ["a", "b1", "b2"] {
        assert_eq!(env.task(id)["status"], "completed", "{id}");
    }
}

#[test]
fn work_until_empty_drains_the_queue_with_the_shell_adapter() {
    let env = Env::new();
    env.cmd().args(["init", "g"]).assert().success();
    for i in 0..3 {
        env.cmd()
            .args([
                "create-task",
                &format!("t{i}"),
                "--id",
                &format!("t{i}"),
                "--command",
                "true",
            ])
            .assert()
            .success();
    }
    let v = work_until_empty(&env);
    assert_eq!(v["completed"], 3);
    for i in 0..3 {
        assert_eq!(env.task(&format!("t{i}"))["status"], "completed");
    }
    // One mutation per cycle (spec 5.10): each completion but the last
    // claims the next task in the same mutation (same `ts`, read once).
    let events = std::fs::read_to_string(env.coord().join("events.jsonl")).unwrap();
    let events: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| matches!(e["event"].as_str(), Some("task_completed" | "task_claimed")))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "task_claimed",
            "task_completed",
            "task_claimed",
            "task_completed",
            "task_claimed",
            "task_completed"
        ]
    );
    for pair in [(1, 2), (3, 4)] {
        assert_eq!(
            events[pair.0]["ts"], events[pair.1]["ts"],
            "completion and next claim in one mutation: {events:?}"
        );
    }
}

#[test]
fn shell_tasks_without_a_command_are_refused_before_anything_is_created() {
    let env = Env::new();
    let tasks = env.write(
        "t.json",
        &json!([{"id": "ok", "description": "x", "command": "true"}, {"id": "nocmd", "description": "has no command"}]),
    );
    let out = env
        .cmd()
        .args(["run", "g", "--agent", "shell", "--no-plan", "--tasks"])
        .arg(&tasks)
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nocmd"));
    assert!(!env.coord().exists(), "nothing may be created");
}

#[test]
fn follow_up_tasks_created_by_an_agent_are_part_of_the_run() {
    let env = Env::new();
    let orch = bin();
    let tasks = env.write(
        "t.json",
        &json!([{"id": "first", "description": "makes a follow-up",
                 "command": format!("{orch} create-task 'follow-up' --id later --command 'echo later ran'")}]),
    );
    let out = env
        .cmd()
        .args([
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .assert()
        .success()
        .get_output()
        .clone();
    let r = report(&env.path().join("r.json"));
    assert_eq!(
        r["totals"]["total"],
        2,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(by_id(&r, "later")["status"], "completed");
    assert_eq!(by_id(&r, "later")["result"]["output"], "later ran\n");
}

#[test]
fn an_agent_that_reports_its_own_task_does_not_stop_the_run() {
    let env = Env::new();
    let orch = bin();
    let tasks = env.write(
        "t.json",
        &json!([
            {"id": "self", "description": "reports itself", "command": format!("{orch} complete --result 'done by myself'")},
            {"id": "next", "description": "runs after", "dependencies": ["self"], "command": "true"}
        ]),
    );
    env.cmd()
        .args([
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "-w",
            "1",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .assert()
        .success();
    let r = report(&env.path().join("r.json"));
    assert_eq!(by_id(&r, "self")["result"], "done by myself");
    assert_eq!(by_id(&r, "next")["status"], "completed");
}

// ---------------------------------------------------------------- logs

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_failed_shell_task_says_its_last_stderr_line_and_logs_prints_each_attempt() {
    let env = Env::new();
    env.init_fast_backoff();
    let tasks = env.write(
        "tasks.json",
        &json!([{
            "id": "count",
            "description": "count words",
            "max_attempts": 2,
            "command": "echo \"attempt $ORCHESTRATE_ATTEMPT\"; wc -w /nope/missing; printf '\\033[31m---\\033[0m\\n\\n' >&2; exit 1"
        }]),
    );
    let out = env
        .cmd()
        .args(["run", "g", "--adapter", "shell", "--no-plan", "--tasks"])
        .arg(&tasks)
        .args(["-w", "1", "-o", "report.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let progress = String::from_utf8_lossy(&out.stderr);
    let reason = "exit status 1: wc: /nope/missing: No such file or directory";
    // The error field, the progress lines, the summary, the events and the
    // report all carry the reason, not only `exit status 1`.
    assert_eq!(env.task("count")["error"], reason);
    assert!(
        progress.contains("failed   count (") && progress.contains(reason),
        "{progress}"
    );
    assert!(
        stdout_of(&out).contains(reason),
        "summary: {}",
        stdout_of(&out)
    );
    let events = std::fs::read_to_string(env.coord().join("events.jsonl")).unwrap();
    let failed: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "task_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["error"] == reason), "{failed:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(env.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["tasks"][0]["error"], reason);

    // `logs` prints the latest attempt, `--attempt N` an earlier one.
    let logs = |args: &[&str]| env.cmd().arg("logs").args(args).output().unwrap();
    let latest = logs(&["count"]);
    assert!(latest.status.success());
    let text = stdout_of(&latest);
    assert!(
        text.contains("attempt 2") && text.contains("No such file"),
        "{text}"
    );
    let first = stdout_of(&logs(&["count", "--attempt", "1"]));
    assert!(
        first.contains("attempt 1") && !first.contains("attempt 2"),
        "{first}"
    );
    let v: Value =
        serde_json::from_slice(&logs(&["count", "--attempt", "1", "--json"]).stdout).unwrap();
    assert_eq!(v["task_id"], "count");
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["status"], "dead");
    assert_eq!(v["files"][0]["path"], "logs/count.1.log");
    assert_eq!(v["files"][0]["kind"], "output");
    assert_eq!(v["files"][0]["content"].as_str().unwrap(), first);

    // Not found: an attempt out of range, a task never attempted, an
    // unknown task; all exit 3 with the kind in --json.
    let bad = logs(&["count", "--attempt", "3", "--json"]);
    assert_eq!(bad.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "log_not_found");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--attempt 1 to 2"));
    env.cmd()
        .args(["create-task", "later", "--id", "later"])
        .assert()
        .success();
    assert_eq!(logs(&["later"]).status.code(), Some(3));
    assert_eq!(logs(&["nope"]).status.code(), Some(3));
    assert_eq!(logs(&["../x"]).status.code(), Some(2));
    // A task claimed by hand has no log here.
    env.cmd()
        .args(["claim", "later", "--agent", "me"])
        .assert()
        .success();
    let by_hand = logs(&["later"]);
    assert_eq!(by_hand.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&by_hand.stderr).contains("only `run` and `work` write logs"));
}

#[test]
fn logs_follow_waits_for_the_first_attempt_and_ends_with_it() {
    let env = Env::new();
    env.init_fast_backoff();
    env.cmd()
        .args([
            "create-task",
            "ticks",
            "--id",
            "ticks",
            "--max-attempts",
            "1",
            "--command",
        ])
        .arg("for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo gone >&2; exit 3")
        .assert()
        .success();
    let mut follower = std::process::Command::new(bin())
        .current_dir(env.path())
        .env_remove("COORDINATION_DIR")
        .args(["logs", "ticks", "-f", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Started before the task: it waits for the first attempt.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "follow ended before the task started"
    );
    let start = Instant::now();
    env.cmd()
        .args([
            "work",
            "--agent",
            "w",
            "--adapter",
            "shell",
            "--until-empty",
            "-q",
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data: String = lines
        .iter()
        .filter(|l| l["type"] == "output")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, "tick 1\ntick 2\ntick 3\ngone\n");
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["attempt"], 1);
    assert_eq!(end["status"], "dead");
    assert_eq!(end["error"], "exit status 3: gone");
    assert!(start.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------- resume

/// Starts `orchestrate ARGS` in the project, waits until task `held` is
/// claimed, then interrupts it (SIGINT) and waits for it to end.
fn interrupt_when_claimed(env: &Env, args: &[&str], extra_env: &[(&str, &Path)], held: &str) {
    let mut cmd = std::process::Command::new(bin());
    cmd.current_dir(env.path())
        .env_remove("COORDINATION_DIR")
        .env("ORCHESTRATE_CLAUDE_BIN", fake_claude())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = env.coord().join("tasks").join(format!("{held}.json"));
    loop {
        let claimed = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|t| t["status"] == "claimed");
        if claimed {
            break;
        }
        assert!(Instant::now() < deadline, "`{held}` was never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
}

#[test]
fn the_same_tasks_file_again_resumes_the_interrupted_run_and_fresh_starts_anew() {
    let env = Env::new();
    let tasks = env.write(
        "tasks.json",
        &json!([
            {"id": "a", "description": "a", "command": "echo a >> a.out"},
            {"id": "b", "description": "b", "command": "test -f go || sleep 60; echo b >> b.out", "dependencies": ["a"]},
            {"description": "no id", "command": "echo c >> c.out"}
        ]),
    );
    let t = tasks.to_str().unwrap();
    let args = [
        "run",
        "g",
        "--adapter",
        "shell",
        "--no-plan",
        "-w",
        "2",
        "--tasks",
        t,
    ];
    interrupt_when_claimed(&env, &args, &[], "b");
    assert_eq!(env.task("b")["status"], "pending", "released on interrupt");
    assert_eq!(env.task_files().len(), 3);
    // Fix b, then the same command: b runs, a and the task without an id
    // (matched by its description) are not run again, nothing is created.
    env.cmd()
        .args(["edit", "b", "--command", "echo b >> b.out"])
        .assert()
        .success();
    let out = env.run_ok(&args, &["-o", "r.json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming run run-"));
    assert_eq!(env.task_files().len(), 3, "no task was duplicated");
    let r = report(&env.path().join("r.json"));
    assert_eq!(r["resumed"], true);
    assert_eq!(r["totals"]["completed"], 3);
    assert_eq!(
        env.task("a")["attempts"],
        1,
        "a completed task is not run again"
    );
    for (f, text) in [("a.out", "a\n"), ("b.out", "b\n"), ("c.out", "c\n")] {
        assert_eq!(
            std::fs::read_to_string(env.path().join(f)).unwrap(),
            text,
            "{f}"
        );
    }
    // Once more: everything is done, nothing runs, exit 0.
    env.cmd().args(args).assert().success();
    assert_eq!(
        std::fs::read_to_string(env.path().join("a.out")).unwrap(),
        "a\n"
    );
    // --fresh: a new run with new ids.
    std::fs::write(env.path().join("go"), "").unwrap();
    env.cmd().args(args).arg("--fresh").assert().success();
    assert_eq!(env.task_files().len(), 6);
    assert_eq!(
        std::fs::read_to_string(env.path().join("a.out")).unwrap(),
        "a\na\n"
    );
}

#[test]
fn the_same_goal_again_resumes_a_planned_run_without_planning_again() {
    let env = Env::new();
    let plan = env.path().join("plan.txt");
    std::fs::write(
        &plan,
        r#"```json
[{"id": "first", "description": "First step"},
 {"id": "second", "description": "Second step HANG", "dependencies": ["first"]}]
```"#,
    )
    .unwrap();
    let log = env.path().join("calls.log");
    // No summary: the leader is asked only to plan, so its calls count plans.
    let args = ["run", "Ship it", "-w", "1", "--no-summary"];
    interrupt_when_claimed(
        &env,
        &args,
        &[("FAKE_CLAUDE_PLAN", &plan), ("FAKE_CLAUDE_LOG", &log)],
        "second",
    );
    let leader_calls = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("call") && l.contains("task= "))
            .count()
    };
    assert_eq!(leader_calls(&log), 1);
    env.cmd()
        .args(["edit", "second", "--description", "Second step, now quick"])
        .assert()
        .success();
    let out = env
        .cmd()
        .args(args)
        .args(["-o", "r.json"])
        .env("FAKE_CLAUDE_PLAN", &plan)
        .env("FAKE_CLAUDE_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leader_calls(&log), 1, "no second plan");
    let r = report(&env.path().join("r.json"));
    assert_eq!(
        (r["resumed"].as_bool(), r["planned"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(env.task_files().len(), 2);
    assert_eq!(env.task("second")["status"], "completed");
    assert_eq!(env.task("first")["attempts"], 1);
}

#[test]
fn resume_finds_a_fresh_runs_suffixed_tasks_and_never_recreates_archived_ones() {
    let env = Env::new();
    env.init_fast_backoff();
    let tasks = env.write(
        "tasks.json",
        &json!([
            {"id": "a", "description": "a", "command": "true"},
            {"id": "b", "description": "b", "command": "exit 1", "max_attempts": 1, "dependencies": ["a"]}
        ]),
    );
    let t = tasks.to_str().unwrap();
    let args = [
        "run",
        "g",
        "--adapter",
        "shell",
        "--no-plan",
        "-w",
        "1",
        "--tasks",
        t,
    ];
    env.cmd().args(args).assert().code(1);
    env.cmd().args(args).arg("--fresh").assert().code(1);
    let fresh_b = env
        .task_files()
        .into_iter()
        .map(|f| f.trim_end_matches(".json").to_string())
        .find(|id| id.starts_with("b-"))
        .expect("the fresh run's b");
    env.cmd()
        .args(["edit", &fresh_b, "--command", "true"])
        .assert()
        .success();
    env.cmd().args(["retry", &fresh_b]).assert().success();
    // The same command resumes the unfinished (fresh) run, not the older
    // finished one: its retried task runs.
    env.run_ok(&args, &["-o", "r.json"]);
    assert_eq!(env.task(&fresh_b)["status"], "completed");
    assert_eq!(env.task_files().len(), 4, "nothing created");
    let r = report(&env.path().join("r.json"));
    assert_eq!(r["resumed"], true);
    // Archive everything: the same command then resumes a run whose tasks
    // are all archived, creates nothing and runs nothing.
    env.cmd()
        .args(["archive", "--older-than", "0"])
        .assert()
        .success();
    assert_eq!(env.task_files().len(), 0);
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("archived"), "{stderr}");
    assert!(
        env.task_files().is_empty(),
        "archived tasks were created again: {:?}",
        env.task_files()
    );
    assert!(!stderr.contains("is taken"), "{stderr}");
    // `logs` still reads an archived task's log.
    let logs = env.cmd().args(["logs", "a", "--json"]).output().unwrap();
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn a_task_that_fails_itself_is_reported_failed_and_its_process_stopped() {
    let env = Env::new();
    let tasks = env.write(
        "tasks.json",
        &json!([{"id": "sf", "description": "x", "max_attempts": 2,
                 "command": "echo \"start $ORCHESTRATE_ATTEMPT\" >> trace; orchestrate fail --error give-up; sleep 5; echo \"end $ORCHESTRATE_ATTEMPT\" >> trace"}]),
    );
    let path = format!(
        "{}:{}",
        Path::new(bin()).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = env
        .cmd()
        .env("PATH", path)
        .args([
            "run",
            "S",
            "--adapter",
            "shell",
            "--no-plan",
            "-w",
            "3",
            "--no-summary",
            "--tasks",
        ])
        .arg(&tasks)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("failed   sf (") && progress.contains("give-up; retrying"),
        "{progress}"
    );
    assert!(!progress.contains("lease lost"), "{progress}");
    let trace = std::fs::read_to_string(env.path().join("trace")).unwrap();
    assert_eq!(
        trace, "start 1\nstart 2\n",
        "each attempt stopped after its own fail, none overlapped"
    );
    assert_eq!(env.task("sf")["status"], "dead");
}

#[test]
fn the_same_tasks_file_run_twice_at_once_runs_each_task_once() {
    let env = Env::new();
    env.cmd().args(["init", "g"]).assert().success();
    let tasks: Vec<Value> = (0..20)
        .map(|i| {
            json!({"id": format!("j{i:02}"), "description": format!("job {i}"),
                        "command": "echo $ORCHESTRATE_TASK_ID >> exec.log; sleep 0.1"})
        })
        .collect();
    let file = env.write("tasks.json", &Value::Array(tasks));
    let spawn = || {
        std::process::Command::new(bin())
            .current_dir(env.path())
            .env_remove("COORDINATION_DIR")
            .args([
                "run",
                "g",
                "--adapter",
                "shell",
                "--no-plan",
                "-w",
                "2",
                "-q",
                "--no-summary",
                "--tasks",
            ])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        env.task_files().len(),
        20,
        "no task created twice: {:?}",
        env.task_files()
    );
    let log = std::fs::read_to_string(env.path().join("exec.log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    let n = lines.len();
    lines.dedup();
    assert_eq!((n, lines.len()), (20, 20), "each task ran once: {log}");
}

#[test]
fn a_planted_log_file_fails_that_attempt_and_the_run_goes_on() {
    let env = Env::new();
    env.init_fast_backoff();
    let tasks = env.write(
        "tasks.json",
        &json!([{"id": "a", "description": "a", "command": "echo a"},
                {"id": "b", "description": "b", "command": "echo b"}]),
    );
    std::fs::create_dir_all(env.coord().join("logs")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", env.coord().join("logs/b.1.log")).unwrap();
    let out = env
        .cmd()
        .args([
            "run",
            "g",
            "--adapter",
            "shell",
            "--no-plan",
            "-w",
            "1",
            "--no-summary",
            "-o",
            "r.json",
            "--tasks",
        ])
        .arg(&tasks)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&env.path().join("r.json"));
    let b = by_id(&r, "b");
    assert_eq!(
        (b["status"].as_str(), b["attempts"].as_u64()),
        (Some("completed"), Some(2))
    );
    assert!(
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("root"),
        "the link's target untouched"
    );
}

#[test]
fn logs_follow_ends_when_the_holders_lease_has_run_out() {
    // A worker killed with -9 leaves its task claimed until some mutation
    // reaps it; a follower must not wait for that forever.
    let env = Env::new();
    env.cmd().args(["init", "g"]).assert().success();
    env.cmd()
        .args(["create-task", "t", "--id", "t"])
        .assert()
        .success();
    env.cmd()
        .args(["claim", "t", "--agent", "gone", "--lease", "1s"])
        .assert()
        .success();
    std::fs::create_dir_all(env.coord().join("logs")).unwrap();
    std::fs::write(env.coord().join("logs/t.1.log"), "half a line").unwrap();
    let start = Instant::now();
    let out = env.cmd().args(["logs", "t", "-f"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "half a line");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holder seems gone"));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_results_summary_marks_a_result_with_more_lines() {
    let env = Env::new();
    let tasks = env.write(
        "t.json",
        &json!([{"id": "two", "description": "x", "command": "echo first; echo second"},
                {"id": "one", "description": "x", "command": "echo only"},
                {"id": "long", "description": "x", "command": format!("echo {}; echo second", "y".repeat(250))}]),
    );
    let out = env
        .cmd()
        .args([
            "--json",
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "--tasks",
        ])
        .arg(&tasks)
        .assert()
        .success()
        .get_output()
        .clone();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["summary_by"], "results");
    let s = r["summary"].as_str().unwrap();
    let has = |line: &str| s.lines().any(|l| l == line);
    assert!(has("- two (completed): first …"), "{s}");
    assert!(has("- one (completed): only"), "{s}");
    // A cut first line is marked once, by the cut.
    assert!(
        has(&format!("- long (completed): {}…", "y".repeat(200))),
        "{s}"
    );
}
