//! Task batches from outside: the Python tool's tasks files and
//! `orchestration.json`, and a leader agent's plan (`spec/PROTOCOL.md`
//! section 13.3). Parsing and validation are pure; every problem is
//! collected so that a leader can be told all of them at once.

use crate::error::{Error, Result};
use crate::protocol::task::{self, NewTask};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// One entry of a tasks file or a plan, before validation.
fn entry_to_new_task(i: usize, v: &Value, errors: &mut Vec<String>) -> Option<NewTask> {
    let label = match v.get("id") {
        Some(Value::String(id)) => format!("task {} (`{id}`)", i + 1),
        _ => format!("task {}", i + 1),
    };
    let at = |field: &str| format!("{label}: `{field}`");
    let Some(obj) = v.as_object() else {
        errors.push(format!(
            "task {}: expected an object, found {}",
            i + 1,
            kind(v)
        ));
        return None;
    };
    let mut ok = true;
    let mut t = NewTask::default();
    match obj.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => t.id = Some(s.clone()),
        Some(Value::Number(n)) => t.id = Some(n.to_string()),
        Some(other) => {
            errors.push(format!(
                "{} must be a string, found {}",
                at("id"),
                kind(other)
            ));
            ok = false;
        }
    }
    match obj.get("description") {
        Some(Value::String(s)) if !s.trim().is_empty() => t.description = s.clone(),
        Some(Value::String(_)) => {
            errors.push(format!("{} is empty", at("description")));
            ok = false;
        }
        Some(other) => {
            errors.push(format!(
                "{} must be a string, found {}",
                at("description"),
                kind(other)
            ));
            ok = false;
        }
        None => {
            errors.push(format!("{} is missing", at("description")));
            ok = false;
        }
    }
    match obj.get("priority") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p) if (1..=10).contains(&p) => t.priority = Some(p as u8),
            _ => {
                errors.push(format!(
                    "{} is {n}; use 1 (most urgent) to 10",
                    at("priority")
                ));
                ok = false;
            }
        },
        Some(other) => {
            errors.push(format!(
                "{} must be a number 1..10, found {}",
                at("priority"),
                kind(other)
            ));
            ok = false;
        }
    }
    match string_list(obj.get("dependencies")) {
        Ok(v) => t.dependencies = v,
        Err(k) => {
            errors.push(format!(
                "{} must be an array of task ids, found {k}",
                at("dependencies")
            ));
            ok = false;
        }
    }
    // `context_files` (Python tool, plans) or `files`.
    match string_list(obj.get("context_files").or_else(|| obj.get("files"))) {
        Ok(v) => t.context.files = v,
        Err(k) => {
            errors.push(format!(
                "{} must be an array of paths, found {k}",
                at("context_files")
            ));
            ok = false;
        }
    }
    match obj.get("hints") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => t.context.hints = Some(s.clone()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            let parts: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            if !parts.is_empty() {
                t.context.hints = Some(parts.join("\n"));
            }
        }
        Some(other) => {
            errors.push(format!(
                "{} must be a string or a list of strings, found {}",
                at("hints"),
                kind(other)
            ));
            ok = false;
        }
    }
    match string_list(obj.get("tags")) {
        Ok(v) => t.context.tags = v,
        Err(k) => {
            errors.push(format!(
                "{} must be an array of strings, found {k}",
                at("tags")
            ));
            ok = false;
        }
    }
    match obj.get("command") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => t.command = Some(s.clone()),
        Some(other) => {
            errors.push(format!(
                "{} must be a string, found {}",
                at("command"),
                kind(other)
            ));
            ok = false;
        }
    }
    match obj.get("max_attempts") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|x| (1..=1000).contains(&x)) => {
            t.max_attempts = n.as_u64().map(|x| x as u32)
        }
        Some(other) => {
            errors.push(format!(
                "{} must be a number 1..1000, found {other}",
                at("max_attempts")
            ));
            ok = false;
        }
    }
    if ok {
        if let Err(e) = task::validate_new(&t) {
            errors.push(format!("{label}: {e}"));
            ok = false;
        }
    }
    ok.then_some(t)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_list(v: Option<&Value>) -> std::result::Result<Vec<String>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(kind(other)),
            })
            .collect(),
        Some(other) => Err(kind(other)),
    }
}

