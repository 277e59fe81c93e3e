//! Fuzz targets, written with proptest, for every input surface that takes
//! data from outside: task files and `config.json` (`store`), tasks files and
//! `orchestration.json` (`plan::read_tasks_file`, `plan::read_run_file`),
//! leader plans (`plan::parse_plan`, free text around JSON), hook stdin
//! (`hook::parse_input`, `HookEvent::parse`), Claude Code settings files
//! (`settings::parse`, `install`, `uninstall`), Claude CLI output
//! (`agent::parse_claude_output`), and the id and new-task rules (`task`).
//!
//! Every target feeds
//! 1. arbitrary bytes (uniform, and biased towards JSON punctuation), and
//! 2. structure-aware mutations of valid documents: the fixtures of
//!    `fixtures/v1/` and `fixtures/hooks/` (and documents derived from them)
//!    with fields dropped, duplicated, renamed, retyped or replaced by huge,
//!    negative, fractional or out-of-range numbers, deep nesting, very long
//!    strings, NUL, odd unicode, invalid UTF-8 and invalid escapes, then
//!    byte-level damage (truncation, insertions, a BOM, stray bytes);
//!
//! and checks, for every case,
//! 3. no panic, an answer within a deadline (each call runs on its own thread
//!    and the case fails if it takes longer than 2 s, `FUZZ_DEADLINE_MS`),
//!    only the typed [`orchestrate::Error`] variants the function documents,
//!    and a sanity property for what it accepts (a task file that loads
//!    serialises and loads again equal; a plan that parses has non-empty
//!    descriptions, priorities in 1..=10 and passes `check_batch`; ...).
//!    Task and config files are also held to the spec: an accepted file has
//!    every known member of its type (section 3.2, step 4), and a file valid
//!    under `spec/*.schema.json` is accepted.
//!
//! Functions that take a path get their input as a file in a temporary
//! directory. `truncation_at_every_position` cuts every seed document at
//! every byte; `deep_nesting_is_an_error_not_a_stack_overflow` feeds
//! 100 000 nested brackets to every surface in a child process, so that a
//! stack overflow (which aborts the process) is reported as a failure instead
//! of killing the test binary.
//!
//! Case counts: `PROPTEST_CASES` sets the number of cases of every proptest
//! target (default [`DEFAULT_CASES`], chosen so that `cargo test --test fuzz`
//! stays under a minute on a busy 2-core machine in a debug build: about
//! 17 s with 500 cases, 30 s with 1000). The inputs are random on every run;
//! `PROPTEST_RNG_SEED=<u64>` fixes them. `FUZZ_STATS=1` (with
//! `--nocapture`) prints how many cases each target accepted and refused.
//!
//! Defects found are pinned by the `defect_*` tests, which fail until they
//! are fixed. The fuzz targets step around those exact inputs (see
//! `known_task_defect` and `known_config_defect`) so that they keep looking
//! for new problems instead of finding the known ones again.

use orchestrate::claude::hook::{self, HookEvent, HookInput};
use orchestrate::claude::settings;
use orchestrate::protocol::clock;
use orchestrate::protocol::config::CONFIG_SCHEMA_VERSION;
use orchestrate::protocol::store::{
    self, parse_versioned, read_bytes, read_config, read_task, to_pretty,
};
use orchestrate::protocol::task::TASK_SCHEMA_VERSION;
use orchestrate::protocol::task::{validate_name, validate_new, MAX_DESCRIPTION_LEN, MAX_ID_LEN};
use orchestrate::run::agent::parse_claude_output;
use orchestrate::run::plan::{self, check_batch, extract_json, parse_plan, tasks_from_value};
use orchestrate::{ClaimOutcome, ClaimRequest, Config, Coordination, Error, NewTask, Task, TaskId};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestRunner;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Harness: case counts, the deadline, child processes
// ---------------------------------------------------------------------------

/// Cases per proptest target unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 500;

/// The proptest configuration of every target: `PROPTEST_CASES` cases (or
/// `default`), no regression files written into the tree (failures found
/// here are kept as `defect_*` tests instead), and shrinking bounded so that
/// a hanging case cannot keep the run going for long.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_time: 30_000,
        max_shrink_iters: 4_096,
        ..ProptestConfig::default()
    }
}

/// Runs `check` on `cases` values of `strategy` and fails with the minimal
/// failing input.
fn fuzz<S>(name: &str, default_cases: u32, strategy: S, check: impl Fn(S::Value))
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let mut runner = TestRunner::new(config(default_cases));
    STATS.with(|s| s.borrow_mut().clear());
    if let Err(e) = runner.run(&strategy, |v| {
        check(v);
        Ok(())
    }) {
        panic!("fuzz target `{name}` failed: {e}");
    }
    if std::env::var_os("FUZZ_STATS").is_some() {
        STATS.with(|s| eprintln!("{name}: {:?}", s.borrow()));
    }
}

thread_local! {
    /// Outcomes per kind for the running target (`FUZZ_STATS=1` prints them).
    static STATS: std::cell::RefCell<std::collections::BTreeMap<String, u64>> =
        Default::default();
}

/// Counts one outcome of the running target.
fn stat(outcome: impl Into<String>) {
    STATS.with(|s| *s.borrow_mut().entry(outcome.into()).or_default() += 1);
}

/// Time one call may take (`FUZZ_DEADLINE_MS`, default 5000 ms: a hang
/// is what this catches, and a debug build on a loaded 2-core machine took
/// over 2 s for the deepest nesting case).
fn deadline() -> Duration {
    Duration::from_millis(
        std::env::var("FUZZ_DEADLINE_MS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(5_000),
    )
}

/// Runs `f` on a fresh thread (8 MiB of stack, as the CLI's main thread) and
/// returns its answer; fails if it takes longer than [`deadline`], and
/// re-raises its panic if it panicked. A hanging call is left running: there
/// is no way to stop a thread, and the case has failed anyway.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::sync_channel(1);
    let worker = std::thread::Builder::new()
        .name(format!("fuzz: {what}"))
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a worker thread");
    let limit = deadline();
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {limit:?}: a hang (or far too slow)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("{what}: the worker ended without an answer"),
        },
    }
}

/// Environment variable telling a re-run of this binary which test to run
/// for real (see [`isolated`]).
const CHILD_ENV: &str = "ORCHESTRATE_FUZZ_CHILD";

/// Runs `body` in a child process (this test binary again, filtered to the
/// test `name`), so that a stack overflow, which aborts the whole process,
/// fails this test instead of killing every other one. The child must exit
/// successfully within `limit`.
fn isolated(name: &str, limit: Duration, body: fn()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    let out = tempfile::tempdir().expect("temp dir for the child's output");
    let stdout = std::fs::File::create(out.path().join("stdout")).expect("stdout file");
    let stderr = std::fs::File::create(out.path().join("stderr")).expect("stderr file");
    let mut child = Command::new(std::env::current_exe().expect("path of this test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, name)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start the child test process");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tail = |f: &str| {
        let text = std::fs::read_to_string(out.path().join(f)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "`{name}` died in its child process ({s}; a signal here is an abort, e.g. a stack overflow)\n--- stderr ---\n{}\n--- stdout ---\n{}",
            tail("stderr"),
            tail("stdout")
        ),
        None => panic!(
            "`{name}` did not finish within {limit:?} in its child process (a hang, or far too slow)\n--- stderr ---\n{}",
            tail("stderr")
        ),
    }
}

// ---------------------------------------------------------------------------
// Inputs as the failure report shows them
// ---------------------------------------------------------------------------

/// Largest input shown in full in a failure message.
const SHOW_MAX: usize = 8 << 10;

/// Raw bytes, shown as an escaped byte string.
#[derive(Clone, PartialEq)]
struct Doc(Vec<u8>);

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes: b\"", self.0.len())?;
        for &b in self.0.iter().take(SHOW_MAX) {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        if self.0.len() > SHOW_MAX {
            write!(f, "...")?;
        }
        write!(f, "\"")
    }
}

/// Text, shown escaped and capped.
#[derive(Clone, PartialEq)]
struct Text(String);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(SHOW_MAX).collect();
        write!(f, "{} bytes: {shown:?}", self.0.len())?;
        if shown.len() < self.0.len() {
            write!(f, "...")?;
        }
        Ok(())
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// Seed documents
// ---------------------------------------------------------------------------

const TASK_FIXTURES: [(&str, &str); 8] = [
    (
        "task-valid-full.json",
        include_str!("../fixtures/v1/task-valid-full.json"),
    ),
    (
        "task-valid-minimal.json",
        include_str!("../fixtures/v1/task-valid-minimal.json"),
    ),
    (
        "task-valid-required-only.json",
        include_str!("../fixtures/v1/task-valid-required-only.json"),
    ),
    (
        "task-unknown-fields.json",
        include_str!("../fixtures/v1/task-unknown-fields.json"),
    ),
    (
        "task-newer-schema.json",
        include_str!("../fixtures/v1/task-newer-schema.json"),
    ),
    (
        "task-bad-priority.json",
        include_str!("../fixtures/v1/task-bad-priority.json"),
    ),
    (
        "task-bad-status.json",
        include_str!("../fixtures/v1/task-bad-status.json"),
    ),
    (
        "task-corrupt-truncated.json",
        include_str!("../fixtures/v1/task-corrupt-truncated.json"),
    ),
];

const CONFIG_FIXTURES: [(&str, &str); 2] = [
    (
        "config-valid.json",
        include_str!("../fixtures/v1/config-valid.json"),
    ),
    (
        "config-newer-schema.json",
        include_str!("../fixtures/v1/config-newer-schema.json"),
    ),
];

const HOOK_FIXTURES: [(&str, &str); 6] = [
    (
        "session-start.json",
        include_str!("../fixtures/hooks/session-start.json"),
    ),
    (
        "session-end.json",
        include_str!("../fixtures/hooks/session-end.json"),
    ),
    ("stop.json", include_str!("../fixtures/hooks/stop.json")),
    (
        "stop-active.json",
        include_str!("../fixtures/hooks/stop-active.json"),
    ),
    (
        "subagent-stop.json",
        include_str!("../fixtures/hooks/subagent-stop.json"),
    ),
    (
        "user-prompt-submit.json",
        include_str!("../fixtures/hooks/user-prompt-submit.json"),
    ),
];

const SETTINGS_FIXTURES: [(&str, &str); 2] = [
    (
        "with-other-hooks.json",
        include_str!("../fixtures/hooks/settings/with-other-hooks.json"),
    ),
    (
        "malformed.json",
        include_str!("../fixtures/hooks/settings/malformed.json"),
    ),
];

/// The fixtures that are JSON, parsed.
fn parsed(fixtures: &[(&str, &str)]) -> Vec<Value> {
    fixtures
        .iter()
        .filter_map(|(_, text)| serde_json::from_str(text).ok())
        .collect()
}

fn task_seeds() -> Vec<Value> {
    parsed(&TASK_FIXTURES)
}

fn config_seeds() -> Vec<Value> {
    parsed(&CONFIG_FIXTURES)
}

fn hook_seeds() -> Vec<Value> {
    parsed(&HOOK_FIXTURES)
}

