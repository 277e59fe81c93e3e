//! Safe discovery (issue 11, item 2; `spec` 4.7): a `.coordination/` of
//! another user, or one that everyone can write, is refused, with the
//! reason and the override named, so nobody's queued commands run as us.
//! The victim runs as uid 65534 (`nobody`); needs root to switch users.

use crate::harness::is_root;
use crate::support::{bin, TestEnv};
use std::os::unix::fs::PermissionsExt;
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
    crate::harness::run_as(&mut c, uid);
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

/// Issue 11 (5): another user of a shared `tasks/` swaps the fixed temp
/// name of earlier versions (`tasks/.tmp-write`, still cleaned at every
/// mutation) for a symlink in a loop while the owner heartbeats; the temp
/// files themselves now have unpredictable names in `.tmp/` (spec 4.2). No success is reported
/// for a write that did not land: after every heartbeat that exits 0 the
/// task file is a regular file holding that heartbeat's lease, and the
/// target of the attacker's link is untouched.
#[test]
fn a_swapped_temp_file_never_lands_as_the_task_file() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_swapped_temp_file_never_lands_as_the_task_file: needs root to switch users"
        );
        return;
    }
    let env = TestEnv::new();
    env.ok(&["create-task", "t", "--id", "t"]);
    let claim = env.claim("victim", &[]);
    let canary = env.root().join("canary");
    std::fs::write(&canary, b"alice's file").unwrap();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.tasks_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let tmp = env.tasks_dir().join(".tmp-write");
    let attack = format!(
        "while :; do ln -sfn {} {} 2>/dev/null; done",
        canary.display(),
        tmp.display()
    );
    let mut attacker = Command::new("sh");
    attacker.args(["-c", &attack]);
    crate::harness::run_as(&mut attacker, 65534);
    attacker
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    /// Kills the attacker also when an assertion fails.
    struct Killer(std::process::Child);
    impl Drop for Killer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let attacker = Killer(attacker.spawn().unwrap());
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..200 {
        let out = env.run(&["heartbeat", "t", "--token", &claim.token_arg(), "--json"]);
        let file = std::fs::symlink_metadata(env.task_path("t")).unwrap();
        if out.status.success() {
            ok += 1;
            assert!(
                file.file_type().is_file(),
                "a reported heartbeat left tasks/t.json a symlink"
            );
            let reported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let on_disk = env.task_json("t");
            assert_eq!(
                on_disk["lease_expires_at"], reported["lease_expires_at"],
                "the reported write is not on disk"
            );
        } else {
            refused += 1;
        }
    }
    drop(attacker);
    assert_eq!(std::fs::read(&canary).unwrap(), b"alice's file");
    assert!(ok > 0, "every heartbeat was refused");
    eprintln!("{ok} heartbeats landed, {refused} refused, 0 attacker wins");
}

/// Issue 11 (4): a log path swapped for a symlink while the task runs is
/// not read back: the output tail comes from the descriptor the worker
/// created, so a secret behind the link never reaches the task's result.
#[test]
fn a_swapped_log_path_is_not_read_back() {
    let env = TestEnv::new();
    let secret = env.root().join("id_ed25519");
    std::fs::write(&secret, b"-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
    let cmd = format!(
        "echo mine; L=\"$COORDINATION_DIR/logs/$ORCHESTRATE_TASK_ID.$ORCHESTRATE_ATTEMPT.log\"; rm -f \"$L\"; ln -s {} \"$L\"",
        secret.display()
    );
    env.ok(&["create-task", "t", "--id", "t", "--command", &cmd]);
    env.ok(&[
        "work",
        "--agent",
        "w",
        "--adapter",
        "shell",
        "--until-empty",
    ]);
    let t = env.task_json("t");
    let output = t["result"]["output"].as_str().unwrap();
    assert!(output.contains("mine"), "{t:#}");
    assert!(
        !output.contains("PRIVATE KEY"),
        "the secret behind the swapped log leaked: {t:#}"
    );
}

/// Issue 11 (10): `init --private` keeps everything to its owner: every
/// directory 0700 and every file 0600, logs and results included.
#[test]
fn a_private_queue_is_readable_by_its_owner_only() {
    let env = TestEnv::uninit();
    env.ok(&["init", "g", "--private"]);
    env.ok(&[
        "create-task",
        "t",
        "--id",
        "t",
        "--command",
        "echo secret-output",
    ]);
    env.ok(&[
        "work",
        "--agent",
        "w",
        "--adapter",
        "shell",
        "--until-empty",
    ]);
    assert_eq!(env.task_json("t")["status"], "completed");
    let mut stack = vec![env.dir().to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                seen += 1;
                assert_eq!(md.permissions().mode() & 0o7777, 0o600, "{}", p.display());
            }
        }
    }
    assert!(seen >= 6, "only {seen} files checked");
}

