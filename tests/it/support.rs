//! Test environment: a temp dir holding a coordination directory, and
//! helpers that run the `orchestrate` binary against it and report a
//! failure with the command, both streams and a listing of the directory.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Environment variables the binary reads; cleared so that the developer's
/// shell cannot change a test's outcome.
const ENV_VARS: &[&str] = &[
    "COORDINATION_DIR",
    "ORCHESTRATE_AGENT_ID",
    "ORCHESTRATE_TASK_ID",
    "ORCHESTRATE_FENCING_TOKEN",
    "ORCHESTRATE_LOG",
    "ORCHESTRATE_LOG_FORMAT",
    "ORCHESTRATE_CRASH_AT",
    "ORCHESTRATE_CORRELATION_ID",
    "RUST_LOG",
];

/// Path of the binary under test.
pub fn bin() -> &'static Path {
    assert_cmd::cargo::cargo_bin!("orchestrate")
}

/// A temp dir with `<tmp>/.coordination` (initialised by [`TestEnv::new`]).
pub struct TestEnv {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl TestEnv {
    /// A fresh, initialised coordination directory with goal "test goal".
    #[track_caller]
    pub fn new() -> Self {
        let env = Self::uninit();
        env.ok(&["init", "test goal"]);
        env
    }

    /// A temp dir whose `.coordination` does not exist yet.
    pub fn uninit() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("orchestrate-it-")
            .tempdir()
            .expect("create temp dir");
        let dir = tmp.path().join(".coordination");
        TestEnv { tmp, dir }
    }

    /// The temp dir (parent of the coordination directory).
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The coordination directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Temp files of interrupted writes: everything in `.tmp/`, and a
    /// `tasks/.tmp-write*` (spec 4.2).
    pub fn temps(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(".tmp"))
            .map(|rd| {
                rd.map(|e| format!(".tmp/{}", e.unwrap().file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("tasks")) {
            v.extend(
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".tmp-write"))
                    .map(|n| format!("tasks/{n}")),
            );
        }
        v
    }

