//! `events`, `metrics`, `graph` and `watch`.

use super::exit::Usage;
use super::output;
use super::tasks::open;
use super::Global;
use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use orchestrate::protocol::events::{Event, LogReader};
use orchestrate::protocol::watch::ChangeWatcher;
use orchestrate::{
    observe::{graph, metrics},
    protocol::clock,
    Coordination, Status, Timestamp,
};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this task
    #[arg(long = "task", value_name = "ID")]
    pub task: Option<String>,
    /// Only events of this agent
    #[arg(long = "agent", value_name = "ID")]
    pub agent: Option<String>,
    /// Only events at or after T: an RFC 3339 time or a duration ago (10m, 2h)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Keep printing new events as they are appended
    #[arg(short, long)]
    pub follow: bool,
    /// With --follow: poll every DURATION instead of file-system events
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub poll: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task
    pub id: String,
    /// Which attempt (1 is the first; default: the latest)
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Keep printing the output as it is written, until the attempt ends
    /// (waits for the first attempt of a task not started yet)
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write DIR/orchestrate.prom atomically (node_exporter textfile collector) instead of stdout
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT
    Dot,
    /// Mermaid flowchart
    Mermaid,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Poll every DURATION instead of file-system events (NFS, some container mounts)
    #[arg(long, num_args = 0..=1, default_missing_value = "500ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub poll: Option<Duration>,
    /// Recent events shown
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub events: usize,
}

fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        Usage(format!(
            "--since `{s}`: use an RFC 3339 time or a duration such as 10m"
        ))
    })?;
    Ok(now - chrono::TimeDelta::milliseconds(d.as_millis() as i64))
}

struct Filter {
    task: Option<String>,
    agent: Option<String>,
    since: Option<Timestamp>,
}

impl Filter {
    fn keep(&self, e: &Event) -> bool {
        if self
            .task
            .as_ref()
            .is_some_and(|t| e.task_id.as_ref() != Some(t))
        {
            return false;
        }
        if self
            .agent
            .as_ref()
            .is_some_and(|a| e.agent_id.as_ref() != Some(a))
        {
            return false;
        }
        if let Some(since) = self.since {
            match chrono::DateTime::parse_from_rfc3339(&e.ts) {
                Ok(t) if t.with_timezone(&chrono::Utc) >= since => {}
                _ => return false,
            }
        }
        true
    }
}

fn human_event(e: &Event) -> String {
    let mut s = format!(
        "{} {:<15} {:<20} {:<24}",
        e.ts,
        e.event,
        e.task_id.as_deref().unwrap_or("-"),
        e.agent_id.as_deref().unwrap_or("-")
    );
    if let (Some(f), Some(t)) = (&e.from, &e.to) {
        s += &format!(" {f} -> {t}");
    } else if let Some(t) = &e.to {
        s += &format!(" -> {t}");
    }
    if let Some(err) = e.detail.get("error").and_then(|v| v.as_str()) {
        s += &format!("  error: {}", output::truncate(err, 80));
    }
    if e.event == "discovery_recorded" {
        if let Some(title) = e.detail.get("title").and_then(|v| v.as_str()) {
            s += &format!(" {}", output::truncate(title, 80));
        }
    }
    s
}

