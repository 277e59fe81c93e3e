//! `orchestrate doctor [--fix]`: findings, repairs, exit codes.

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

mod common;
use common::{bin, Env};

/// `doctor --json` (with `--fix`), asserting exit `code`.
trait Doctor {
    fn doctor(&self, fix: bool, code: i32) -> Value;
}

impl Doctor for Env {
    fn doctor(&self, fix: bool, code: i32) -> Value {
        let mut args = vec!["doctor", "--json"];
        if fix {
            args.push("--fix");
        }
        serde_json::from_str(&self.run(&args, code)).unwrap()
    }
}

fn kinds(r: &Value) -> Vec<String> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn clean_directory_is_clean() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["create-task", "b", "--id", "b", "-d", "a"], 0);
    e.run(&["claim", "--agent", "x"], 0);
    let r = e.doctor(false, 0);
    assert_eq!(r["clean"], true);
    assert_eq!(r["tasks_checked"], 2);
    assert!(kinds(&r).is_empty(), "{r:#}");
}

#[test]
fn damage_is_reported_then_fixed_without_losing_a_readable_task() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    std::fs::write(
        e.coord().join("tasks/broken.json"),
        b"{\"schema_version\": 1, \"id\": \"bro",
    )
    .unwrap();
    std::fs::write(e.coord().join("tasks/.tmp-write"), b"half").unwrap();
    let outside = e.dir.path().join("outside.txt");
    std::fs::write(&outside, b"keep me").unwrap();
    std::os::unix::fs::symlink(&outside, e.coord().join("tasks/link.json")).unwrap();
    let r = e.doctor(false, 65);
    let k = kinds(&r);
    for want in ["corrupt_file", "orphan_temp", "symlink"] {
        assert!(k.iter().any(|x| x == want), "{want} missing in {k:?}");
    }
    // Without --fix nothing changes.
    assert!(e.coord().join("tasks/broken.json").exists());
    let r = e.doctor(true, 0);
    assert_eq!(r["clean"], true, "{r:#}");
    assert!(r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["fixed"] == true));
    assert!(!e.coord().join("tasks/broken.json").exists());
    assert!(!e.coord().join("tasks/.tmp-write").exists());
    assert!(std::fs::symlink_metadata(e.coord().join("tasks/link.json")).is_err());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    let q: Vec<String> = std::fs::read_dir(e.coord().join("quarantine"))
        .unwrap()
        .map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        q.iter()
            .any(|n| n.starts_with("broken.json.") && n.ends_with(".note")),
        "{q:?}"
    );
    let note = q
        .iter()
        .find(|n| n.starts_with("broken.json.") && n.ends_with(".note"))
        .unwrap();
    assert!(
        std::fs::read_to_string(e.coord().join("quarantine").join(note))
            .unwrap()
            .contains("invalid JSON")
    );
    // The readable task is still there and claimable.
    let v: Value = serde_json::from_str(&e.run(&["claim", "--agent", "x", "--json"], 0)).unwrap();
    assert_eq!(v["task"]["id"], "a");
    assert_eq!(e.doctor(false, 0)["clean"], true);
}

#[test]
fn a_stale_index_is_found_and_rebuilt() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    // Lose the ready entry, as a foreign writer that ignores the index might.
    for pp in std::fs::read_dir(e.coord().join("index/ready")).unwrap() {
        for bucket in std::fs::read_dir(pp.unwrap().path()).unwrap() {
            std::fs::write(bucket.unwrap().path(), b"").unwrap();
        }
    }
    assert!(kinds(&e.doctor(false, 65)).contains(&"index_stale".to_string()));
    e.doctor(true, 0);
    let v: Value = serde_json::from_str(&e.run(&["claim", "--agent", "x", "--json"], 0)).unwrap();
    assert_eq!(v["task"]["id"], "a");
}

#[test]
fn pending_task_with_a_dead_dependency_gets_blocked() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["create-task", "b", "--id", "b", "-d", "a"], 0);
    // Make `a` dead behind the protocol's back, as a crash in the middle of
    // blocking propagation would leave it.
    let p = e.coord().join("tasks/a.json");
    let mut a: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    a["status"] = "dead".into();
    a["attempts"] = 0.into();
    std::fs::write(&p, serde_json::to_vec_pretty(&a).unwrap()).unwrap();
    let r = e.doctor(false, 65);
    assert!(
        kinds(&r).contains(&"should_be_blocked".to_string()),
        "{r:#}"
    );
    e.doctor(true, 0);
    let b: Value =
        serde_json::from_slice(&std::fs::read(e.coord().join("tasks/b.json")).unwrap()).unwrap();
    assert_eq!(b["status"], "blocked");
}

