//! A hostile directory (`spec/PROTOCOL.md` sections 2 rule 3 and 4, 8, 12):
//! symlinks planted where files and directories are expected, FIFOs,
//! malformed ids on every command that takes one, a huge sparse task file,
//! and the permissions of what the tool creates. For each case: the
//! documented exit code, no hang, and nothing outside `.coordination/`
//! touched (a sibling directory `outside/` holds the link targets and is
//! compared before and after).

use crate::harness::{how, streams, tree, tree_diff, try_output_within, Entry};
use crate::support::TestEnv;
use orchestrate::{ClaimRequest, Coordination, NewTask};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `outside/` next to `.coordination/`: files and a directory that planted
/// links point at.
fn outside(env: &TestEnv) -> PathBuf {
    let d = env.root().join("outside");
    std::fs::create_dir_all(d.join("victim-dir")).unwrap();
    std::fs::write(d.join("victim.txt"), b"do not touch\n").unwrap();
    std::fs::write(d.join("victim-dir/a.txt"), b"a\n").unwrap();
    d
}

/// Everything under the temp root except `.coordination/`.
fn outside_tree(env: &TestEnv) -> BTreeMap<String, Entry> {
    tree(env.root(), &[".coordination"])
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs the binary (5 s limit: a hang is a failure, not a stuck test;
/// every command here answers in milliseconds when it does not hang).
fn run(env: &TestEnv, args: &[String]) -> Result<Output, String> {
    let mut c = env.std_cmd();
    c.args(args);
    try_output_within(c, Duration::from_secs(5))
}

/// As [`run`], with the child's address space capped at 1 GiB, so that a
/// command that loads a 3 GiB file into memory dies instead of passing.
fn run_small_memory(env: &TestEnv, args: &[String]) -> Result<Output, String> {
    let mut c = env.std_cmd();
    c.args(args);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    try_output_within(c, Duration::from_secs(5))
}

/// Runs `args`, expects one of `codes`, and that nothing outside changed.
fn check(
    env: &TestEnv,
    args: &[&str],
    codes: &[i32],
    before: &BTreeMap<String, Entry>,
    failures: &mut Vec<String>,
) -> Option<Output> {
    let out = match run(env, &strings(args)) {
        Ok(o) => o,
        Err(e) => {
            failures.push(e);
            return None;
        }
    };
    if !out.status.code().is_some_and(|c| codes.contains(&c)) {
        failures.push(format!(
            "{args:?}: {}, want one of {codes:?}\n{}",
            how(&out),
            streams(&out)
        ));
    }
    let diff = tree_diff(before, &outside_tree(env));
    if !diff.is_empty() {
        failures.push(format!(
            "{args:?} touched files outside .coordination/:\n{diff}"
        ));
    }
    Some(out)
}

fn finish(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn assert_link(p: &Path, target: &Path, failures: &mut Vec<String>) {
    match std::fs::read_link(p) {
        Ok(t) if t == target => {}
        other => failures.push(format!(
            "{} is no longer the planted link: {other:?}",
            p.display()
        )),
    }
}

// ------------------------------------------------------------- symlinks

#[test]
fn symlink_at_a_task_file_is_refused_by_every_command() {
    let env = TestEnv::new();
    let out_dir = outside(&env);
    env.create("fine", &["--id", "ok"]);
    env.create("victim", &["--id", "v"]);
    // A valid task file outside: following the link would "work".
    let target = out_dir.join("v.json");
    std::fs::copy(env.task_path("v"), &target).unwrap();
    std::fs::remove_file(env.task_path("v")).unwrap();
    symlink(&target, env.task_path("v")).unwrap();
    let before = outside_tree(&env);
    let mut f = Vec::new();
    for (args, codes) in [
        (&["show", "v"][..], &[65][..]),
        (&["claim", "--agent", "a", "v"], &[65]),
        (&["heartbeat", "v", "--token", "0"], &[65]),
        (&["complete", "v", "--token", "1"], &[65]),
        (&["fail", "v", "--token", "1", "--error", "e"], &[65]),
        (&["release", "v", "--token", "1"], &[65]),
        (&["cancel", "v"], &[65]),
        (&["retry", "v"], &[65]),
        (&["create-task", "y", "-d", "v"], &[65]),
        (&["create-task", "y", "--id", "v"], &[4, 65]),
        (&["status"], &[0]),
        (&["reindex"], &[0]),
    ] {
        check(&env, args, codes, &before, &mut f);
    }
    if let Some(out) = check(&env, &["list", "--json"], &[0], &before, &mut f) {
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("v.json") {
            f.push(format!(
                "list does not report the link as unreadable: {text}"
            ));
        }
    }
    // An unnamed claim skips it (it is in the ready index) and takes `ok`.
    if let Some(out) = check(
        &env,
        &["claim", "--agent", "a", "--json"],
        &[0],
        &before,
        &mut f,
    ) {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["task"]["id"] != "ok" {
            f.push(format!("unnamed claim took {}", v["task"]["id"]));
        }
    }
    check(&env, &["claim", "--agent", "a"], &[3], &before, &mut f);
    assert_link(&env.task_path("v"), &target, &mut f);
    finish("symlinked task file", f);
}

#[test]
fn symlinked_temp_file_and_batch_intent_are_not_followed() {
    let mut f = Vec::new();
    // .tmp-write -> an existing outside file, and -> a path that does not
    // exist (O_CREAT through a dangling link would create it).
    for dangling in [false, true] {
        let env = TestEnv::new();
        let out_dir = outside(&env);
        let target = if dangling {
            out_dir.join("created-through-the-link")
        } else {
            out_dir.join("victim.txt")
        };
        symlink(&target, env.tasks_dir().join(".tmp-write")).unwrap();
        let before = outside_tree(&env);
        check(
            &env,
            &["create-task", "x", "--id", "x"],
            &[0],
            &before,
            &mut f,
        );
        if env
            .tasks_dir()
            .join(".tmp-write")
            .symlink_metadata()
            .is_ok()
        {
            f.push(format!(
                "dangling={dangling}: tasks/.tmp-write left after a write"
            ));
        }
        if !env.task_path("x").is_file() {
            f.push(format!("dangling={dangling}: x was not created"));
        }
    }
    // .tmp (where temp files are made) -> an outside directory: removed
    // (the link, not its target), made again, nothing written outside.
    let env = TestEnv::new();
    let out_dir = outside(&env);
    let _ = std::fs::remove_dir_all(env.dir().join(".tmp"));
    symlink(out_dir.join("victim-dir"), env.dir().join(".tmp")).unwrap();
    let before = outside_tree(&env);
    check(
        &env,
        &["create-task", "x", "--id", "x"],
        &[0],
        &before,
        &mut f,
    );
    if !env.task_path("x").is_file() {
        f.push(".tmp symlinked: x was not created".into());
    }
    if !env
        .dir()
        .join(".tmp")
        .symlink_metadata()
        .is_ok_and(|m| m.is_dir())
    {
        f.push(".tmp is not a real directory after a write".into());
    }
    // .batch-intent.json -> an outside "intent" naming a real task: a
    // roll-back that followed it would delete `ok`.
    let env = TestEnv::new();
    let out_dir = outside(&env);
    env.create("fine", &["--id", "ok"]);
    let intent = out_dir.join("intent.json");
    std::fs::write(&intent, br#"{"schema_version":1,"task_ids":["ok"]}"#).unwrap();
    let link = env.tasks_dir().join(".batch-intent.json");
    symlink(&intent, &link).unwrap();
    let before = outside_tree(&env);
    check(
        &env,
        &["create-task", "y", "--id", "y"],
        &[65, 0],
        &before,
        &mut f,
    );
    check(&env, &["list", "--json"], &[0], &before, &mut f);
    if !env.task_path("ok").is_file() {
        f.push("the task named by a symlinked intent record was deleted".into());
    }
    finish("symlinked temp file / intent", f);
}

#[test]
fn symlinked_lock_and_config_are_refused() {
    let mut f = Vec::new();
    for dangling in [false, true] {
        let env = TestEnv::new();
        let out_dir = outside(&env);
        env.create("fine", &["--id", "ok"]);
        let target = if dangling {
            out_dir.join("lock-created-through-the-link")
        } else {
            out_dir.join("victim.txt")
        };
        let lock = env.dir().join("lock");
        std::fs::remove_file(&lock).unwrap();
        symlink(&target, &lock).unwrap();
        let before = outside_tree(&env);
        for args in [
            &["create-task", "x"][..],
            &["claim", "--agent", "a"],
            &["cancel", "ok"],
            &["reap"],
            &["reindex"],
        ] {
            if let Some(out) = check(&env, args, &[65], &before, &mut f) {
                if !String::from_utf8_lossy(&out.stderr).contains("symlink") {
                    f.push(format!(
                        "lock: {args:?} does not say why:\n{}",
                        streams(&out)
                    ));
                }
            }
        }
        check(&env, &["list"], &[0], &before, &mut f);
        assert_link(&lock, &target, &mut f);
    }
    // config.json -> a valid config outside.
    let env = TestEnv::new();
    let out_dir = outside(&env);
    env.create("fine", &["--id", "ok"]);
    let cfg = env.dir().join("config.json");
    let target = out_dir.join("config.json");
    std::fs::rename(&cfg, &target).unwrap();
    symlink(&target, &cfg).unwrap();
    let before = outside_tree(&env);
    for args in [
        &["list"][..],
        &["show", "ok"],
        &["status"],
        &["create-task", "x"],
        &["claim", "--agent", "a"],
        &["init", "another goal"],
    ] {
        check(&env, args, &[65], &before, &mut f);
    }
    assert_link(&cfg, &target, &mut f);
    finish("symlinked lock / config", f);
}

/// Regression test (the bug is fixed; it was in src/protocol/events.rs `read_all`, src/cli/observe.rs `Tail::read`): the
/// readers of `events.jsonl` open it with `File::open`, following a planted
/// symlink: `events` prints the lines of a file outside `.coordination/`
/// (and `metrics` counts them). Spec 2 rule 3 and 3.4: readers SHOULD open
/// the log without following a symlink and treat it as empty (or refuse it
/// as bad data). Writers already refuse it, as the spec requires.
#[test]
fn symlinked_event_log_is_neither_written_nor_read() {
    let env = TestEnv::new();
    let out_dir = outside(&env);
    let log = env.dir().join("events.jsonl");
    let target = out_dir.join("events.jsonl");
    std::fs::write(
        &target,
        b"{\"ts\":\"2020-01-01T00:00:00.000Z\",\"event\":\"planted_outside\",\"task_id\":\"zz\"}\n",
    )
    .unwrap();
    std::fs::remove_file(&log).unwrap();
    symlink(&target, &log).unwrap();
    let before = outside_tree(&env);
    let mut f = Vec::new();
    // The mutation stands; its events are skipped (spec 3.4).
    check(
        &env,
        &["create-task", "x", "--id", "x"],
        &[0],
        &before,
        &mut f,
    );
    if !env.task_path("x").is_file() {
        f.push("x was not created".into());
    }
    for args in [&["events", "--json"][..], &["metrics", "--json"]] {
        if let Some(out) = check(&env, args, &[0, 65], &before, &mut f) {
            if String::from_utf8_lossy(&out.stdout).contains("planted_outside") {
                f.push(format!(
                    "{args:?} read the log through the symlink:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
        }
    }
    assert_link(&log, &target, &mut f);
    finish("symlinked events.jsonl", f);
}

#[test]
fn symlinked_subdirectories_are_refused_by_every_command() {
    let mut f = Vec::new();
    for sub in ["tasks", "index", "logs", "agents"] {
        let env = TestEnv::new();
        let out_dir = outside(&env);
        env.create("fine", &["--id", "ok"]);
        let target = out_dir.join(sub);
        std::fs::rename(env.dir().join(sub), &target).unwrap();
        symlink(&target, env.dir().join(sub)).unwrap();
        let before = outside_tree(&env);
        for args in [
            &["create-task", "x", "--id", "x"][..],
            &["claim", "--agent", "a"],
            &["cancel", "ok"],
            &["reap"],
            &["reindex"],
        ] {
            check(&env, args, &[65], &before, &mut f);
        }
        // Readers may refuse too, but must not write.
        check(&env, &["list"], &[0, 65], &before, &mut f);
        assert_link(&env.dir().join(sub), &target, &mut f);
    }
    finish("symlinked subdirectories", f);
}

/// Files inside `index/` are derived: a symlink there may be refused as bad
/// data (65, spec 2 rule 3) or the index rebuilt (0, spec 9 rule 8); what
/// must never happen is a write through it.
///
/// Regression test (the bug is fixed; it was in src/protocol/index.rs): at commit 34805b6 `set_next_seq` wrote
/// `index/next_seq` with `std::fs::write`, following the link: an outside
/// file holding `100` became `101` after one `create-task`. Since commit 4e42f40
/// index files are opened with O_NOFOLLOW, so nothing is written
/// through, but the ELOOP surfaces as an I/O error: exit 74 ("Too many
/// levels of symbolic links") instead of 65, and since nothing rebuilds the
/// index, every later claim or create fails the same way until a person
/// deletes `index/`.
#[test]
fn symlinks_inside_the_index_are_not_followed() {
    let mut f = Vec::new();
    type Plant = fn(&TestEnv, &Path) -> (PathBuf, &'static [&'static str]);
    let cases: Vec<(&str, Plant)> = vec![
        ("index/next_seq", |env, out| {
            let t = out.join("number.txt");
            std::fs::write(&t, b"100\n").unwrap();
            let p = env.dir().join("index/next_seq");
            std::fs::remove_file(&p).unwrap();
            symlink(&t, &p).unwrap();
            (p, &["create-task", "x", "--id", "x"])
        }),
        ("index/leases", |env, out| {
            let t = out.join("leases.txt");
            std::fs::write(&t, b"junk\n").unwrap();
            let p = env.dir().join("index/leases");
            std::fs::remove_file(&p).unwrap();
            symlink(&t, &p).unwrap();
            (p, &["claim", "--agent", "a"])
        }),
        ("index/version", |env, out| {
            let p = env.dir().join("index/version");
            let t = out.join("version.txt");
            std::fs::rename(&p, &t).unwrap();
            symlink(&t, &p).unwrap();
            (p, &["create-task", "x", "--id", "x"])
        }),
        ("index/waiting", |env, out| {
            let t = out.join("waiting.txt");
            std::fs::write(&t, b"").unwrap();
            let p = env.dir().join("index/waiting");
            let _ = std::fs::remove_file(&p);
            symlink(&t, &p).unwrap();
            (p, &["create-task", "x", "--id", "x", "-d", "ok"])
        }),
        ("index/dependents/ok", |env, out| {
            let t = out.join("dependents.txt");
            std::fs::write(&t, b"").unwrap();
            let p = env.dir().join("index/dependents/ok");
            let _ = std::fs::remove_file(&p);
            symlink(&t, &p).unwrap();
            (p, &["create-task", "x", "--id", "x", "-d", "ok"])
        }),
        // Issue 11 (2): a symlinked directory inside the index, pointing at
        // a project whose files look like index entries.
        ("index/ready/01 (a directory)", |env, out| {
            let victim = out.join("victim-dir");
            std::fs::write(victim.join("EMPTY_BUT_IMPORTANT"), b"").unwrap();
            std::fs::write(
                victim.join("000000000000"),
                b"000000000001-ok\nrequests-2\n",
            )
            .unwrap();
            let p = env.dir().join("index/ready/01");
            let _ = std::fs::remove_dir_all(&p);
            symlink(&victim, &p).unwrap();
            (p, &["claim", "--agent", "a"])
        }),
        ("index/dependents (a directory)", |env, out| {
            let p = env.dir().join("index/dependents");
            let _ = std::fs::remove_dir_all(&p);
            symlink(out.join("victim-dir"), &p).unwrap();
            (p, &["create-task", "x", "--id", "x", "-d", "ok"])
        }),
        (".index-rebuild", |env, out| {
            let p = env.dir().join(".index-rebuild");
            symlink(out.join("victim-dir"), &p).unwrap();
            (p, &["reindex"])
        }),
        (".index-old", |env, out| {
            let p = env.dir().join(".index-old");
            symlink(out.join("victim-dir"), &p).unwrap();
            (p, &["reindex"])
        }),
    ];
    for (name, plant) in cases {
        let env = TestEnv::new();
        let out_dir = outside(&env);
        env.create("fine", &["--id", "ok"]);
        let (_link, args) = plant(&env, &out_dir);
        let before = outside_tree(&env);
        let mut local = Vec::new();
        check(&env, args, &[0, 65], &before, &mut local);
        // And the queue still works afterwards (a fresh task: the planted
        // case's own command may legitimately have claimed `ok`).
        check(
            &env,
            &["create-task", "after", "--id", "after"],
            &[0],
            &before,
            &mut local,
        );
        check(
            &env,
            &["claim", "--agent", "b", "after"],
            &[0],
            &before,
            &mut local,
        );
        f.extend(local.into_iter().map(|e| format!("[{name}] {e}")));
    }
    finish("symlinks inside index/", f);
}

/// Regression test (the bug is fixed; it was in src/run/agent.rs `create_log`): the attempt's log file is created with
/// `File::create`, which follows a symlink planted at
/// `logs/<task>.<attempt>.log` and truncates (then writes) its target
/// outside `.coordination/`. Spec 2 rule 3: files in the directory are
/// opened with `O_NOFOLLOW`; a symlink where a file is expected is refused.
#[test]
fn symlinked_log_file_is_not_followed() {
    let env = TestEnv::new();
    let out_dir = outside(&env);
    env.create("x", &["--id", "t", "--command", "echo written-by-the-task"]);
    let target = out_dir.join("victim.txt");
    let link = env.dir().join("logs/t.1.log");
    symlink(&target, &link).unwrap();
    let before = outside_tree(&env);
    let mut f = Vec::new();
    let args = [
        "work",
        "--agent",
        "w",
        "--adapter",
        "shell",
        "--until-empty",
        "-q",
    ];
    check(&env, &args, &[0, 1, 65, 74], &before, &mut f);
    finish("symlinked log file", f);
}

// ------------------------------------------------------------------ FIFOs

/// Regression test (the bug is fixed; it was in src/protocol/store.rs `open_nofollow`, src/protocol/events.rs `read_all`,
/// src/cli/observe.rs `Tail::read`): files are opened for reading without
/// `O_NONBLOCK`, so a FIFO planted where a file is expected blocks the
/// open(2) forever: `list`, `show`, `reindex` (under the lock, so every
/// other writer then times out), a claim that meets it in the index, every
/// command when it is `config.json`, every mutation when it is
/// `tasks/.batch-intent.json`, and `events`/`metrics` when it is
/// `events.jsonl`. Spec 2 rule 3: a non-regular file where a file is
/// expected is bad data (65); 3.4: readers open the log without blocking.
/// (`events::append` already uses O_NONBLOCK for this reason.)
#[test]
fn fifos_in_place_of_files_do_not_hang_any_command() {
    // (what, where the FIFO goes, command, allowed exit codes)
    type Case = (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [i32],
    );
    let cases: &[Case] = &[
        (
            "unknown task file",
            "tasks/ff.json",
            &["list", "--json"],
            &[0],
        ),
        ("unknown task file", "tasks/ff.json", &["show", "ff"], &[65]),
        ("unknown task file", "tasks/ff.json", &["status"], &[0]),
        ("unknown task file", "tasks/ff.json", &["reindex"], &[0]),
        (
            "indexed task file",
            "tasks/ok.json",
            &["claim", "--agent", "a"],
            &[0, 3, 65],
        ),
        (
            "indexed task file",
            "tasks/ok.json",
            &["cancel", "ok"],
            &[65],
        ),
        ("config", "config.json", &["list"], &[65]),
        ("config", "config.json", &["create-task", "x"], &[65]),
        (
            "batch intent",
            "tasks/.batch-intent.json",
            &["create-task", "x"],
            &[0, 65],
        ),
        ("event log", "events.jsonl", &["events"], &[0, 65]),
        ("event log", "events.jsonl", &["metrics"], &[0, 65]),
        ("event log", "events.jsonl", &["create-task", "x"], &[0]),
    ];
    // In parallel: a hang costs the 5 s limit once, not once per case.
    let results: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(what, at, args, codes)| {
                s.spawn(move || {
                    let env = TestEnv::new();
                    env.create("fine", &["--id", "ok"]);
                    let p = env.dir().join(at);
                    let _ = std::fs::remove_file(&p);
                    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                    // SAFETY: mkfifo with a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
                    match run(&env, &strings(args)) {
                        Err(e) => Some(format!("[FIFO at {at} ({what})] {e}")),
                        Ok(out) if !out.status.code().is_some_and(|c| codes.contains(&c)) => {
                            Some(format!(
                                "[FIFO at {at} ({what})] {args:?}: {}, want {codes:?}\n{}",
                                how(&out),
                                streams(&out)
                            ))
                        }
                        Ok(_) => None,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    finish("FIFOs", results.into_iter().flatten().collect());
}

// -------------------------------------------------------------------- ids

/// Ids that section 8 forbids (NUL has its own test: argv cannot carry it).
fn bad_ids() -> Vec<String> {
    vec![
        "..".into(),
        ".".into(),
        "../escape".into(),
        "a/b".into(),
        "/tmp/abs".into(),
        ".hidden".into(),
        "-dash".into(),
        "x".repeat(129),
        "a b".into(),
        "tab\there".into(),
        "caf\u{e9}".into(),
    ]
}

/// argv, and environment variables to set.
type IdCommand = (Vec<String>, Vec<(&'static str, String)>);

/// Every command argument that is a task or agent id, as argv for `bad`.
/// Options use `--opt=VALUE` and positionals follow `--`, so that a value
/// starting with `-` reaches the validation instead of clap.
fn id_commands(bad: &str, tasks_file: &Path, deps_file: &Path) -> Vec<IdCommand> {
    let b = bad.to_string();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let with = |mut a: Vec<String>, tail: &[&str]| {
        a.extend(tail.iter().map(|s| s.to_string()));
        a
    };
    vec![
        (v(&["create-task", "y", &format!("--id={b}")]), vec![]),
        (v(&["create-task", "y", &format!("--depends={b}")]), vec![]),
        (with(v(&["claim", "--agent", "a", "--"]), &[&b]), vec![]),
        (v(&["claim", &format!("--agent={b}")]), vec![]),
        (with(v(&["heartbeat", "--token", "1", "--"]), &[&b]), vec![]),
        (with(v(&["complete", "--token", "1", "--"]), &[&b]), vec![]),
        (
            with(v(&["fail", "--token", "1", "--error", "e", "--"]), &[&b]),
            vec![],
        ),
        (with(v(&["release", "--token", "1", "--"]), &[&b]), vec![]),
        (with(v(&["cancel", "--"]), &[&b]), vec![]),
        (with(v(&["retry", "--"]), &[&b]), vec![]),
        (with(v(&["show", "--"]), &[&b]), vec![]),
        (
            v(&[
                "work",
                "--adapter",
                "shell",
                "--until-empty",
                &format!("--agent={b}"),
            ]),
            vec![],
        ),
        (
            v(&["heartbeat", "--token", "1"]),
            vec![("ORCHESTRATE_TASK_ID", b.clone())],
        ),
        (v(&["claim"]), vec![("ORCHESTRATE_AGENT_ID", b.clone())]),
        (
            v(&[
                "run",
                "g",
                "--agent",
                "shell",
                "--no-plan",
                "-q",
                "--tasks",
                tasks_file.to_str().unwrap(),
            ]),
            vec![],
        ),
        (
            v(&[
                "run",
                "g",
                "--agent",
                "shell",
                "--no-plan",
                "-q",
                "--tasks",
                deps_file.to_str().unwrap(),
            ]),
            vec![],
        ),
    ]
}

#[test]
fn malformed_ids_are_refused_with_exit_2_by_every_command() {
    let env = TestEnv::new();
    outside(&env);
    env.create("fine", &["--id", "ok"]);
    let c = env.claim("a", &["ok"]);
    assert_eq!(c.token, 1);
    let mut f = Vec::new();
    for bad in bad_ids() {
        let tasks_file = env.root().join("bad-id.json");
        let deps_file = env.root().join("bad-dep.json");
        std::fs::write(
            &tasks_file,
            json!([{"id": bad, "description": "d", "command": "true"}]).to_string(),
        )
        .unwrap();
        std::fs::write(
            &deps_file,
            json!([{"id": "fine2", "description": "d", "command": "true", "dependencies": [bad]}])
                .to_string(),
        )
        .unwrap();
        let before = tree(env.root(), &[]);
        for (args, envs) in id_commands(&bad, &tasks_file, &deps_file) {
            let mut cmd = env.std_cmd();
            cmd.args(&args).envs(envs.iter().map(|(k, v)| (k, v)));
            match try_output_within(cmd, Duration::from_secs(10)) {
                Err(e) => f.push(e),
                Ok(out) if out.status.code() != Some(2) => f.push(format!(
                    "{bad:?}: {args:?} {envs:?}: {}, want 2\n{}",
                    how(&out),
                    streams(&out)
                )),
                Ok(_) => {}
            }
        }
        let diff = tree_diff(&before, &tree(env.root(), &[]));
        if !diff.is_empty() {
            f.push(format!("{bad:?}: refused commands changed files:\n{diff}"));
        }
    }
    // Control: the same argv with a well-formed (unknown) id is not a usage
    // error, so the 2s above come from the id check, not from a typo here.
    let control = TestEnv::new();
    control.create("fine", &["--id", "ok"]);
    let tasks_file = control.root().join("good-id.json");
    let deps_file = control.root().join("good-dep.json");
    std::fs::write(
        &tasks_file,
        json!([{"id": "good", "description": "d", "command": "true"}]).to_string(),
    )
    .unwrap();
    std::fs::write(
        &deps_file,
        json!([{"id": "good2", "description": "d", "command": "true", "dependencies": ["ok"]}])
            .to_string(),
    )
    .unwrap();
    control.ok(&["cancel", "ok"]);
    for (args, envs) in id_commands("nosuch-id", &tasks_file, &deps_file) {
        let mut cmd = control.std_cmd();
        cmd.args(&args).envs(envs.iter().map(|(k, v)| (k, v)));
        match try_output_within(cmd, Duration::from_secs(10)) {
            Err(e) => f.push(e),
            Ok(out) if out.status.code() == Some(2) => f.push(format!(
                "control {args:?} {envs:?} with a good id also exits 2: the test is wrong\n{}",
                streams(&out)
            )),
            Ok(_) => {}
        }
    }
    // The raw forms, where clap sees an option: still a usage error.
    for args in [
        &["show", "-dash"][..],
        &["cancel", "-x"],
        &["heartbeat", "-x", "--token", "1"],
    ] {
        let out = env.run(args);
        if out.status.code() != Some(2) {
            f.push(format!("{args:?}: {}, want 2", how(&out)));
        }
    }
    finish("malformed ids", f);
}

/// Regression test (the bug is fixed; it was in minor; src/cli/observe.rs `events`): `events --task ID` and
/// `events --agent ID` take ids but never validate them: `events
/// --task ../x` exits 0 with no output instead of 2. Spec 8: every id that
/// comes from the command line is checked; a bad one is `invalid` (exit 2).
#[test]
fn events_filters_refuse_malformed_ids() {
    let env = TestEnv::new();
    let mut f = Vec::new();
    for bad in ["../x", "a/b", ".hidden", "-dash"] {
        for opt in ["--task", "--agent"] {
            let arg = format!("{opt}={bad}");
            let out = env.run(&["events", &arg]);
            if out.status.code() != Some(2) {
                f.push(format!("events {arg}: {}, want 2", how(&out)));
            }
        }
    }
    finish("events filters", f);
}

/// NUL cannot travel through argv, so the library and a tasks file carry it.
#[test]
fn nul_in_ids_is_refused_by_the_library_and_in_tasks_files() {
    let env = TestEnv::new();
    env.create("fine", &["--id", "ok"]);
    let before = tree(env.root(), &[]);
    let c = Coordination::open(env.dir()).unwrap();
    let nul = "ok\0../x";
    let mut f = Vec::new();
    let mut expect2 = |what: &str, r: Result<(), orchestrate::Error>| match r {
        Err(e) if e.exit_code() == 2 => {}
        Err(e) => f.push(format!("{what}: {e} (exit {}), want 2", e.exit_code())),
        Ok(()) => f.push(format!("{what}: accepted")),
    };
    expect2("get", c.get(nul).map(drop));
    expect2(
        "claim named",
        c.claim(&ClaimRequest {
            agent: "a".into(),
            task_id: Some(nul.into()),
            ..Default::default()
        })
        .map(drop),
    );
    expect2(
        "claim agent",
        c.claim(&ClaimRequest {
            agent: nul.into(),
            ..Default::default()
        })
        .map(drop),
    );
    expect2("heartbeat", c.heartbeat(nul, 1, None).map(drop));
    expect2("complete", c.complete(nul, 1, None).map(drop));
    expect2("fail", c.fail(nul, 1, "e").map(drop));
    expect2("release", c.release(nul, 1).map(drop));
    expect2("cancel", c.cancel(nul, None).map(drop));
    expect2("retry", c.retry(nul).map(drop));
    expect2("held_by", c.held_by(nul).map(drop));
    expect2("agent", c.agent(nul).map(drop));
    expect2(
        "update_agent",
        c.update_agent(nul, "test", |_| {}).map(drop),
    );
    expect2(
        "create id",
        c.create(NewTask {
            id: Some(nul.into()),
            description: "d".into(),
            ..Default::default()
        })
        .map(drop),
    );
    expect2(
        "create dependency",
        c.create(NewTask {
            description: "d".into(),
            dependencies: vec![nul.into()],
            ..Default::default()
        })
        .map(drop),
    );
    let file = env.root().join("nul.json");
    std::fs::write(
        &file,
        br#"[{"id":"a\u0000b","description":"d","command":"true"}]"#,
    )
    .unwrap();
    let before_file = tree(env.root(), &[]);
    let out = env.run(&[
        "run",
        "g",
        "--agent",
        "shell",
        "--no-plan",
        "-q",
        "--tasks",
        file.to_str().unwrap(),
    ]);
    if out.status.code() != Some(2) {
        f.push(format!(
            "tasks file with NUL in an id: {}, want 2\n{}",
            how(&out),
            streams(&out)
        ));
    }
    let diff = tree_diff(&before_file, &tree(env.root(), &[]));
    if !diff.is_empty() {
        f.push(format!("a refused tasks file changed files:\n{diff}"));
    }
    let mut after = tree(env.root(), &[]);
    after.remove("nul.json");
    let diff = tree_diff(&before, &after);
    if !diff.is_empty() {
        f.push(format!("refused calls changed files:\n{diff}"));
    }
    finish("NUL in ids", f);
}

// ----------------------------------------------------------- huge files

/// A sparse task file of 3 GiB (a few blocks on disk) must be refused as
/// bad data from its size, without being read (the commands run with a
/// 1 GiB address-space limit, and must answer within 3 s), and must not
/// stop the rest.
#[test]
fn huge_sparse_files_are_refused_quickly_without_being_read() {
    let env = TestEnv::new();
    env.create("fine", &["--id", "ok"]);
    let huge = env.task_path("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let mut f = Vec::new();
    let timed = |args: &[&str], codes: &[i32], f: &mut Vec<String>| -> Option<Output> {
        let start = Instant::now();
        let r = run_small_memory(&env, &strings(args));
        let took = start.elapsed();
        match r {
            Err(e) => {
                f.push(e);
                None
            }
            Ok(out) => {
                if !out.status.code().is_some_and(|c| codes.contains(&c)) {
                    f.push(format!(
                        "{args:?}: {}, want {codes:?}\n{}",
                        how(&out),
                        streams(&out)
                    ));
                }
                if took > Duration::from_secs(3) {
                    f.push(format!("{args:?} took {took:?}: it read the file"));
                }
                Some(out)
            }
        }
    };
    for (args, codes) in [
        (&["show", "huge"][..], &[65][..]),
        (&["cancel", "huge"], &[65]),
        (&["claim", "--agent", "a", "huge"], &[65]),
        (&["create-task", "y", "-d", "huge"], &[65]),
        (&["create-task", "y", "--id", "huge"], &[4, 65]),
        (&["status"], &[0]),
        (&["reindex"], &[0]),
    ] {
        timed(args, codes, &mut f);
    }
    if let Some(out) = timed(&["list", "--json"], &[0], &mut f) {
        if !String::from_utf8_lossy(&out.stdout).contains("huge.json") {
            f.push("list does not report huge.json".into());
        }
    }
    // The other task stays usable.
    if let Some(out) = timed(&["claim", "--agent", "a", "--json"], &[0], &mut f) {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["task"]["id"] != "ok" {
            f.push(format!("claim took {}", v["task"]["id"]));
        }
        timed(&["complete", "ok", "--token", "1"], &[0], &mut f);
    }
    if std::fs::metadata(&huge).map(|m| m.len()).ok() != Some(3 << 30) {
        f.push("the huge file was changed".into());
    }
    // The same size as config.json and as a batch intent record.
    for (at, args, codes) in [
        ("config.json", &["list"][..], &[65][..]),
        (
            "tasks/.batch-intent.json",
            &["create-task", "x", "--id", "x"],
            &[65, 0],
        ),
    ] {
        let env2 = TestEnv::new();
        env2.create("fine", &["--id", "ok"]);
        let p = env2.dir().join(at);
        std::fs::File::create(&p).unwrap().set_len(3 << 30).unwrap();
        let start = Instant::now();
        match run_small_memory(&env2, &strings(args)) {
            Err(e) => f.push(e),
            Ok(out) => {
                if !out.status.code().is_some_and(|c| codes.contains(&c)) {
                    f.push(format!(
                        "huge {at}: {args:?}: {}, want {codes:?}\n{}",
                        how(&out),
                        streams(&out)
                    ));
                }
            }
        }
        if start.elapsed() > Duration::from_secs(3) {
            f.push(format!("huge {at}: {args:?} took {:?}", start.elapsed()));
        }
        if !env2.task_path("ok").is_file() {
            f.push(format!("huge {at}: task ok is gone"));
        }
    }
    finish("huge sparse files", f);
}

// ------------------------------------------------------------ permissions

/// Files and directories the tool creates are never world-writable, even
/// under `umask 0` (a world-writable `tasks/` or task file lets any local
/// user forge tasks, tokens and results).
#[test]
fn nothing_created_is_world_writable_whatever_the_umask() {
    let env = TestEnv::uninit();
    let run_umask0 = |args: &[&str]| {
        let mut c = env.std_cmd();
        c.args(args);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = try_output_within(c, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 3),
            "{args:?}: {}\n{}",
            how(&out),
            streams(&out)
        );
    };
    run_umask0(&["init", "g"]);
    run_umask0(&["create-task", "x", "--id", "t", "--command", "echo hi"]);
    run_umask0(&[
        "create-task",
        "y",
        "--id",
        "d",
        "-d",
        "t",
        "--command",
        "echo hi",
    ]);
    run_umask0(&[
        "work",
        "--agent",
        "w",
        "--adapter",
        "shell",
        "--until-empty",
        "-q",
    ]);
    run_umask0(&["create-task", "z", "--id", "z"]);
    run_umask0(&["claim", "--agent", "a", "z"]);
    run_umask0(&["reindex"]);
    let t = tree(env.dir(), &[]);
    assert!(
        t.contains_key("logs/t.1.log"),
        "no log written: {:?}",
        t.keys()
    );
    let bad: Vec<String> = t
        .iter()
        .filter_map(|(k, e)| match e {
            Entry::File(m, _) | Entry::Dir(m) | Entry::Other(m) if m & 0o002 != 0 => {
                Some(format!("{k} {m:o}"))
            }
            _ => None,
        })
        .collect();
    let root_mode = std::fs::metadata(env.dir()).unwrap().permissions().mode() & 0o7777;
    assert!(
        bad.is_empty() && root_mode & 0o002 == 0,
        "world-writable under umask 0 (.coordination itself {root_mode:o}):\n{}",
        bad.join("\n")
    );
}

/// Issue 11 (6): user-named input files are opened without blocking and
/// must be regular: a FIFO or `/dev/zero` is refused at once (exit 2), and
/// `-o` never replaces a device or FIFO with a regular file.
#[test]
fn fifos_devices_and_endless_inputs_are_refused_at_once() {
    let env = TestEnv::new();
    let fifo = env.root().join("fifo.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let f = fifo.to_str().unwrap();
    for args in [
        vec!["create-task", "x", "-c", f],
        vec!["create-task", "x", "-c", "/dev/zero"],
        vec!["run", "g", "--no-plan", "--adapter", "shell", "--tasks", f],
        vec![
            "run",
            "g",
            "--no-plan",
            "--adapter",
            "shell",
            "--tasks",
            "/dev/zero",
        ],
        vec!["from-config", f],
    ] {
        let start = std::time::Instant::now();
        let out = crate::harness::output_within(
            {
                let mut c = env.std_cmd();
                c.args(&args);
                c
            },
            std::time::Duration::from_secs(20),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{args:?} took {:?}",
            start.elapsed()
        );
    }
    // A FIFO as the Claude settings file.
    std::fs::create_dir_all(env.root().join(".claude")).unwrap();
    let settings = env.root().join(".claude/settings.json");
    let c = std::ffi::CString::new(settings.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let out = crate::harness::output_within(
        {
            let mut c = env.std_cmd();
            c.args(["hooks", "install"]);
            c
        },
        std::time::Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -o onto a character device (as root: a copy of /dev/null).
    if crate::harness::is_root() {
        let dev = env.root().join("null");
        let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
        // SAFETY: mknod of a character device 1:3 in our temp dir.
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        let tasks = env.root().join("t.json");
        std::fs::write(
            &tasks,
            br#"[{"id": "a", "description": "a", "command": "true"}]"#,
        )
        .unwrap();
        let out = env.run(&["init", "g", "-o", dev.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0));
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(&dev)
                .unwrap()
                .file_type()
                .is_char_device(),
            "the device was replaced"
        );
    }
}

/// The coordination directory itself may be a symlink to a real directory
/// (shared storage; spec 2): every command works through it, found by the
/// upward search or named by `--dir` (with or without a trailing slash),
/// while symlinks *inside* it stay refused.
#[test]
fn a_symlinked_coordination_directory_works() {
    let env = TestEnv::uninit();
    let real = env.root().join("storage/coord");
    std::fs::create_dir_all(&real).unwrap();
    symlink("storage/coord", env.dir()).unwrap();
    let run = |args: &[&str], dir: Option<&str>| {
        let mut c = Command::new(crate::support::bin());
        c.current_dir(env.root())
            .env_remove("COORDINATION_DIR")
            .env_remove("ORCHESTRATE_SAFE_DIRS")
            .env_remove("ORCHESTRATE_AGENT_ID");
        if let Some(d) = dir {
            c.arg("--dir").arg(d);
        }
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} (--dir {dir:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["init", "goal"], None);
    assert!(real.join("config.json").is_file() && real.join("events.jsonl").is_file());
    for dir in [None, Some(".coordination"), Some(".coordination/")] {
        let id = run(&["create-task", "through the link"], dir);
        let id = id.trim();
        let claim: serde_json::Value =
            serde_json::from_str(&run(&["claim", "--agent", "a", "--json", id], dir)).unwrap();
        let token = claim["task"]["fencing_token"].to_string();
        run(&["complete", id, "--token", &token], dir);
        run(&["list"], dir);
        run(&["doctor"], dir);
        run(&["reindex"], dir);
    }
    assert!(std::fs::symlink_metadata(env.dir())
        .unwrap()
        .file_type()
        .is_symlink());
}

/// From the break-it trial: a symlinked `index/ready/05` (into `tasks/`)
/// does not make the first claim say "nothing ready" nor the first create
/// fail; `doctor` without `--fix` reports it and changes nothing; `--fix`
/// repairs it.
#[test]
fn a_symlinked_ready_directory_is_repaired_on_first_use() {
    let plant = |env: &TestEnv| {
        let p = env.dir().join("index/ready/05");
        let _ = std::fs::remove_dir_all(&p);
        symlink("../../tasks", &p).unwrap();
        p
    };
    // The first claim finds the task.
    let env = TestEnv::new();
    let id = env.create("one", &[]);
    plant(&env);
    assert_eq!(env.claim("a", &[]).id, id);
    // The first create succeeds.
    let env = TestEnv::new();
    env.create("one", &[]);
    plant(&env);
    env.create("two", &[]);
    assert!(std::fs::symlink_metadata(env.dir().join("index/ready/05"))
        .unwrap()
        .is_dir());
    // doctor reports and changes nothing; --fix repairs.
    let env = TestEnv::new();
    env.create("one", &[]);
    let p = plant(&env);
    let snap = env.snapshot();
    let v = env.json(&["doctor", "--json"], 65);
    assert!(v.to_string().contains("index/ready/05"), "{v}");
    assert_eq!(env.snapshot(), snap, "doctor without --fix changed files");
    assert!(std::fs::symlink_metadata(&p)
        .unwrap()
        .file_type()
        .is_symlink());
    env.ok(&["doctor", "--fix"]);
    env.ok(&["doctor"]);
}
