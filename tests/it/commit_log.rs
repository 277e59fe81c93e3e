//! The commit log (`spec/PROTOCOL.md` section 4.8) beyond the crash points
//! every command passes (those are in `crash`): recovery between two task
//! files (`mid_replay`), the checkpoint (`before_checkpoint`), recovery
//! after a reboot (simulated with `ORCHESTRATE_BOOT_ID`, which debug builds
//! read in place of `/proc/sys/kernel/random/boot_id`), recovery by a
//! writer that does not use the log, and what `doctor` says about a log a
//! crashed writer left. Every process is a real `orchestrate` process.

use crate::harness::{check_readers, event_lines, how, no_core_cmd, output_within, streams};
use crate::support::TestEnv;
use orchestrate::protocol::commit_log::{self, Record};
use serde_json::{json, Value};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// `t` claimed by `a1` (token 1), `u` pending; durable (the default), so
/// rewrites go through the log.
fn setup() -> TestEnv {
    let env = TestEnv::new();
    env.create("the target", &["--id", "t"]);
    env.create("the next", &["--id", "u", "-p", "9"]);
    let c = env.claim("a1", &["t", "--lease", "5m"]);
    assert_eq!(c.token, 1);
    env
}

/// Runs `args` with `ORCHESTRATE_CRASH_AT=point` (and `extra` variables)
/// and checks that it aborted there.
fn crash(env: &TestEnv, args: &[&str], point: &str, extra: &[(&str, &str)]) {
    let mut cmd = no_core_cmd(env);
    cmd.args(args).env("ORCHESTRATE_CRASH_AT", point);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = output_within(cmd, Duration::from_secs(30));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{args:?} at {point}: {}\n{}",
        how(&out),
        streams(&out)
    );
}

/// The report-and-claim `complete t --claim-next` (two task files in one
/// commit record), crashed right after its commit point.
fn crash_after_commit(env: &TestEnv) {
    crash(
        env,
        &[
            "complete",
            "t",
            "--token",
            "1",
            "--result",
            "r",
            "--claim-next",
            "--agent",
            "a2",
        ],
        "after_log_append",
        &[],
    );
}

fn log_len(env: &TestEnv) -> u64 {
    std::fs::metadata(env.dir().join("commit.log"))
        .expect("commit.log exists")
        .len()
}

/// The records of the log's current generation, as a second
/// implementation would read them (`spec` 4.8).
fn log_records(env: &TestEnv) -> Vec<Record> {
    let path = env.dir().join("commit.log");
    let bytes = std::fs::read(&path).expect("read commit.log");
    let (records, _) = commit_log::decode(&path, &bytes).expect("decode commit.log");
    records.into_iter().map(|(r, _)| r).collect()
}

/// Tears task `id`'s file in half, as a power loss that lost its unsynced
/// write may, then runs a mutation as if after a reboot (debug builds read
/// `ORCHESTRATE_BOOT_ID` in place of the boot id) and checks it succeeded.
fn tear_and_reboot(env: &TestEnv, id: &str) {
    let bytes = env.task_bytes(id);
    std::fs::write(env.task_path(id), &bytes[..bytes.len() / 2]).unwrap();
    let mut cmd = env.std_cmd();
    cmd.args(["create-task", "after the reboot", "--id", "later"])
        .env("ORCHESTRATE_BOOT_ID", "another-boot");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", streams(&out));
}

/// The `commit_log_recovered` events, in order.
fn recoveries(env: &TestEnv) -> Vec<Value> {
    event_lines(env)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "commit_log_recovered")
        .collect()
}

/// The number of `index_rebuilt` events.
fn rebuilds(env: &TestEnv) -> usize {
    event_lines(env)
        .iter()
        .filter(|l| l.contains("\"event\":\"index_rebuilt\""))
        .count()
}

/// Both files of the report-and-claim, as the commit says.
fn assert_committed(env: &TestEnv) {
    let t = env.task_json("t");
    assert_eq!(
        (t["status"].as_str(), t["result"].as_str()),
        (Some("completed"), Some("r"))
    );
    let u = env.task_json("u");
    assert_eq!(u["status"], "claimed", "{u}");
    assert_eq!(u["claimed_by"], "a2", "{u}");
}