/// The valid task fixtures as entries of a tasks file (the Python tool's
/// field names: `context_files`, `hints`, `tags` at the top).
fn task_entries() -> Vec<Value> {
    [
        "task-valid-full.json",
        "task-valid-minimal.json",
        "task-valid-required-only.json",
    ]
    .iter()
    .map(|name| {
        let text = TASK_FIXTURES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .expect("fixture listed");
        let t: Value = serde_json::from_str(text).expect("valid fixture is JSON");
        let mut e = Map::new();
        for k in [
            "id",
            "description",
            "priority",
            "dependencies",
            "command",
            "max_attempts",
        ] {
            if let Some(v) = t.get(k) {
                e.insert(k.into(), v.clone());
            }
        }
        if let Some(c) = t.get("context") {
            for (from, to) in [
                ("files", "context_files"),
                ("hints", "hints"),
                ("tags", "tags"),
            ] {
                if let Some(v) = c.get(from) {
                    e.insert(to.into(), v.clone());
                }
            }
        }
        Value::Object(e)
    })
    .collect()
}

/// Tasks files: a JSON array and an object with a `tasks` array.
fn tasks_file_seeds() -> Vec<Value> {
    let entries = task_entries();
    vec![
        Value::Array(entries.clone()),
        json!({ "tasks": entries }),
        json!([{ "description": "only a description" }]),
        json!([{ "description": "hints as a list", "hints": ["a", "b"], "files": ["x.rs"], "id": 7 }]),
    ]
}

/// `orchestration.json` documents, with the goal of `config-valid.json`.
fn run_file_seeds() -> Vec<Value> {
    let goal = config_seeds()[0]["goal"].clone();
    vec![
        json!({
            "goal": goal,
            "working_directory": ".",
            "max_workers": 3,
            "model": "claude-sonnet-4-20250514",
            "task_timeout": 600,
            "master_plan": "Lexer first, then the parser.",
            "tasks": task_entries(),
        }),
        json!({ "goal": goal, "tasks": [] }),
        json!({ "goal": goal }),
    ]
}

/// Plans that pass `check_batch` with `lexer-tables` existing: the task
/// entries with dependencies inside the batch.
fn plan_seeds() -> Vec<Value> {
    let mut entries = task_entries();
    for (i, e) in entries.iter_mut().enumerate() {
        if i > 0 {
            e["dependencies"] = json!(["write-lexer"]);
        }
    }
    entries.swap(0, 1); // write-lexer first, as a leader would write it
    vec![
        Value::Array(entries.clone()),
        json!({ "tasks": entries }),
        json!([{ "id": "a", "description": "step a" }, { "id": "b", "description": "step b", "dependencies": ["a"], "priority": 1 }]),
    ]
}

/// Claude CLI output objects, shaped like `fixtures/fake-claude` prints them.
fn claude_seeds() -> Vec<Value> {
    let plan = serde_json::to_string(&plan_seeds()[0]).expect("plan serialises");
    vec![
        json!({"type":"result","subtype":"success","is_error":false,"duration_ms":12,"duration_api_ms":10,"num_turns":1,"result":"Did: write the lexer","session_id":"fake-session-1","total_cost_usd":0.0012}),
        json!({"type":"result","subtype":"error_during_execution","is_error":true,"result":"","session_id":"fake-session-2"}),
        json!({"type":"result","subtype":"success","is_error":false,"result": plan,"session_id":"fake-session-3"}),
        json!({"type":"system","subtype":"init","session_id":"fake-session-4","tools":["Bash"]}),
        json!({"type":"assistant","message":{"content":[{"type":"text","text":"working"}]}}),
    ]
}

/// Settings files: the fixture, the fixture with our hooks installed, and
/// the small cases.
fn settings_seeds() -> Vec<Value> {
    let base: Value =
        serde_json::from_str(SETTINGS_FIXTURES[0].1).expect("settings fixture is JSON");
    let mut installed = base
        .as_object()
        .cloned()
        .expect("settings fixture is an object");
    settings::install(&mut installed, "orchestrate");
    vec![
        base,
        Value::Object(installed),
        json!({}),
        json!({ "hooks": {} }),
    ]
}

// ---------------------------------------------------------------------------
// Structure-aware mutation: a JSON tree that can hold what JSON cannot
// ---------------------------------------------------------------------------

/// A JSON document under mutation. Unlike `serde_json::Value` it keeps
/// duplicate keys, number tokens verbatim (out of range, malformed) and raw
/// bytes (invalid UTF-8, control characters, bad escapes).
#[derive(Clone, Debug, PartialEq)]
enum J {
    Null,
    Bool(bool),
    /// A number token as written, valid or not.
    Num(String),
    Str(String),
    /// Bytes written verbatim.
    Raw(Vec<u8>),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn from_value(v: &Value) -> J {
        match v {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => J::Num(n.to_string()),
            Value::String(s) => J::Str(s.clone()),
            Value::Array(a) => J::Arr(a.iter().map(J::from_value).collect()),
            Value::Object(o) => J::Obj(
                o.iter()
                    .map(|(k, v)| (k.clone(), J::from_value(v)))
                    .collect(),
            ),
        }
    }

    fn render(&self, out: &mut Vec<u8>, pretty: bool, depth: usize) {
        let newline = |out: &mut Vec<u8>, depth: usize| {
            if pretty {
                out.push(b'\n');
                out.extend(std::iter::repeat_n(b' ', 2 * depth));
            }
        };
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            J::Num(t) => out.extend_from_slice(t.as_bytes()),
            J::Str(s) => out.extend_from_slice(quoted(s).as_bytes()),
            J::Raw(b) => out.extend_from_slice(b),
            J::Arr(items) => {
                out.push(b'[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    newline(out, depth + 1);
                    x.render(out, pretty, depth + 1);
                }
                if !items.is_empty() {
                    newline(out, depth);
                }
                out.push(b']');
            }
            J::Obj(members) => {
                out.push(b'{');
                for (i, (k, x)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    newline(out, depth + 1);
                    out.extend_from_slice(quoted(k).as_bytes());
                    out.extend_from_slice(if pretty { b": " } else { b":" });
                    x.render(out, pretty, depth + 1);
                }
                if !members.is_empty() {
                    newline(out, depth);
                }
                out.push(b'}');
            }
        }
    }

    fn to_bytes(&self, pretty: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.render(&mut out, pretty, 0);
        out
    }

    /// Paths of every node, root first, in document order.
    fn paths(&self) -> Vec<Vec<usize>> {
        fn walk(j: &J, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            out.push(cur.clone());
            let children: Vec<&J> = match j {
                J::Arr(items) => items.iter().collect(),
                J::Obj(members) => members.iter().map(|(_, x)| x).collect(),
                _ => Vec::new(),
            };
            for (i, x) in children.into_iter().enumerate() {
                cur.push(i);
                walk(x, cur, out);
                cur.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    fn at_mut(&mut self, path: &[usize]) -> &mut J {
        let mut j = self;
        for &i in path {
            j = match j {
                J::Arr(items) => &mut items[i],
                J::Obj(members) => &mut members[i].1,
                _ => unreachable!("paths only go through arrays and objects"),
            };
        }
        j
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// `depth` nested arrays (or single-member objects) around `inner`.
fn nested(depth: usize, objects: bool, inner: J) -> J {
    (0..depth).fold(inner, |acc, _| {
        if objects {
            J::Obj(vec![("a".into(), acc)])
        } else {
            J::Arr(vec![acc])
        }
    })
}

/// One structural change at a node chosen by an `Index` into the node list.
#[derive(Clone, Debug)]
enum Mutation {
    /// Remove the node from its parent (the root: an empty document).
    Drop(Index),
    /// Repeat the node in its parent: a duplicate key in an object.
    Duplicate(Index),
    /// Put an arbitrary value in place of the node.
    Replace(Index, J),
    /// Replace a string with a string, a number with a number, a boolean
    /// with a boolean, push a string into an array: mostly keeps documents
    /// valid, so that accepted inputs get checked too.
    SameType(Index, String, String, bool),
    /// Same content, other JSON type (5 -> "5", [x] -> {"0": x}, ...).
    Retype(Index),
    /// Add a member to the node if it is an object (else to the root).
    AddField(Index, String, J),
    /// Rename the member holding the node.
    RenameKey(Index, String),
    /// Bury the node under `depth` arrays or objects.
    Wrap(Index, usize, bool),
}

fn retyped(j: J) -> J {
    match j {
        J::Null => J::Str("null".into()),
        J::Bool(b) => J::Num(if b { "1" } else { "0" }.into()),
        J::Num(t) => J::Str(t),
        J::Str(s) if s.parse::<f64>().is_ok() => J::Num(s),
        J::Str(s) => J::Arr(vec![J::Str(s)]),
        J::Raw(b) => J::Str(lossy(&b)),
        J::Arr(items) => J::Obj(
            items
                .into_iter()
                .enumerate()
                .map(|(i, x)| (i.to_string(), x))
                .collect(),
        ),
        J::Obj(members) => J::Arr(members.into_iter().map(|(_, x)| x).collect()),
    }
}

impl Mutation {
    fn apply(&self, root: &mut J) {
        let paths = root.paths();
        let pick = |i: &Index| paths[i.index(paths.len())].clone();
        match self {
            Mutation::Drop(i) => match pick(i).split_last() {
                None => *root = J::Raw(Vec::new()),
                Some((&k, parent)) => match root.at_mut(parent) {
                    J::Arr(items) => {
                        items.remove(k);
                    }
                    J::Obj(members) => {
                        members.remove(k);
                    }
                    _ => unreachable!(),
                },
            },
            Mutation::Duplicate(i) => match pick(i).split_last() {
                None => *root = J::Arr(vec![root.clone(), root.clone()]),
                Some((&k, parent)) => match root.at_mut(parent) {
                    J::Arr(items) => items.insert(k, items[k].clone()),
                    J::Obj(members) => members.insert(k, members[k].clone()),
                    _ => unreachable!(),
                },
            },
            Mutation::Replace(i, v) => *root.at_mut(&pick(i)) = v.clone(),
            Mutation::SameType(i, s, n, b) => {
                let node = root.at_mut(&pick(i));
                match node {
                    J::Str(_) | J::Null | J::Raw(_) => *node = J::Str(s.clone()),
                    J::Num(_) => *node = J::Num(n.clone()),
                    J::Bool(_) => *node = J::Bool(*b),
                    J::Arr(items) => items.push(J::Str(s.clone())),
                    J::Obj(_) => {}
                }
            }
            Mutation::Retype(i) => {
                let node = root.at_mut(&pick(i));
                *node = retyped(std::mem::replace(node, J::Null));
            }
            Mutation::AddField(i, k, v) => {
                let path = pick(i);
                let target = if matches!(root.at_mut(&path), J::Obj(_)) {
                    path
                } else {
                    Vec::new()
                };
                if let J::Obj(members) = root.at_mut(&target) {
                    members.push((k.clone(), v.clone()));
                }
            }
            Mutation::RenameKey(i, k) => {
                if let Some((&last, parent)) = pick(i).split_last() {
                    if let J::Obj(members) = root.at_mut(parent) {
                        members[last].0 = k.clone();
                    }
                }
            }
            Mutation::Wrap(i, depth, objects) => {
                let node = root.at_mut(&pick(i));
                *node = nested(*depth, *objects, std::mem::replace(node, J::Null));
            }
        }
    }
}

/// Damage done to the rendered bytes.
#[derive(Clone, Debug)]
enum ByteOp {
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Set(Index, u8),
    Remove(Index, usize),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
}

impl ByteOp {
    fn apply(&self, b: &mut Vec<u8>) {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match self {
            ByteOp::Truncate(i) => b.truncate(at(i, b.len())),
            ByteOp::Insert(i, x) => {
                let p = at(i, b.len());
                b.splice(p..p, x.iter().copied());
            }
            ByteOp::Set(i, x) => {
                if !b.is_empty() {
                    let p = i.index(b.len());
                    b[p] = *x;
                }
            }
            ByteOp::Remove(i, n) => {
                let p = at(i, b.len());
                let end = (p + n).min(b.len());
                b.drain(p..end);
            }
            ByteOp::Prefix(x) => {
                b.splice(0..0, x.iter().copied());
            }
            ByteOp::Suffix(x) => b.extend_from_slice(x),
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Every member name the surfaces know, so that mutations hit real fields.
const FIELD_NAMES: &[&str] = &[
    "schema_version",
    "id",
    "seq",
    "description",
    "priority",
    "dependencies",
    "context",
    "files",
    "hints",
    "tags",
    "command",
    "status",
    "attempts",
    "max_attempts",
    "backoff",
    "base_ms",
    "factor",
    "max_ms",
    "jitter",
    "claimed_by",
    "fencing_token",
    "lease_expires_at",
    "not_before",
    "result",
    "error",
    "log_file",
    "created_at",
    "updated_at",
    "claimed_at",
    "completed_at",
    "goal",
    "lease_ms",
    "durability",
    "tasks",
    "context_files",
    "working_directory",
    "max_workers",
    "model",
    "task_timeout",
    "master_plan",
    "session_id",
    "transcript_path",
    "cwd",
    "hook_event_name",
    "source",
    "stop_hook_active",
    "hooks",
    "type",
    "matcher",
    "timeout",
    "subtype",
    "is_error",
];

/// Strings that mean something to some surface.
const SPECIAL_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "\0",
    "a\0b",
    "..",
    ".",
    "/",
    "a/b",
    "../etc/passwd",
    "-x",
    ".hidden",
    "x y",
    "\u{feff}",
    "\u{202e}evil",
    "e\u{301}",
    "\u{1f600}",
    "\u{fffd}",
    "pending",
    "claimed",
    "completed",
    "dead",
    "cancelled",
    "blocked",
    "running",
    "durable",
    "relaxed",
    "result",
    "error_max_turns",
    "write-lexer",
    "lexer-tables",
    "parse-expr",
    "port-tests",
    "t1",
    "orchestrate hook stop",
    "/usr/bin/orchestrate hook session-start",
    "orchestrate hook nonsense",
    "session-start",
    "Stop",
    "```",
    "```json\n[]\n```",
    "[]",
    "{}",
    "null",
    "5",
    "1e3",
    "-1",
];

/// RFC 3339-ish timestamps, many of them invalid or at the edges.
fn timestamp() -> impl Strategy<Value = String> {
    let fixed = select(vec![
        "2026-11-30T01:52:44.133Z",
        "2026-11-30T01:52:44Z",
        "2026-11-30T02:52:44.5+01:00",
        "2026-11-30t01:52:44z",
        "2026-11-30 01:52:44Z",
        "2026-11-30T01:52:44",
        "2026-11-30",
        "2026-02-30T00:00:00Z",
        "2026-06-30T23:59:60Z",
        "2026-06-30T23:59:60.999Z",
        "2026-11-30T01:52:44.123456789123Z",
        "2026-11-30T24:00:00Z",
        "2026-11-30T01:52:44+24:00",
        "2026-11-30T01:52:44-00:00",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "1970-01-01T00:00:00Z",
        "+10000-01-01T00:00:00.000Z",
        "-0001-12-31T23:00:00.000Z",
    ])
    .prop_map(String::from);
    let generated = (
        0u32..=9999,
        0u32..=13,
        0u32..=32,
        0u32..=24,
        0u32..=60,
        0u32..=61,
        prop::option::of("[0-9]{1,12}"),
        prop_oneof![
            Just("Z".to_string()),
            (any::<bool>(), 0u32..=23, 0u32..=59)
                .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        });
    prop_oneof![fixed, generated]
}

/// Strings: arbitrary unicode, special values, ids, timestamps, and long
/// runs of one character up to just over the 1 MiB limits.
fn weird_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        3 => select(SPECIAL_STRINGS).prop_map(String::from),
        3 => "[A-Za-z0-9._-]{1,12}",
        1 => "[A-Za-z0-9._-]{120,140}",
        2 => timestamp(),
        2 => (any::<char>(), 0usize..20_000).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => select(vec![MAX_ID_LEN, MAX_ID_LEN + 1, MAX_DESCRIPTION_LEN, MAX_DESCRIPTION_LEN + 1])
            .prop_map(|n| "x".repeat(n)),
    ]
}

/// Number tokens: in and out of every integer range, fractions, exponents,
/// very long digit strings, and a few that are not JSON numbers at all.
fn number_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..20).prop_map(|n| n.to_string()),
        3 => select(vec![
            "0", "-0", "1", "-1", "10", "11", "255", "256", "-256", "1000", "1001",
            "4294967295", "4294967296", "9223372036854775807", "9223372036854775808",
            "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "-9223372036854775809", "1.0", "5.0", "0.5", "1e3", "1E400", "-1e400", "1e-400",
            "5e-324", "1.7976931348623157e308", "0.0", "-0.0", "2.5", "1e+2",
            // not JSON numbers
            "01", "+1", ".5", "1.", "NaN", "Infinity", "-", "0x10", "1e",
        ])
        .prop_map(String::from),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        1 => (1usize..5_000).prop_map(|n| "9".repeat(n)),
        1 => (-100_000i64..100_000).prop_map(|e| format!("1e{e}")),
    ]
}

/// String literals no `serde_json::Value` can hold: invalid UTF-8, raw
/// control characters, bad and lone-surrogate escapes, unterminated.
fn raw_string() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(vec![
            &b"\"\xff\""[..],
            b"\"\xc0\x80\"",
            b"\"\xed\xa0\x80\"",
            b"\"\x80\"",
            b"\"\xf4\x90\x80\x80\"",
            b"\"\\ud800\"",
            b"\"\\udc00\\ud800\"",
            b"\"\\u0000\"",
            b"\"a\x00b\"",
            b"\"\\x41\"",
            b"\"\\u12\"",
            b"\"\n\"",
            b"\"unterminated",
            b"'single'",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| [&b"\""[..], &b, b"\""].concat()),
    ]
}

