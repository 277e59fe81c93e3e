//! Latency of `orchestrate hook <event>` as Claude Code runs it: a new
//! process, hook JSON on stdin, answer on stdout (issue 4: median under
//! 20 ms). Run: `cargo bench --bench hook_latency`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn orchestrate(dir: &Path, args: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_orchestrate"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?}");
}

fn hook(dir: &Path, event: &str, input: &str) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrate"))
        .arg("--dir")
        .arg(dir)
        .args(["hook", event])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let st = child.wait().expect("wait");
    let d = t.elapsed();
    assert!(st.success(), "hook {event} failed");
    d
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
    )
}

fn main() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).expect("target tmp");
    let tmp = tempfile::tempdir_in(base).expect("tempdir");
    let dir = tmp.path().join(".coordination");
    orchestrate(&dir, &["init", "hook latency"]);
    for i in 0..300 {
        orchestrate(
            &dir,
            &[
                "create-task",
                &format!("task {i}"),
                "--id",
                &format!("t{i}"),
            ],
        );
    }
    let n = 100;
    let input = |session: &str, event: &str, extra: &str| {
        format!(
            r#"{{"session_id":"{session}","transcript_path":"/tmp/t.jsonl","cwd":"/tmp","hook_event_name":"{event}"{extra}}}"#
        )
    };
    println!("orchestrate hook latency, {n} runs each, 300 tasks queued (ms: median / p90 / max)");
    let mut rows = Vec::new();
    rows.push((
        "session-start",
        (0..n)
            .map(|i| {
                hook(
                    &dir,
                    "session-start",
                    &input(&format!("s{i}"), "SessionStart", r#","source":"startup""#),
                )
            })
            .collect::<Vec<_>>(),
    ));
    rows.push((
        "user-prompt-submit",
        (0..n)
            .map(|i| {
                hook(
                    &dir,
                    "user-prompt-submit",
                    &input(&format!("s{i}"), "UserPromptSubmit", r#","prompt":"go""#),
                )
            })
            .collect(),
    ));
    // Each stop claims a task for a new session (the busiest path).
    rows.push((
        "stop (claims)",
        (0..n)
            .map(|i| {
                hook(
                    &dir,
                    "stop",
                    &input(&format!("s{i}"), "Stop", r#","stop_hook_active":false"#),
                )
            })
            .collect(),
    ));
    rows.push((
        "stop (holding)",
        (0..n)
            .map(|i| {
                hook(
                    &dir,
                    "stop",
                    &input(&format!("s{i}"), "Stop", r#","stop_hook_active":false"#),
                )
            })
            .collect(),
    ));
    rows.push((
        "session-end (releases)",
        (0..n)
            .map(|i| {
                hook(
                    &dir,
                    "session-end",
                    &input(&format!("s{i}"), "SessionEnd", ""),
                )
            })
            .collect(),
    ));
    for (name, v) in rows {
        let (med, p90, max) = stats(v);
        println!("{name:>24}: {med:6.2} / {p90:6.2} / {max:6.2}   (target: median < 20)");
    }
}