#[test]
fn a_crash_after_the_commit_point_is_finished_by_the_next_mutation() {
    let env = setup();
    let before = env.snapshot();
    let built = rebuilds(&env); // the one `init` made
    crash_after_commit(&env);
    // Readers see the old files until a writer recovers.
    check_readers(&env).unwrap();
    assert_eq!(env.task_bytes("t"), before["tasks/t.json"]);
    assert_eq!(env.task_json("u")["status"], "pending");
    env.ok(&["create-task", "later", "--id", "later"]);
    assert_committed(&env);
    let r = recoveries(&env);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["reason"], "crash", "{}", r[0]);
    assert_eq!(r[0]["task_files"], 2, "{}", r[0]);
    // The index already said what the commit says: kept, not rebuilt
    // (a rebuild reads every task file), and consistent.
    assert_eq!(rebuilds(&env), built, "the replay rebuilt the index");
    env.json(&["doctor", "--json"], 0);
    // Clean again: the next mutation recovers nothing.
    env.ok(&["create-task", "later still", "--id", "later2"]);
    assert_eq!(recoveries(&env).len(), 1);
    // And the work goes on: a2 holds u with token 1.
    env.ok(&["complete", "u", "--token", "1"]);
}

#[test]
fn a_crash_in_the_middle_of_a_replay_is_replayed_again() {
    let env = setup();
    crash_after_commit(&env);
    // The recovering writer dies between the two task files.
    crash(
        &env,
        &["create-task", "later", "--id", "later"],
        "mid_replay",
        &[],
    );
    check_readers(&env).unwrap();
    let t = env.task_json("t");
    assert_eq!(t["status"], "completed", "the first file was written: {t}");
    assert_eq!(env.task_json("u")["status"], "pending");
    env.ok(&["create-task", "later", "--id", "later"]);
    assert_committed(&env);
    assert_eq!(env.json(&["list", "--json"], 0)["errors"], json!([]));
}

#[test]
fn a_torn_commit_record_is_cut_off_and_changes_nothing() {
    let env = setup();
    let before = env.snapshot();
    crash(
        &env,
        &["complete", "t", "--token", "1", "--result", "r"],
        "mid_log_record",
        &[],
    );
    let torn = std::fs::read(env.dir().join("commit.log")).unwrap();
    assert!(!torn.ends_with(b"\n"), "nothing was torn");
    env.ok(&["create-task", "later", "--id", "later"]);
    for (k, v) in &before {
        if k.starts_with("tasks/") {
            assert_eq!(env.snapshot().get(k), Some(v), "{k} changed");
        }
    }
    // The torn line is gone: the log ends in a whole line.
    let after = std::fs::read(env.dir().join("commit.log")).unwrap();
    assert!(after.is_empty() || after.ends_with(b"\n"));
    // The holder can still complete (the crashed attempt did not happen).
    env.ok(&["complete", "t", "--token", "1", "--result", "again"]);
    assert_eq!(env.task_json("t")["result"], "again");
}

#[test]
fn after_a_reboot_every_committed_file_is_written_again_durably() {
    let env = setup();
    env.ok(&["heartbeat", "t", "--token", "1", "--lease", "1h"]);
    let committed = env.task_bytes("t");
    assert!(log_len(&env) > 0, "the heartbeat went through the log");
    // A power loss that lost the unsynced task file: what a kernel that
    // never wrote the page back leaves (here, the old claim, torn).
    tear_and_reboot(&env, "t");
    assert_eq!(
        env.task_bytes("t"),
        committed,
        "the committed heartbeat was not restored"
    );
    assert_eq!(log_len(&env), 0, "a reboot recovery empties the log");
    let r = recoveries(&env);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["reason"], "reboot");
    check_readers(&env).unwrap();
}

#[test]
fn a_writer_without_the_log_recovers_it_and_empties_it() {
    let env = setup();
    crash_after_commit(&env);
    env.edit_config(|v| v["durability"] = json!("relaxed"));
    env.ok(&["create-task", "later", "--id", "later"]);
    assert_committed(&env);
    assert_eq!(
        log_len(&env),
        0,
        "a writer that does not use the log left it"
    );
    let r = recoveries(&env);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["uses_the_log"], false);
    // It now writes task files directly; switching back is safe (the log
    // is empty, nothing stale can be replayed over them).
    env.ok(&["complete", "u", "--token", "1", "--result", "relaxed"]);
    env.edit_config(|v| v["durability"] = json!("durable"));
    env.ok(&["create-task", "durable again", "--id", "again"]);
    assert_eq!(env.task_json("u")["result"], "relaxed");
    // ORCHESTRATE_COMMIT_LOG=0 is the same kind of writer.
    let env = setup();
    crash_after_commit(&env);
    let out = env
        .cmd()
        .args(["create-task", "later", "--id", "later"])
        .env("ORCHESTRATE_COMMIT_LOG", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", streams(&out));
    assert_committed(&env);
    assert_eq!(log_len(&env), 0);
}