/// A replacement value of any kind.
fn weird_value() -> impl Strategy<Value = J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        4 => number_token().prop_map(J::Num),
        4 => weird_string().prop_map(J::Str),
        2 => raw_string().prop_map(J::Raw),
        1 => (1usize..200, any::<bool>()).prop_map(|(d, o)| nested(d, o, J::Null)),
        1 => Just(J::Arr(Vec::new())),
        1 => Just(J::Obj(Vec::new())),
        1 => prop::collection::vec(weird_string().prop_map(J::Str), 0..4).prop_map(J::Arr),
        1 => prop::collection::vec(number_token().prop_map(J::Num), 0..4).prop_map(J::Arr),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(FIELD_NAMES).prop_map(String::from),
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => select(FIELD_NAMES).prop_map(str::to_uppercase),
        1 => select(FIELD_NAMES).prop_map(|k| format!("{k}\0")),
        1 => select(FIELD_NAMES).prop_map(|k| format!("{k} ")),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<Index>;
    prop_oneof![
        3 => idx().prop_map(Mutation::Drop),
        1 => idx().prop_map(Mutation::Duplicate),
        4 => (idx(), weird_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        6 => (idx(), weird_string(), number_token(), any::<bool>())
            .prop_map(|(i, s, n, b)| Mutation::SameType(i, s, n, b)),
        2 => idx().prop_map(Mutation::Retype),
        2 => (idx(), key(), weird_value()).prop_map(|(i, k, v)| Mutation::AddField(i, k, v)),
        1 => (idx(), key()).prop_map(|(i, k)| Mutation::RenameKey(i, k)),
        1 => (idx(), 1usize..200, any::<bool>()).prop_map(|(i, d, o)| Mutation::Wrap(i, d, o)),
    ]
}

fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(vec![
            &b"\xef\xbb\xbf"[..],
            b"\0",
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\\",
            b"\"",
            b"[",
            b"{",
            b"]",
            b"}",
            b",",
            b":",
            b"```",
            b"\n",
            b"/*",
            b"//",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 1..8),
    ]
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    let idx = any::<Index>;
    prop_oneof![
        3 => idx().prop_map(ByteOp::Truncate),
        3 => (idx(), insertion()).prop_map(|(i, x)| ByteOp::Insert(i, x)),
        2 => (idx(), any::<u8>()).prop_map(|(i, x)| ByteOp::Set(i, x)),
        1 => (idx(), 1usize..16).prop_map(|(i, n)| ByteOp::Remove(i, n)),
        1 => insertion().prop_map(ByteOp::Prefix),
        1 => insertion().prop_map(ByteOp::Suffix),
    ]
}

/// Mutations that mostly keep a document valid: values of the same type,
/// optional members dropped, unknown members added, members repeated.
fn gentle_mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<Index>;
    let string = prop_oneof![
        3 => "[A-Za-z0-9._-]{1,12}",
        2 => any::<String>(),
        1 => timestamp(),
        1 => select(SPECIAL_STRINGS).prop_map(String::from),
    ];
    let number = prop_oneof![
        3 => (0u64..20).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ];
    let simple = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(|n| J::Num(n.to_string())),
        any::<String>().prop_map(J::Str),
        (1usize..50, any::<bool>()).prop_map(|(d, o)| nested(d, o, J::Null)),
    ];
    prop_oneof![
        6 => (idx(), string, number, any::<bool>())
            .prop_map(|(i, s, n, b)| Mutation::SameType(i, s, n, b)),
        2 => idx().prop_map(Mutation::Drop),
        1 => idx().prop_map(Mutation::Duplicate),
        2 => (idx(), "x-[a-z_]{1,10}", simple).prop_map(|(i, k, v)| Mutation::AddField(i, k, v)),
    ]
}

/// What is done to a seed, half the time gently (at most two mutations that
/// mostly keep it valid, so that accepted documents get their sanity
/// checks), half the time harshly (up to four mutations of any kind, then
/// byte damage for one case in three); and the layout.
fn damage() -> impl Strategy<Value = (Vec<Mutation>, Vec<ByteOp>, bool)> {
    prop_oneof![
        (
            prop::collection::vec(gentle_mutation(), 0..3),
            Just(Vec::new()),
            any::<bool>(),
        ),
        (
            prop::collection::vec(mutation(), 1..5),
            prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(byte_op(), 1..3)],
            any::<bool>(),
        ),
    ]
}

fn mutate(seed: &Value, (muts, ops, pretty): &(Vec<Mutation>, Vec<ByteOp>, bool)) -> Vec<u8> {
    let mut j = J::from_value(seed);
    for m in muts {
        m.apply(&mut j);
    }
    let mut b = j.to_bytes(*pretty);
    for op in ops {
        op.apply(&mut b);
    }
    b
}

/// Mutations of `seeds`.
fn mutated(seeds: Vec<Value>) -> impl Strategy<Value = Doc> {
    (select(seeds), damage()).prop_map(|(seed, d)| Doc(mutate(&seed, &d)))
}

/// Arbitrary bytes: uniform, and drawn from JSON punctuation and keywords.
const JSONISH: &[u8] = b"{}[]\",:0123456789.-+eE truefalsnul\\/\n\t\0\xff`abc";

