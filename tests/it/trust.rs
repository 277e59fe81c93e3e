//! Safe discovery (issue 11, item 2; `spec` 4.7): a `.coordination/` of
//! another user, or one that everyone can write, is refused, with the
//! reason and the override named, so nobody's queued commands run as us.
//! The victim runs as uid 65534 (`nobody`); needs root to switch users.

use crate::harness::is_root;
use crate::support::{bin, TestEnv};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `orchestrate ARGS` run as `uid` (gid the same, no other groups) in `cwd`,
/// with no `--dir`: the directory is found by the upward search.
fn as_user(uid: u32, cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd)
        .args(args)
        .env_remove("COORDINATION_DIR")
        .env_remove("ORCHESTRATE_SAFE_DIRS")
        .env_remove("ORCHESTRATE_AGENT_ID");
    // SAFETY: setgroups, setgid and setuid are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// A queue planted by an attacker, with a task that would leave a marker
/// if a victim's worker ran it; and a project folder below it.
fn planted(mode: u32, owner: u32) -> (TestEnv, std::path::PathBuf, std::path::PathBuf) {
    let env = TestEnv::new();
    let marker = env.root().join("pwned");
    env.ok(&[
        "create-task",
        "innocent",
        "--id",
        "evil",
        "--command",
        &format!("id > {}", marker.display()),
    ]);
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let project = env.root().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(env.dir(), Some(owner), Some(owner)).unwrap();
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(mode)).unwrap();
    (env, project, marker)
}

#[test]
fn another_users_or_a_world_writable_queue_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED another_users_or_a_world_writable_queue_is_refused: needs root to switch users");
        return;
    }
    for (mode, owner, why) in [
        (0o777, 0, "writable by every user"),
        (0o755, 65533, "belongs to user 65533"),
    ] {
        let (env, project, marker) = planted(mode, owner);
        for args in [
            &[
                "work",
                "--agent",
                "victim",
                "--adapter",
                "shell",
                "--until-empty",
            ][..],
            &["list"][..],
            &["claim", "--agent", "victim"][..],
        ] {
            let out = as_user(65534, &project, args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(74), "{args:?}: {stderr}");
            assert!(stderr.contains(why), "{args:?}: {stderr}");
            assert!(
                stderr.contains("ORCHESTRATE_SAFE_DIRS"),
                "the override is named: {stderr}"
            );
        }
        assert!(!marker.exists(), "the planted command ran as the victim");
        assert_eq!(env.task_json("evil")["status"], "pending");
        // A hook in that project does not hand the task over either.
        let input = format!(r#"{{"session_id":"s1","cwd":"{}"}}"#, project.display());
        let mut hook = as_user(65534, &project, &["hook", "stop"]);
        let mut child = hook
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "hooks fail non-blocking");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The override trusts it explicitly (read-only use here).
        let out = as_user(65534, &project, &["list"])
            .env("ORCHESTRATE_SAFE_DIRS", env.dir())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_group_shared_queue_of_my_group_is_trusted() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_group_shared_queue_of_my_group_is_trusted: needs root to switch users"
        );
        return;
    }
    let (env, project, _) = planted(0o2775, 65533);
    std::os::unix::fs::chown(env.dir(), Some(65533), Some(65534)).unwrap();
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let out = as_user(65534, &project, &["list"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
