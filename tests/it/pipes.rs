//! Closed and full output, and signals (issue 10, item 2): a reader command
//! whose stdout is closed ends quietly with exit 0, a full disk gives 74, a
//! closed or full stderr never panics or hangs anything, `run` finishes its
//! tasks when its output is gone, and SIGTERM ends a run within 2 s even
//! while its workers are blocked writing to a full pipe.

use crate::support::TestEnv;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A pipe whose read end is already closed: every write to the write end
/// fails with EPIPE, like `| head -1` after its line.
fn closed_pipe() -> File {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    drop(r);
    w
}

/// A pipe that is full and never read: every write to it blocks.
fn full_pipe() -> (OwnedFd, File) {
    let mut fds = [0; 2];
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: as above.
    let (r, mut w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    use std::io::Write;
    while w.write(&[b'x'; 4096]).is_ok() {}
    // Back to blocking writes, so the child blocks instead of failing.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    (r, w)
}

fn queue(env: &TestEnv, n: usize) {
    for i in 0..n {
        env.ok(&[
            "create-task",
            &format!("task number {i}"),
            "--id",
            &format!("t{i}"),
        ]);
    }
}

fn wait_limit(mut child: std::process::Child, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s.code(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` with the streams it was given (the harness's
/// `output_within` would replace stdout with a pipe of its own).
fn output_within_keep(
    child: std::process::Child,
    limit: Duration,
    what: &[&str],
) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) of our own, unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what:?} hung with a closed stdout");
        }
    }
}

#[test]
fn readers_with_a_closed_stdout_exit_0_without_a_panic() {
    let env = TestEnv::new();
    queue(&env, 40);
    for args in [
        vec!["graph"],
        vec!["graph", "--format", "dot"],
        vec!["metrics"],
        vec!["metrics", "--json"],
        vec!["events"],
        vec!["list"],
        vec!["list", "--json"],
        vec!["status"],
        vec!["watch", "--json"],
        vec!["events", "--follow"],
        vec!["--help"],
        vec!["claim", "--help"],
    ] {
        let mut cmd = env.std_cmd();
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let out = output_within_keep(child, Duration::from_secs(20), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_full_stdout_is_exit_74_and_a_full_or_closed_stderr_changes_nothing() {
    let env = TestEnv::new();
    queue(&env, 5);
    for args in [
        vec!["metrics"],
        vec!["graph"],
        vec!["list"],
        vec!["show", "t1"],
        vec!["--help"],
        vec!["--version"],
    ] {
        let mut cmd = env.std_cmd();
        cmd.args(&args)
            .stdout(File::create("/dev/full").unwrap())
            .stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // stderr to /dev/full or a closed pipe: the command's own outcome stands.
    for (args, code) in [
        (vec!["list"], 0),
        (vec!["show", "nope"], 3),
        (vec!["claim", "--agent", "a", "--tag", "none"], 3),
        (vec!["complete", "t1", "--token", "9"], 4),
    ] {
        for stderr in [File::create("/dev/full").unwrap(), closed_pipe()] {
            let out = env
                .std_cmd()
                .args(&args)
                .stdout(Stdio::null())
                .stderr(stderr)
                .status()
                .unwrap();
            assert_eq!(out.code(), Some(code), "{args:?}");
        }
    }
}

fn shell_tasks(env: &TestEnv, commands: &[&str]) -> std::path::PathBuf {
    let tasks: Vec<serde_json::Value> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"id": format!("s{i}"), "description": format!("step {i}"), "command": c}))
        .collect();
    let p = env.root().join("tasks.json");
    std::fs::write(&p, serde_json::to_vec(&tasks).unwrap()).unwrap();
    p
}

#[test]
fn run_with_its_output_gone_still_runs_every_task() {
    let env = TestEnv::new();
    let tasks = shell_tasks(&env, &["echo one", "echo two", "echo three", "echo four"]);
    let mut cmd = env.shell_run_cmd(&tasks);
    cmd.stdout(closed_pipe()).stderr(closed_pipe());
    let (code, _) = wait_limit(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(code, Some(0));
    for i in 0..4 {
        assert_eq!(env.task_json(&format!("s{i}"))["status"], "completed");
    }
}

#[test]
fn sigterm_ends_a_run_blocked_on_a_full_stderr_within_two_seconds() {
    let env = TestEnv::new();
    let pidfile = env.root().join("child.pid");
    let cmd_text = format!("echo $$ > {}; sleep 60", pidfile.display());
    let tasks = shell_tasks(&env, &[&cmd_text]);
    // Once with stderr working (SIGTERM while the task runs), once with
    // stderr a full pipe (the first progress line blocks the run).
    // Third: stdout and stderr both full pipes and -vvv logging, so every
    // thread that writes anything would block (issue 10 break-it trial).
    for (blocked, both) in [(false, false), (true, false), (true, true)] {
        let _ = std::fs::remove_file(&pidfile);
        let (_keep, err) = full_pipe();
        let (_keep_out, out) = full_pipe();
        let mut cmd = env.shell_run_cmd(&tasks);
        cmd.stdout(Stdio::null());
        if both {
            cmd.arg("-vvv").stdout(out);
        }
        if blocked {
            cmd.stderr(err);
        } else {
            cmd.stderr(Stdio::null());
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        if blocked {
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            crate::support::wait_for("the task's process", Duration::from_secs(20), || {
                std::fs::read_to_string(&pidfile)
                    .ok()
                    .filter(|s| s.ends_with('\n'))
            });
        }
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (code, took) = wait_limit(child, Duration::from_secs(10));
        assert_eq!(code, Some(143), "blocked: {blocked}");
        assert!(
            took < Duration::from_secs(2),
            "took {took:?} (blocked: {blocked})"
        );
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: signal 0 only checks that the process exists.
            assert_ne!(
                unsafe { libc::kill(p, 0) },
                0,
                "the task's process outlived the run"
            );
        }
        // Every task of the directory is back to pending (or never claimed).
        let listing = env.json(&["list", "--json"], 0);
        for t in listing["tasks"].as_array().unwrap() {
            assert_eq!(t["status"], "pending", "{t}");
            assert_eq!(t["attempts"], 0, "{t}");
        }
    }
}
