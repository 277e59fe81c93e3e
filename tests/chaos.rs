//! Chaos test, small configuration: 6 worker processes, 1,000 tasks, a worker
//! SIGKILLed (or SIGSTOPped past its lease) every 50-150 ms, then the
//! invariant checker of `benches/chaos.rs` over the task files, the event log
//! and the workers' logs. Fails with the evidence of every violation.
//!
//! A `harness = false` test: the workers re-run this executable with the
//! hidden `--worker DIR AGENT SEED` arguments. Flags after `--` are those of
//! the benchmark (`cargo test --test chaos -- --procs 8 --seed 42`);
//! `CHAOS_SEED` reproduces a run.

#[path = "../benches/chaos/harness.rs"]
mod harness;

fn main() -> std::process::ExitCode {
    harness::main(harness::Mode::Test)
}
