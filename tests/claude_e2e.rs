//! End-to-end tests against the real Claude Code CLI (`spec/PROTOCOL.md`
//! sections 13.2 and 14).
//!
//! The CLI (npm package `@anthropic-ai/claude-code`, installed by `.ci/run`
//! into `target/claude-code/`) talks to `tests/claude_e2e/model_server.py`, a
//! stand-in for the Anthropic Messages API on 127.0.0.1 whose "model" each
//! test scripts. Assertions are on the task files, `events.jsonl`, the
//! server's request log and exit codes.
//!
//! `ORCHESTRATE_TEST_CLAUDE_BIN` names the CLI binary. Without it every test
//! prints why it was skipped and passes, unless `ORCHESTRATE_REQUIRE_CLAUDE=1`
//! (set by `.ci/run`), which makes a missing binary a failure.

use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn orchestrate() -> &'static Path {
    assert_cmd::cargo::cargo_bin!("orchestrate")
}

/// The real CLI, or `None` (after saying why) when it is not installed.
fn claude_bin() -> Option<PathBuf> {
    let required = std::env::var("ORCHESTRATE_REQUIRE_CLAUDE").is_ok_and(|v| v == "1");
    let found = std::env::var_os("ORCHESTRATE_TEST_CLAUDE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None if required => panic!(
            "ORCHESTRATE_REQUIRE_CLAUDE=1 but ORCHESTRATE_TEST_CLAUDE_BIN does not name the Claude Code binary; `.ci/run` installs it"
        ),
        None => {
            eprintln!(
                "SKIPPED: the real Claude Code CLI is not installed (set ORCHESTRATE_TEST_CLAUDE_BIN; `.ci/run` installs @anthropic-ai/claude-code with npm)"
            );
            None
        }
    }
}

/// A running stand-in model server; killed on drop.
struct ModelServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ModelServer {
    fn start(dir: &Path, script: &Value) -> Self {
        let script_path = dir.join("model-script.json");
        std::fs::write(&script_path, serde_json::to_vec_pretty(script).unwrap()).unwrap();
        let log = dir.join("model-requests.jsonl");
        let port_file = dir.join("model-port");
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/claude_e2e/model_server.py"))
            .arg("--script")
            .arg(&script_path)
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start python3 tests/claude_e2e/model_server.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                if let Ok(p) = s.trim().parse() {
                    break p;
                }
            }
            assert!(Instant::now() < deadline, "the model server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        ModelServer { child, port, log }
    }

    /// Every request the CLI sent, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The text of every message request's messages, one string each.
    fn message_texts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/v1/messages"))
            })
            .map(|r| r["body"]["messages"].to_string())
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project directory with its own HOME (trusted by Claude Code, so its
/// `.claude/settings.json` permissions apply) and a model server.
struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    claude: PathBuf,
    server: ModelServer,
}

impl Project {
    fn new(script: Value) -> Option<Self> {
        let claude = claude_bin()?;
        let tmp = tempfile::Builder::new()
            .prefix("orchestrate-claude-")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("repo");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(home.join(".claude")).unwrap();
        let root = root.canonicalize().unwrap();
        // What accepting the trust dialog once writes; without it the CLI
        // ignores the project's permissions (it still runs its hooks).
        let trust = json!({ "projects": { root.display().to_string(): { "hasTrustDialogAccepted": true } } });
        std::fs::write(home.join(".claude.json"), trust.to_string()).unwrap();
        let server = ModelServer::start(tmp.path(), &script);
        Some(Project {
            _tmp: tmp,
            root,
            home,
            claude,
            server,
        })
    }

    fn coord(&self) -> PathBuf {
        self.root.join(".coordination")
    }

