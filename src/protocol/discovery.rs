//! Discoveries: what an agent found that the others should know
//! (`spec/PROTOCOL.md` section 3.6). One file, `discoveries.json`, in the
//! Python orchestrator's format (`{"discoveries": [...]}`) with a
//! `schema_version`; written under the directory lock with the atomic-write
//! protocol, and capped so that it never grows past what a reader may load.
//!
//! Discoveries are bookkeeping, not task state: no transition depends on
//! them, and deleting the file loses no task.

use crate::error::{Error, Result};
use crate::protocol::clock::{serde_ts, Timestamp};
use crate::protocol::store::Versioned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Current major version of the `discoveries.json` format.
pub const DISCOVERIES_SCHEMA_VERSION: u64 = 1;

/// Longest title, in bytes (`spec` 3.6).
pub const MAX_TITLE_BYTES: usize = 1_000;

/// Longest content, in bytes (64 KiB; `spec` 3.6).
pub const MAX_CONTENT_BYTES: usize = 64 << 10;

/// Most tags on one discovery.
pub const MAX_TAGS: usize = 32;

/// Most discoveries kept in the file: older ones are dropped first
/// (`spec` 3.6). The events log keeps a `discovery_recorded` line for each.
pub const MAX_KEPT: usize = 1_000;

/// Largest `discoveries.json` written, in bytes (4 MiB): older discoveries
/// are dropped until the file fits (`spec` 3.6).
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// One discovery, as stored (`spec` 3.6). The member names are the Python
/// orchestrator's (`related_task`, `agent_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    /// `disc-` and 8 lowercase hex digits, unique in the file.
    pub id: String,
    /// A one-line summary; not empty.
    pub title: String,
    /// The details; may be empty.
    #[serde(default)]
    pub content: String,
    /// The agent that made it, when known.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The task it was made in, when known.
    #[serde(default)]
    pub related_task: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it was recorded (the mutation's `now`).
    #[serde(with = "serde_ts")]
    pub created_at: Timestamp,
    /// The run's correlation id (`spec` 13.1), when recorded inside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Members this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What [`crate::Coordination::add_discovery`] records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewDiscovery {
    /// A one-line summary (1 to [`MAX_TITLE_BYTES`] bytes, not only white
    /// space).
    pub title: String,
    /// The details (at most [`MAX_CONTENT_BYTES`] bytes).
    pub content: String,
    /// The agent that made it; a valid agent id (`spec` 8) when given.
    pub agent_id: Option<String>,
    /// The task it was made in; an existing task's id when given.
    pub task_id: Option<String>,
    /// Tags, each 1 to 128 bytes, at most [`MAX_TAGS`].
    pub tags: Vec<String>,
}

/// The whole file: `{"schema_version": 1, "discoveries": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryLog {
    /// Major version of the format.
    pub schema_version: u64,
    /// Oldest first.
    #[serde(default)]
    pub discoveries: Vec<Discovery>,
    /// Top-level members this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Versioned for DiscoveryLog {
    const OBJECT_FIELDS: &'static [&'static str] = &[];
}

/// Checks a new discovery's fields (not the task's existence, which needs
/// the lock).
///
/// # Errors
/// [`Error::Invalid`] saying what is wrong.
pub fn validate_new(d: &NewDiscovery) -> Result<()> {
    if d.title.trim().is_empty() {
        return Err(Error::Invalid("the discovery's title is empty".into()));
    }
    if d.title.len() > MAX_TITLE_BYTES {
        return Err(Error::Invalid(format!(
            "the discovery's title is {} bytes, the limit is {MAX_TITLE_BYTES}; put the details in --content",
            d.title.len()
        )));
    }
    if d.content.len() > MAX_CONTENT_BYTES {
        return Err(Error::Invalid(format!(
            "the discovery's content is {} bytes, the limit is {MAX_CONTENT_BYTES}; put long text in a file and name it",
            d.content.len()
        )));
    }
    if let Some(a) = &d.agent_id {
        crate::protocol::task::validate_name("agent id", a)?;
    }
    if let Some(t) = &d.task_id {
        crate::protocol::task::validate_name("task id", t)?;
    }
    if d.tags.len() > MAX_TAGS {
        return Err(Error::Invalid(format!(
            "a discovery has at most {MAX_TAGS} tags"
        )));
    }
    for tag in &d.tags {
        if tag.is_empty() || tag.len() > crate::protocol::task::MAX_ID_LEN {
            return Err(Error::Invalid(format!(
                "tag `{tag}` must be 1-{} bytes",
                crate::protocol::task::MAX_ID_LEN
            )));
        }
    }
    Ok(())
}