/// Validates a batch as a whole: ids unique, dependencies known (inside the
/// batch, or in `existing`), no cycle. Returns every problem found.
pub fn check_batch(tasks: &[NewTask], existing: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut errors = Vec::new();
    let mut keys = HashSet::new();
    for (i, t) in tasks.iter().enumerate() {
        if let Some(id) = &t.id {
            if !keys.insert(id.as_str()) {
                errors.push(format!("task {}: id `{id}` is used twice", i + 1));
            }
        }
    }
    let label = |i: usize, t: &NewTask| match &t.id {
        Some(id) => format!("task {} (`{id}`)", i + 1),
        None => format!("task {}", i + 1),
    };
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.dependencies {
            if !keys.contains(d.as_str()) && !existing(d) {
                let known: Vec<&str> = keys.iter().copied().collect();
                errors.push(format!(
                    "{}: dependency `{d}` is not the id of any task in the batch{}",
                    label(i, t),
                    if known.is_empty() {
                        " (no task has an `id`; give each task an `id` and refer to those)"
                            .to_string()
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    // Cycle check by depth-first search over batch keys.
    let idx: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.id.as_deref().map(|k| (k, i)))
        .collect();
    let edges = |i: usize| -> Vec<usize> {
        tasks[i]
            .dependencies
            .iter()
            .filter_map(|d| idx.get(d.as_str()).copied())
            .collect()
    };
    if let Some(c) = crate::protocol::dag::find_cycle(tasks.len(), edges) {
        let names: Vec<String> = c
            .iter()
            .map(|&k| {
                tasks[k]
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("task {}", k + 1))
            })
            .collect();
        errors.push(format!("dependency cycle: {}", names.join(" -> ")));
    }
    errors
}

/// Parses a tasks document: a JSON array of task objects (the Python tool's
/// format) or an object with a `tasks` array. Returns the tasks or every
/// problem found.
pub fn tasks_from_value(v: &Value) -> std::result::Result<Vec<NewTask>, Vec<String>> {
    let arr = match v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("tasks") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(vec![format!(
                    "`tasks` must be an array, found {}",
                    kind(other)
                )])
            }
            None => {
                return Err(vec![
                    "expected a JSON array of tasks or an object with a `tasks` array".into(),
                ])
            }
        },
        other => {
            return Err(vec![format!(
                "expected a JSON array of tasks, found {}",
                kind(other)
            )])
        }
    };
    let mut errors = Vec::new();
    let tasks: Vec<NewTask> = arr
        .iter()
        .enumerate()
        .filter_map(|(i, e)| entry_to_new_task(i, e, &mut errors))
        .collect();
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

/// Largest tasks or configuration file read, in bytes (64 MiB).
pub const MAX_INPUT_FILE_BYTES: u64 = 64 << 20;

/// Reads a user's input file as UTF-8, at most [`MAX_INPUT_FILE_BYTES`]:
/// opened without blocking and refused unless it is a regular file, so a
/// FIFO cannot hang the command and `/dev/zero` is refused, not read until
/// memory runs out (`spec` 4.7). `what` names the file in errors.
///
/// # Errors
/// [`Error::Invalid`] naming the file: missing, not regular, too big, not
/// UTF-8, unreadable.
pub fn read_user_file(path: &std::path::Path, what: &str) -> Result<String> {
    read_limited(path, what)
}

fn read_limited(path: &std::path::Path, what: &str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::Invalid(format!("cannot read {what} `{}`: {e}", path.display())))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::Invalid(format!(
            "{what} `{}` is not a regular file (a FIFO, device or directory); nothing was read",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    f.take(MAX_INPUT_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Invalid(format!("cannot read {what} `{}`: {e}", path.display())))?;
    if buf.len() as u64 > MAX_INPUT_FILE_BYTES {
        return Err(Error::Invalid(format!(
            "{what} `{}` is over {MAX_INPUT_FILE_BYTES} bytes",
            path.display()
        )));
    }
    String::from_utf8(buf)
        .map_err(|_| Error::Invalid(format!("{what} `{}` is not UTF-8", path.display())))
}

/// Reads a tasks file (`run --tasks FILE`).
///
/// # Errors
/// [`Error::Invalid`] naming the file and listing every problem.
pub fn read_tasks_file(path: &std::path::Path) -> Result<Vec<NewTask>> {
    let text = read_limited(path, "tasks file")?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "tasks file `{}` is not valid JSON: {e}",
            path.display()
        ))
    })?;
    tasks_from_value(&v).map_err(|errs| {
        Error::Invalid(format!(
            "tasks file `{}`:\n  {}",
            path.display(),
            errs.join("\n  ")
        ))
    })
}