    fn env(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("ORCHESTRATE")
                || k.starts_with("ANTHROPIC")
                || k.starts_with("CLAUDE")
                || k == "COORDINATION_DIR"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.current_dir(&self.root)
            .env("HOME", &self.home)
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.server.port),
            )
            .env("ANTHROPIC_API_KEY", "test")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .stdin(Stdio::null());
    }

    fn orchestrate(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(orchestrate());
        self.env(&mut cmd);
        cmd.args(args).output().expect("run orchestrate")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.orchestrate(args);
        assert!(
            out.status.success(),
            "orchestrate {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `orchestrate run` with the real CLI, bounded by `limit`.
    fn run(&self, extra: &[&str], limit: Duration) -> Output {
        let claude = self.claude.display().to_string();
        let mut args = vec!["run", "the goal", "--claude-bin", claude.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(orchestrate());
        self.env(&mut cmd);
        cmd.args(&args);
        run_bounded(cmd, limit)
    }

    /// `claude -p PROMPT --output-format json` in the project, as a person
    /// would start a session after `orchestrate hooks install`.
    fn claude_session(&self, prompt: &str) -> Child {
        let mut cmd = Command::new(&self.claude);
        self.env(&mut cmd);
        cmd.args(["-p", prompt, "--output-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("start claude")
    }

    fn write_tasks(&self, tasks: &Value) -> String {
        let p = self.root.join("tasks.json");
        std::fs::write(&p, serde_json::to_vec_pretty(tasks).unwrap()).unwrap();
        p.display().to_string()
    }

    fn task(&self, id: &str) -> Value {
        let p = self.coord().join("tasks").join(format!("{id}.json"));
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }

    fn task_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.coord().join("tasks"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.coord().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn count_events(&self, kind: &str, task: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == kind && e["task_id"] == task)
            .count()
    }
}

/// Runs `cmd` to the end, killing it after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_bounded(&mut child, limit)
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().unwrap();
            let e = t_err.join().unwrap();
            panic!(
                "still running after {limit:?} ({s}); stderr:\n{}",
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The model runs the `when done` command it was handed, with its summary.
fn report_rule(matching: &str, summary: &str) -> Value {
    json!({
        "match": matching,
        "steps": [
            {"bash_from": "when done: `([^`]*)`", "sub": [["<one-paragraph summary>", summary]]},
            {"text": "Reported with the command."}
        ]
    })
}

fn small_dag() -> Value {
    json!([
        {"id": "a", "description": "Write the schema"},
        {"id": "b", "description": "Write the reader", "dependencies": ["a"]},
        {"id": "c", "description": "Write the writer", "dependencies": ["a"]},
        {"id": "d", "description": "Write the tests", "dependencies": ["b", "c"]}
    ])
}

fn assert_dag_done_once(p: &Project, summary: &str) {
    for id in ["a", "b", "c", "d"] {
        let t = p.task(id);
        assert_eq!(t["status"], "completed", "task {id}: {t:#}");
        assert_eq!(
            t["attempts"], 1,
            "task {id} took more than one attempt: {t:#}"
        );
        assert_eq!(
            p.count_events("task_claimed", id),
            1,
            "task {id} claimed more than once"
        );
        assert_eq!(p.count_events("task_completed", id), 1);
        // The model's own `orchestrate complete` wrote the result.
        assert_eq!(t["result"], summary, "task {id}: {t:#}");
    }
}

#[test]
fn run_no_plan_two_workers_the_model_reports_with_the_command_it_was_given() {
    let Some(p) = Project::new(
        json!({"rules": [report_rule("## Task: ", "done by the model: `src/x.rs` for $HOME")]}),
    ) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let tasks = p.write_tasks(&small_dag());
    let out = p.run(
        &[
            "--no-plan",
            "--tasks",
            &tasks,
            "-w",
            "2",
            "-o",
            "report.json",
        ],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_dag_done_once(&p, "done by the model: `src/x.rs` for $HOME");
    // The Bash tool really ran: the CLI sent its result back, and nothing
    // was refused.
    let msgs = p.server.message_texts().join("\n");
    assert!(
        msgs.contains("tool_result"),
        "no tool result in the requests"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.root.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["success"], true);
    for t in report["tasks"].as_array().unwrap() {
        assert!(t["result"].get("permission_denials").is_none(), "{t:#}");
    }
}

#[test]
fn run_in_a_repository_with_our_hooks_installed_completes_the_dag() {
    let Some(p) = Project::new(json!({"rules": [
        report_rule("## Task: ", "done under hooks"),
        // If our hooks took part, they would hand tasks over as new turns.
        report_rule("Next task from the shared queue", "stolen by a hook")
    ]})) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let prog = orchestrate().display().to_string();
    p.ok(&["hooks", "install", "--program", &prog]);
    let tasks = p.write_tasks(&small_dag());
    let out = p.run(
        &["--no-plan", "--tasks", &tasks, "-w", "2"],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_dag_done_once(&p, "done under hooks");
    // The hooks ran inside the workers' sessions but did nothing: no agent
    // registered by a hook, no release, no hand-over.
    let agents = std::fs::read_dir(p.coord().join("agents"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        agents, 0,
        "a hook registered an agent inside a worker's session"
    );
    assert!(p.events().iter().all(|e| e["event"] != "task_released"));
    let msgs = p.server.message_texts().join("\n");
    assert!(!msgs.contains("Next task from the shared queue"));
    assert!(!msgs.contains("This session is agent"));
}

#[test]
fn leader_plans_through_the_real_cli_and_a_broken_plan_is_sent_back_once() {
    let good = r#"Here is the plan:
```json
[{"id": "design", "description": "Design it", "priority": 1},
 {"id": "build", "description": "Build it", "dependencies": ["design"]}]
```"#;
    let broken = r#"[{"id": "x", "description": "x", "dependencies": ["y"]}, {"id": "y", "description": "y", "dependencies": ["x"]}]"#;
    let Some(p) = Project::new(json!({"rules": [
        {"match": "previous plan was rejected", "steps": [{"text": good}]},
        {"match": "You are the leader", "steps": [{"text": broken}]},
        {"match": "## Task: ", "steps": [{"text": "Did the work."}]}
    ]})) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let out = p.run(&["-w", "1", "-o", "report.json"], Duration::from_secs(180));
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cycle"),
        "the rejection is not shown: {stderr}"
    );
    assert_eq!(p.task_ids(), vec!["build", "design"]);
    for id in ["design", "build"] {
        let t = p.task(id);
        assert_eq!(t["status"], "completed");
        assert_eq!(t["result"]["result"], "Did the work.");
        assert!(t["result"]["session_id"].is_string());
    }
    let leader_requests = p
        .server
        .message_texts()
        .iter()
        .filter(|m| m.contains("You are the leader"))
        .count();
    assert_eq!(
        leader_requests, 2,
        "the broken plan was sent back exactly once"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.root.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["planned"], true);
}

/// Runs one task with `max_attempts` 1 and returns the task file and the run.
fn one_task(p: &Project, description: &str, extra: &[&str]) -> (Value, Output) {
    p.ok(&["init", "the goal"]);
    let tasks = p.write_tasks(&json!([{"id": "t", "description": description, "max_attempts": 1}]));
    let mut args = vec!["--no-plan", "--tasks", tasks.as_str(), "-w", "1"];
    args.extend_from_slice(extra);
    let out = p.run(&args, Duration::from_secs(120));
    (p.task("t"), out)
}

#[test]
fn a_model_that_says_task_failed_fails_the_task_with_its_reason() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: ", "steps": [{"text": "The schema file is missing, so I stopped.\nTASK FAILED"}]}
    ]})) else {
        return;
    };
    let (t, out) = one_task(&p, "Impossible work", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t["status"], "dead");
    let err = t["error"].as_str().unwrap();
    assert!(
        err.contains("TASK FAILED") && err.contains("schema file is missing"),
        "{err}"
    );
    // `logs` shows the attempt's stderr log and the CLI's reply.
    let id = t["id"].as_str().unwrap();
    let logs: Value = serde_json::from_str(&p.ok(&["logs", id, "--json"])).unwrap();
    let kinds: Vec<&str> = logs["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["output", "reply"], "{logs:#}");
    let reply: Value = serde_json::from_str(logs["files"][1]["content"].as_str().unwrap()).unwrap();
    assert!(
        reply["result"].as_str().unwrap().contains("TASK FAILED"),
        "{reply:#}"
    );
}

#[test]
fn an_api_error_is_recorded_with_the_apis_message() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: ", "steps": [{"error": 529, "type": "overloaded_error", "message": "Overloaded"}]}
    ]})) else {
        return;
    };
    let (t, out) = one_task(&p, "Work", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t["status"], "dead");
    let err = t["error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 529") && err.contains("Overloaded"),
        "{err}"
    );
}

