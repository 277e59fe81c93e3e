//! Time: the one place where "now" comes from and where timestamps are
//! formatted. A mutation's "now" is the file server's clock
//! ([`server_now`]), so every host that shares a directory measures leases
//! with the same clock (DESIGN.md section 6, `spec` 6.6).

use chrono::{DateTime, SecondsFormat, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A UTC instant. Serialised as RFC 3339 with millisecond precision and a
/// `Z` suffix (`spec/PROTOCOL.md` section 3.1).
pub type Timestamp = DateTime<Utc>;

/// Source of the current time for protocol decisions (lease expiry,
/// `not_before`, backoff).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Now, cut to whole milliseconds: the precision timestamps are written
    /// with (3.1), so that a value in memory always equals what is on disk.
    fn now(&self) -> Timestamp {
        let now = Utc::now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }
}

/// A clock that only moves when told to; for tests and the model-based
/// property tests. Cloning shares the same instant.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicI64::new(start.timestamp_millis())),
        }
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        DateTime::from_timestamp_millis(self.millis.load(Ordering::SeqCst)).unwrap_or_default()
    }
}

/// The file server's clock (`spec` 6.6, DESIGN.md section 6): writes one
/// byte at offset 0 of `f` (the directory's `clock` file, held open, under
/// the lock) and returns the file's modification time as the server set it,
/// cut to whole milliseconds. On a local file system that is the kernel's
/// clock; on NFS, GlusterFS (with `features.ctime off`) or CephFS it is the
/// server's, the same for every host, so no client's clock can cut a lease
/// short or keep it alive. The time is read with a raw `fstat` system call
/// (rustix), never through a C library that could be interposed.
///
/// # Errors
/// [`crate::error::Error::Io`] when the write or the `fstat` fails.
pub fn server_now(f: &std::fs::File, path: &std::path::Path) -> crate::error::Result<Timestamp> {
    rustix::io::pwrite(f, b"\n", 0)
        .map_err(|e| crate::error::Error::io("write the clock file", path, e.into()))?;
    let st = rustix::fs::fstat(f)
        .map_err(|e| crate::error::Error::io("stat the clock file", path, e.into()))?;
    #[allow(clippy::unnecessary_cast)] // the field types differ by target
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    let ms = secs.saturating_mul(1000).saturating_add(nanos / 1_000_000);
    DateTime::from_timestamp_millis(ms).ok_or_else(|| {
        crate::error::Error::corrupt(path, "has a modification time no timestamp can hold")
    })
}

/// Formats `t` as the spec's timestamp form: RFC 3339, UTC, milliseconds,
/// e.g. `2026-11-30T01:28:49.123Z`.
pub fn format(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Adds `ms` milliseconds to `t`, saturating instead of overflowing.
pub fn add_ms(t: Timestamp, ms: u64) -> Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX / 4);
    t.checked_add_signed(chrono::TimeDelta::milliseconds(ms))
        .unwrap_or(t)
}

/// Milliseconds from `a` to `b` (negative when `b` is earlier).
pub fn ms_between(a: Timestamp, b: Timestamp) -> i64 {
    (b - a).num_milliseconds()
}

/// serde helpers that write timestamps in the spec's form.
pub(crate) mod serde_ts {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// RFC 3339, then in UTC within years 0000..=9999 (what RFC 3339 can
    /// write back).
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let t = DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| e.to_string())?;
        if (0..=9999).contains(&chrono::Datelike::year(&t)) {
            Ok(t)
        } else {
            Err(format!(
                "timestamp `{s}` is outside the years 0000 to 9999 in UTC"
            ))
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
