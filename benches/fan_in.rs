//! Fan-in stays linear (issue 10, item 7): one task depending on `n` tasks
//! is drained (every task claimed and completed through the library) within
//! 10x the time of an `n`-task chain. Before `index/unmet` (spec section 9)
//! each completion read the dependent's file and every dependency's file,
//! so the fan-in was quadratic. Relaxed durability, so the figure is the
//! algorithm, not the disk. Run: `cargo bench --bench fan_in` (`-- --n 2000`
//! for a quick one). Prints both times and their ratio; exits 1 when the
//! ratio is over 10.

use orchestrate::{BatchIds, ClaimOutcome, ClaimRequest, Coordination, NewTask};
use std::path::Path;
use std::time::Instant;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Builds a queue of `n + 1` tasks: `t000000..` and a last one `z` that
/// depends on all of them (`fan_in`), or a chain where each depends on the
/// one before (`!fan_in`). Relaxed durability.
fn build(dir: &Path, n: usize, fan_in: bool) -> BoxResult<Coordination> {
    Coordination::init(dir, None)?;
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["durability"] = serde_json::Value::from("relaxed");
    std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    let c = Coordination::open(dir)?;
    let id = |i: usize| format!("t{i:06}");
    let mut specs: Vec<NewTask> = (0..n)
        .map(|i| NewTask {
            id: Some(id(i)),
            description: format!("task {i}"),
            dependencies: if !fan_in && i > 0 {
                vec![id(i - 1)]
            } else {
                Vec::new()
            },
            ..Default::default()
        })
        .collect();
    specs.push(NewTask {
        id: Some("z".into()),
        description: "the last one".into(),
        dependencies: if fan_in {
            (0..n).map(id).collect()
        } else {
            vec![id(n - 1)]
        },
        ..Default::default()
    });
    c.create_batch(specs, BatchIds::Exact)?;
    Ok(c)
}

/// Claims and completes until nothing is left; returns (seconds, tasks).
fn drain(c: &Coordination) -> BoxResult<(f64, usize)> {
    let req = ClaimRequest {
        agent: "bench".into(),
        ..Default::default()
    };
    let start = Instant::now();
    let mut done = 0;
    while let ClaimOutcome::Claimed(t) = c.claim(&req)? {
        c.complete(t.id.as_str(), t.fencing_token, None)?;
        done += 1;
    }
    Ok((start.elapsed().as_secs_f64(), done))
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base)?;
    let mut secs = Vec::new();
    for fan_in in [false, true] {
        let tmp = tempfile::tempdir_in(base)?;
        let dir = tmp.path().join(".coordination");
        let c = build(&dir, n, fan_in)?;
        let (s, done) = drain(&c)?;
        let shape = if fan_in { "fan-in" } else { "chain" };
        println!("{shape}: {done} tasks drained in {s:.2} s");
        if done != n + 1 {
            return Err(format!("{shape}: drained {done} of {} tasks", n + 1).into());
        }
        secs.push(s);
    }
    let ratio = secs[1] / secs[0];
    println!("fan-in / chain = {ratio:.2} (target <= 10)");
    if ratio > 10.0 {
        std::process::exit(1);
    }
    Ok(())
}