fn arbitrary_bytes() -> impl Strategy<Value = Doc> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(select(JSONISH), 0..512),
    ]
    .prop_map(Doc)
}

/// Arbitrary bytes (one case in four) or mutations of `seeds`.
fn documents(seeds: Vec<Value>) -> impl Strategy<Value = Doc> {
    prop_oneof![1 => arbitrary_bytes(), 3 => mutated(seeds)]
}

// ---------------------------------------------------------------------------
// Checks shared by the targets
// ---------------------------------------------------------------------------

/// `Some(n)` when `bytes` are a JSON object whose `schema_version` is an
/// integer above `supported`: such a file must be refused as `NewerSchema`.
fn newer_version(bytes: &[u8], supported: u64) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("schema_version")?.as_u64().filter(|&n| n > supported)
}

/// The error of a versioned read must be `Corrupt` or `NewerSchema` about
/// `path`, and `NewerSchema` exactly when the version is newer.
fn check_versioned_error(path: &Path, bytes: &[u8], e: &Error, supported: u64) {
    let newer = newer_version(bytes, supported);
    stat(e.kind());
    match e {
        Error::NewerSchema {
            path: p,
            found,
            supported: s,
        } => {
            assert_eq!(p, path, "NewerSchema names the wrong file");
            assert_eq!(Some(*found), newer, "NewerSchema with the wrong version");
            assert_eq!(*s, supported);
        }
        Error::Corrupt { path: p, reason } => {
            assert_eq!(p, path, "Corrupt names the wrong file");
            assert!(!reason.trim().is_empty(), "Corrupt without a reason");
            assert_eq!(
                newer, None,
                "schema_version {newer:?} is newer, but the error is Corrupt ({reason}), not NewerSchema"
            );
        }
        other => panic!(
            "expected Corrupt or NewerSchema, got {} ({other:?})",
            other.kind()
        ),
    }
    assert_eq!(e.exit_code(), 65);
    assert!(!e.to_string().is_empty());
}

/// True for a timestamp whose canonical form is not `YYYY-...` (a year
/// outside 0..=9999), which the library writes but cannot read back:
/// `defect_timestamp_outside_year_0_to_9999_is_written_unreadable`.
fn unwritable(t: &clock::Timestamp) -> bool {
    clock::format(t).starts_with(['+', '-'])
}

/// True when `v` holds a float that serde_json (without its
/// `float_roundtrip` feature) does not read back as the same `f64` from what
/// it writes: `defect_float_changes_in_a_write_and_read`.
fn float_drifts(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|f| {
            n.is_f64()
                && serde_json::from_str::<f64>(&n.to_string())
                    .ok()
                    .map(f64::to_bits)
                    != Some(f.to_bits())
        }),
        Value::Array(a) => a.iter().any(float_drifts),
        Value::Object(o) => o.values().any(float_drifts),
        _ => false,
    }
}

/// Inputs hitting a defect pinned by a failing `defect_*` test.
fn known_task_defect(t: &Task) -> Option<&'static str> {
    let stamps = [
        Some(t.created_at),
        Some(t.updated_at),
        t.lease_expires_at,
        t.not_before,
        t.claimed_at,
        t.completed_at,
    ];
    if stamps.iter().flatten().any(unwritable) {
        return Some("defect_timestamp_outside_year_0_to_9999_is_written_unreadable");
    }
    if t.schema_version == 0 {
        return Some("defect_schema_version_0_is_accepted");
    }
    if float_drifts(&serde_json::to_value(t).expect("to a value")) {
        return Some("defect_float_changes_in_a_write_and_read");
    }
    None
}

fn known_config_defect(c: &Config) -> Option<&'static str> {
    if unwritable(&c.created_at) {
        return Some("defect_timestamp_outside_year_0_to_9999_is_written_unreadable");
    }
    if c.schema_version == 0 {
        return Some("defect_schema_version_0_is_accepted");
    }
    if float_drifts(&serde_json::to_value(c).expect("to a value")) {
        return Some("defect_float_changes_in_a_write_and_read");
    }
    None
}

/// What the library writes for `t1` loads again, is a fixed point, and
/// holds the same data (timestamps at the written millisecond precision).
fn check_round_trip<T>(path: &Path, t1: &T, supported: u64)
where
    T: Serialize + orchestrate::protocol::store::Versioned + fmt::Debug,
{
    let b1 = to_pretty(t1).expect("an accepted document serialises");
    assert!(b1.ends_with(b"\n"));
    let t2: T = parse_versioned(path, &b1, supported).unwrap_or_else(|e| {
        panic!(
            "what the library writes for an accepted document does not load again: {e}\n{}",
            lossy(&b1)
        )
    });
    let b2 = to_pretty(&t2).expect("serialises");
    assert!(
        b1 == b2,
        "serialisation is not a fixed point:\n{}\n---\n{}",
        lossy(&b1),
        lossy(&b2)
    );
    let v1 = serde_json::to_value(t1).expect("to a value");
    let v2 = serde_json::to_value(&t2).expect("to a value");
    assert_eq!(v1, v2, "the document changed in a write and read");
}

/// JSON types of the members of a task file (`spec/PROTOCOL.md` section
/// 3.2): a reader MUST refuse a member of another type as bad data.
const TASK_TYPES: &[(&str, &[&str])] = &[
    ("schema_version", &["integer"]),
    ("id", &["string"]),
    ("seq", &["integer"]),
    ("description", &["string"]),
    ("priority", &["integer"]),
    ("dependencies", &["array"]),
    ("context", &["object"]),
    ("command", &["string", "null"]),
    ("status", &["string"]),
    ("attempts", &["integer"]),
    ("max_attempts", &["integer"]),
    ("backoff", &["object", "null"]),
    ("claimed_by", &["string", "null"]),
    ("fencing_token", &["integer"]),
    ("lease_expires_at", &["string", "null"]),
    ("not_before", &["string", "null"]),
    ("error", &["string", "null"]),
    ("log_file", &["string", "null"]),
    ("created_at", &["string"]),
    ("updated_at", &["string"]),
    ("claimed_at", &["string", "null"]),
    ("completed_at", &["string", "null"]),
];

/// JSON types of the members of `config.json` (section 3.3).
const CONFIG_TYPES: &[(&str, &[&str])] = &[
    ("schema_version", &["integer"]),
    ("goal", &["string"]),
    ("lease_ms", &["integer"]),
    ("max_attempts", &["integer"]),
    ("backoff", &["object"]),
    ("durability", &["string"]),
    ("created_at", &["string"]),
];

const CONTEXT_TYPES: &[(&str, &[&str])] = &[
    ("files", &["array"]),
    ("hints", &["string", "null"]),
    ("tags", &["array"]),
];

const BACKOFF_TYPES: &[(&str, &[&str])] = &[
    ("base_ms", &["integer"]),
    ("factor", &["number"]),
    ("max_ms", &["integer"]),
    ("jitter", &["number"]),
];

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The members of `doc` (and of its `context` and `backoff`) that have a
/// type the spec does not allow, as `member: type`.
fn wrong_types(doc: &Value, table: &[(&str, &[&str])]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |obj: &Value, table: &[(&str, &[&str])], prefix: &str| {
        for (k, allowed) in table {
            if let Some(v) = obj.get(*k) {
                let t = json_type(v);
                let ok = allowed.contains(&t) || (t == "integer" && allowed.contains(&"number"));
                if !ok {
                    out.push(format!("{prefix}{k}: {t}"));
                }
            }
        }
    };
    check(doc, table, "");
    if let Some(c) = doc.get("context").filter(|c| c.is_object()) {
        check(c, CONTEXT_TYPES, "context.");
    }
    if let Some(b) = doc.get("backoff").filter(|b| b.is_object()) {
        check(b, BACKOFF_TYPES, "backoff.");
    }
    out
}

/// `spec/<name>` compiled once (draft 2020-12, formats checked).
fn spec_schema(name: &str) -> &'static jsonschema::Validator {
    static TASK: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    static CONFIG: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let (cell, text) = match name {
        "task" => (&TASK, include_str!("../spec/task.schema.json")),
        _ => (&CONFIG, include_str!("../spec/config.schema.json")),
    };
    cell.get_or_init(|| {
        let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema compiles")
    })
}

/// A document the spec's JSON Schema accepts must be read, with two
/// exceptions: integers written with a fraction or exponent (`1.0`, `1e3`),
/// which JSON Schema calls integers and the reader refuses (spec section
/// 3.1 has writers use neither), and `backoff.max_ms < base_ms`, which the
/// schema cannot express (its description says so).
fn check_schema_valid_is_read(schema: &str, doc: Option<&Value>, e: &Error) {
    let Some(doc) = doc else { return };
    if !spec_schema(schema).is_valid(doc) {
        return;
    }
    let msg = e.to_string();
    for (says, why) in [
        ("invalid type: floating point", "integer written as a float"),
        ("max_ms must be >= base_ms", "max_ms < base_ms"),
    ] {
        if msg.contains(says) {
            stat(format!("schema-valid, refused: {why}"));
            return;
        }
    }
    panic!("a {schema} file valid under spec/{schema}.schema.json is refused: {e}");
}

/// Accepted means every member has its type.
fn check_member_types(doc: &Value, table: &[(&str, &[&str])]) -> Option<&'static str> {
    let wrong = wrong_types(doc, table);
    if wrong.is_empty() {
        return None;
    }
    if wrong
        .iter()
        .all(|w| w == "context: array" || w == "backoff: array")
    {
        return Some("defect_positional_arrays_are_accepted_for_context_and_backoff");
    }
    panic!("accepted with members of the wrong type: {wrong:?}");
}

fn json_doc(bytes: &[u8]) -> Option<Value> {
    serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
}

fn check_task_file(dir: &Path, id: &str, bytes: &[u8]) {
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, bytes).expect("write the task file");
    let (p, task_id) = (path.clone(), TaskId::new(id).expect("seed ids are valid"));
    match bounded("read_task", move || read_task(&p, &task_id)) {
        Ok(None) => panic!("read_task says an existing file is absent"),
        Err(e) => {
            check_versioned_error(&path, bytes, &e, TASK_SCHEMA_VERSION);
            let doc = json_doc(bytes).filter(|d| d.get("id") == Some(&json!(id)));
            check_schema_valid_is_read("task", doc.as_ref(), &e);
        }
        Ok(Some(t)) => {
            let doc = json_doc(bytes).expect("an accepted task file is JSON");
            if let Some(d) = check_member_types(&doc, TASK_TYPES) {
                stat(format!("accepted, skipped ({d})"));
                return;
            }
            assert_eq!(
                t.id.as_str(),
                id,
                "a task file holding another id was accepted"
            );
            assert!(t.schema_version <= TASK_SCHEMA_VERSION);
            t.check_ranges()
                .unwrap_or_else(|r| panic!("out-of-range task accepted: {r}"));
            assert!(newer_version(bytes, TASK_SCHEMA_VERSION).is_none());
            stat(match known_task_defect(&t) {
                None => "accepted".to_string(),
                Some(d) => format!("accepted, round trip skipped ({d})"),
            });
            if known_task_defect(&t).is_none() {
                let p = path.clone();
                bounded("task round trip", move || {
                    check_round_trip(&p, &t, TASK_SCHEMA_VERSION)
                });
            }
        }
    }
}

