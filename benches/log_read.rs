//! Reads that stay linear (issue 10, item 7): `orchestrate events`,
//! `metrics` and `doctor` on a large `events.jsonl`, with wall time and peak
//! memory (max RSS) of each. Targets: `events` on 1 GiB in under 20 s and
//! 64 MiB. Run: `cargo bench --bench log_read` (`-- --mb 64` for a quick
//! one).

use orchestrate::Coordination;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Peak RSS of the children waited for so far, in MiB (getrusage(2)).
fn children_max_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn measure(bin: &str, dir: &Path, args: &[&str]) -> (f64, f64) {
    let start = Instant::now();
    let st = Command::new(bin)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run orchestrate");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        st.code().is_some_and(|c| c == 0 || c == 65),
        "{args:?}: {st}"
    );
    (secs, children_max_rss_mib())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = args
        .iter()
        .position(|a| a == "--mb")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let bin = env!("CARGO_BIN_EXE_orchestrate");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).expect("target tmp");
    let tmp = tempfile::tempdir_in(base).expect("tempdir");
    let dir = tmp.path().join(".coordination");
    Coordination::init(&dir, None).expect("init");
    let line = |i: u64| {
        format!(
            "{{\"ts\":\"2026-12-01T10:00:00.000Z\",\"event\":\"task_claimed\",\"task_id\":\"t{}\",\"agent_id\":\"w{}\",\"attempt\":1,\"fencing_token\":1,\"from\":\"pending\",\"to\":\"claimed\"}}\n",
            i % 100_000,
            i % 64
        )
    };
    let target = mb << 20;
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("events.jsonl"))
            .expect("open log"),
    );
    let (mut written, mut i) = (0u64, 0u64);
    while written < target {
        let l = line(i);
        f.write_all(l.as_bytes()).expect("write");
        written += l.len() as u64;
        i += 1;
    }
    f.flush().expect("flush");
    drop(f);
    println!("events.jsonl: {mb} MiB, {i} lines");
    // Peak RSS is a running maximum over children: measure the smallest first.
    for cmd in [&["events", "--json"][..], &["metrics"][..], &["doctor"][..]] {
        let (secs, rss) = measure(bin, &dir, cmd);
        println!(
            "orchestrate {}: {secs:.1} s, max RSS so far {rss:.0} MiB",
            cmd.join(" ")
        );
    }
    println!("targets: events on 1024 MiB in < 20 s and < 64 MiB");
}
