//! `orchestrate run --agent shell -w 4` against `make -j4` over the same
//! 1,000-task DAG of no-op commands, side by side in one run (issue 3).
//!
//! Run: `cargo bench --bench run_vs_make` (optionally `-- --tasks N`, and
//! `--baseline PATH` to time another `orchestrate` binary in the same rounds).
//! The DAG: 10 layers of N/10 tasks; every task of layer k > 0 depends on
//! two tasks of layer k-1. Each task's command is `true`. Then, when GNU
//! `parallel` is installed, N independent no-ops against `parallel -j4`
//! (issue 15's second figure).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn orchestrate_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_orchestrate"));
    assert!(p.exists(), "build the binary first: cargo build --release");
    p
}

fn write_dag(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let layers = 10;
    let width = n / layers;
    let mut tasks = Vec::new();
    let mut make = String::from(".PHONY: all\n");
    let mut all = Vec::new();
    for l in 0..layers {
        for i in 0..width {
            let id = format!("t{l}-{i}");
            let deps: Vec<String> = if l == 0 {
                vec![]
            } else {
                vec![
                    format!("t{}-{}", l - 1, i),
                    format!("t{}-{}", l - 1, (i + 1) % width),
                ]
            };
            make += &format!(".PHONY: {id}\n{id}: {}\n\t@true\n", deps.join(" "));
            tasks.push(serde_json::json!({"id": id, "description": id, "dependencies": deps, "command": "true"}));
            all.push(id);
        }
    }
    make = format!("all: {}\n{make}", all.join(" "));
    let tf = dir.join("tasks.json");
    std::fs::write(&tf, serde_json::to_vec(&tasks).unwrap()).unwrap();
    let mf = dir.join("Makefile");
    std::fs::write(&mf, make).unwrap();
    (tf, mf)
}

/// `orchestrate run` of the tasks file `tf` with the shell adapter and 4
/// workers, by `bin`, in a fresh `work/.coordination` of `durability`.
fn run_cmd(bin: &Path, work: &Path, durability: &str, tf: &Path) -> Command {
    std::fs::create_dir_all(work).unwrap();
    let coord = work.join(".coordination");
    let st = Command::new(bin)
        .arg("--dir")
        .arg(&coord)
        .args(["init", "bench"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = coord.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["durability"] = durability.into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let mut c = Command::new(bin);
    c.current_dir(work)
        .arg("--dir")
        .arg(&coord)
        .args([
            "run",
            "bench",
            "--agent",
            "shell",
            "-w",
            "4",
            "--no-plan",
            "-q",
            "--tasks",
        ])
        .arg(tf);
    c
}

fn time(mut c: Command) -> Duration {
    let t = Instant::now();
    let out = c.output().expect("spawn");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// `n` independent no-op tasks (no dependencies), for the comparison with
/// GNU parallel.
fn write_flat(dir: &Path, n: usize) -> PathBuf {
    let tasks: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"id": format!("f{i}"), "description": "no-op", "command": "true"}))
        .collect();
    let tf = dir.join("flat.json");
    std::fs::write(&tf, serde_json::to_vec(&tasks).unwrap()).unwrap();
    tf
}

/// GNU parallel running `true` `n` times, 4 jobs at a time; `None` when
/// `parallel` is not installed (`apt-get install parallel`).
fn parallel_cmd(n: usize) -> Option<Command> {
    let ok = Command::new("parallel")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| {
        let mut c = Command::new("parallel");
        c.args(["--will-cite", "-j4", "true", ":::"])
            .args((0..n).map(|i| i.to_string()));
        c
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    let root = tempfile::tempdir_in(base).unwrap();
    let (tf, mf) = write_dag(root.path(), n);
    println!("DAG: {n} no-op tasks in 10 layers, 2 dependencies each; 4 workers / jobs");
    // `--baseline PATH`: another `orchestrate` binary (an older build),
    // timed in the same rounds, for a before/after ratio.
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let flat = write_flat(root.path(), n);
    let mut pairs = Vec::new();
    for round in 0..3 {
        let Some(p) = parallel_cmd(n) else {
            println!("GNU parallel is not installed: its comparison is left out");
            break;
        };
        let work = root.path().join(format!("flat-{round}"));
        let ours = time(run_cmd(&orchestrate_bin(), &work, "durable", &flat));
        pairs.push((ours, time(p)));
    }
    if !pairs.is_empty() {
        let mut ours: Vec<_> = pairs.iter().map(|p| p.0).collect();
        let mut theirs: Vec<_> = pairs.iter().map(|p| p.1).collect();
        ours.sort();
        theirs.sort();
        let (o, p) = (ours[1].as_secs_f64(), theirs[1].as_secs_f64());
        println!(
            " durable: {n} independent no-ops: orchestrate run {o:.3} s, parallel -j4 {p:.3} s, ratio {:.2} (median of 3; target <= 1.0)",
            o / p
        );
    }
    for durability in ["durable", "relaxed"] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut before = Vec::new();
        for round in 0..3 {
            if let Some(b) = &baseline {
                let work = root.path().join(format!("{durability}-{round}-baseline"));
                before.push(time(run_cmd(b, &work, durability, &tf)));
            }
            let work = root.path().join(format!("{durability}-{round}"));
            let c = run_cmd(&orchestrate_bin(), &work, durability, &tf);
            ours.push(time(c));
            let mut m = Command::new("make");
            m.current_dir(&work).arg("-s").arg("-j4").arg("-f").arg(&mf);
            theirs.push(time(m));
        }
        ours.sort();
        theirs.sort();
        let (o, m) = (ours[1].as_secs_f64(), theirs[1].as_secs_f64());
        println!(
            "{durability:>8}: orchestrate run {o:.3} s, make -j4 {m:.3} s, ratio {:.2} (median of 3; target <= 1.5)",
            o / m
        );
        if !before.is_empty() {
            before.sort();
            let b = before[1].as_secs_f64();
            println!(
                "{durability:>8}: baseline binary {b:.3} s: this build / baseline {:.2}",
                o / b
            );
        }
    }
}