fn check_config_file(dir: &Path, bytes: &[u8]) {
    let path = dir.join("config.json");
    std::fs::write(&path, bytes).expect("write the config file");
    let p = path.clone();
    match bounded("read_config", move || read_config(&p)) {
        Ok(None) => panic!("read_config says an existing file is absent"),
        Err(e) => {
            check_versioned_error(&path, bytes, &e, CONFIG_SCHEMA_VERSION);
            check_schema_valid_is_read("config", json_doc(bytes).as_ref(), &e);
        }
        Ok(Some(c)) => {
            let doc = json_doc(bytes).expect("an accepted config file is JSON");
            if let Some(d) = check_member_types(&doc, CONFIG_TYPES) {
                stat(format!("accepted, skipped ({d})"));
                return;
            }
            assert!(c.schema_version <= CONFIG_SCHEMA_VERSION);
            c.check_ranges()
                .unwrap_or_else(|r| panic!("out-of-range config accepted: {r}"));
            assert!(c.lease_ms >= 1 && c.max_attempts >= 1);
            assert!(newer_version(bytes, CONFIG_SCHEMA_VERSION).is_none());
            stat(match known_config_defect(&c) {
                None => "accepted".to_string(),
                Some(d) => format!("accepted, round trip skipped ({d})"),
            });
            if known_config_defect(&c).is_none() {
                let p = path.clone();
                bounded("config round trip", move || {
                    check_round_trip(&p, &c, CONFIG_SCHEMA_VERSION)
                });
            }
        }
    }
}

/// A task of a batch that was accepted satisfies the single-task rules.
fn check_new_task(t: &NewTask) {
    assert!(
        !t.description.trim().is_empty(),
        "empty description accepted: {t:?}"
    );
    if let Some(p) = t.priority {
        assert!((1..=10).contains(&p), "priority {p} accepted");
    }
    assert_ne!(t.max_attempts, Some(0), "max_attempts 0 accepted");
    validate_new(t).unwrap_or_else(|e| panic!("accepted task fails validate_new: {e}: {t:?}"));
}

/// `Error::Invalid` naming `path`, and nothing else.
fn check_invalid_about(path: &Path, e: &Error) {
    match e {
        Error::Invalid(m) => assert!(
            m.contains(&path.display().to_string()),
            "the message does not name the file: {m}"
        ),
        other => panic!("expected Invalid, got {} ({other:?})", other.kind()),
    }
    assert_eq!(e.exit_code(), 2);
}

fn check_tasks_file(dir: &Path, bytes: &[u8]) {
    let path = dir.join("tasks.json");
    std::fs::write(&path, bytes).expect("write the tasks file");
    let p = path.clone();
    let r = bounded("read_tasks_file", move || plan::read_tasks_file(&p));
    // The pure half must agree with the file reader.
    let value = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    match r {
        Err(e) => {
            stat("invalid");
            check_invalid_about(&path, &e);
            if let Some(v) = value {
                assert!(
                    tasks_from_value(&v).is_err(),
                    "the file is refused, its value not"
                );
            }
        }
        Ok(tasks) => {
            stat(format!("accepted ({} tasks)", tasks.len().min(2)));
            let v = value.expect("an accepted tasks file is UTF-8 JSON");
            let arr = match &v {
                Value::Array(a) => a,
                other => other["tasks"]
                    .as_array()
                    .expect("an array or an object with `tasks`"),
            };
            assert_eq!(arr.len(), tasks.len(), "entries were lost");
            for t in &tasks {
                check_new_task(t);
            }
            // The supervisor runs this next: it must answer.
            bounded("check_batch", move || check_batch(&tasks, &|_| false));
        }
    }
}

fn check_run_file(dir: &Path, bytes: &[u8]) {
    let path = dir.join("orchestration.json");
    std::fs::write(&path, bytes).expect("write the run file");
    let p = path.clone();
    match bounded("read_run_file", move || plan::read_run_file(&p)) {
        Err(e) => {
            stat("invalid");
            check_invalid_about(&path, &e)
        }
        Ok(rf) => {
            stat(format!("accepted ({} tasks)", rf.tasks.len().min(2)));
            assert!(
                !rf.goal.trim().is_empty(),
                "a run file without a goal was accepted"
            );
            for t in &rf.tasks {
                check_new_task(t);
            }
            bounded("check_batch", move || check_batch(&rf.tasks, &|_| false));
        }
    }
}

/// `lexer-tables` is the one task that "already exists" for plans.
fn existing(id: &str) -> bool {
    id == "lexer-tables"
}

fn check_plan(text: &str) {
    let t = text.to_string();
    let extracted = bounded("extract_json", move || extract_json(&t));
    if let Some(v) = &extracted {
        assert!(
            v.is_array() || v.is_object(),
            "extract_json found a scalar: {v}"
        );
    }
    let t = text.to_string();
    match bounded("parse_plan", move || parse_plan(&t, &existing)) {
        Err(errors) => {
            stat("refused");
            assert!(!errors.is_empty(), "a plan refused without a reason");
            for e in &errors {
                assert!(!e.trim().is_empty(), "an empty reason: {errors:?}");
            }
        }
        Ok(tasks) => {
            stat("accepted");
            assert!(extracted.is_some());
            check_accepted_plan(&tasks);
        }
    }
}

fn check_accepted_plan(tasks: &[NewTask]) {
    assert!(!tasks.is_empty(), "an empty plan was accepted");
    for t in tasks {
        check_new_task(t);
    }
    let errors = check_batch(tasks, &existing);
    assert!(
        errors.is_empty(),
        "an accepted plan fails check_batch: {errors:?}"
    );
    let mut ids = HashSet::new();
    for id in tasks.iter().filter_map(|t| t.id.as_deref()) {
        assert!(ids.insert(id), "id `{id}` twice in an accepted plan");
    }
}

fn check_hook_input(bytes: &[u8]) {
    let b = bytes.to_vec();
    let r = bounded("parse_input", move || hook::parse_input(&b));
    let object = (bytes.len() <= hook::MAX_INPUT_BYTES)
        .then(|| serde_json::from_slice::<Value>(bytes).ok())
        .flatten()
        .and_then(|v| v.as_object().cloned());
    let s = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).map(String::from);
    match r {
        Err(e) => {
            stat("invalid");
            assert!(
                matches!(e, Error::Invalid(_)),
                "expected Invalid, got {e:?}"
            );
            if let Some(o) = &object {
                // Refused only for a missing session_id or a known field of
                // the wrong type (strings; stop_hook_active a boolean).
                let mistyped = [
                    "session_id",
                    "transcript_path",
                    "cwd",
                    "hook_event_name",
                    "source",
                ]
                .iter()
                .any(|k| o.get(*k).is_some_and(|v| !(v.is_string() || v.is_null())))
                    || o.get("stop_hook_active")
                        .is_some_and(|v| !(v.is_boolean() || v.is_null()));
                assert!(
                    mistyped || s(o, "session_id").is_none_or(|id| id.is_empty()),
                    "a JSON object with a session_id was refused: {e}"
                );
            }
        }
        Ok(input) => {
            stat("accepted");
            let o = object.expect("accepted hook input is a JSON object of at most 1 MiB");
            let expected = HookInput {
                session_id: s(&o, "session_id").unwrap_or_default(),
                transcript_path: s(&o, "transcript_path"),
                cwd: s(&o, "cwd"),
                hook_event_name: s(&o, "hook_event_name"),
                source: s(&o, "source"),
                stop_hook_active: o.get("stop_hook_active").and_then(Value::as_bool) == Some(true),
            };
            assert!(!input.session_id.is_empty());
            assert_eq!(input, expected);
            // The agent id step after it answers with a typed error too.
            if let Err(e) = hook::agent_id(&input, None) {
                assert!(matches!(e, Error::Invalid(_)), "{e:?}");
            }
        }
    }
}

/// Every hook command inside an object-with-`hooks`-array group.
fn commands(doc: &Map<String, Value>) -> Vec<String> {
    let Some(hooks) = doc.get("hooks").and_then(Value::as_object) else {
        return Vec::new();
    };
    hooks
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|g| g.get("hooks").and_then(Value::as_array))
        .flatten()
        .filter_map(|h| h.get("command").and_then(Value::as_str).map(String::from))
        .collect()
}

/// Programs `install` is run with (no white space in them: see
/// `defect_uninstall_leaves_hooks_installed_with_a_program_path_containing_a_space`).
const PROGRAMS: [&str; 3] = [
    "orchestrate",
    "/usr/local/bin/orchestrate",
    "./target/debug/orchestrate",
];

fn check_settings(text: &str, program: &str) {
    let path = PathBuf::from("/nonexistent/.claude/settings.json");
    let (p, t) = (path.clone(), text.to_string());
    let parsed = bounded("settings::parse", move || settings::parse(&p, Some(&t)));
    let orig = match parsed {
        Err(e) => {
            stat("corrupt");
            match &e {
                Error::Corrupt { path: p, .. } => assert_eq!(p, &path),
                other => panic!("expected Corrupt, got {other:?}"),
            }
            return;
        }
        Ok(m) => m,
    };
    stat("accepted");
    if let Some(h) = orig.get("hooks") {
        let ok = h
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_array));
        assert!(ok, "`hooks` that is not an object of arrays was accepted");
    }
    let prog = program.to_string();
    let (o, p) = (orig.clone(), path.clone());
    bounded("install and uninstall", move || {
        let mut doc = o.clone();
        settings::install(&mut doc, &prog);
        // Every event has our command; nothing else changed.
        let cmds = commands(&doc);
        for ev in HookEvent::ALL {
            let c = settings::hook_command(&prog, ev);
            assert!(cmds.contains(&c), "`{c}` not installed");
        }
        for (k, v) in &o {
            if k != "hooks" && k != "permissions" {
                assert_eq!(doc.get(k), Some(v), "install changed `{k}`");
            }
        }
        // Our allow rules are there, appended after the rules that were.
        let allow = |d: &Map<String, Value>| -> Vec<String> {
            d.get("permissions")
                .and_then(|p| p.get("allow"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (before_rules, after_rules) = (allow(&o), allow(&doc));
        assert_eq!(
            &after_rules[..before_rules.len()],
            &before_rules[..],
            "install changed the allow rules"
        );
        for r in orchestrate::run::agent::allow_rules(&orchestrate::run::agent::shell_word(&prog)) {
            assert!(after_rules.contains(&r), "`{r}` not allowed");
        }
        if let Some(before) = o.get("hooks").and_then(Value::as_object) {
            let after = doc["hooks"].as_object().expect("hooks stays an object");
            for (ev, groups) in before {
                let old = groups.as_array().expect("checked above");
                let new = after[ev].as_array().expect("still an array");
                assert_eq!(
                    &new[..old.len()],
                    &old[..],
                    "install changed the groups of `{ev}`"
                );
            }
        }
        // What install writes is a settings file again, and install is idempotent.
        let text = serde_json::to_string_pretty(&Value::Object(doc.clone())).expect("serialises");
        let mut again = settings::parse(&p, Some(&text)).expect("installed settings parse");
        assert!(
            !settings::install(&mut again, &prog),
            "install is not idempotent"
        );
        // Uninstall removes every command of ours and keeps the rest.
        assert!(
            settings::uninstall(&mut doc),
            "uninstall found nothing to remove"
        );
        let left = commands(&doc);
        assert!(
            left.iter().all(|c| !settings::is_ours(c)),
            "uninstall left some of ours: {left:?}"
        );
        for (k, v) in &o {
            if k != "hooks" && k != "permissions" {
                assert_eq!(doc.get(k), Some(v), "uninstall changed `{k}`");
            }
        }
        let left_rules = allow(&doc);
        assert!(
            left_rules.iter().all(|r| !settings::is_our_rule(r)),
            "uninstall left a rule of ours"
        );
        let foreign_rules: Vec<&String> = before_rules
            .iter()
            .filter(|r| !settings::is_our_rule(r))
            .collect();
        assert_eq!(
            left_rules.iter().collect::<Vec<_>>(),
            foreign_rules,
            "uninstall changed foreign rules"
        );
        let foreign: Vec<String> = commands(&o)
            .into_iter()
            .filter(|c| !settings::is_ours(c))
            .collect();
        for c in &foreign {
            assert!(left.contains(c), "uninstall removed a foreign hook `{c}`");
        }
        let text = serde_json::to_string(&Value::Object(doc)).expect("serialises");
        settings::parse(&p, Some(&text)).expect("uninstalled settings parse");
        // And on the document as it came.
        let mut plain = o;
        settings::uninstall(&mut plain);
    });
}

fn check_claude_output(text: &str) {
    let t = text.to_string();
    match bounded("parse_claude_output", move || parse_claude_output(&t)) {
        Err(m) => {
            stat("refused");
            assert!(!m.trim().is_empty(), "refused without a reason")
        }
        Ok(r) => {
            stat("accepted");
            let o = r.raw.as_object().expect("the chosen result is an object");
            assert!(
                o.get("type").and_then(Value::as_str) == Some("result") || o.contains_key("result"),
                "the chosen object is not a result: {}",
                r.raw
            );
            match o.get("result") {
                Some(Value::String(s)) => assert_eq!(&r.result, s),
                None | Some(Value::Null) => assert!(r.result.is_empty()),
                Some(other) => assert_eq!(r.result, other.to_string()),
            }
            if o.get("is_error") == Some(&Value::Bool(true)) {
                assert!(r.is_error);
            }
        }
    }
    // A whole-output result object must be found.
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        if v.get("type").and_then(Value::as_str) == Some("result") {
            let r = parse_claude_output(text).expect("a result object is accepted");
            assert_eq!(r.raw, v);
        }
    }
}

/// The id rule of `spec/PROTOCOL.md` section 8, written out again.
fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

// ---------------------------------------------------------------------------
// The fuzz targets
// ---------------------------------------------------------------------------

/// `tasks/<id>.json` through `store::read_task` (and so `read_bytes` and
/// `parse_versioned`).
#[test]
fn fuzz_task_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seeds = task_seeds();
    let ids: Vec<String> = seeds
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("write-lexer").to_string())
        .collect();
    let with_id = (0..seeds.len(), damage())
        .prop_map(move |(i, d)| (ids[i].clone(), Doc(mutate(&seeds[i], &d))));
    let strategy = prop_oneof![
        1 => arbitrary_bytes().prop_map(|d| ("write-lexer".to_string(), d)),
        3 => with_id,
    ];
    fuzz("task file", DEFAULT_CASES, strategy, |(id, doc)| {
        check_task_file(dir.path(), &id, &doc.0)
    });
}

