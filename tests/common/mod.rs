//! Test support shared by the test binaries that drive the `orchestrate`
//! binary in a temporary project (`tests/doctor.rs`, `tests/observe.rs`):
//! one temp dir with `.coordination/` initialised, and commands that run
//! there with the caller's environment cleaned of our variables.
//! (`tests/it/` has its own richer `support` module; this is the small
//! common core, so the per-file copies of it are gone.)

#![allow(dead_code)]

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_orchestrate")
}

/// A temp project with an initialised `.coordination/`.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// `orchestrate init GOAL` in a fresh temp dir.
    pub fn new(goal: &str) -> Self {
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        e.run(&["init", goal], 0);
        e
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The coordination directory.
    pub fn coord(&self) -> PathBuf {
        self.dir.path().join(".coordination")
    }

    /// The binary, in the project, without our environment variables.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path())
            .env_remove("COORDINATION_DIR")
            .env_remove("ORCHESTRATE_AGENT_ID")
            .env_remove("ORCHESTRATE_LOG")
            .env_remove("ORCHESTRATE_LOG_FORMAT")
            .timeout(Duration::from_secs(60));
        c
    }

    /// Runs `args`, asserts exit `code`, returns stdout.
    #[track_caller]
    pub fn run(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `args`, asserts exit 0, returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args, 0)
    }

    /// Runs `args` (which should include `--json`), asserts exit 0, parses
    /// stdout.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}
