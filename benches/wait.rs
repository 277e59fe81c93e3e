//! `claim --wait` (issue 5): wake-up latency after `create-task`, median
//! over 100 trials (target < 50 ms), and the CPU time of 8 idle waiters
//! over 10 s (target < 0.1 s in total), and (issue 10) the rate of
//! `create` with 0 and with 50 `claim --wait` waiters that claim what
//! appears (target ratio >= 0.5: waiters must not stampede the lock).
//! Run: `cargo bench --bench wait` (`-- --quick` for 20 trials and 3 s).

use orchestrate::{Coordination, NewTask};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime, fields 14 and 15 of /proc/PID/stat, in clock ticks.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // After the `)`, field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (trials, idle_s) = if quick { (20, 3) } else { (100, 10) };
    let bin = env!("CARGO_BIN_EXE_orchestrate");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).expect("target tmp");
    let tmp = tempfile::tempdir_in(base).expect("tempdir");
    let dir = tmp.path().join(".coordination");
    let (c, _) = Coordination::init(&dir, None).expect("init");

    let mut lat = Vec::new();
    for i in 0..trials {
        let child = Command::new(bin)
            .arg("--dir")
            .arg(&dir)
            .args(["claim", "--agent", "waiter", "--wait", "20s", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Let it reach its wait (it claims once, finds nothing, sleeps).
        std::thread::sleep(Duration::from_millis(150));
        let t = c
            .create(NewTask {
                id: Some(format!("t{i}")),
                description: "wake".into(),
                ..Default::default()
            })
            .expect("create");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "waiter failed");
        let claimed = c.get(t.id.as_str()).expect("get");
        let ms = orchestrate::protocol::clock::ms_between(
            t.created_at,
            claimed.claimed_at.expect("claimed"),
        );
        lat.push(ms);
    }
    lat.sort();
    println!(
        "claim --wait wake-up latency over {trials} trials: median {} ms, p90 {} ms, max {} ms (target: median < 50 ms)",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );

    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(bin)
                .arg("--dir")
                .arg(&dir)
                .args(["claim", "--agent", &format!("idle{i}"), "--wait", "1h"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before: f64 = children.iter().map(|c| cpu_seconds(c.id())).sum();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let after: f64 = children.iter().map(|c| cpu_seconds(c.id())).sum();
    let elapsed = start.elapsed().as_secs_f64();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "8 idle waiters over {elapsed:.1} s: {:.3} s CPU in total (target < 0.1 s; clock tick {} ms)",
        after - before,
        // SAFETY: sysconf has no preconditions.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
    );
    stampede(bin, base, if quick { 50 } else { 200 });
}

/// Creates `n` tasks one at a time (durable, through the library),
/// apart (150 ms) so that the waiters settle between two (each new task is claimed
/// by one of them, as in a queue that keeps up), and returns the rate of
/// the create calls themselves: one over the mean time spent in `create`.
fn create_rate(c: &Coordination, prefix: &str, n: usize) -> f64 {
    let mut busy = Duration::ZERO;
    for i in 0..n {
        let start = Instant::now();
        c.create(NewTask {
            id: Some(format!("{prefix}{i}")),
            description: "stampede".into(),
            ..Default::default()
        })
        .expect("create");
        busy += start.elapsed();
        std::thread::sleep(Duration::from_millis(150));
    }
    n as f64 / busy.as_secs_f64()
}

fn stampede(bin: &str, base: &Path, n: usize) {
    let tmp = tempfile::tempdir_in(base).expect("tempdir");
    let dir = tmp.path().join(".coordination");
    let (c, _) = Coordination::init(&dir, None).expect("init");
    let alone = create_rate(&c, "a", n);
    // Drain what was made, so the waiters start with nothing ready.
    while let Ok(orchestrate::ClaimOutcome::Claimed(_)) = c.claim(&orchestrate::ClaimRequest {
        agent: "drain".into(),
        ..Default::default()
    }) {}
    const WAITERS: usize = 50;
    let loop_sh =
        r#"while "$0" --dir "$1" claim --agent "$2" --wait 60s >/dev/null 2>&1; do :; done"#;
    let mut waiters: Vec<_> = (0..WAITERS)
        .map(|i| {
            Command::new("sh")
                .args(["-c", loop_sh, bin])
                .arg(&dir)
                .arg(format!("w{i}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn waiter")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let with = create_rate(&c, "b", n);
    for w in &mut waiters {
        let _ = w.kill();
    }
    for mut w in waiters {
        let _ = w.wait();
    }
    let _ = Command::new("pkill")
        .args(["-f", dir.to_str().unwrap_or("-")])
        .status();
    println!(
        "create, durable, {n} tasks: alone {alone:.0} /s, with {WAITERS} claim --wait waiters {with:.0} /s: ratio {:.2} (target >= 0.5)",
        with / alone
    );
}