/// A queue writable by a group the user is not in is refused even when the
/// user owns it: the group's members could have planted its tasks.
#[test]
fn a_queue_writable_by_a_foreign_group_is_refused() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_queue_writable_by_a_foreign_group_is_refused: needs root to switch users"
        );
        return;
    }
    for mode in [0o775, 0o2775] {
        let (env, project, marker) = planted(mode, 65534);
        std::os::unix::fs::chown(env.dir(), Some(65534), Some(100)).unwrap();
        std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(mode)).unwrap();
        let out = as_user(
            65534,
            &project,
            &[
                "work",
                "--agent",
                "v",
                "--adapter",
                "shell",
                "--until-empty",
            ],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{mode:o}: {stderr}");
        assert!(stderr.contains("writable by group 100"), "{stderr}");
        assert!(!marker.exists());
    }
}

/// Issue 11 (1): a directory swapped for a symlink in the middle of a
/// command. A task named `settings` sits in `tasks/`; the attacker swaps
/// `tasks/` for a symlink to the victim's own folder (holding a
/// `settings.json`) and back, in a loop, while the victim (uid 65534)
/// heartbeats the task 200 times. Every path below `.coordination/` is
/// resolved from the directory's handle without following symlinks, so
/// the victim's folder is never written: 0 wins.
#[test]
fn a_directory_swapped_for_a_symlink_is_never_written_through() {
    if !is_root() {
        eprintln!("SKIPPED a_directory_swapped_for_a_symlink_is_never_written_through: needs root to switch users");
        return;
    }
    let env = TestEnv::new();
    env.ok(&["create-task", "t", "--id", "settings"]);
    let home = env.root().join("home");
    std::fs::create_dir(&home).unwrap();
    let settings = home.join("settings.json");
    std::fs::write(&settings, b"{\"the victim's\": \"settings\"}\n").unwrap();
    for p in [env.root().to_path_buf(), home.clone()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let chown_r = |p: &std::path::Path| {
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    chown_r(env.dir());
    chown_r(&home);
    let claim = {
        let out = as_user(65534, env.root(), &["claim", "--agent", "victim", "--json"])
            .arg("--dir")
            .arg(env.dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::support::Claim::from_json(&serde_json::from_slice(&out.stdout).unwrap())
    };
    let d = env.dir().display().to_string();
    // The attacker (as in the issue) times the swap with inotify: right
    // after the victim has read `tasks/settings.json`, `tasks/` and a
    // symlink to the victim's folder are exchanged (renameat2
    // RENAME_EXCHANGE), and exchanged back 2 ms later.
    let attack = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
os.symlink(sys.argv[2], "tasks.evil")
fd = libc.inotify_init()
libc.inotify_add_watch(fd, b"tasks", 0x10)  # IN_CLOSE_NOWRITE
AT = -100
while True:
    if b"settings.json" in os.read(fd, 4096):
        libc.renameat2(AT, b"tasks", AT, b"tasks.evil", 2)  # RENAME_EXCHANGE
        time.sleep(0.002)
        libc.renameat2(AT, b"tasks", AT, b"tasks.evil", 2)
"#;
    let mut attacker = Command::new("python3");
    attacker
        .args(["-c", attack, &d])
        .arg(&home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    struct Killer(std::process::Child, String);
    impl Drop for Killer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            // Put tasks/ back whatever state the loop was killed in.
            let _ = Command::new("sh")
                .args(["-c", &format!("cd {} && if [ -L tasks ]; then rm tasks && mv -T tasks.evil tasks; else rm -f tasks.evil; fi", self.1)])
                .status();
        }
    }
    let attacker = Killer(attacker.spawn().unwrap(), d);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..200 {
        let out = as_user(
            65534,
            env.root(),
            &["heartbeat", "settings", "--token", &claim.token_arg()],
        )
        .arg("--dir")
        .arg(env.dir())
        .output()
        .unwrap();
        if out.status.success() {
            ok += 1;
        } else {
            if refused == 0 {
                eprintln!("first refusal: {}", String::from_utf8_lossy(&out.stderr));
            }
            refused += 1;
        }
    }
    drop(attacker);
    let names: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["settings.json".to_string()],
        "the victim's folder was written"
    );
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        "{\"the victim's\": \"settings\"}\n",
        "the victim's settings were overwritten"
    );
    assert!(ok > 0, "every heartbeat was refused");
    eprintln!("{ok} heartbeats landed, {refused} refused, 0 attacker wins");
}