#[test]
fn a_newer_schema_file_is_a_warning_and_left_untouched() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    let p = e.coord().join("tasks/future.json");
    let body = br#"{"schema_version": 2, "id": "future", "whatever": true}"#;
    std::fs::write(&p, body).unwrap();
    let r = e.doctor(true, 0);
    assert_eq!(kinds(&r), vec!["newer_schema"]);
    assert_eq!(r["findings"][0]["severity"], "warning");
    assert_eq!(std::fs::read(&p).unwrap(), body);
    let _ = Path::new("");
}

fn edit_task(e: &Env, id: &str, f: impl FnOnce(&mut Value)) {
    let p = e.coord().join(format!("tasks/{id}.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_lease_index_with_another_expiry_is_index_stale() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["claim", "--agent", "x"], 0);
    let leases = e.coord().join("index/leases");
    let text = std::fs::read_to_string(&leases).unwrap();
    // Lines are `<expiry ms>-<task id>`.
    let (ms, rest) = text.trim_end().split_once('-').unwrap();
    let other = ms.parse::<i64>().unwrap() + 60_000;
    std::fs::write(&leases, format!("{other}-{rest}\n")).unwrap();
    let r = e.doctor(false, 65);
    let f = r["findings"].as_array().unwrap();
    assert!(
        f.iter()
            .any(|x| x["kind"] == "index_stale" && x["file"] == "index/leases"),
        "{r:#}"
    );
    assert_eq!(e.doctor(true, 0)["clean"], true);
}

#[test]
fn impossible_timestamps_are_invalid_fields() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["claim", "--agent", "x"], 0);
    edit_task(&e, "a", |v| {
        v["claimed_at"] = Value::from("2099-01-01T00:00:00.000Z")
    });
    let r = e.doctor(false, 65);
    assert!(kinds(&r).contains(&"invalid_fields".to_string()), "{r:#}");
}

#[test]
fn a_leftover_temp_is_a_warning_not_damage() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    std::fs::write(e.coord().join("tasks/.tmp-write"), b"half").unwrap();
    let r = e.doctor(false, 0);
    assert_eq!(r["clean"], true);
    let f = &r["findings"][0];
    assert_eq!(f["kind"], "orphan_temp");
    assert_eq!(f["severity"], "warning");
}

#[test]
fn reap_reports_an_unreadable_claimed_task_with_exit_65() {
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["claim", "--agent", "x", "--lease", "1ms"], 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        e.coord().join("tasks/a.json"),
        b"{\"schema_version\": 1, \"id\"",
    )
    .unwrap();
    let out = Command::new(bin())
        .current_dir(e.dir.path())
        .env_remove("COORDINATION_DIR")
        .arg("reap")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tasks/a.json"),
        "{out:?}"
    );
}

#[test]
fn two_tasks_with_one_seq_are_a_coherence_error() {
    // What four concurrent creates left on a GlusterFS mount that cached
    // index/next_seq (issue 14): doctor used to say "no problems found".
    let e = Env::new("g");
    e.run(&["create-task", "a", "--id", "a"], 0);
    e.run(&["create-task", "b", "--id", "b"], 0);
    let seq_a =
        serde_json::from_slice::<Value>(&std::fs::read(e.coord().join("tasks/a.json")).unwrap())
            .unwrap()["seq"]
            .clone();
    edit_task(&e, "b", |v| v["seq"] = seq_a.clone());
    let r = e.doctor(false, 65);
    assert!(kinds(&r).contains(&"duplicate_seq".to_string()), "{r:#}");
    let f = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "duplicate_seq")
        .unwrap();
    assert!(f["message"].as_str().unwrap().contains("`a`, `b`"), "{f}");
    assert!(f["fix"].as_str().unwrap().contains("doctor --shared"));
    // On a local disk, --shared says so and adds nothing.
    let e2 = Env::new("g");
    let v: Value = serde_json::from_str(&e2.run(&["doctor", "--shared", "--json"], 0)).unwrap();
    assert_eq!(v["mount"]["verdict"], "local");
    assert!(!kinds(&v).iter().any(|k| k.starts_with("mount_")), "{v:#}");
}
