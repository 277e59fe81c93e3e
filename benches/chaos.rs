//! Chaos benchmark: 16 worker processes claim, heartbeat, complete, fail and
//! release tasks through the library while random workers are SIGKILLed
//! (every 20-200 ms) or SIGSTOPped past their lease; then every task file,
//! `events.jsonl` and the workers' own logs are checked against the promise:
//! no double claim, no lost task, no torn file, no completion accepted with a
//! stale fencing token. Exits 1 on any violation, with the evidence.
//!
//! ```text
//! cargo bench --bench chaos                              # 16 procs, 5,000 tasks
//! cargo bench --bench chaos -- --procs 16 --tasks 5000
//! cargo bench --bench chaos -- --claims 1000000 --durability relaxed
//! cargo bench --bench chaos -- --check target/chaos/run-...   # re-check a kept run
//! cargo bench --bench chaos -- --help
//! ```
//!
//! The harness and the checker live in `benches/chaos/harness.rs`, shared
//! with `tests/chaos.rs` (a small configuration that runs in `cargo test`).

#[path = "chaos/harness.rs"]
mod harness;

fn main() -> std::process::ExitCode {
    harness::main(harness::Mode::Bench)
}