#[test]
fn the_clock_file_must_be_a_regular_file_with_one_name() {
    let env = TestEnv::new();
    let clock = env.dir().join("clock");
    // A hard link to a file elsewhere: refused, the file left as it was.
    let victim = env.root().join("victim");
    std::fs::write(&victim, "VICTIM").unwrap();
    std::fs::remove_file(&clock).unwrap();
    std::fs::hard_link(&victim, &clock).unwrap();
    let before = env.snapshot();
    let v = env.json(&["create-task", "x", "--json"], 65);
    assert_eq!(v["error"]["kind"], "corrupt");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "VICTIM");
    assert_eq!(env.snapshot(), before);
    // A directory there is bad data too (65), not an I/O error.
    std::fs::remove_file(&clock).unwrap();
    std::fs::create_dir(&clock).unwrap();
    env.expect(&["create-task", "x"], 65);
    std::fs::remove_dir(&clock).unwrap();
    // Missing: made again by the next mutation.
    env.ok(&["create-task", "x"]);
    assert!(clock.is_file());
}

#[test]
fn init_refuses_a_directory_it_would_not_trust_before_writing_anything() {
    if !is_root() {
        eprintln!("SKIPPED init_refuses_a_directory_it_would_not_trust_before_writing_anything: needs root to chgrp to a group it is not in");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gs = tmp.path().join("gs");
    std::fs::create_dir(&gs).unwrap();
    std::os::unix::fs::chown(&gs, None, Some(65534)).unwrap();
    std::fs::set_permissions(&gs, std::fs::Permissions::from_mode(0o2775)).unwrap();
    // `init --group-shared` in `cwd` (with `extra` flags): refused, 74.
    let refused = |cwd: &std::path::Path, extra: &[&std::ffi::OsStr]| {
        let out = Command::new(bin())
            .current_dir(cwd)
            .env_remove("COORDINATION_DIR")
            .env_remove("ORCHESTRATE_SAFE_DIRS")
            .args(["init", "g", "--group-shared"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(74),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    refused(&gs, &[]);
    // Missing parents it made for the directory go too.
    refused(&gs, &["--dir".as_ref(), "np1/np2/.coordination".as_ref()]);
    assert!(!gs.join("np1").exists(), "init left the parents it made");
    // The directory this call made is gone again: nothing changed on disk.
    assert!(
        !gs.join(".coordination").exists(),
        "init left a directory behind after refusing it"
    );
    // One that was there already keeps its mode and gets no files.
    let pre = gs.join("pre");
    std::fs::create_dir(&pre).unwrap();
    std::fs::set_permissions(&pre, std::fs::Permissions::from_mode(0o750)).unwrap();
    refused(&gs, &["--dir".as_ref(), pre.as_os_str()]);
    let m = std::fs::metadata(&pre).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o750, "mode not restored");
    let left: Vec<_> = std::fs::read_dir(&pre).unwrap().collect();
    assert!(
        left.is_empty(),
        "init wrote files before refusing: {left:?}"
    );
}