#[test]
fn a_writer_without_the_log_empties_a_clean_log_without_a_recovery() {
    let env = setup();
    assert!(log_len(&env) > 0, "the claim in setup went through the log");
    env.edit_config(|v| v["durability"] = json!("relaxed"));
    env.ok(&["create-task", "later", "--id", "later"]);
    assert_eq!(
        log_len(&env),
        0,
        "a writer that does not use the log left it"
    );
    assert_eq!(recoveries(&env), Vec::<Value>::new());
    assert_eq!(env.task_json("t")["status"], "claimed");
}

#[test]
fn archive_checkpoints_first_and_a_crash_there_loses_nothing() {
    let env = setup();
    env.ok(&["complete", "t", "--token", "1", "--result", "r"]);
    assert!(log_len(&env) > 0);
    crash(
        &env,
        &["archive", "--older-than", "0"],
        "before_checkpoint",
        &[],
    );
    check_readers(&env).unwrap();
    assert_eq!(env.task_json("t")["status"], "completed");
    let r = env.json(&["archive", "--older-than", "0", "--json"], 0);
    assert!(r.to_string().contains("\"t\""), "t was not archived: {r}");
    let left = log_records(&env);
    assert!(
        matches!(left.as_slice(), [Record::Checkpoint { .. }]),
        "archive did not checkpoint: {left:?}"
    );
    assert!(!env.task_path("t").exists());
    // A replay can no longer bring t back into tasks/.
    let mut cmd = env.std_cmd();
    cmd.args(["create-task", "after", "--id", "later"])
        .env("ORCHESTRATE_BOOT_ID", "another-boot");
    let out = output_within(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", streams(&out));
    assert!(!env.task_path("t").exists(), "the replay brought t back");
}

#[test]
fn doctor_reports_a_log_left_by_a_crash_and_fix_recovers_it() {
    let env = setup();
    crash_after_commit(&env);
    // The index the crashed writer had changed is stale too, which the next
    // mutation repairs: warnings, not damage (exit 0).
    let v = env.json(&["doctor", "--json"], 0);
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"commit_log_pending"), "{v}");
    env.run(&["doctor", "--fix", "--json"]);
    assert_committed(&env);
    let v = env.json(&["doctor", "--json"], 0);
    assert!(
        !v.to_string().contains("commit_log_pending"),
        "still reported after --fix: {v}"
    );
}

#[test]
fn a_checkpoint_reuses_the_file_and_a_reboot_replays_only_the_new_generation() {
    // Records of about 100 KiB each, all of one length (only the lease
    // changes, and its text keeps its length), so that the new generation's
    // lines fall exactly where the old one's did: with the salt ignored,
    // the old records after them would read as valid, and a replay after a
    // reboot would bring an old heartbeat back.
    let env = TestEnv::new();
    let big = "d".repeat(100 * 1024);
    env.create(&big, &["--id", "t"]);
    let c = env.claim("a1", &["t", "--lease", "5m"]);
    let beat = |lease: &str| {
        env.ok(&[
            "heartbeat",
            "t",
            "--token",
            &c.token.to_string(),
            "--lease",
            lease,
        ])
    };
    let mut sizes = vec![log_len(&env)];
    let mut gen1 = 0;
    for _ in 0..6 {
        beat("1h");
        sizes.push(log_len(&env));
        gen1 = gen1.max(log_records(&env).len());
        if matches!(log_records(&env).as_slice(), [Record::Checkpoint { .. }]) {
            break;
        }
    }
    assert!(
        matches!(log_records(&env).as_slice(), [Record::Checkpoint { .. }]),
        "no checkpoint after {sizes:?}"
    );
    let full = log_len(&env);
    assert!(gen1 >= 7, "the first generation held {gen1} records");
    // The next generation is written over the old one: the file keeps its
    // size, and the old records stay after the new ones.
    beat("2h");
    let committed = env.task_bytes("t");
    assert_eq!(log_len(&env), full, "the file did not keep its size");
    let now = log_records(&env);
    assert_eq!(
        now.len(),
        4,
        "{:?}",
        now.iter()
            .map(|r| format!("{r:?}").chars().take(40).collect::<String>())
            .collect::<Vec<_>>()
    );
    // A power loss that lost the task file's last write.
    tear_and_reboot(&env, "t");
    assert_eq!(
        env.task_bytes("t"),
        committed,
        "the reboot recovery did not restore the new generation's heartbeat"
    );
    let r = recoveries(&env);
    assert_eq!((r.len(), &r[0]["task_files"]), (1, &json!(1)), "{r:?}");
    check_readers(&env).unwrap();
}