/// `config.json` through `store::read_config`.
#[test]
fn fuzz_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz(
        "config file",
        DEFAULT_CASES,
        documents(config_seeds()),
        |doc| check_config_file(dir.path(), &doc.0),
    );
}

/// `store::read_bytes` returns what is in a regular file, whatever it is.
#[test]
fn fuzz_read_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz("read_bytes", DEFAULT_CASES / 2, arbitrary_bytes(), |doc| {
        let path = dir.path().join("file.json");
        std::fs::write(&path, &doc.0).expect("write");
        let got = bounded("read_bytes", move || read_bytes(&path));
        assert_eq!(got.expect("a regular file reads").map(Doc), Some(doc));
    });
}

/// Tasks files (`run --tasks FILE`): arrays and `{"tasks": [...]}`.
#[test]
fn fuzz_tasks_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz(
        "tasks file",
        DEFAULT_CASES,
        documents(tasks_file_seeds()),
        |doc| check_tasks_file(dir.path(), &doc.0),
    );
}

/// `orchestration.json` (`from-config FILE`).
#[test]
fn fuzz_run_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz(
        "orchestration.json",
        DEFAULT_CASES,
        documents(run_file_seeds()),
        |doc| check_run_file(dir.path(), &doc.0),
    );
}

/// Prose a leader might write around a plan, brackets and fences included.
fn prose() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ,.:;!?'\n-]{0,60}",
        "[a-z \\[\\]{}()\":,0-9\n`]{0,40}",
        select(vec![
            "Here is the plan:\n",
            "[draft]",
            "[1]",
            "{note}",
            "```",
            "```json\n",
            "Sure! ",
            "{\"tasks\": 3}",
            "[]",
            "{}",
            "[[",
            "]]",
            "\"",
            "\\",
            "[{\"id\": \"x\"}]",
            "Steps [a], [b] and {c}.",
            "\u{1f600} ",
            "\0",
        ])
        .prop_map(String::from),
    ]
}

/// How the JSON sits in the reply.
fn framed(before: String, json: String, after: String, frame: u8) -> String {
    match frame {
        0 => format!("{before}{json}{after}"),
        1 => format!("{before}```json\n{json}\n```{after}"),
        2 => format!("{before}```\n{json}\n```{after}"),
        3 => format!("{before}```json\n{json}"),
        4 => format!("{before}```json{json}```{after}"),
        _ => format!("{before}~~~json\n{json}\n~~~{after}"),
    }
}

/// Leader replies: arbitrary text, and mutated plans inside prose.
#[test]
fn fuzz_plan() {
    let in_prose = (
        prop::collection::vec(prose(), 0..3),
        mutated(plan_seeds()),
        prop::collection::vec(prose(), 0..3),
        0u8..6,
    )
        .prop_map(|(before, doc, after, frame)| {
            Text(framed(
                before.concat(),
                lossy(&doc.0),
                after.concat(),
                frame,
            ))
        });
    let strategy = prop_oneof![
        1 => any::<String>().prop_map(Text),
        1 => arbitrary_bytes().prop_map(|d| Text(lossy(&d.0))),
        4 => in_prose,
    ];
    fuzz("plan", DEFAULT_CASES, strategy, |text| {
        if plan_work(&text.0) > PLAN_WORK_LIMIT {
            // Slow, not hung: `defect_parse_plan_is_slow_on_deeply_nested_brackets`.
            stat("skipped: deep and long");
            return;
        }
        check_plan(&text.0)
    });
}

/// Most work, roughly, that `extract_json` may do on `text`: a parse from
/// every bracket, each down to the nesting limit of 128, so the length times
/// the nesting depth (brackets counted, strings not skipped: an estimate).
fn plan_work(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    text.len() * max.min(128)
}

/// Replies with more [`plan_work`] than this are left out of `fuzz_plan`:
/// a debug build parses about 700 000 levels a second, and the deadline is
/// 2 s on a busy machine.
const PLAN_WORK_LIMIT: usize = 400_000;

/// A valid plan: unique ids, dependencies on earlier tasks only.
fn valid_plan() -> impl Strategy<Value = Value> {
    let entry = (
        "[A-Za-z][A-Za-z0-9 ,.:;!?'()\\[\\]{}\u{e9}\u{4e2d}-]{0,40}",
        prop::option::of(1u8..=10),
        prop::collection::vec(any::<Index>(), 0..3),
        prop::collection::vec("[a-z/._]{1,12}", 0..3),
        prop::option::of("[a-z \\[\\]]{1,20}"),
        prop::collection::vec("[a-z]{1,8}", 0..3),
    );
    (prop::collection::vec(entry, 1..8), any::<bool>()).prop_map(|(entries, wrapped)| {
        let tasks: Vec<Value> = entries
            .into_iter()
            .enumerate()
            .map(|(i, (description, priority, deps, files, hints, tags))| {
                let mut deps: Vec<String> = if i == 0 {
                    Vec::new()
                } else {
                    deps.iter().map(|d| format!("t{}", d.index(i))).collect()
                };
                deps.dedup();
                let mut e = json!({
                    "id": format!("t{i}"),
                    "description": description,
                    "dependencies": deps,
                    "context_files": files,
                    "tags": tags,
                });
                if let Some(p) = priority {
                    e["priority"] = json!(p);
                }
                if let Some(h) = hints {
                    e["hints"] = json!(h);
                }
                e
            })
            .collect();
        if wrapped {
            json!({ "tasks": tasks })
        } else {
            Value::Array(tasks)
        }
    })
}

/// A valid plan in prose without brackets, or fenced in prose with any
/// brackets, is found and parsed exactly as `tasks_from_value` reads it.
#[test]
fn fuzz_plan_valid_in_prose_is_found() {
    let strategy = (
        "[a-zA-Z0-9 ,.:;!?'\n\u{e9}-]{0,60}",
        valid_plan(),
        "[a-zA-Z0-9 ,.:;!?'\n\\[\\]{}\"-]{0,60}",
        0u8..3,
        any::<bool>(),
    );
    fuzz(
        "valid plan in prose",
        DEFAULT_CASES,
        strategy,
        |(before, plan, after, frame, pretty)| {
            let json = if pretty {
                serde_json::to_string_pretty(&plan)
            } else {
                serde_json::to_string(&plan)
            }
            .expect("serialises");
            // Brackets in the prose before only with a fence (fences are looked at first).
            let before = if frame == 0 {
                before
            } else {
                format!("{before} [1] {{note}} ")
            };
            let text = framed(before, json, after, frame);
            let expected = tasks_from_value(&plan).expect("generated plans are valid");
            let t = text.clone();
            let got = bounded("parse_plan", move || parse_plan(&t, &existing));
            assert_eq!(got, Ok(expected), "in reply:\n{text}");
        },
    );
}

/// Hook stdin.
#[test]
fn fuzz_hook_input() {
    let strategy = prop_oneof![
        4 => documents(hook_seeds()),
        1 => select(vec![0usize, 1, hook::MAX_INPUT_BYTES, hook::MAX_INPUT_BYTES + 1])
            .prop_map(|n| {
                // A valid object padded with white space to exactly n bytes.
                let mut b = br#"{"session_id":"s1"}"#.to_vec();
                b.resize(n.max(b.len()), b' ');
                Doc(b)
            }),
    ];
    fuzz("hook input", DEFAULT_CASES, strategy, |doc| {
        check_hook_input(&doc.0)
    });
}

/// Hook event names on the command line.
#[test]
fn fuzz_hook_event_name() {
    let names: Vec<String> = HookEvent::ALL
        .iter()
        .flat_map(|e| [e.cli_name().to_string(), e.claude_name().to_string()])
        .collect();
    let variants = select(names.clone()).prop_flat_map(|n| {
        prop_oneof![
            Just(n.clone()),
            Just(n.to_uppercase()),
            Just(format!(" {n}")),
            Just(format!("{n}\0")),
            Just(n[..n.len() - 1].to_string()),
        ]
    });
    let strategy = prop_oneof![variants, any::<String>()];
    fuzz("hook event", DEFAULT_CASES, strategy, |s| {
        let t = s.clone();
        match bounded("HookEvent::parse", move || HookEvent::parse(&t)) {
            Ok(e) => {
                assert!(names.contains(&s), "`{s:?}` accepted");
                assert!(e.cli_name() == s || e.claude_name() == s);
            }
            Err(Error::Invalid(_)) => assert!(!names.contains(&s), "`{s}` refused"),
            Err(other) => panic!("expected Invalid, got {other:?}"),
        }
    });
}