    /// `tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.dir.join("tasks")
    }

    /// `tasks/<id>.json`.
    pub fn task_path(&self, id: &str) -> PathBuf {
        self.tasks_dir().join(format!("{id}.json"))
    }

    /// The task file parsed as JSON.
    #[track_caller]
    pub fn task_json(&self, id: &str) -> Value {
        let p = self.task_path(id);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
    }

    /// The task file's bytes.
    #[track_caller]
    pub fn task_bytes(&self, id: &str) -> Vec<u8> {
        let p = self.task_path(id);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Every file under `tasks/` (names and bytes, hidden ones included)
    /// plus `config.json`: what a "nothing written" case must not change.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        if let Ok(b) = std::fs::read(self.dir.join("config.json")) {
            m.insert("config.json".to_string(), b);
        }
        if let Ok(rd) = std::fs::read_dir(self.tasks_dir()) {
            for e in rd {
                let e = e.expect("dir entry");
                let name = format!("tasks/{}", e.file_name().to_string_lossy());
                let meta = std::fs::symlink_metadata(e.path()).expect("stat");
                let content = if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(e.path()).expect("readlink");
                    format!("symlink -> {}", target.display()).into_bytes()
                } else {
                    std::fs::read(e.path()).expect("read")
                };
                m.insert(name, content);
            }
        }
        m
    }

    /// Edits `config.json` in place (a test fixture, not through the tool).
    pub fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let p = self.dir.join("config.json");
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read config")).expect("parse config");
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("serialise")).expect("write");
    }

    /// An `assert_cmd` command for the binary with `--dir` set and the
    /// environment cleaned.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::cargo::cargo_bin_cmd!("orchestrate");
        for v in ENV_VARS {
            c.env_remove(v);
        }
        c.current_dir(self.root()).arg("--dir").arg(&self.dir);
        c.timeout(Duration::from_secs(60));
        c
    }

    /// A plain `std::process::Command` for the binary with `--dir` set, for
    /// spawning processes that run concurrently.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(bin());
        for v in ENV_VARS {
            c.env_remove(v);
        }
        c.current_dir(self.root()).arg("--dir").arg(&self.dir);
        c
    }

    /// `orchestrate run goal --agent shell --no-plan -w 1 --tasks FILE` as a
    /// `std` command, for runs the test drives itself (signals, pipes).
    pub fn shell_run_cmd(&self, tasks: &Path) -> std::process::Command {
        let mut c = self.std_cmd();
        c.args([
            "run",
            "goal",
            "--agent",
            "shell",
            "--no-plan",
            "-w",
            "1",
            "--tasks",
        ])
        .arg(tasks);
        c
    }

    /// Runs the binary with `args` and returns its output, whatever the exit.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run orchestrate")
    }

    /// Runs `args` and checks the exit code; on mismatch panics with the
    /// command, both streams and a listing of the directory.
    #[track_caller]
    pub fn expect(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        if out.status.code() != Some(code) {
            panic!(
                "`orchestrate {}` exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}\n--- {}\n{}",
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.dir.display(),
                self.listing()
            );
        }
        out
    }

    /// Runs `args`, expects exit 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(self.expect(args, 0).stdout).expect("stdout is UTF-8")
    }

    /// Runs `args` (which should include `--json`), expects `code` and
    /// parses stdout as one JSON document.
    #[track_caller]
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.expect(args, code);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `orchestrate {}` is not one JSON document ({e}):\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a task and returns its id (the only line of stdout).
    #[track_caller]
    pub fn create(&self, description: &str, extra: &[&str]) -> String {
        let mut args = vec!["create-task", description];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let id = out.trim().to_string();
        assert!(
            !id.is_empty() && !id.contains('\n'),
            "create-task printed {out:?}"
        );
        id
    }

    /// Claims as `agent` (extra args, e.g. a task id or `--lease`) and
    /// returns the claim document.
    #[track_caller]
    pub fn claim(&self, agent: &str, extra: &[&str]) -> Claim {
        let mut args = vec!["claim", "--agent", agent, "--json"];
        args.extend_from_slice(extra);
        Claim::from_json(&self.json(&args, 0))
    }

    /// A recursive listing of the coordination directory (path and size),
    /// for failure reports.
    pub fn listing(&self) -> String {
        fn walk(root: &Path, dir: &Path, out: &mut String) {
            let mut entries: Vec<_> = match std::fs::read_dir(dir) {
                Ok(rd) => rd.filter_map(|e| e.ok()).collect(),
                Err(e) => {
                    out.push_str(&format!("<{}: {e}>\n", dir.display()));
                    return;
                }
            };
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let meta = p.symlink_metadata().ok();
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                match meta {
                    Some(m) if m.is_dir() => {
                        out.push_str(&format!("{rel}/\n"));
                        walk(root, &p, out);
                    }
                    Some(m) if m.file_type().is_symlink() => {
                        out.push_str(&format!("{rel} -> symlink\n"))
                    }
                    Some(m) => out.push_str(&format!("{rel} {}\n", m.len())),
                    None => out.push_str(&format!("{rel} ?\n")),
                }
            }
        }
        let mut out = String::new();
        walk(&self.dir, &self.dir, &mut out);
        out
    }
}

/// What `claim --json` reported.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    pub token: u64,
    pub attempt: u64,
    pub doc: Value,
}

impl Claim {
    #[track_caller]
    pub fn from_json(v: &Value) -> Self {
        Claim {
            id: v["task"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no task.id in {v}"))
                .to_string(),
            token: v["fencing_token"]
                .as_u64()
                .unwrap_or_else(|| panic!("no fencing_token in {v}")),
            attempt: v["attempt"]
                .as_u64()
                .unwrap_or_else(|| panic!("no attempt in {v}")),
            doc: v.clone(),
        }
    }

    pub fn token_arg(&self) -> String {
        self.token.to_string()
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses an RFC 3339 timestamp from a JSON value.
#[track_caller]
pub fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Serialises the heavy multi-process tests so that their timing
/// assumptions (lease lengths) hold on a 2-core machine.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
