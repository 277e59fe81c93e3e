//! `claim --wait` (issue 5): wake-up latency after `create-task`, median
//! over 100 trials (target < 50 ms), and the CPU time of 8 idle waiters
//! over 10 s (target < 0.1 s in total). Run: `cargo bench --bench wait`
//! (`-- --quick` for 20 trials and 3 s).

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
        let ms = orchestrate::clock::ms_between(t.created_at, claimed.claimed_at.expect("claimed"));
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
}