/// Claude Code settings files, then install and uninstall on what parses.
#[test]
fn fuzz_settings() {
    let seeds = settings_seeds();
    let docs = prop_oneof![
        4 => documents(seeds),
        1 => select(SETTINGS_FIXTURES.to_vec()).prop_flat_map(|(_, text)| {
            (Just(text.as_bytes().to_vec()), prop::collection::vec(byte_op(), 0..3)).prop_map(|(mut b, ops)| {
                for op in &ops {
                    op.apply(&mut b);
                }
                Doc(b)
            })
        }),
    ];
    fuzz(
        "settings",
        DEFAULT_CASES,
        (docs, select(PROGRAMS.to_vec())),
        |(doc, program)| check_settings(&lossy(&doc.0), program),
    );
}

/// Claude CLI output: one object, or JSON lines, with other output around.
#[test]
fn fuzz_claude_output() {
    let line = prop_oneof![
        4 => mutated(claude_seeds()).prop_map(|d| lossy(&d.0)),
        1 => prose(),
    ];
    let strategy = prop_oneof![
        1 => any::<String>().prop_map(Text),
        1 => arbitrary_bytes().prop_map(|d| Text(lossy(&d.0))),
        4 => prop::collection::vec(line, 1..5).prop_map(|l| Text(l.join("\n"))),
    ];
    fuzz("claude output", DEFAULT_CASES, strategy, |t| {
        check_claude_output(&t.0)
    });
}

/// Task and agent ids: `validate_name`, `TaskId::new` and the serde form
/// agree with the written-out rule.
#[test]
fn fuzz_ids() {
    let strategy = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._-]{0,3}",
        "[A-Za-z0-9._/ -]{120,135}",
        select(SPECIAL_STRINGS).prop_map(String::from),
    ];
    fuzz("ids", DEFAULT_CASES, strategy, |s| {
        let valid = is_valid_id(&s);
        match validate_name("task id", &s) {
            Ok(()) => assert!(valid, "{s:?} accepted"),
            Err(Error::Invalid(m)) => assert!(!valid && !m.is_empty(), "{s:?} refused"),
            Err(other) => panic!("expected Invalid, got {other:?}"),
        }
        match TaskId::new(s.clone()) {
            Ok(id) => assert_eq!(id.as_str(), s),
            Err(e) => assert!(!valid && matches!(e, Error::Invalid(_))),
        }
        let via_serde = serde_json::from_value::<TaskId>(Value::String(s.clone()));
        assert_eq!(via_serde.is_ok(), valid);
    });
}

/// `validate_new` accepts exactly the tasks that keep the rules.
#[test]
fn fuzz_validate_new() {
    let strategy = (
        prop::option::of(weird_string()),
        weird_string(),
        prop::option::of(any::<u8>()),
        prop::collection::vec(weird_string(), 0..3),
        prop::collection::vec(weird_string(), 0..3),
        prop::option::of(0u32..3),
    );
    fuzz(
        "validate_new",
        DEFAULT_CASES / 2,
        strategy,
        |(id, description, priority, deps, tags, max)| {
            let t = NewTask {
                id,
                description,
                priority,
                dependencies: deps,
                max_attempts: max,
                context: orchestrate::Context {
                    tags,
                    ..Default::default()
                },
                ..Default::default()
            };
            let expected = !t.description.trim().is_empty()
                && t.description.len() <= MAX_DESCRIPTION_LEN
                && t.priority.is_none_or(|p| (1..=10).contains(&p))
                && t.max_attempts != Some(0)
                && t.id.as_deref().is_none_or(is_valid_id)
                && t.dependencies.iter().all(|d| is_valid_id(d))
                && t.context
                    .tags
                    .iter()
                    .all(|g| !g.is_empty() && g.len() <= MAX_ID_LEN);
            let t2 = t.clone();
            match bounded("validate_new", move || validate_new(&t2)) {
                Ok(()) => assert!(expected, "accepted: {t:?}"),
                Err(Error::Invalid(_)) => assert!(!expected, "refused: {t:?}"),
                Err(other) => panic!("expected Invalid, got {other:?}"),
            }
        },
    );
}

// ---------------------------------------------------------------------------
// Deterministic sweeps
// ---------------------------------------------------------------------------

/// Every seed document cut at every byte position, through its surface.
#[test]
fn truncation_at_every_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("serialises");
    for (_, text) in TASK_FIXTURES {
        let id = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
            .unwrap_or_else(|| "parse-expr".into());
        for n in 0..=text.len() {
            check_task_file(d, &id, &text.as_bytes()[..n]);
        }
    }
    for (_, text) in CONFIG_FIXTURES {
        for n in 0..=text.len() {
            check_config_file(d, &text.as_bytes()[..n]);
        }
    }
    for seed in tasks_file_seeds() {
        let b = pretty(&seed);
        for n in 0..=b.len() {
            check_tasks_file(d, &b[..n]);
        }
    }
    for seed in run_file_seeds() {
        let b = pretty(&seed);
        for n in 0..=b.len() {
            check_run_file(d, &b[..n]);
        }
    }
    for seed in plan_seeds() {
        let text = format!(
            "Plan:\n```json\n{}\n```\nThat is all.",
            String::from_utf8(pretty(&seed)).expect("UTF-8")
        );
        for (n, _) in text.char_indices() {
            check_plan(&text[..n]);
        }
    }
    for (_, text) in HOOK_FIXTURES {
        for n in 0..=text.len() {
            check_hook_input(&text.as_bytes()[..n]);
        }
    }
    for (_, text) in SETTINGS_FIXTURES {
        for n in 0..=text.len() {
            check_settings(&text[..n], "orchestrate");
        }
    }
    for seed in claude_seeds() {
        let text = serde_json::to_string(&seed).expect("serialises");
        for (n, _) in text.char_indices() {
            check_claude_output(&text[..n]);
        }
    }
}

/// Deeply nested documents of 100 000 levels (`[[[[...`, `{"a":{"a":...`,
/// nesting inside a task or under `tasks`) to every surface: the recursion
/// limit of serde_json (128) must turn them into errors, never a stack
/// overflow. Runs in a child process because a stack overflow aborts.
///
/// Leader replies get 2 000 levels here, not 100 000: `extract_json` retries
/// a parse at every `[` and `{`, each going down 128 levels before the limit
/// stops it, which takes about 19 s in a debug build for 100 000 brackets
/// (`defect_parse_plan_is_slow_on_deeply_nested_brackets`).
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    isolated(
        "deep_nesting_is_an_error_not_a_stack_overflow",
        Duration::from_secs(120),
        || {
            let docs = |n: usize| {
                [
                    "[".repeat(n),
                    format!("{}{}", "[".repeat(n), "]".repeat(n)),
                    "{\"a\":".repeat(n),
                    format!("{{\"schema_version\":1,\"result\":{}}}", "[".repeat(n)),
                    format!("{{\"tasks\":{}}}", "[{\"tasks\":".repeat(n / 10)),
                ]
            };
            let dir = tempfile::tempdir().expect("temp dir");
            for doc in docs(100_000) {
                let e = serde_json::from_str::<Value>(&doc).expect_err("too deep for serde_json");
                assert!(
                    e.to_string().contains("recursion limit"),
                    "not the recursion limit: {e}"
                );
                check_task_file(dir.path(), "write-lexer", doc.as_bytes());
                check_config_file(dir.path(), doc.as_bytes());
                check_tasks_file(dir.path(), doc.as_bytes());
                check_run_file(dir.path(), doc.as_bytes());
                check_hook_input(doc.as_bytes());
                check_settings(&doc, "orchestrate");
                check_claude_output(&doc);
            }
            for doc in docs(2_000) {
                check_plan(&doc);
                if doc.contains(']') {
                    continue; // its innermost levels are a (wrong) plan
                }
                // A valid plan after the unclosed nesting is still found.
                let text = format!("{doc} [{{\"id\":\"a\",\"description\":\"d\"}}]");
                let t = text.clone();
                let got = bounded("parse_plan after nesting", move || {
                    parse_plan(&t, &existing).map(|t| t.len())
                });
                assert_eq!(got, Ok(1), "after {}...", &doc[..20]);
            }
            // Nesting within the limit is parsed and handled.
            let ok = format!("{}1{}", "[".repeat(127), "]".repeat(127));
            serde_json::from_str::<Value>(&ok).expect("127 levels are within the limit");
            check_plan(&ok);
            check_tasks_file(dir.path(), ok.as_bytes());
            check_hook_input(ok.as_bytes());
            check_settings(&ok, "orchestrate");
            check_claude_output(&ok);
        },
    );
}

/// DEFECT (performance): `extract_json` starts a new parse at every `[` and
/// `{` of a reply, and on nesting each of them goes 128 levels deep before
/// the recursion limit stops it, so the work is about 128 times the length
/// of the reply: `parse_plan` on 100 000 `[` takes about 19 s in a debug
/// build (0.45 s in release; a 1 MiB reply of brackets about 5 s in
/// release). Expected: an answer within the deadline (2 s). Runs in a child
/// process that is killed at the deadline, so that the slow call does not
/// keep eating CPU after the failure.
#[test]
fn regression_parse_plan_is_slow_on_deeply_nested_brackets() {
    isolated(
        "defect_parse_plan_is_slow_on_deeply_nested_brackets",
        deadline() + Duration::from_secs(1),
        || {
            let text = "[".repeat(100_000);
            let started = Instant::now();
            assert!(parse_plan(&text, &|_| false).is_err());
            eprintln!("parse_plan on 100 000 `[`: {:?}", started.elapsed());
        },
    );
}

/// `read_bytes` on what is not a regular file with data: missing, a
/// directory, a symlink, an oversized (sparse) file.
#[test]
fn read_bytes_on_special_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    assert!(matches!(read_bytes(&d.join("missing.json")), Ok(None)));
    std::fs::create_dir(d.join("dir.json")).expect("mkdir");
    assert!(matches!(
        read_bytes(&d.join("dir.json")),
        Err(Error::Corrupt { .. })
    ));
    std::fs::write(d.join("target.json"), b"{}").expect("write");
    std::os::unix::fs::symlink(d.join("target.json"), d.join("link.json")).expect("symlink");
    assert!(matches!(
        read_bytes(&d.join("link.json")),
        Err(Error::Corrupt { .. })
    ));
    std::os::unix::fs::symlink(d.join("nowhere.json"), d.join("dangling.json")).expect("symlink");
    assert!(matches!(
        read_bytes(&d.join("dangling.json")),
        Err(Error::Corrupt { .. })
    ));
    let big = std::fs::File::create(d.join("big.json")).expect("create");
    big.set_len(store::MAX_FILE_BYTES + 1).expect("sparse file");
    assert!(matches!(
        read_bytes(&d.join("big.json")),
        Err(Error::Corrupt { .. })
    ));
    let exact = std::fs::File::create(d.join("exact.json")).expect("create");
    exact.set_len(store::MAX_FILE_BYTES).expect("sparse file");
    assert_eq!(
        read_bytes(&d.join("exact.json"))
            .expect("16 MiB is allowed")
            .map(|b| b.len() as u64),
        Some(store::MAX_FILE_BYTES)
    );
    let id = TaskId::new("link").expect("valid");
    assert!(matches!(
        read_task(&d.join("link.json"), &id),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        read_config(&d.join("dir.json")),
        Err(Error::Corrupt { .. })
    ));
}

// ---------------------------------------------------------------------------
// Defects found: these fail until the defect is fixed
// ---------------------------------------------------------------------------

