//! A full disk and a directory the caller may not write (`spec/PROTOCOL.md`
//! sections 4.2 and 12): every mutating command fails with exit 74 and a
//! clear message, and leaves the previous state byte for byte, with no
//! stray temp file.
//!
//! A full disk is simulated with a file-size limit on the child
//! (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored so that a write past the limit
//! fails with `EFBIG` instead of killing the process): the lock file and
//! small writes get through, a task file with a 100 KiB description does
//! not. "Permission denied" comes from running the child as `nobody`
//! against a root-owned directory (root ignores file modes, so chmod alone
//! proves nothing).

use crate::harness::{check_readers, how, is_root, output_within, streams, tree, tree_diff};
use crate::support::TestEnv;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// The file-size limit: above every small file of a fresh directory
/// (config, lock, index, a few events), below a 100 KiB task file.
const LIMIT: u64 = 4096;

fn big_description() -> String {
    "x".repeat(100 * 1024)
}

/// A command whose child cannot write past [`LIMIT`] bytes of any file.
fn limited(env: &TestEnv, args: &[String]) -> Command {
    let mut c = env.std_cmd();
    c.args(args);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    c
}

/// A command whose child runs as `nobody` (uid and gid 65534, no
/// supplementary groups).
fn as_nobody(env: &TestEnv, args: &[String]) -> Command {
    let mut c = env.std_cmd();
    c.args(args);
    crate::harness::run_as(&mut c, 65534);
    c
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The mutating commands, each with a setup that makes it write the big
/// task file `big`. Returns (name, setup) pairs; a setup returns the args.
type Setup = fn(&TestEnv) -> Vec<String>;

fn claimed_big(env: &TestEnv) {
    env.create(&big_description(), &["--id", "big"]);
    env.claim("a", &["big", "--lease", "5m"]);
}

fn mutations() -> Vec<(&'static str, Setup)> {
    vec![
        ("create-task", |_| {
            strings(&["create-task", &big_description(), "--id", "big"])
        }),
        ("claim", |env| {
            env.create(&big_description(), &["--id", "big"]);
            strings(&["claim", "--agent", "a", "--json"])
        }),
        ("heartbeat", |env| {
            claimed_big(env);
            strings(&["heartbeat", "big", "--token", "1", "--lease", "1h"])
        }),
        ("complete", |env| {
            claimed_big(env);
            strings(&["complete", "big", "--token", "1", "--result", "done"])
        }),
        ("fail", |env| {
            claimed_big(env);
            strings(&["fail", "big", "--token", "1", "--error", "boom"])
        }),
        ("release", |env| {
            claimed_big(env);
            strings(&["release", "big", "--token", "1"])
        }),
        ("cancel", |env| {
            env.create(&big_description(), &["--id", "big"]);
            strings(&["cancel", "big"])
        }),
        ("retry", |env| {
            env.create(&big_description(), &["--id", "big"]);
            env.ok(&["cancel", "big"]);
            strings(&["retry", "big"])
        }),
        ("reap", |env| {
            env.create(&big_description(), &["--id", "big"]);
            env.claim("a", &["big", "--lease", "50ms"]);
            std::thread::sleep(Duration::from_millis(80));
            strings(&["reap"])
        }),
        ("batch create (run --tasks)", |env| {
            // The first task file is small and gets written; the second
            // fails: the first must be removed again, and the intent.
            let file = env.root().join("batch.json");
            let tasks = json!([
                {"id": "small1", "description": "small", "command": "true"},
                {"id": "big", "description": big_description(), "command": "true"},
                {"id": "small2", "description": "small", "command": "true"},
            ]);
            std::fs::write(&file, serde_json::to_vec(&tasks).unwrap()).unwrap();
            strings(&[
                "run",
                "g",
                "--agent",
                "shell",
                "--no-plan",
                "-q",
                "--tasks",
                file.to_str().unwrap(),
            ])
        }),
    ]
}

/// Checks a failed mutation: exit 74, a one-line error naming the cause,
/// and `tasks/` plus `config.json` exactly as before.
fn expect_io_failure(
    env: &TestEnv,
    out: &std::process::Output,
    before: &std::collections::BTreeMap<String, Vec<u8>>,
    cause: &[&str],
) -> Result<(), String> {
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(74) {
        return Err(format!("{}, want exit 74\n{}", how(out), streams(out)));
    }
    if !err.contains("orchestrate: error") || err.contains("panicked") {
        return Err(format!("not a clear error message:\n{err}"));
    }
    if !cause.iter().any(|c| err.contains(c)) {
        return Err(format!(
            "the message does not name the cause ({cause:?}):\n{err}"
        ));
    }
    let after = env.snapshot();
    if &after != before {
        let keys = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
            m.iter()
                .map(|(k, v)| format!("{k} ({} bytes)", v.len()))
                .collect::<Vec<_>>()
        };
        return Err(format!(
            "the directory changed:\nbefore {:?}\nafter  {:?}",
            keys(before),
            keys(&after)
        ));
    }
    check_readers(env).map_err(|e| format!("reader afterwards: {e}"))?;
    Ok(())
}