/// The Python tool's `orchestration.json`, as `from-config` reads it.
#[derive(Debug, Clone, Default)]
pub struct RunFile {
    /// Required.
    pub goal: String,
    /// Where agents work; the file's directory when relative or absent.
    pub working_directory: Option<std::path::PathBuf>,
    /// Number of workers.
    pub max_workers: Option<usize>,
    /// Model for the claude agent.
    pub model: Option<String>,
    /// Seconds per task.
    pub task_timeout: Option<u64>,
    /// Extra planning context for the leader.
    pub master_plan: Option<String>,
    /// Predefined tasks; empty means "let the leader plan".
    pub tasks: Vec<NewTask>,
}

/// Reads a run configuration file (`from-config FILE`).
///
/// # Errors
/// [`Error::Invalid`] naming the file and every problem.
pub fn read_run_file(path: &std::path::Path) -> Result<RunFile> {
    let bad = |m: String| Error::Invalid(format!("configuration file `{}`: {m}", path.display()));
    let text = read_limited(path, "configuration file")?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| bad("expected a JSON object".into()))?;
    let goal = match o.get("goal") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(bad("`goal` is required (a non-empty string)".into())),
    };
    let num = |k: &str| -> Result<Option<u64>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(format!("`{k}` must be a whole number"))),
            Some(_) => Err(bad(format!("`{k}` must be a number"))),
        }
    };
    let string = |k: &str| -> Result<Option<String>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("`{k}` must be a string"))),
        }
    };
    let tasks = match o.get("tasks") {
        None | Some(Value::Null) => Vec::new(),
        Some(t @ Value::Array(_)) => tasks_from_value(t).map_err(|e| bad(e.join("\n  ")))?,
        Some(_) => return Err(bad("`tasks` must be an array".into())),
    };
    Ok(RunFile {
        goal,
        working_directory: string("working_directory")?.map(Into::into),
        max_workers: num("max_workers")?.map(|n| n as usize),
        model: string("model")?,
        task_timeout: num("task_timeout")?,
        master_plan: string("master_plan")?,
        tasks,
    })
}