/// The minimal task fixture with `created_at` replaced.
fn task_with_created_at(ts: &str) -> String {
    TASK_FIXTURES[1].1.replacen(
        "\"created_at\": \"2026-11-30T01:52:44.133Z\"",
        &format!("\"created_at\": \"{ts}\""),
        1,
    )
}

/// DEFECT: a timestamp that is valid RFC 3339 but lands outside years
/// 0..=9999 in UTC (`9999-12-31T23:59:59-01:00`, `0000-01-01T00:00:00+01:00`)
/// is accepted, and then written back as `+10000-01-01T00:59:59.000Z` /
/// `-0001-12-31T23:00:00.000Z`, which no reader (this one included) accepts:
/// the next write of the task makes it unreadable (`Corrupt`).
#[test]
fn regression_timestamp_outside_year_0_to_9999_is_written_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    for ts in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
        let path = dir.path().join("write-lexer.json");
        std::fs::write(&path, task_with_created_at(ts)).expect("write");
        let id = TaskId::new("write-lexer").expect("valid");
        match read_task(&path, &id) {
            Ok(Some(t)) => check_round_trip(&path, &t, TASK_SCHEMA_VERSION),
            Err(e) => assert!(matches!(e, Error::Corrupt { .. }), "{e:?}"),
            Ok(None) => unreachable!(),
        }
    }
}

/// DEFECT: `config.json` with a huge `lease_ms` (here 10^15 ms, about 31 700
/// years; `check_ranges` only refuses 0) is accepted; a claim then writes
/// `lease_expires_at: "+33715-..."`, and the claimed task is from then on
/// unreadable: `list` no longer shows it, `show`/`complete` exit 65.
#[test]
fn regression_config_huge_lease_ms_makes_a_claimed_task_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join(".coordination");
    Coordination::init(&root, Some("g".into())).expect("init");
    let cfg_path = root.join("config.json");
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).expect("read")).expect("JSON");
    cfg["lease_ms"] = json!(1_000_000_000_000_000u64);
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&cfg).expect("serialises"),
    )
    .expect("write");
    let c = match Coordination::open(&root) {
        Ok(c) => c,
        // Refusing such a config as Corrupt is a fix too.
        Err(Error::Corrupt { .. }) => return,
        Err(e) => panic!("{e:?}"),
    };
    c.create(NewTask {
        id: Some("t1".into()),
        description: "do it".into(),
        ..Default::default()
    })
    .expect("create");
    let claimed = c
        .claim(&ClaimRequest {
            agent: "w1".into(),
            ..Default::default()
        })
        .expect("claim");
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)));
    let t = c.get("t1");
    assert!(t.is_ok(), "the claimed task became unreadable: {t:?}");
}

/// A FIFO at `.coordination/config.json` or `tasks/<id>.json` is refused as
/// "not a regular file" (spec section 2) without blocking. Found by this
/// file: `read_bytes` opened without `O_NONBLOCK`, so `open(2)` waited for
/// a writer forever and every command (`list`, `status`, `claim`) hung
/// (`orchestrate init; mkfifo .coordination/tasks/x.json; orchestrate
/// list`); `O_NONBLOCK` was added to `open_nofollow` meanwhile.
#[test]
fn read_bytes_refuses_a_fifo_without_blocking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.json");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read_bytes(&p).map(|b| b.map(|b| b.len())));
    });
    let got = rx.recv_timeout(deadline());
    if got.is_err() {
        // Let the blocked open return (a writer appears and leaves) so that
        // the thread ends.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
    }
    match got {
        Ok(Err(Error::Corrupt { .. })) => {}
        Ok(other) => panic!("expected Corrupt for a FIFO, got {other:?}"),
        Err(_) => panic!(
            "read_bytes on a FIFO did not return within {:?}: it blocks in open(2)",
            deadline()
        ),
    }
}

/// DEFECT: `check_batch` finds cycles by recursive depth-first search, one
/// stack frame per task along a dependency chain. A plan (or `run --tasks`
/// file) whose tasks form a long chain, each depending on the next, overflows
/// the stack and aborts the process instead of being accepted or refused.
/// The CLI aborts from about 30 000 tasks (`run g --tasks chain.json --agent
/// shell --no-plan`, debug build); here 100 000 on an 8 MiB stack, as the
/// CLI's main thread.
#[test]
fn regression_check_batch_overflows_the_stack_on_a_long_dependency_chain() {
    isolated(
        "defect_check_batch_overflows_the_stack_on_a_long_dependency_chain",
        Duration::from_secs(300),
        || {
            const N: usize = 100_000;
            let plan: Vec<Value> = (0..N)
                .map(|i| {
                    let deps: Vec<String> = if i + 1 < N {
                        vec![format!("t{}", i + 1)]
                    } else {
                        vec![]
                    };
                    json!({ "id": format!("t{i}"), "description": "d", "dependencies": deps })
                })
                .collect();
            let text = serde_json::to_string(&plan).expect("serialises");
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(move || {
                    let _ = tx.send(parse_plan(&text, &|_| false).map(|t| t.len()));
                })
                .expect("spawn");
            let got = rx
                .recv_timeout(Duration::from_secs(240))
                .expect("parse_plan answers");
            assert_eq!(got, Ok(N));
        },
    );
}

/// DEFECT: floats change in a read and write. serde_json is built without
/// its `float_roundtrip` feature, so its fast float parser may land one ULP
/// off; what it writes back (the shortest form of that `f64`) then reads as
/// another `f64`. A task with the unknown member `"x": 5.331855259740536e-250`
/// (bits 877790888893442791) is written back as `5.3318552597405354e-250`,
/// which loads as bits 877790888893442790. `spec/PROTOCOL.md` section 10:
/// unknown top-level members MUST be written back unchanged, with their
/// values; the same drift hits `result` and `backoff.factor`/`jitter`.
/// A fix: `serde_json` feature `float_roundtrip` (or `arbitrary_precision`).
#[test]
fn regression_float_changes_in_a_write_and_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("write-lexer.json");
    let text = TASK_FIXTURES[1].1.replacen(
        "\"seq\": 1,",
        "\"seq\": 1, \"x\": 5.331855259740536e-250,",
        1,
    );
    std::fs::write(&path, text).expect("write");
    let t = read_task(&path, &TaskId::new("write-lexer").expect("valid"))
        .expect("loads")
        .expect("exists");
    check_round_trip(&path, &t, TASK_SCHEMA_VERSION);
}

/// DEFECT (spec conformance): a JSON array is accepted where the spec has an
/// object: `"context": [["a.rs"], "hint", ["tag"]]` loads as files `a.rs`,
/// hints `hint`, tags `tag`; `"context": []` as the empty context;
/// `"backoff": [1000, 2.0, 60000, 0.5]` as a backoff, in task files and in
/// `config.json` (serde's derived `Deserialize` takes a struct from a
/// sequence). `spec/PROTOCOL.md` section 3.2, step 4: a wrong type is bad
/// data. Expected: `Error::Corrupt`.
#[test]
fn regression_positional_arrays_are_accepted_for_context_and_backoff() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("write-lexer.json");
    let context = "\"context\": {\n    \"files\": [],\n    \"tags\": []\n  }";
    for (from, to) in [
        (context, "\"context\": [[\"a.rs\"], \"hint\", [\"tag\"]]"),
        (context, "\"context\": []"),
        (
            "\"claimed_by\": null",
            "\"backoff\": [1000, 2.0, 60000, 0.5], \"claimed_by\": null",
        ),
    ] {
        let text = TASK_FIXTURES[1].1.replacen(from, to, 1);
        assert_ne!(text, TASK_FIXTURES[1].1);
        std::fs::write(&path, &text).expect("write");
        let r = read_task(&path, &TaskId::new("write-lexer").expect("valid"));
        assert!(
            matches!(r, Err(Error::Corrupt { .. })),
            "{to}: {:?}",
            r.map(|t| t.map(|t| (t.context, t.backoff)))
        );
    }
    let path = dir.path().join("config.json");
    let text = CONFIG_FIXTURES[0].1.replacen(
        "\"backoff\": {\n    \"base_ms\": 1000,\n    \"factor\": 2.0,\n    \"max_ms\": 60000,\n    \"jitter\": 0.5\n  }",
        "\"backoff\": [1000, 2.0, 60000]",
        1,
    );
    assert_ne!(text, CONFIG_FIXTURES[0].1);
    std::fs::write(&path, &text).expect("write");
    let r = read_config(&path);
    assert!(
        matches!(r, Err(Error::Corrupt { .. })),
        "config backoff array: {:?}",
        r.map(|c| c.map(|c| c.backoff))
    );
}

/// Found by `fuzz_config_file` (CI, 2026-12-02): `config.json` with an
/// unknown field `context` that is not an object (`"context": false`) is
/// valid under spec/config.schema.json (unknown fields are allowed and
/// kept, section 10) but was refused, because the check that nested
/// records are objects looked for task fields in every document. Expected:
/// read, and the field kept.
#[test]
fn regression_config_with_an_unknown_context_field_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.json");
    let text = CONFIG_FIXTURES[0]
        .1
        .replacen("{", "{\n  \"context\": false,", 1);
    std::fs::write(&path, &text).expect("write");
    let c = read_config(&path)
        .expect("a schema-valid config is read")
        .expect("present");
    let again = String::from_utf8(to_pretty(&c).expect("serialises")).expect("utf-8");
    assert!(again.contains("\"context\": false"), "{again}");
}

/// DEFECT (spec conformance): `schema_version: 0` is read as version 1.
/// `spec/PROTOCOL.md` section 10: a lower version must be read under that
/// version's rules or refused as bad data, never silently misread; version 1
/// is the first, and `spec/*.schema.json` say `"const": 1`. Expected:
/// `Error::Corrupt`.
#[test]
fn regression_schema_version_0_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("write-lexer.json");
    let text = TASK_FIXTURES[1]
        .1
        .replacen("\"schema_version\": 1", "\"schema_version\": 0", 1);
    std::fs::write(&path, text).expect("write");
    let r = read_task(&path, &TaskId::new("write-lexer").expect("valid"));
    assert!(
        matches!(r, Err(Error::Corrupt { .. })),
        "task with schema_version 0: {:?}",
        r.map(|t| t.map(|t| t.schema_version))
    );
    let path = dir.path().join("config.json");
    let text = CONFIG_FIXTURES[0]
        .1
        .replacen("\"schema_version\": 1", "\"schema_version\": 0", 1);
    std::fs::write(&path, text).expect("write");
    let r = read_config(&path);
    assert!(
        matches!(r, Err(Error::Corrupt { .. })),
        "config with schema_version 0: {:?}",
        r.map(|c| c.map(|c| c.schema_version))
    );
}

/// DEFECT: `settings::install` writes `<program> hook <event>` unquoted, and
/// `is_ours` looks at the first white-space separated word only, so with a
/// program path containing a space (`hooks install --program "/opt/my
/// tools/orchestrate"`) the commands installed are broken shell commands and
/// `uninstall` never removes them.
#[test]
fn regression_uninstall_leaves_hooks_installed_with_a_program_path_containing_a_space() {
    let mut doc = Map::new();
    assert!(settings::install(&mut doc, "/opt/my tools/orchestrate"));
    settings::uninstall(&mut doc);
    let left = commands(&doc);
    assert!(
        left.is_empty(),
        "uninstall left what install wrote: {left:?}"
    );
}
