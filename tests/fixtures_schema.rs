//! The fixtures of `fixtures/v1/` against the JSON Schemas of `spec/` and
//! against the library's reader, so that the spec's schemas, the fixtures and
//! the serde types cannot drift apart (`spec/PROTOCOL.md` sections 3.2, 3.3
//! and 10).
//!
//! The valid fixtures were produced by the `orchestrate` binary (init,
//! create-task, claim, a failed `work --adapter shell` attempt, claim again),
//! so they are also checked to be byte-for-byte what the library writes.

use jsonschema::Validator;
use orchestrate::protocol::store::{read_config, read_task, to_pretty};
use orchestrate::{Durability, Error, Status, TaskId};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/v1").join(name)
}

fn fixture_json(name: &str) -> Value {
    let bytes = std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Compiles `spec/<name>` as a draft 2020-12 schema with `format` checked
/// (`date-time` is part of the contract).
fn schema(name: &str) -> Validator {
    let path = root().join("spec").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
    assert_eq!(
        value["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{name} must declare draft 2020-12"
    );
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&value)
        .unwrap_or_else(|e| panic!("{name} is not a valid JSON Schema: {e}"))
}

fn task_schema() -> Validator {
    schema("task.schema.json")
}

fn config_schema() -> Validator {
    schema("config.schema.json")
}

fn errors(v: &Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn assert_valid(v: &Validator, name: &str, doc: &Value) {
    let errs = errors(v, doc);
    assert!(errs.is_empty(), "{name} should validate: {errs:#?}");
}

fn assert_invalid(v: &Validator, name: &str, doc: &Value) {
    assert!(!v.is_valid(doc), "{name} should not validate");
}

/// Loads a task fixture through the library, as `tasks/<id>.json`.
fn load_task(name: &str, id: &str) -> orchestrate::Result<Option<orchestrate::Task>> {
    read_task(&fixture(name), &TaskId::new(id)?)
}

// ---------------------------------------------------------------- schemas

#[test]
fn valid_task_fixtures_match_the_schema() {
    let v = task_schema();
    for name in [
        "task-valid-minimal.json",
        "task-valid-full.json",
        "task-valid-required-only.json",
        "task-unknown-fields.json",
    ] {
        assert_valid(&v, name, &fixture_json(name));
    }
}

#[test]
fn invalid_task_fixtures_fail_the_schema() {
    let v = task_schema();
    for name in [
        "task-bad-status.json",
        "task-bad-priority.json",
        "task-newer-schema.json",
    ] {
        assert_invalid(&v, name, &fixture_json(name));
    }
    let bad = fixture_json("task-bad-status.json");
    assert!(
        errors(&v, &bad).iter().any(|e| e.contains("/status")),
        "the bad-status fixture must fail on `status`: {:?}",
        errors(&v, &bad)
    );
    let bad = fixture_json("task-bad-priority.json");
    assert!(
        errors(&v, &bad).iter().any(|e| e.contains("/priority")),
        "the bad-priority fixture must fail on `priority`: {:?}",
        errors(&v, &bad)
    );
}

#[test]
fn truncated_task_fixture_is_not_json() {
    let bytes = std::fs::read(fixture("task-corrupt-truncated.json")).unwrap();
    assert!(!bytes.is_empty(), "the truncated fixture must not be empty");
    assert!(serde_json::from_slice::<Value>(&bytes).is_err());
}

#[test]
fn config_fixtures_against_the_schema() {
    let v = config_schema();
    assert_valid(&v, "config-valid.json", &fixture_json("config-valid.json"));
    assert_invalid(
        &v,
        "config-newer-schema.json",
        &fixture_json("config-newer-schema.json"),
    );
}

#[test]
fn schemas_reject_what_the_spec_forbids() {
    let t = task_schema();
    let base = fixture_json("task-valid-minimal.json");
    let with = |key: &str, value: Value| {
        let mut d = base.clone();
        d[key] = value;
        d
    };
    let without = |key: &str| {
        let mut d = base.clone();
        d.as_object_mut().unwrap().remove(key);
        d
    };
    for (what, doc) in [
        ("id with a slash", with("id", json!("a/b"))),
        ("id `..`", with("id", json!(".."))),
        ("id starting with a dot", with("id", json!(".hidden"))),
        ("id of 129 bytes", with("id", json!("a".repeat(129)))),
        ("empty id", with("id", json!(""))),
        ("priority 11", with("priority", json!(11))),
        ("priority as a string", with("priority", json!("1"))),
        ("max_attempts 0", with("max_attempts", json!(0))),
        ("negative attempts", with("attempts", json!(-1))),
        ("blank description", with("description", json!("   "))),
        (
            "timestamp without zone",
            with("created_at", json!("2026-11-30 01:52:44")),
        ),
        (
            "bad dependency id",
            with("dependencies", json!(["ok", "../x"])),
        ),
        (
            "duplicate dependency",
            with("dependencies", json!(["a", "a"])),
        ),
        ("bad claimed_by", with("claimed_by", json!("alice bob"))),
        ("schema_version 0", with("schema_version", json!(0))),
        ("missing seq", without("seq")),
        ("missing status", without("status")),
        ("missing updated_at", without("updated_at")),
    ] {
        assert!(!t.is_valid(&doc), "task schema accepted {what}");
    }
    assert!(t.is_valid(&with("id", json!("a".repeat(128)))));
    assert!(t.is_valid(&with("result", json!({"any": ["json", 1, null]}))));

    let c = config_schema();
    let base = fixture_json("config-valid.json");
    let mut bad_jitter = base.clone();
    bad_jitter["backoff"]["jitter"] = json!(1.5);
    let mut bad_factor = base.clone();
    bad_factor["backoff"]["factor"] = json!(0.5);
    let mut bad_durability = base.clone();
    bad_durability["durability"] = json!("paranoid");
    let mut zero_lease = base.clone();
    zero_lease["lease_ms"] = json!(0);
    for (what, doc) in [
        ("jitter 1.5", bad_jitter),
        ("factor 0.5", bad_factor),
        ("unknown durability", bad_durability),
        ("lease_ms 0", zero_lease),
    ] {
        assert!(!c.is_valid(&doc), "config schema accepted {what}");
    }
}

// ---------------------------------------------------------------- library

#[test]
fn real_fixtures_are_byte_for_byte_what_the_library_writes() {
    for (name, id) in [
        ("task-valid-minimal.json", "write-lexer"),
        ("task-valid-full.json", "parse-expr"),
    ] {
        let t = load_task(name, id)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .expect("fixture exists");
        let written = to_pretty(&t).unwrap();
        let on_disk = std::fs::read(fixture(name)).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(on_disk).unwrap(),
            "{name} is not in the canonical form of spec section 3.2"
        );
    }
    let cfg = read_config(&fixture("config-valid.json"))
        .unwrap()
        .expect("fixture exists");
    assert_eq!(
        to_pretty(&cfg).unwrap(),
        std::fs::read(fixture("config-valid.json")).unwrap(),
        "config-valid.json is not in the canonical form of spec section 3.3"
    );
}

#[test]
fn minimal_task_loads_with_creation_defaults() {
    let t = load_task("task-valid-minimal.json", "write-lexer")
        .unwrap()
        .unwrap();
    assert_eq!(t.schema_version, 1);
    assert_eq!(t.status, Status::Pending);
    assert_eq!(t.priority, 5);
    assert_eq!((t.attempts, t.max_attempts, t.fencing_token), (0, 3, 0));
    assert!(t.dependencies.is_empty());
    assert!(t.claimed_by.is_none() && t.lease_expires_at.is_none());
    assert!(t.backoff.is_none() && t.command.is_none() && t.log_file.is_none());
    assert!(t.extra.is_empty());
}

#[test]
fn full_task_loads_in_claimed_state() {
    let t = load_task("task-valid-full.json", "parse-expr")
        .unwrap()
        .unwrap();
    assert_eq!(t.status, Status::Claimed);
    assert_eq!(t.claimed_by.as_deref(), Some("worker-2"));
    assert_eq!((t.attempts, t.max_attempts, t.fencing_token), (2, 4, 2));
    assert_eq!(t.priority, 2);
    assert_eq!(t.dependencies, vec![TaskId::new("lexer-tables").unwrap()]);
    assert_eq!(t.context.tags, vec!["rust", "parser"]);
    assert!(t.context.hints.is_some() && t.command.is_some());
    let b = t.backoff.expect("per-task backoff");
    assert_eq!(
        (b.base_ms, b.factor, b.max_ms, b.jitter),
        (2000, 3.0, 120_000, 0.25)
    );
    let lease = t.lease_expires_at.expect("a claimed task has a lease");
    let claimed = t.claimed_at.expect("a claimed task has claimed_at");
    assert!(lease > claimed);
    assert!(t.not_before.is_none() && t.completed_at.is_none());
    // What the failed first attempt left: its error, result and log file.
    assert!(t.error.is_some());
    assert_eq!(t.result.as_ref().unwrap()["exit_code"], 101);
    assert_eq!(t.log_file.as_deref(), Some("logs/parse-expr.1.log"));
    assert!(t.extra.is_empty());
}

#[test]
fn required_only_task_loads_and_is_rewritten_in_canonical_form() {
    let t = load_task("task-valid-required-only.json", "port-tests")
        .unwrap()
        .unwrap();
    assert!(t.dependencies.is_empty());
    assert!(t.context.files.is_empty() && t.context.tags.is_empty());
    assert!(t.context.hints.is_none());
    assert!(t.claimed_by.is_none() && t.result.is_none() && t.error.is_none());
    let out: Value = serde_json::from_slice(&to_pretty(&t).unwrap()).unwrap();
    // Section 3.1: any RFC 3339 offset and precision is read; UTC,
    // milliseconds and `Z` are written.
    assert_eq!(out["created_at"], "2026-11-30T01:52:44.000Z");
    assert_eq!(out["updated_at"], "2026-11-30T01:52:44.500Z");
    assert_eq!(out["dependencies"], json!([]));
    assert_eq!(out["context"], json!({"files": [], "tags": []}));
    assert_eq!(out["claimed_by"], Value::Null);
    assert_valid(&task_schema(), "rewritten required-only task", &out);
}

#[test]
fn unknown_fields_are_kept_in_extra_and_survive_a_round_trip() {
    let original = fixture_json("task-unknown-fields.json");
    let t = load_task("task-unknown-fields.json", "write-lexer")
        .unwrap()
        .unwrap();
    let unknown = ["estimate_minutes", "review", "x-origin"];
    let mut keys: Vec<&str> = t.extra.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, unknown);
    for k in unknown {
        assert_eq!(t.extra[k], original[k], "extra field `{k}` changed on load");
    }

    let bytes = to_pretty(&t).unwrap();
    let out: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(out, original, "a rewrite must keep every field and value");
    assert_valid(&task_schema(), "rewritten task with unknown fields", &out);

    // And a second load of what was written gives the same task.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("write-lexer.json");
    std::fs::write(&p, &bytes).unwrap();
    let again = read_task(&p, &TaskId::new("write-lexer").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(again, t);
}

#[test]
fn unknown_members_of_nested_objects_are_accepted() {
    // Section 10: readers accept unknown members in `context` and `backoff`
    // (only top-level ones are guaranteed to survive a rewrite).
    let mut doc = fixture_json("task-valid-full.json");
    doc["context"]["owner"] = json!("alice");
    doc["backoff"]["strategy"] = json!("decorrelated");
    assert_valid(&task_schema(), "nested unknown members", &doc);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("parse-expr.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let t = read_task(&p, &TaskId::new("parse-expr").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(t.status, Status::Claimed);
}

#[test]
fn newer_schema_is_refused_with_newer_schema() {
    match load_task("task-newer-schema.json", "write-lexer") {
        Err(
            e @ Error::NewerSchema {
                found: 2,
                supported: 1,
                ..
            },
        ) => {
            assert_eq!(e.exit_code(), 65);
            assert_eq!(e.kind(), "newer_schema");
        }
        other => panic!("expected NewerSchema for task-newer-schema.json, got {other:?}"),
    }
    match read_config(&fixture("config-newer-schema.json")) {
        Err(
            e @ Error::NewerSchema {
                found: 2,
                supported: 1,
                ..
            },
        ) => {
            assert_eq!(e.exit_code(), 65);
        }
        other => panic!("expected NewerSchema for config-newer-schema.json, got {other:?}"),
    }
}

#[test]
fn corrupt_fixtures_are_refused_with_corrupt() {
    for (name, id) in [
        ("task-corrupt-truncated.json", "parse-expr"),
        ("task-bad-status.json", "write-lexer"),
        // Section 3.2: the `id` inside must equal the file name.
        ("task-valid-minimal.json", "some-other-task"),
    ] {
        match load_task(name, id) {
            Err(e @ Error::Corrupt { .. }) => {
                assert_eq!(e.exit_code(), 65, "{name}");
                assert_eq!(e.kind(), "corrupt", "{name}");
            }
            other => panic!("expected Corrupt for {name} as `{id}`, got {other:?}"),
        }
    }
}

#[test]
fn bad_priority_is_refused_as_corrupt() {
    match load_task("task-bad-priority.json", "write-lexer") {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected Corrupt for task-bad-priority.json, got {other:?}"),
    }
}

#[test]
fn config_fixture_loads() {
    let c = read_config(&fixture("config-valid.json"))
        .unwrap()
        .expect("fixture exists");
    assert_eq!(c.schema_version, 1);
    assert_eq!(c.goal, "Ship the expression parser");
    assert_eq!((c.lease_ms, c.max_attempts), (300_000, 3));
    assert_eq!(
        (
            c.backoff.base_ms,
            c.backoff.factor,
            c.backoff.max_ms,
            c.backoff.jitter
        ),
        (1000, 2.0, 60_000, 0.5)
    );
    assert_eq!(c.durability, Durability::Durable);
    assert!(c.extra.is_empty());
}

/// The schema and the library agree on documents that break the field
/// types: both refuse them (the library as `Corrupt`).
#[test]
fn schema_and_library_agree_on_type_errors() {
    let v = task_schema();
    let base = fixture_json("task-valid-minimal.json");
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &str, Value)> = vec![
        ("status", "unknown status", json!("running")),
        ("seq", "negative seq", json!(-1)),
        ("attempts", "fractional attempts", json!(1.5)),
        ("fencing_token", "token as a string", json!("3")),
        ("created_at", "timestamp not RFC 3339", json!("yesterday")),
        (
            "not_before",
            "timestamp as a number",
            json!(1764467564133u64),
        ),
        ("dependencies", "dependency id with a slash", json!(["a/b"])),
        ("description", "description as a number", json!(42)),
        ("schema_version", "schema_version as a string", json!("1")),
    ];
    for (key, what, value) in cases {
        let mut doc = base.clone();
        doc[key] = value;
        assert!(!v.is_valid(&doc), "task schema accepted {what}");
        let p = dir.path().join("write-lexer.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        match read_task(&p, &TaskId::new("write-lexer").unwrap()) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("library did not refuse {what} as corrupt: {other:?}"),
        }
    }
}