/// Reads `discoveries.json` at `path`; an empty log when it does not exist.
/// A file without `schema_version` (the Python tool's) reads as version 1.
///
/// # Errors
/// [`Error::Corrupt`] for a symlink, a non-regular or oversized file,
/// invalid JSON or a member of the wrong type; [`Error::NewerSchema`];
/// [`Error::Io`].
pub fn read(path: &Path) -> Result<DiscoveryLog> {
    let Some(bytes) = crate::protocol::store::read_bytes(path)? else {
        return Ok(DiscoveryLog {
            schema_version: DISCOVERIES_SCHEMA_VERSION,
            ..Default::default()
        });
    };
    let mut v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::corrupt(path, "not a JSON object"))?;
    if !obj.contains_key("schema_version") {
        obj.insert(
            "schema_version".into(),
            Value::from(DISCOVERIES_SCHEMA_VERSION),
        );
    }
    if obj
        .get("discoveries")
        .is_some_and(|d| !(d.is_array() || d.is_null()))
    {
        return Err(Error::corrupt(path, "`discoveries` must be an array"));
    }
    if obj.get("discoveries").is_some_and(Value::is_null) {
        obj.remove("discoveries");
    }
    // The Python tool wrote naive local times (no offset): read as UTC.
    if let Some(Value::Array(list)) = obj.get_mut("discoveries") {
        for d in list.iter_mut() {
            if let Some(Value::String(ts)) = d.get_mut("created_at") {
                if chrono::DateTime::parse_from_rfc3339(ts).is_err() {
                    if let Ok(n) = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.f")
                    {
                        *ts = crate::protocol::clock::format(&n.and_utc());
                    }
                }
            }
        }
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Other(e.to_string()))?;
    crate::protocol::store::parse_versioned(path, &bytes, DISCOVERIES_SCHEMA_VERSION)
}

/// A fresh discovery id, `disc-` and 8 hex digits, not in `taken`.
pub fn new_id(taken: &dyn Fn(&str) -> bool) -> String {
    loop {
        let id = format!("disc-{:08x}", rand::random::<u32>());
        if !taken(&id) {
            return id;
        }
    }
}

/// Drops the oldest discoveries until at most [`MAX_KEPT`] are left and
/// the file's pretty form fits in [`MAX_FILE_BYTES`] (the newest one always
/// stays). Returns how many were dropped.
pub fn cap(log: &mut DiscoveryLog) -> usize {
    let mut drop = log.discoveries.len().saturating_sub(MAX_KEPT);
    // Each entry's size in the pretty file, with some room for the
    // indentation and separators around it.
    let sizes: Vec<usize> = log
        .discoveries
        .iter()
        .map(|d| {
            serde_json::to_vec_pretty(d)
                .map(|b| b.len() + 64)
                .unwrap_or(MAX_FILE_BYTES)
        })
        .collect();
    let mut total: usize = 1024 + sizes[drop..].iter().sum::<usize>();
    while total > MAX_FILE_BYTES && drop + 1 < log.discoveries.len() {
        total -= sizes[drop];
        drop += 1;
    }
    log.discoveries.drain(..drop);
    drop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: usize, content: &str) -> Discovery {
        Discovery {
            id: format!("disc-{i:08x}"),
            title: format!("t{i}"),
            content: content.into(),
            agent_id: None,
            related_task: None,
            tags: vec![],
            created_at: chrono::DateTime::from_timestamp_millis(0).unwrap_or_default(),
            correlation_id: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn cap_keeps_the_newest_within_count_and_bytes() {
        let mut log = DiscoveryLog {
            schema_version: 1,
            discoveries: (0..MAX_KEPT + 5).map(|i| d(i, "")).collect(),
            extra: Map::new(),
        };
        assert_eq!(cap(&mut log), 5);
        assert_eq!(log.discoveries[0].id, "disc-00000005");
        let big = "x".repeat(MAX_CONTENT_BYTES);
        let mut log = DiscoveryLog {
            schema_version: 1,
            discoveries: (0..100).map(|i| d(i, &big)).collect(),
            extra: Map::new(),
        };
        cap(&mut log);
        let bytes = serde_json::to_vec_pretty(&log).unwrap();
        assert!(bytes.len() <= MAX_FILE_BYTES, "{}", bytes.len());
        assert_eq!(log.discoveries.last().unwrap().id, "disc-00000063");
        assert!(log.discoveries.len() > 50);
    }

    #[test]
    fn validation_refuses_empty_titles_bad_ids_and_oversized_text() {
        let ok = NewDiscovery {
            title: "The API needs a token".into(),
            ..Default::default()
        };
        assert!(validate_new(&ok).is_ok());
        for bad in [
            NewDiscovery {
                title: "  ".into(),
                ..Default::default()
            },
            NewDiscovery {
                agent_id: Some("../x".into()),
                ..ok.clone()
            },
            NewDiscovery {
                task_id: Some("a/b".into()),
                ..ok.clone()
            },
            NewDiscovery {
                content: "x".repeat(MAX_CONTENT_BYTES + 1),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(validate_new(&bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