pub fn events(g: &Global, a: EventsArgs) -> Result<u8> {
    if let Some(t) = &a.task {
        orchestrate::protocol::task::validate_name("task id", t)?;
    }
    if let Some(ag) = &a.agent {
        orchestrate::protocol::task::validate_name("agent id", ag)?;
    }
    let c = open(g)?;
    let filter = Filter {
        task: a.task.clone(),
        agent: a.agent.clone(),
        since: a
            .since
            .as_deref()
            .map(|s| parse_since(s, c.now()))
            .transpose()?,
    };
    let watcher = if a.follow {
        Some(ChangeWatcher::new(
            &[c.layout().root().to_path_buf()],
            a.poll,
        )?)
    } else {
        None
    };
    let mut tail = LogReader::history(&c.layout().events());
    loop {
        // One buffered writer per batch, flushed before waiting: a line per
        // write(2) made a 1 GiB log cost seven million system calls.
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        tail.read_events(|e| -> Result<()> {
            if filter.keep(&e) {
                if g.json {
                    serde_json::to_writer(&mut out, &e)?;
                    out.write_all(b"\n")?;
                } else {
                    out.write_all(output::safe(&human_event(&e)).as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        })?;
        out.flush()?;
        drop(out);
        match &watcher {
            None => return Ok(0),
            Some(w) => {
                std::io::stdout().flush()?;
                w.wait(Duration::from_secs(5));
            }
        }
    }
}

pub fn metrics(g: &Global, a: MetricsArgs) -> Result<u8> {
    let c = open(g)?;
    let m = metrics::collect(&c)?;
    if let Some(dir) = &a.textfile {
        if !dir.is_dir() {
            return Err(Usage(format!(
                "--textfile {}: no such directory (node_exporter's --collector.textfile.directory)",
                dir.display()
            ))
            .into());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".orchestrate.prom.")
            .tempfile_in(dir)
            .with_context(|| format!("create a temp file in {}", dir.display()))?;
        tmp.write_all(m.to_prometheus().as_bytes())?;
        // Readable by node_exporter running as another user.
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        tmp.as_file().sync_all()?;
        let target = dir.join("orchestrate.prom");
        tmp.persist(&target)
            .with_context(|| format!("write {}", target.display()))?;
        if g.json {
            output::json(&json!({ "textfile": target }))?;
        } else {
            output::line(format!("wrote {}", target.display()))?;
        }
    } else if g.json {
        output::json(&m.to_json())?;
    } else {
        output::text(m.to_prometheus())?;
    }
    Ok(0)
}

pub fn graph(g: &Global, a: GraphArgs) -> Result<u8> {
    let c = open(g)?;
    let listing = c.list()?;
    let text = match a.format {
        GraphFormat::Dot => graph::to_dot(&listing.tasks),
        GraphFormat::Mermaid => graph::to_mermaid(&listing.tasks),
    };
    if g.json {
        output::json(
            &json!({ "format": format!("{:?}", a.format).to_lowercase(), "graph": text }),
        )?;
    } else {
        output::text(text)?;
    }
    Ok(0)
}

fn snapshot(c: &Coordination) -> Result<serde_json::Value> {
    let s = c.status()?;
    let now = c.now();
    // One task at a time: only the running ones are kept.
    let mut running: Vec<(u64, serde_json::Value)> = Vec::new();
    c.for_each_task(|r| {
        if let Ok(t) = r {
            if t.status == Status::Claimed {
                running.push((
                    t.seq,
                    json!({
                        "id": t.id,
                        "agent_id": t.claimed_by,
                        "attempt": t.attempts,
                        "elapsed_ms": t.claimed_at.map(|x| clock::ms_between(x, now)),
                        "description": t.description,
                    }),
                ));
            }
        }
        Ok::<(), orchestrate::Error>(())
    })?;
    running.sort_by_key(|(seq, _)| *seq);
    let running: Vec<serde_json::Value> = running.into_iter().map(|(_, v)| v).collect();
    Ok(
        json!({ "counts": s.counts, "total": s.total, "ready": s.ready, "running": running, "timestamp": clock::format(&now) }),
    )
}

fn render(snap: &serde_json::Value, recent: &[Event]) -> String {
    let mut s = format!(
        "orchestrate watch   {}\n\n",
        snap["timestamp"].as_str().unwrap_or("")
    );
    let counts: Vec<String> = snap["counts"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    s += &format!(
        "tasks {}: {}   ready {}\n\n",
        snap["total"],
        counts.join(", "),
        snap["ready"]
    );
    let rows: Vec<Vec<String>> = snap["running"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    vec![
                        r["id"].as_str().unwrap_or("").to_string(),
                        r["agent_id"].as_str().unwrap_or("-").to_string(),
                        format!(
                            "{:.1}s",
                            r["elapsed_ms"].as_i64().unwrap_or(0) as f64 / 1000.0
                        ),
                        output::truncate(r["description"].as_str().unwrap_or(""), 50),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        s += "nothing running\n";
    } else {
        s += &output::table(&["RUNNING", "AGENT", "ELAPSED", "DESCRIPTION"], &rows);
        s += "\n";
    }
    s += "\nrecent events:\n";
    for e in recent {
        s += &human_event(e);
        s += "\n";
    }
    s
}

pub fn logs(g: &Global, a: LogsArgs) -> Result<u8> {
    use orchestrate::observe::logs;
    use std::io::Read;
    orchestrate::protocol::task::validate_name("task id", &a.id)?;
    let c = open(g)?;
    if a.follow {
        let mut so = std::io::stdout().lock();
        let mut out = |chunk: &[u8]| -> orchestrate::Result<()> {
            let r = if g.json {
                // JSON Lines: one object per chunk read, then an `end` line.
                let v = json!({ "type": "output", "data": String::from_utf8_lossy(chunk) });
                serde_json::to_writer(&mut so, &v)
                    .map_err(std::io::Error::from)
                    .and_then(|()| so.write_all(b"\n"))
            } else {
                so.write_all(chunk)
            };
            r.and_then(|()| so.flush())
                .map_err(|e| orchestrate::Error::io("write", std::path::Path::new("stdout"), e))
        };
        let (attempt, t) = logs::follow(&c, &a.id, a.attempt, 1_000, &mut out)?;
        if g.json {
            output::json_line(&json!({
                "type": "end", "task_id": t.id, "attempt": attempt, "status": t.status,
                "error": t.error,
            }))?;
        } else if !g.quiet && t.status == orchestrate::Status::Claimed && t.attempts == attempt {
            output::eline(format!(
                "orchestrate: attempt {attempt} of {}: its lease ran out and its holder seems gone; the next mutation (or `orchestrate reap`) puts it back",
                t.id
            ));
        } else if !g.quiet {
            output::eline(format!(
                "orchestrate: attempt {attempt} of {} is over: {}{}",
                t.id,
                t.status,
                t.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        return Ok(0);
    }
    let found = logs::attempt_logs(&c, &a.id, a.attempt)?;
    if g.json {
        let mut files = Vec::new();
        // At most the last 16 MiB of each file: a log can be any size,
        // and one JSON document is held whole in memory.
        const MAX_JSON_LOG_BYTES: u64 = 16 << 20;
        for f in &found.files {
            use std::io::{Seek, SeekFrom};
            let path = c.layout().root().join(&f.path);
            let mut bytes = Vec::new();
            let mut file = logs::open(&c, f)?;
            let skip = f.bytes.saturating_sub(MAX_JSON_LOG_BYTES);
            file.seek(SeekFrom::Start(skip))
                .and_then(|_| file.take(MAX_JSON_LOG_BYTES).read_to_end(&mut bytes))
                .map_err(|e| orchestrate::Error::io("read log file", path, e))?;
            let mut v = serde_json::to_value(f)?;
            v["content"] = json!(String::from_utf8_lossy(&bytes));
            v["truncated"] = json!(skip > 0);
            files.push(v);
        }
        let mut v = serde_json::to_value(&found)?;
        v["files"] = json!(files);
        output::json(&v)?;
        return Ok(0);
    }
    let mut so = std::io::stdout().lock();
    let many = found.files.len() > 1;
    for (i, f) in found.files.iter().enumerate() {
        if many {
            // As `tail` heads several files.
            let gap = if i == 0 { "" } else { "\n" };
            writeln!(so, "{gap}==> {} <==", f.path)?;
        }
        std::io::copy(&mut logs::open(&c, f)?, &mut so)?;
    }
    so.flush()?;
    Ok(0)
}

/// The terminal's width in columns, 80 when it cannot be told.
fn terminal_width() -> usize {
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
        .filter(|&c| c > 0)
        .unwrap_or(80)
}

/// Cuts every line of `s` to `cols` display columns, so that a redrawn
/// screen never wraps (a wrapped line scrolls the view off the top).
fn fit_width(s: &str, cols: usize) -> String {
    s.split('\n')
        .map(|l| output::truncate(l, cols))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn watch(g: &Global, a: WatchArgs) -> Result<u8> {
    let c = open(g)?;
    let root = c.layout().root().to_path_buf();
    let w = ChangeWatcher::new(&[root.clone(), c.layout().tasks_dir()], a.poll)?;
    let path = c.layout().events();
    // Only the live log's last bytes: the recent events, at a cost that
    // does not grow with history.
    let mut tail = if g.json || a.events == 0 {
        LogReader::at_end(&path)
    } else {
        LogReader::tail(&path, (a.events as u64).saturating_mul(4096))
    };
    let mut recent: std::collections::VecDeque<Event> = Default::default();
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        // JSON mode streams each new event; the view keeps only the last
        // `--events`, so a huge log costs time once, never memory.
        let mut seen_new = false;
        tail.read_events(|e| -> Result<()> {
            seen_new = true;
            if g.json {
                output::json_line(&json!({ "type": "event", "data": e }))?;
            } else {
                recent.push_back(e);
                while recent.len() > a.events {
                    recent.pop_front();
                }
            }
            Ok(())
        })?;
        let changed = first || seen_new;
        if g.json {
            if first {
                output::json_line(&json!({ "type": "status", "data": snapshot(&c)? }))?;
            }
            if !first && seen_new {
                output::json_line(&json!({ "type": "status", "data": snapshot(&c)? }))?;
            }
        } else {
            if tty {
                let v: Vec<Event> = recent.iter().cloned().collect();
                // Clear, home, then the view cut to the terminal's width.
                output::text(format!(
                    "\x1b[2J\x1b[H{}",
                    fit_width(&render(&snapshot(&c)?, &v), terminal_width())
                ))?;
                std::io::stdout().flush()?;
            } else if changed {
                let snap = snapshot(&c)?;
                output::line(format!(
                    "{} tasks {} ready {} running {}",
                    snap["timestamp"].as_str().unwrap_or(""),
                    snap["total"],
                    snap["ready"],
                    snap["running"].as_array().map(|r| r.len()).unwrap_or(0)
                ))?;
            }
        }
        first = false;
        // Redraw elapsed times every second on a terminal.
        w.wait(if tty && !g.json {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_width_cuts_every_line_and_keeps_short_ones() {
        let long = "x".repeat(200);
        let s = fit_width(&format!("short\n{long}\n"), 120);
        let lines: Vec<&str> = s.split('\n').collect();
        assert_eq!(lines[0], "short");
        assert_eq!(unicode_width::UnicodeWidthStr::width(lines[1]), 120);
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[2], "");
    }
}
