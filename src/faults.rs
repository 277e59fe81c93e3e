//! Crash-point fault injection for tests (`spec/PROTOCOL.md` section 4.4).
//!
//! When the environment variable `ORCHESTRATE_CRASH_AT` names a point and
//! this build has `debug_assertions` (test and dev builds), the process
//! aborts there. Release builds compile [`point`] to nothing.

/// Aborts the process if `ORCHESTRATE_CRASH_AT` equals `name` (debug builds
/// only). Points: `before_temp_write`, `after_temp_write`, `after_fsync`,
/// `after_rename`, `between_batch_files`, `after_batch_intent`.
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    {
        if let Some(v) = std::env::var_os("ORCHESTRATE_CRASH_AT") {
            if v == name {
                std::process::abort();
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