#[test]
fn a_max_turns_stop_carries_the_clis_errors() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: ", "steps": [{"bash": "true"}, {"text": "never reached"}]}
    ]})) else {
        return;
    };
    let (t, out) = one_task(&p, "Work", &["--agent-arg=--max-turns", "--agent-arg=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t["status"], "dead");
    let err = t["error"].as_str().unwrap();
    assert!(
        err.contains("error_max_turns") && err.contains("Reached maximum number of turns"),
        "{err}"
    );
    assert_eq!(t["result"]["subtype"], "error_max_turns");
}

#[test]
fn a_reply_that_never_ends_is_killed_at_the_timeout() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: ", "steps": [{"hang": true}]}
    ]})) else {
        return;
    };
    let start = Instant::now();
    let (t, out) = one_task(&p, "Work", &["-t", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(t["status"], "dead");
    assert!(
        t["error"].as_str().unwrap().contains("timed out after 4 s"),
        "{t:#}"
    );
}

#[test]
fn a_cli_that_refuses_its_arguments_stops_the_run_at_once() {
    let Some(p) = Project::new(json!({"rules": []})) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let tasks = p.write_tasks(&json!([
        {"id": "t1", "description": "Work"},
        {"id": "t2", "description": "More work", "dependencies": ["t1"]},
        {"id": "t3", "description": "Other work"}
    ]));
    let out = p.run(
        &[
            "--no-plan",
            "--tasks",
            &tasks,
            "-w",
            "1",
            "--agent-arg=--no-such-flag",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown option '--no-such-flag'"),
        "{stderr}"
    );
    // One attempt in all: no retries, nothing else started.
    let claims = p
        .events()
        .iter()
        .filter(|e| e["event"] == "task_claimed")
        .count();
    assert_eq!(
        claims, 1,
        "the deterministic failure was retried or repeated"
    );
    let dead: Vec<String> = p
        .task_ids()
        .into_iter()
        .filter(|id| p.task(id)["status"] == "dead")
        .collect();
    assert_eq!(dead.len(), 1);
    let t = p.task(&dead[0]);
    assert_eq!(t["attempts"], 1);
    assert!(t["error"].as_str().unwrap().contains("unknown option"));
}

#[test]
fn bypass_permissions_as_root_stops_the_run_with_the_clis_message() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the CLI refuses bypassPermissions only as root");
        return;
    }
    let Some(p) = Project::new(json!({"rules": []})) else {
        return;
    };
    let (t, out) = one_task(&p, "Work", &["--permission-mode", "bypassPermissions"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with root/sudo privileges")
    );
    assert_eq!(t["status"], "dead");
    assert_eq!(t["attempts"], 1);
}

#[test]
fn a_refused_report_is_never_counted_as_completed() {
    // The model reports with a bare `orchestrate`, which our allow rules
    // (for the absolute path) do not cover: the CLI refuses it.
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: ", "steps": [
            {"bash": "orchestrate complete t --token 1 --result done"},
            {"text": "All done."}
        ]}
    ]})) else {
        return;
    };
    let (t, out) = one_task(&p, "Work", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t["status"], "dead", "{t:#}");
    assert!(
        t["error"].as_str().unwrap().contains("not allowed to run"),
        "{t:#}"
    );
    assert_eq!(t["result"]["permission_denials"][0]["tool_name"], "Bash");
}