/// Finds the plan in a leader's reply: a fenced ```json block, else the
/// first balanced JSON array or object that parses. Prose around it is fine.
pub fn extract_json(reply: &str) -> Option<Value> {
    // Fenced blocks first.
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map(|n| n + 1).unwrap_or(0);
        let body = &after[body_start..];
        let Some(end) = body.find("```") else { break };
        if let Ok(v) = serde_json::from_str::<Value>(body[..end].trim()) {
            if v.is_array() || v.is_object() {
                return Some(v);
            }
        }
        rest = &body[end + 3..];
    }
    // Then each `[` or `{` that starts a run of brackets, in order, parsing
    // a JSON value from there. A bracket right after another one is inside
    // the value tried from the run's start; skipping it, and trying at most
    // 4,096 starts, keeps deeply nested junk from costing time quadratic in
    // its length.
    let mut prev = ' ';
    let starts = reply
        .char_indices()
        .filter(move |(_, c)| {
            let start = (*c == '[' || *c == '{') && prev != '[' && prev != '{';
            prev = *c;
            start
        })
        .take(4096);
    for (i, c) in starts {
        if c == '[' || c == '{' {
            let mut de = serde_json::Deserializer::from_str(&reply[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = de.next() {
                if v.is_array() || v.as_object().is_some_and(|o| o.contains_key("tasks")) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Parses and validates a leader's reply as a plan; `existing` tells
/// whether an id names a task already in the queue.
///
/// # Errors
/// Every problem found, as sentences to send back to the leader.
pub fn parse_plan(
    reply: &str,
    existing: &dyn Fn(&str) -> bool,
) -> std::result::Result<Vec<NewTask>, Vec<String>> {
    let v = extract_json(reply)
        .ok_or_else(|| vec!["no JSON array of tasks found in the reply".to_string()])?;
    let tasks = tasks_from_value(&v)?;
    if tasks.is_empty() {
        return Err(vec!["the plan has no tasks".into()]);
    }
    let errs = check_batch(&tasks, existing);
    if errs.is_empty() {
        Ok(tasks)
    } else {
        Err(errs)
    }
}

/// A task entry of a tasks document as the Python tool writes it (`spec`
/// 13.3; the member order of `create-task -c`, section 11): `id`,
/// `description`, `priority`, `dependencies`, `context_files`, `hints`,
/// `command`, `tags`, `max_attempts`, each but `description` and
/// `priority` only when set.
pub fn task_entry(t: &NewTask) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(id) = &t.id {
        m.insert("id".into(), Value::from(id.clone()));
    }
    m.insert("description".into(), Value::from(t.description.clone()));
    m.insert(
        "priority".into(),
        Value::from(t.priority.unwrap_or(task::DEFAULT_PRIORITY)),
    );
    if !t.dependencies.is_empty() {
        m.insert("dependencies".into(), serde_json::json!(t.dependencies));
    }
    if !t.context.files.is_empty() {
        m.insert("context_files".into(), serde_json::json!(t.context.files));
    }
    if let Some(h) = &t.context.hints {
        m.insert("hints".into(), Value::from(h.clone()));
    }
    if let Some(c) = &t.command {
        m.insert("command".into(), Value::from(c.clone()));
    }
    if !t.context.tags.is_empty() {
        m.insert("tags".into(), serde_json::json!(t.context.tags));
    }
    if let Some(n) = t.max_attempts {
        m.insert("max_attempts".into(), Value::from(n));
    }
    Value::Object(m)
}

/// The example tasks file of `orchestrate example tasks` (`spec` 11): a
/// small DAG in the tasks-file format of 13.3, with a harmless `command`
/// per task so that `run --tasks FILE --adapter shell` runs it as it is.
pub fn example_tasks() -> Value {
    serde_json::json!([
        {
            "id": "handler",
            "description": "Add a GET /health handler that answers 200 with the version from Cargo.toml",
            "priority": 1,
            "context_files": ["src/server.rs"],
            "hints": "No database calls: the check must answer while the database is down",
            "command": "echo 'handler: written'"
        },
        {
            "id": "test",
            "description": "Add an integration test for GET /health",
            "priority": 2,
            "dependencies": ["handler"],
            "context_files": ["tests/health.rs"],
            "command": "echo 'test: written'"
        },
        {
            "id": "docs",
            "description": "Document the /health endpoint in README.md",
            "priority": 5,
            "dependencies": ["handler"],
            "context_files": ["README.md"],
            "max_attempts": 2,
            "command": "echo 'docs: written'"
        }
    ])
}

/// The example run configuration of `orchestrate example` (`spec` 11):
/// an `orchestration.json` (13.3) holding [`example_tasks`], working in
/// the file's own directory, with `model` as given.
pub fn example_config(model: &str) -> Value {
    serde_json::json!({
        "goal": "Add a /health endpoint to the web server",
        "working_directory": ".",
        "max_workers": 3,
        "model": model,
        "task_timeout": 600,
        "master_plan": "The server is in src/server.rs; keep the endpoint free of authentication.",
        "tasks": example_tasks()
    })
}

/// What each member of a run configuration file means, in file order:
/// the comments `orchestrate example` prints beside [`example_config`].
pub const CONFIG_COMMENTS: &[(&str, &str)] = &[
    ("goal", "required: what the agents work towards"),
    ("working_directory", "where agents work; a relative path is relative to this file's directory (default: that directory)"),
    ("max_workers", "number of parallel workers (default 3; -w overrides)"),
    ("model", "Claude model for the leader and workers (default: the CLI's own)"),
    ("task_timeout", "seconds per attempt; the process group is killed after it (default 600)"),
    ("master_plan", "background for the leader when it plans (used only when tasks is empty)"),
    ("tasks", "predefined tasks (the members below); leave it [] and the leader plans the goal"),
];

/// What each member of a task entry means (`spec` 13.3): the comments
/// `orchestrate example tasks` prints beside [`example_tasks`].
pub const TASK_COMMENTS: &[(&str, &str)] = &[
    (
        "id",
        "a key other entries name in dependencies; becomes the task id when free",
    ),
    ("description", "required: what to do, self-contained"),
    ("priority", "1 (most urgent) to 10; default 5"),
    (
        "dependencies",
        "ids of entries (or queued tasks) that must be completed first",
    ),
    ("context_files", "files the worker should look at"),
    (
        "hints",
        "advice for the worker (a string, or an array of lines)",
    ),
    (
        "command",
        "what --adapter shell runs with sh -c (the claude adapter ignores it)",
    ),
    ("tags", "labels; `claim --tag` filters on them"),
    (
        "max_attempts",
        "attempts before the task is dead; default from config.json",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn python_tasks_array_with_string_or_list_hints() {
        let v = json!([
            {"description": "a", "priority": 1, "hints": "x"},
            {"description": "b", "context_files": ["README.md"], "hints": ["y", "z"]}
        ]);
        let t = tasks_from_value(&v).unwrap();
        assert_eq!(t[0].priority, Some(1));
        assert_eq!(t[0].context.hints.as_deref(), Some("x"));
        assert_eq!(t[1].context.files, vec!["README.md"]);
        assert_eq!(t[1].context.hints.as_deref(), Some("y\nz"));
    }

    #[test]
    fn every_problem_is_reported() {
        let v = json!({"tasks": [{"priority": 0}, {"description": "b", "dependencies": "a"}, 7]});
        let errs = tasks_from_value(&v).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("task 1: `description` is missing")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("task 1: `priority` is 0")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("task 2: `dependencies` must be an array")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("task 3: expected an object")),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_dependency_and_cycle_are_found() {
        let v = json!([
            {"id": "a", "description": "a", "dependencies": ["b"]},
            {"id": "b", "description": "b", "dependencies": ["a"]},
            {"id": "c", "description": "c", "dependencies": ["zz"]}
        ]);
        let t = tasks_from_value(&v).unwrap();
        let errs = check_batch(&t, &none);
        assert!(errs.iter().any(|e| e.contains("`zz`")), "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("dependency cycle: a -> b -> a")
                    || e.starts_with("dependency cycle: b -> a -> b")),
            "{errs:?}"
        );
    }

    #[test]
    fn plan_found_in_prose_and_fences() {
        let reply = "Here is the plan [draft]:\n```json\n[{\"id\":\"t1\",\"description\":\"do it\"}]\n```\nDone.";
        let t = parse_plan(reply, &none).unwrap();
        assert_eq!(t[0].id.as_deref(), Some("t1"));
        let reply = "Sure! Plan follows: [{\"id\":\"x\",\"description\":\"d\",\"priority\":2}] hope it helps [1]";
        let t = parse_plan(reply, &none).unwrap();
        assert_eq!(t[0].priority, Some(2));
        assert!(parse_plan("no plan here", &none).is_err());
        assert!(parse_plan("[]", &none).is_err());
    }
}
