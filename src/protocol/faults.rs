//! Crash-point fault injection for tests (`spec/PROTOCOL.md` section 4.4).
//!
//! When the environment variable `ORCHESTRATE_CRASH_AT` names a point and
//! this build has `debug_assertions` (test and dev builds), the process
//! aborts there; with `ORCHESTRATE_HANG_AT` it sleeps there forever (holding
//! whatever it holds, e.g. the lock). Release builds compile [`point`] to
//! nothing.

/// Aborts the process if `ORCHESTRATE_CRASH_AT` equals `name`, or sleeps
/// forever if `ORCHESTRATE_HANG_AT` does (debug builds only). Points:
/// `before_temp_write`, `after_temp_write`, `after_fsync`, `after_rename`,
/// `between_batch_files`, `after_batch_intent`, `before_dir_fsync`,
/// `before_event_append`, `mid_event_append` (half a line written);
/// commit log (`spec` 4.8): `before_log_append`, `mid_log_record` (half a
/// record written), `after_log_append`, `before_applied`, `mid_replay`,
/// `before_checkpoint`;
/// `<name>#<n>` aborts at the `n`th pass of `name` instead of the first.
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    {
        if let Some(v) = std::env::var_os("ORCHESTRATE_CRASH_AT") {
            if v == name || nth_hit(&v, name) {
                std::process::abort();
            }
        }
        if let Some(v) = std::env::var_os("ORCHESTRATE_HANG_AT") {
            if v == name {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// For `ORCHESTRATE_CRASH_AT=<name>#<n>`: counts the passes of `name` and
/// is true at the `n`th (1-based), so that a test can crash at the second
/// rename of a mutation that writes two files.
#[cfg(debug_assertions)]
fn nth_hit(v: &std::ffi::OsStr, name: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let Some((point, n)) = v.to_str().and_then(|v| v.split_once('#')) else {
        return false;
    };
    if point != name {
        return false;
    }
    let Ok(n) = n.parse::<u64>() else {
        return false;
    };
    PASSES.fetch_add(1, Ordering::SeqCst) + 1 == n
}

/// True when `ORCHESTRATE_CRASH_AT` names `name` (debug builds only); for
/// points that must do something before aborting (a half-written line).
#[inline]
pub fn armed(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        std::env::var_os("ORCHESTRATE_CRASH_AT").is_some_and(|v| v == name || nth_hit(&v, name))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