#[test]
fn without_a_boot_id_the_log_is_not_used_and_an_old_one_is_replayed_whole() {
    // A writer that cannot read a boot id cannot tell a crash from a
    // reboot, so it writes task files durably itself (spec 4.2)...
    let env = setup();
    let no_boot = |args: &[&str]| {
        let mut cmd = env.std_cmd();
        cmd.args(args).env("ORCHESTRATE_BOOT_ID", "");
        let out = output_within(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", streams(&out));
    };
    no_boot(&["complete", "t", "--token", "1", "--result", "r"]);
    assert_eq!(env.task_json("t")["status"], "completed");
    assert!(
        !log_records(&env)
            .iter()
            .any(|r| matches!(r, Record::Commit { .. }) && format!("{r:?}").contains("\\\"r\\\"")),
        "the completion went through the log without a boot id"
    );
    // ...and takes a log whose checkpoint names no boot for one left
    // before a reboot: every commit in it is written again, not only those
    // after the last `applied`.
    let committed = env.task_bytes("t");
    let mut log = commit_log::encode(
        &Record::Checkpoint {
            boot_id: String::new(),
            salt: "00000000000000aa".into(),
        },
        "",
    )
    .unwrap();
    for r in [
        Record::Begin,
        Record::Commit {
            tasks: vec![commit_log::TaskWrite {
                id: "t".into(),
                content: String::from_utf8(committed.clone()).unwrap(),
            }],
        },
        Record::Applied,
    ] {
        log.extend(commit_log::encode(&r, "00000000000000aa").unwrap());
    }
    std::fs::write(env.dir().join("commit.log"), &log).unwrap();
    std::fs::write(env.task_path("t"), &committed[..committed.len() / 2]).unwrap();
    // (The `complete` above already took setup's log for one of another
    // boot: one recovery.)
    let before = recoveries(&env).len();
    no_boot(&["create-task", "after", "--id", "later"]);
    assert_eq!(
        env.task_bytes("t"),
        committed,
        "the commit was not replayed"
    );
    let r = recoveries(&env);
    assert_eq!(r.len(), before + 1, "{r:?}");
    assert_eq!(r[before]["reason"], "reboot", "{}", r[before]);
}

#[test]
fn doctor_reports_a_commit_log_that_is_not_a_regular_file_and_fix_moves_it() {
    let env = setup();
    let log = env.dir().join("commit.log");
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    // Every mutation refuses to run...
    env.expect(&["heartbeat", "t", "--token", "1"], 65);
    // ...and doctor says so, as damage.
    let v = env.json(&["doctor", "--json"], 65);
    assert!(
        v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["file"] == "commit.log" && f["severity"] == "error"),
        "{v}"
    );
    env.json(&["doctor", "--fix", "--json"], 0);
    env.ok(&["heartbeat", "t", "--token", "1"]);
    assert!(
        log.is_file(),
        "the next mutation did not create the log again"
    );
    env.json(&["doctor", "--json"], 0);
}

#[test]
fn a_crash_between_begin_and_the_commit_rebuilds_the_index() {
    // The claim took u's ready entry out of the index, then died before
    // its commit: u is still pending, and only a rebuild puts it back.
    let env = setup();
    let built = rebuilds(&env); // the one `init` made
    crash(
        &env,
        &["claim", "--agent", "a2", "u"],
        "before_log_append",
        &[],
    );
    assert_eq!(env.task_json("u")["status"], "pending");
    env.ok(&["create-task", "later", "--id", "later"]);
    assert_eq!(rebuilds(&env), built + 1, "the index was not rebuilt");
    let c = env.claim("a3", &["u"]);
    assert_eq!(c.token, 1);
    env.json(&["doctor", "--json"], 0);
}
