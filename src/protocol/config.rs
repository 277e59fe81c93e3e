//! `config.json`: the directory's defaults (`spec/PROTOCOL.md` section 3.3)
//! and the backoff formula (section 7).

use crate::error::{Error, Result};
use crate::protocol::clock::{serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest lease or backoff delay accepted, in milliseconds (one year): a
/// longer one would put timestamps past what RFC 3339 can write.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;

/// Current major version of the config file format.
pub const CONFIG_SCHEMA_VERSION: u64 = 1;

/// Retry delay parameters. The delay before attempt `n + 1` after the `n`-th
/// failed attempt is `min(max_ms, base_ms * factor^(n-1))`, reduced by a
/// random fraction of at most `jitter` ("equal jitter" when 0.5; see
/// M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay after the first failure, in milliseconds.
    pub base_ms: u64,
    /// Growth factor per further failure (>= 1.0).
    pub factor: f64,
    /// Upper bound on the delay, in milliseconds.
    pub max_ms: u64,
    /// Fraction of the delay that is randomised, 0.0 to 1.0.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_jitter() -> f64 {
    0.5
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            factor: 2.0,
            max_ms: 60_000,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Checks the ranges of `spec` section 7.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `factor < 1`, `jitter` outside 0..=1, or
    /// `max_ms < base_ms`.
    pub fn validate(&self) -> Result<()> {
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(Error::Invalid(format!(
                "backoff factor {} must be >= 1",
                self.factor
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Invalid(format!(
                "backoff jitter {} must be in 0..1",
                self.jitter
            )));
        }
        if self.max_ms < self.base_ms {
            return Err(Error::Invalid("backoff max_ms must be >= base_ms".into()));
        }
        if self.max_ms > MAX_DURATION_MS {
            return Err(Error::Invalid(format!(
                "backoff max_ms must be at most {MAX_DURATION_MS} (one year)"
            )));
        }
        Ok(())
    }

    /// The delay without jitter after failed attempt `attempt` (1-based), in
    /// milliseconds: `min(max_ms, base_ms * factor^(attempt-1))`.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1).min(1_000) as i32;
        let d = self.base_ms as f64 * self.factor.powi(exp);
        if d.is_finite() && d < self.max_ms as f64 {
            d as u64
        } else {
            self.max_ms
        }
    }

    /// The delay with jitter: `ceiling * (1 - jitter * u)` for `u` uniform in
    /// [0, 1), in milliseconds.
    pub fn delay_ms(&self, attempt: u32, u: f64) -> u64 {
        let c = self.ceiling_ms(attempt) as f64;
        (c * (1.0 - self.jitter * u.clamp(0.0, 1.0))).round() as u64
    }
}

/// How hard writes try to survive power loss (`spec` section 4.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync the file and its directory on every write (default).
    #[default]
    Durable,
    /// No fsync: survives a killed process, not a power loss.
    Relaxed,
}

/// The content of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Major version of this file's format.
    pub schema_version: u64,
    /// What the agents are working towards (may be empty).
    #[serde(default)]
    pub goal: String,
    /// Default lease length granted by a claim, in milliseconds.
    pub lease_ms: u64,
    /// Default attempts before a task goes `dead`.
    pub max_attempts: u32,
    /// Default retry delays.
    pub backoff: Backoff,
    /// Write durability.
    #[serde(default)]
    pub durability: Durability,
    /// When `init` ran.
    #[serde(with = "serde_ts")]
    pub created_at: Timestamp,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Config {
    /// Checks the value ranges (`spec` section 3.3): `lease_ms` >= 1,
    /// `max_attempts` >= 1, a valid backoff.
    ///
    /// # Errors
    /// A sentence naming the bad field.
    pub fn check_ranges(&self) -> std::result::Result<(), String> {
        if self.lease_ms == 0 || self.lease_ms > MAX_DURATION_MS {
            return Err(format!(
                "lease_ms {} is outside 1..={MAX_DURATION_MS}",
                self.lease_ms
            ));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts is 0".into());
        }
        self.backoff.validate().map_err(|e| e.to_string())
    }

    /// Defaults of `spec` section 3.3: `lease_ms` 300000 (5 min),
    /// `max_attempts` 3, backoff 1 s doubling up to 60 s with jitter 0.5.
    pub fn new(goal: String, now: Timestamp) -> Self {
        Config {
            schema_version: CONFIG_SCHEMA_VERSION,
            goal,
            lease_ms: 300_000,
            max_attempts: 3,
            backoff: Backoff::default(),
            durability: Durability::Durable,
            created_at: now,
            extra: Map::new(),
        }
    }
}