#[test]
fn disk_full_fails_every_mutation_with_74_and_changes_nothing() {
    let mut failures = Vec::new();
    for (name, setup) in mutations() {
        let env = TestEnv::new();
        let args = setup(&env);
        let before = env.snapshot();
        let out = output_within(limited(&env, &args), Duration::from_secs(30));
        let r = expect_io_failure(&env, &out, &before, &["File too large", "os error 27"])
            .and_then(|()| {
                // Nothing was left half-done: the same command works once
                // there is room.
                let mut c = env.std_cmd();
                c.args(&args);
                let out = output_within(c, Duration::from_secs(30));
                match out.status.code() {
                    Some(0) => Ok(()),
                    _ => Err(format!(
                        "the same command without the limit: {}\n{}",
                        how(&out),
                        streams(&out)
                    )),
                }
            });
        if let Err(e) = r {
            failures.push(format!("[{name}] {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The index is written before the task file (superset rule): a full disk
/// there fails the claim with 74 before the task changes.
#[test]
fn disk_full_while_updating_the_index_changes_no_task() {
    let env = TestEnv::new();
    env.create("small", &["--id", "t"]);
    // Junk lines are allowed in index files (they are ignored), so a large
    // leases file is valid; appending to it needs room.
    let leases = env.dir().join("index/leases");
    std::fs::write(&leases, "junk\n".repeat(1000)).unwrap();
    let before = env.snapshot();
    let out = output_within(
        limited(&env, &strings(&["claim", "--agent", "a", "--json"])),
        Duration::from_secs(30),
    );
    expect_io_failure(&env, &out, &before, &["File too large", "os error 27"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(env.task_json("t")["status"], "pending");
    assert_eq!(env.claim("a", &[]).id, "t");
}

/// The event log is history: a full disk there must not fail a mutation
/// whose task files were written (spec 3.4), and says so on stderr.
#[test]
fn disk_full_on_the_event_log_does_not_fail_the_mutation() {
    let env = TestEnv::new();
    let log = env.dir().join("events.jsonl");
    let filler =
        json!({"ts": "2026-01-01T00:00:00.000Z", "event": "padding", "x": "y".repeat(200)});
    let mut text = std::fs::read_to_string(&log).unwrap();
    for _ in 0..30 {
        text.push_str(&filler.to_string());
        text.push('\n');
    }
    std::fs::write(&log, &text).unwrap();
    let out = output_within(
        limited(&env, &strings(&["create-task", "small", "--id", "t"])),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", streams(&out));
    assert_eq!(env.task_json("t")["status"], "pending");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("events.jsonl"),
        "no warning about the lost event:\n{}",
        streams(&out)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    check_readers(&env).unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------ permission denied

/// A populated directory, root-owned, with the temp root opened to others
/// (tempfile makes it 0700) so that `nobody` can reach it. Tasks: `p`
/// pending, `c` claimed by `a` with token 1, `x` cancelled.
fn root_owned_env() -> TestEnv {
    let env = TestEnv::new();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.create("pending", &["--id", "p"]);
    env.create("claimed", &["--id", "c"]);
    env.create("cancelled", &["--id", "x"]);
    env.claim("a", &["c", "--lease", "1h"]);
    env.ok(&["cancel", "x"]);
    env
}

fn read_only_mutations(env: &TestEnv) -> Vec<Vec<String>> {
    let file = env.root().join("batch.json");
    std::fs::write(
        &file,
        br#"[{"id":"n1","description":"a","command":"true"},{"id":"n2","description":"b","command":"true"}]"#,
    )
    .unwrap();
    vec![
        strings(&["create-task", "new", "--id", "new"]),
        strings(&["claim", "--agent", "b"]),
        strings(&["heartbeat", "c", "--token", "1"]),
        strings(&["complete", "c", "--token", "1"]),
        strings(&["fail", "c", "--token", "1", "--error", "e"]),
        strings(&["release", "c", "--token", "1"]),
        strings(&["cancel", "p"]),
        strings(&["retry", "x"]),
        strings(&["reap"]),
        strings(&["reindex"]),
        strings(&[
            "run",
            "g",
            "--agent",
            "shell",
            "--no-plan",
            "-q",
            "--tasks",
            file.to_str().unwrap(),
        ]),
    ]
}

fn run_read_only_cases(env: &TestEnv, what: &str) {
    let coord = env.dir().to_path_buf();
    let mut failures = Vec::new();
    // Readers need no write access.
    for args in [
        strings(&["list", "--json"]),
        strings(&["show", "c"]),
        strings(&["status"]),
        strings(&["events"]),
    ] {
        let out = output_within(as_nobody(env, &args), Duration::from_secs(30));
        if out.status.code() != Some(0) {
            failures.push(format!(
                "[{what}] reader {args:?}: {}\n{}",
                how(&out),
                streams(&out)
            ));
        }
    }
    for args in read_only_mutations(env) {
        let before = tree(&coord, &[]);
        let out = output_within(as_nobody(env, &args), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(74) {
            failures.push(format!(
                "[{what}] {args:?}: {}, want 74\n{}",
                how(&out),
                streams(&out)
            ));
        } else if !err.contains("Permission denied") || err.contains("panicked") {
            failures.push(format!("[{what}] {args:?}: unclear message:\n{err}"));
        }
        let diff = tree_diff(&before, &tree(&coord, &[]));
        if !diff.is_empty() {
            failures.push(format!("[{what}] {args:?} changed the directory:\n{diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn read_only_directory_fails_every_mutation_with_74_and_changes_nothing() {
    if !is_root() {
        eprintln!("SKIPPED read_only_directory_fails_every_mutation_with_74_and_changes_nothing: needs root to switch to the user nobody");
        return;
    }
    let env = root_owned_env();
    run_read_only_cases(&env, "root-owned directory");
}

/// The same, but `nobody` may take the lock and write the index: the
/// mutation gets as far as the task file write in `tasks/`, which it may
/// not write. Nothing may change in `tasks/`, and no temp file is left.
#[test]
fn unwritable_tasks_directory_fails_with_74_at_the_task_write() {
    if !is_root() {
        eprintln!("SKIPPED unwritable_tasks_directory_fails_with_74_at_the_task_write: needs root to switch to the user nobody");
        return;
    }
    let env = root_owned_env();
    let chown =
        |p: &std::path::Path| std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
    chown(&env.dir().join("lock"));
    // The clock file every mutation writes under the lock (spec 6.6).
    chown(&env.dir().join("clock"));
    // The commit log every durable mutation appends to (spec 4.8).
    chown(&env.dir().join("commit.log"));
    fn walk(p: &std::path::Path, f: &dyn Fn(&std::path::Path)) {
        f(p);
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), f);
            }
        }
    }
    // Only the index: `.coordination/` itself stays root's, so a rebuild
    // (which renames index/) cannot happen either.
    walk(&env.dir().join("index"), &chown);
    // And the temp directory (spec 4.2): the write gets as far as the
    // rename into `tasks/`.
    std::fs::create_dir_all(env.dir().join(".tmp")).unwrap();
    walk(&env.dir().join(".tmp"), &chown);
    let mut failures = Vec::new();
    let mut first = true;
    for args in read_only_mutations(&env) {
        // Nothing to write for these two here (no expired lease; a
        // rebuild is a rename in the root-owned `.coordination/`).
        if args[0] == "reindex" || args[0] == "reap" {
            continue;
        }
        let before = env.snapshot();
        let out = output_within(as_nobody(&env, &args), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        // A rewrite refused after its commit record is taken back, but the
        // index entries it removed are gone, so the next mutation rebuilds
        // the index (spec 4.8), which needs the root-owned directory.
        let at_rebuild = !first && err.contains(".index-rebuild");
        if let Err(e) = expect_io_failure(&env, &out, &before, &["Permission denied"]) {
            failures.push(format!("{args:?}: {e}"));
        } else if !err.contains("tasks/") && !at_rebuild {
            failures.push(format!(
                "{args:?}: did not fail at the task write in tasks/:\n{}",
                streams(&out)
            ));
        }
        if args[0] != "create-task" {
            first = false;
        }
        let tasks: Vec<Value> = ["p", "c", "x"].iter().map(|id| env.task_json(id)).collect();
        if tasks[0]["status"] != "pending"
            || tasks[1]["status"] != "claimed"
            || tasks[2]["status"] != "cancelled"
        {
            failures.push(format!("{args:?}: tasks changed: {tasks:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Regression test (the bug is fixed; it was in src/error.rs `Error::Io` with src/cli/mod.rs printing `{e:#}`): the
/// OS error is printed twice, because `Error::Io`'s message already ends
/// with `{source}` and the source is also in the chain that `{:#}` walks:
/// `orchestrate: error: write `.../tasks/.tmp-write`: File too large (os
/// error 27): File too large (os error 27)`. The same doubling shows for
/// "Permission denied" and for every other I/O error.
#[test]
fn io_error_message_states_the_cause_once() {
    let env = TestEnv::new();
    let before = env.snapshot();
    let out = output_within(
        limited(
            &env,
            &strings(&["create-task", &big_description(), "--id", "big"]),
        ),
        Duration::from_secs(30),
    );
    expect_io_failure(&env, &out, &before, &["File too large"]).unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("File too large").count(),
        1,
        "the cause is repeated:\n{err}"
    );
}