fn hooks_project(rules: Value) -> Option<Project> {
    let p = Project::new(json!({ "rules": rules }))?;
    p.ok(&["init", "the shared goal"]);
    let prog = orchestrate().display().to_string();
    p.ok(&["hooks", "install", "--program", &prog]);
    Some(p)
}

fn session_result(child: &mut Child) -> Value {
    let out = wait_bounded(child, Duration::from_secs(180));
    assert!(out.status.success(), "claude session: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn a_hooks_session_drains_the_queue_with_no_approvals() {
    let Some(p) = hooks_project(json!([
        report_rule("Next task from the shared queue", "done in the session: `a.rs`, $5"),
        {"match": ".", "steps": [{"text": "Ready."}]}
    ])) else {
        return;
    };
    p.ok(&["create-task", "Write file A", "--id", "a", "-p", "1"]);
    p.ok(&["create-task", "Write file B", "--id", "b", "-d", "a"]);
    p.ok(&["create-task", "Write file C", "--id", "c"]);
    let mut s = p.claude_session("start");
    let reply = session_result(&mut s);
    assert_eq!(reply["permission_denials"], json!([]), "{reply:#}");
    let session = reply["session_id"].as_str().unwrap();
    for id in ["a", "b", "c"] {
        let t = p.task(id);
        assert_eq!(t["status"], "completed", "{t:#}");
        assert_eq!(t["result"], "done in the session: `a.rs`, $5");
        assert_eq!(t["claimed_by"], session);
    }
    let msgs = p.server.message_texts();
    // SessionStart's context reached the model, and each Stop hand-over
    // came as a new turn, in claim order.
    assert!(msgs
        .iter()
        .any(|m| m.contains("This session is agent") && m.contains("the shared goal")));
    let all = msgs.join("\n");
    let pos = |s: &str| all.find(s).unwrap_or_else(|| panic!("{s} not handed over"));
    assert!(pos("Task `a`") < pos("Task `b`") || pos("Task `a`") < pos("Task `c`"));
    let agent = p.ok(&["--json", "status"]);
    assert!(
        agent.contains("\"claimed\": 0") || agent.contains("\"claimed\":0"),
        "{agent}"
    );
}

#[test]
fn session_end_releases_a_task_the_session_did_not_report() {
    let Some(p) = hooks_project(json!([
        {"match": ".", "steps": [{"text": "I will look at it later."}]}
    ])) else {
        return;
    };
    p.ok(&["create-task", "Write file A", "--id", "a"]);
    let mut s = p.claude_session("start");
    let reply = session_result(&mut s);
    assert!(reply["result"].is_string());
    let t = p.task("a");
    assert_eq!(t["status"], "pending", "{t:#}");
    assert_eq!(t["attempts"], 0, "release spends no attempt");
    assert_eq!(p.count_events("task_claimed", "a"), 1);
    assert_eq!(p.count_events("task_released", "a"), 1);
    // Blocked at most 3 times in a row (--max-blocks), then allowed to stop.
    let blocks = p
        .server
        .message_texts()
        .iter()
        .filter(|m| m.contains("not reported yet"))
        .count();
    assert!(blocks <= 3, "{blocks} reminders");
}

#[test]
fn two_hook_sessions_at_once_claim_every_task_exactly_once() {
    let Some(p) = hooks_project(json!([
        report_rule("Next task from the shared queue", "done"),
        {"match": ".", "steps": [{"text": "Ready."}]}
    ])) else {
        return;
    };
    p.ok(&["create-task", "root", "--id", "r"]);
    for i in 1..=4 {
        p.ok(&[
            "create-task",
            &format!("leaf {i}"),
            "--id",
            &format!("l{i}"),
            "-d",
            "r",
        ]);
    }
    p.ok(&["create-task", "join", "--id", "j", "-d", "l1", "-d", "l2"]);
    let mut s1 = p.claude_session("start");
    let mut s2 = p.claude_session("start");
    let r1 = session_result(&mut s1);
    let r2 = session_result(&mut s2);
    assert_ne!(r1["session_id"], r2["session_id"]);
    // Whichever session finishes last claims what its peer's work made
    // ready, so the queue drains; no task is claimed twice.
    for id in p.task_ids() {
        let t = p.task(&id);
        assert_eq!(t["status"], "completed", "{t:#}");
        assert_eq!(
            p.count_events("task_claimed", &id),
            1,
            "{id} claimed more than once"
        );
    }
}

#[test]
fn a_worker_model_that_releases_its_task_does_not_loop() {
    // Workers are not handed `release` (it spends no attempt, so the worker
    // would claim the task again without end), and it is not pre-approved.
    // The model builds the release from the complete command it was given.
    let Some(p) = Project::new(json!({"rules": [{"match": "## Task: ", "steps": [
        {"bash_from": "when done: `([^`]*?) --result", "sub": [[" complete ", " release "]]},
        {"text": "Handed back."}
    ]}]})) else {
        return;
    };
    let (t, out) = one_task(&p, "Work", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t["status"], "dead", "{t:#}");
    assert_eq!(p.count_events("task_claimed", "t"), 1);
    assert!(!p.server.message_texts().join("").contains("hand it back"));
}

#[test]
fn a_hooks_session_that_hands_its_task_back_stops_instead_of_looping() {
    let Some(p) = hooks_project(json!([
        {"match": "Next task from the shared queue", "steps": [
            {"bash_from": "hand it back untouched: `([^`]*)`"},
            {"text": "Handed back."}
        ]},
        {"match": ".", "steps": [{"text": "Ready."}]}
    ])) else {
        return;
    };
    p.ok(&["create-task", "hand me back", "--id", "hb"]);
    let mut s = p.claude_session("start");
    session_result(&mut s);
    let t = p.task("hb");
    assert_eq!(t["status"], "pending");
    assert_eq!(
        p.count_events("task_claimed", "hb"),
        1,
        "claimed again after its release"
    );
}

#[test]
fn a_replys_discoveries_are_recorded_and_shown_to_the_next_task() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "## Task: a\n", "steps": [{"text": "Wrote the schema.\n\nFiles created:\n- schema.sql\n\nDiscoveries:\n- The schema uses snake_case keys; `found` in the old dump is a reserved word"}]},
        {"match": "## Task: b\n", "steps": [{"text": "Wrote the reader."}]}
    ]})) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let tasks = p.write_tasks(&json!([
        {"id": "a", "description": "Write the schema"},
        {"id": "b", "description": "Write the reader", "dependencies": ["a"]}
    ]));
    let out = p.run(
        &[
            "--no-plan",
            "--tasks",
            &tasks,
            "-w",
            "2",
            "--no-summary",
            "-o",
            "report.json",
        ],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{}", text(&out));
    let f: Value = serde_json::from_slice(
        &std::fs::read(p.coord().join("discoveries.json")).expect("discoveries.json"),
    )
    .unwrap();
    let list = f["discoveries"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{f:#}");
    let d = &list[0];
    let said = "The schema uses snake_case keys; `found` in the old dump is a reserved word";
    assert_eq!(d["content"], said);
    assert_eq!(d["related_task"], "a");
    assert!(
        d["agent_id"].as_str().unwrap().contains("-worker-"),
        "{d:#}"
    );
    assert_eq!(
        p.task("a")["result"]["files_created"],
        json!(["schema.sql"])
    );
    assert_eq!(p.task("a")["result"]["discoveries"], json!([said]));
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.root.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["discoveries"][0]["id"], d["id"]);
    assert_eq!(report["summary"], Value::Null);
    // The real CLI sent b's prompt, with the discovery, to the model.
    let b_prompt = p
        .server
        .message_texts()
        .into_iter()
        .find(|m| m.contains("## Task: b"))
        .expect("b's request");
    assert!(
        b_prompt.contains("What other workers found") && b_prompt.contains("snake_case keys"),
        "{b_prompt}"
    );
    assert_eq!(
        p.events()
            .iter()
            .filter(|e| e["event"] == "discovery_recorded")
            .count(),
        1
    );
}

#[test]
fn the_leader_writes_the_summary_into_the_report() {
    let Some(p) = Project::new(json!({"rules": [
        {"match": "The workers have finished", "steps": [{"text": "SUMMARY: the schema and the reader are written; mind the snake_case keys."}]},
        {"match": "## Task: ", "steps": [{"text": "Did the work.\nDiscoveries:\n- The keys are snake_case"}]}
    ]})) else {
        return;
    };
    p.ok(&["init", "the goal"]);
    let tasks = p.write_tasks(&json!([
        {"id": "a", "description": "Write the schema"},
        {"id": "b", "description": "Write the reader", "dependencies": ["a"]}
    ]));
    let out = p.run(
        &[
            "--no-plan",
            "--tasks",
            &tasks,
            "-w",
            "1",
            "-o",
            "report.json",
        ],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.root.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["summary"],
        "SUMMARY: the schema and the reader are written; mind the snake_case keys."
    );
    assert_eq!(report["summary_by"], "leader");
    assert_eq!(report["discoveries"].as_array().unwrap().len(), 2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Summary (by the leader):"), "{stdout}");
    // The leader was given every result and the discoveries, as data.
    let msgs = p.server.message_texts();
    let summary_req = msgs
        .iter()
        .find(|m| m.contains("The workers have finished"))
        .expect("the summary request");
    assert!(summary_req.contains("### a (completed)") && summary_req.contains("### b (completed)"));
    assert!(
        summary_req.contains("Did the work.") && summary_req.contains("The keys are snake_case")
    );
    assert!(summary_req.contains("TASK-DATA-"));
    let run_id = report["correlation_id"].as_str().unwrap();
    assert!(p
        .coord()
        .join(format!("logs/leader-{run_id}.summary.json"))
        .is_file());
}
