//! Helpers shared by the fault tests (`crash`, `diskfull`, `hostile`):
//! running the binary with a `pre_exec` hook and a time limit, snapshots of
//! whole directory trees, and the "is the directory consistent" check.

#![allow(dead_code)]

use crate::support::TestEnv;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `cmd` with stdin closed, killing it (and panicking) after `limit`.
#[track_caller]
pub fn output_within(cmd: Command, limit: Duration) -> Output {
    try_output_within(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with stdin closed; after `limit` kills it and returns `Err`.
pub fn try_output_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!(
        "orchestrate {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let child = cmd.spawn().expect("spawn orchestrate");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out.expect("wait for orchestrate")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not
            // been reaped (the waiting thread still holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("hung: {what} did not finish within {limit:?}"))
        }
    }
}

/// A command for the binary against `env` whose child never dumps core
/// (crash tests abort on purpose, and core files are slow and large).
pub fn no_core_cmd(env: &TestEnv) -> Command {
    let mut c = env.std_cmd();
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the hook.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
            Ok(())
        });
    }
    c
}

/// Human description of how a process ended.
pub fn how(out: &Output) -> String {
    match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{:?}", out.status),
    }
}

/// Both streams, for failure messages.
pub fn streams(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: permission bits and content.
    File(u32, Vec<u8>),
    /// A directory: permission bits.
    Dir(u32),
    /// A symlink and its target.
    Link(String),
    /// Anything else (FIFO, socket, device).
    Other(u32),
}

/// Every entry under `root` (relative paths), without following symlinks,
/// leaving out the relative paths in `skip` and what is under them. Large
/// files (sparse test files) are recorded by size only.
pub fn tree(root: &Path, skip: &[&str]) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, Entry>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            let mode = m.permissions().mode() & 0o7777;
            let ft = m.file_type();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).map(|t| t.display().to_string());
                out.insert(rel, Entry::Link(t.unwrap_or_default()));
            } else if ft.is_dir() {
                out.insert(rel, Entry::Dir(mode));
                walk(root, &p, skip, out);
            } else if ft.is_file() {
                let content = if m.len() > (64 << 20) {
                    format!("<{} bytes, {} blocks>", m.len(), m.blocks()).into_bytes()
                } else {
                    std::fs::read(&p).unwrap_or_default()
                };
                out.insert(rel, Entry::File(mode, content));
            } else {
                out.insert(rel, Entry::Other(mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

/// The difference of two tree snapshots, one line per changed path.
pub fn tree_diff(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) -> String {
    let mut s = String::new();
    let short = |e: &Entry| match e {
        Entry::File(m, c) => format!(
            "file {m:o} {} bytes: {:?}",
            c.len(),
            String::from_utf8_lossy(&c[..c.len().min(80)])
        ),
        other => format!("{other:?}"),
    };
    for (k, v) in before {
        match after.get(k) {
            None => s.push_str(&format!("removed {k}: {}\n", short(v))),
            Some(w) if w != v => {
                s.push_str(&format!("changed {k}: {} => {}\n", short(v), short(w)))
            }
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            s.push_str(&format!("added {k}: {}\n", short(v)));
        }
    }
    s
}

/// Checks what a lock-free reader sees: `list`, `status` and `events` work,
/// no task file is reported unreadable, `show` works for every listed
/// task, and every visible `tasks/*.json` parses as a version-1 task.
/// Returns the listed ids.
pub fn check_readers(env: &TestEnv) -> Result<Vec<String>, String> {
    let out = env.run(&["list", "--json"]);
    if out.status.code() != Some(0) {
        return Err(format!("list --json: {}\n{}", how(&out), streams(&out)));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("list --json is not JSON ({e}): {}", streams(&out)))?;
    if v["errors"] != serde_json::json!([]) {
        return Err(format!("list reports unreadable files: {}", v["errors"]));
    }
    let ids: Vec<String> = v["tasks"]
        .as_array()
        .ok_or_else(|| format!("list --json has no tasks array: {v}"))?
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    for args in [&["status", "--json"][..], &["events", "--json"][..]] {
        let out = env.run(args);
        if out.status.code() != Some(0) {
            return Err(format!("{args:?}: {}\n{}", how(&out), streams(&out)));
        }
    }
    for id in &ids {
        let out = env.run(&["show", id, "--json"]);
        if out.status.code() != Some(0) {
            return Err(format!("show {id}: {}\n{}", how(&out), streams(&out)));
        }
    }
    for e in std::fs::read_dir(env.tasks_dir()).map_err(|e| format!("read tasks/: {e}"))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bytes = std::fs::read(e.path()).map_err(|err| format!("read {name}: {err}"))?;
        let t: Value = serde_json::from_slice(&bytes)
            .map_err(|err| format!("tasks/{name} does not parse ({err})"))?;
        if t["schema_version"] != 1
            || t["id"].as_str().map(|s| format!("{s}.json")) != Some(name.clone())
        {
            return Err(format!("tasks/{name} is not a version-1 task file: {t}"));
        }
    }
    Ok(ids)
}

/// The task file as JSON, or `None` when it does not exist.
pub fn task_opt(env: &TestEnv, id: &str) -> Option<Value> {
    let bytes = std::fs::read(env.task_path(id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Lines of `events.jsonl` (lossy UTF-8), without the final empty piece.
pub fn event_lines(env: &TestEnv) -> Vec<String> {
    let text = std::fs::read(env.dir().join("events.jsonl")).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// True when this process runs as root (the permission tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd`'s child run as `uid` (and gid `uid`, no supplementary
/// groups): a second real Unix user for the permission and attack tests.
/// Needs root.
pub fn run_as(cmd: &mut Command, uid: u32) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setgroups, setgid and setuid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
