//! The task commands: init, create-task, claim, heartbeat, complete, fail,
//! release, cancel, retry, reap, list, show, status, reindex.

use super::exit::Usage;
use super::output;
use super::Global;
use anyhow::{Context as _, Result};
use clap::Args;
use orchestrate::{
    protocol::clock, resolve_dir, ClaimOutcome, ClaimRequest, Context, Coordination, Error,
    NewTask, Report, Status, Task,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The goal the agents work towards
    pub goal: Option<String>,
    /// Also write a run configuration file (the Python tool's orchestration.json format)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Working directory recorded in the configuration file
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Overwrite an existing configuration file
    #[arg(long)]
    pub force: bool,
    /// Share the directory with its group: 2775 (setgid), files 0664. chgrp it to the team's group first, or create it inside a setgid directory of that group
    #[arg(long, conflicts_with = "private")]
    pub group_shared: bool,
    /// Keep the directory to yourself: 0700, files 0600 (results and logs readable by you alone)
    #[arg(long)]
    pub private: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the task is
    pub description: String,
    /// Priority, 1 (most urgent) to 10
    #[arg(short, long, default_value_t = 5, value_name = "N")]
    pub priority: u8,
    /// A task id this one depends on (repeatable)
    #[arg(
        short = 'd',
        long = "depends",
        visible_alias = "dependency",
        value_name = "DEP"
    )]
    pub depends: Vec<String>,
    /// A relevant file (repeatable)
    #[arg(
        short = 'f',
        long = "files",
        visible_alias = "file",
        value_name = "FILE"
    )]
    pub files: Vec<String>,
    /// Hints for the worker
    #[arg(long, value_name = "TEXT")]
    pub hints: Option<String>,
    /// Use this id instead of a generated one
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// A tag (repeatable); `claim --tag` filters on tags
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Shell command run by the shell agent
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Attempts before the task goes dead [default: from config.json]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Append the task to this configuration file instead of the queue
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `edit ID`: the flags of `create-task`, each optional; a list flag
/// replaces the whole list, a `--no-...` flag clears it.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The task to change (pending, blocked, dead or cancelled)
    pub id: String,
    /// New description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// New priority, 1 (most urgent) to 10
    #[arg(short, long, value_name = "N")]
    pub priority: Option<u8>,
    /// The dependencies, replacing the old ones (repeatable)
    #[arg(
        short = 'd',
        long = "depends",
        visible_alias = "dependency",
        value_name = "DEP"
    )]
    pub depends: Vec<String>,
    /// Remove every dependency
    #[arg(long, conflicts_with = "depends")]
    pub no_depends: bool,
    /// The relevant files, replacing the old ones (repeatable)
    #[arg(
        short = 'f',
        long = "files",
        visible_alias = "file",
        value_name = "FILE"
    )]
    pub files: Vec<String>,
    /// Remove every file
    #[arg(long, conflicts_with = "files")]
    pub no_files: bool,
    /// New hints for the worker
    #[arg(long, value_name = "TEXT")]
    pub hints: Option<String>,
    /// Remove the hints
    #[arg(long, conflicts_with = "hints")]
    pub no_hints: bool,
    /// The tags, replacing the old ones (repeatable)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Remove every tag
    #[arg(long, conflicts_with = "tags")]
    pub no_tags: bool,
    /// New shell command
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Remove the command
    #[arg(long, conflicts_with = "command")]
    pub no_command: bool,
    /// New attempt budget (at least the attempts already had)
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
}

/// `--agent ID` for commands that act as an agent.
#[derive(Debug, Args, Clone)]
pub struct AgentId {
    /// Who is calling (agent id) [env: ORCHESTRATE_AGENT_ID]
    #[arg(
        long = "agent",
        env = "ORCHESTRATE_AGENT_ID",
        hide_env = true,
        value_name = "ID"
    )]
    pub agent: Option<String>,
}

impl AgentId {
    /// The agent id, or a usage error saying how to give one.
    pub fn require(&self) -> Result<String> {
        match &self.agent {
            Some(a) if !a.is_empty() => Ok(a.clone()),
            _ => Err(
                Usage("no agent id: pass --agent NAME or set ORCHESTRATE_AGENT_ID".into()).into(),
            ),
        }
    }
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub who: AgentId,
    /// Claim exactly this task
    pub task_id: Option<String>,
    /// Only tasks with this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Lease length, e.g. 5m, 90s [default: lease_ms from config.json]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: Option<std::time::Duration>,
    /// When nothing is ready, wait for a task (at most DURATION, e.g. 30s; forever without one); exit 5 on timeout
    #[arg(long, num_args = 0..=1, value_name = "DURATION")]
    pub wait: Option<Option<String>>,
    /// With --wait: poll for changes every DURATION instead of file-system events (NFS)
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "wait")]
    pub poll: Option<std::time::Duration>,
}

/// A task the caller holds: its id and the fencing token of the claim.
#[derive(Debug, Args)]
pub struct Held {
    /// The task id [env: ORCHESTRATE_TASK_ID]
    #[arg(env = "ORCHESTRATE_TASK_ID", hide_env = true)]
    pub id: String,
    /// The fencing token your claim returned [env: ORCHESTRATE_FENCING_TOKEN]
    #[arg(
        long,
        env = "ORCHESTRATE_FENCING_TOKEN",
        hide_env = true,
        value_name = "N"
    )]
    pub token: u64,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub held: Held,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub held: Held,
    /// New lease length for heartbeat, e.g. 5m [default: lease_ms from config.json]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: Option<std::time::Duration>,
}

/// `--claim-next` of `complete` and `fail`: report and claim in one
/// transaction (`spec` 5.10).
#[derive(Debug, Args)]
pub struct ClaimNext {
    /// Then claim the next ready task in the same transaction (one commit per worker cycle); exit 3 if none is ready
    #[arg(long)]
    pub claim_next: bool,
    /// With --claim-next: who claims [env: ORCHESTRATE_AGENT_ID]
    #[command(flatten)]
    pub who: AgentId,
    /// With --claim-next: only tasks with this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "T", requires = "claim_next")]
    pub tags: Vec<String>,
    /// With --claim-next: lease length, e.g. 5m [default: lease_ms from config.json]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "claim_next")]
    pub lease: Option<std::time::Duration>,
}

impl ClaimNext {
    /// The claim request, when `--claim-next` was given.
    fn request(&self) -> Result<Option<ClaimRequest>> {
        if !self.claim_next {
            return Ok(None);
        }
        if orchestrate::run::agent::inside_attempt() {
            // The task claimed would be held under the worker's agent id
            // with nobody running it (`spec` 5.10).
            return Err(Usage(
                "--claim-next inside a worker's attempt (ORCHESTRATE_FENCING_TOKEN is set): the worker claims the next task itself; report without --claim-next".into(),
            )
            .into());
        }
        if let Some(l) = self.lease {
            warn_short_lease(l);
        }
        Ok(Some(ClaimRequest {
            agent: self.who.require()?,
            task_id: None,
            tags: self.tags.clone(),
            lease_ms: self.lease.map(|d| d.as_millis() as u64),
            only_if_idle: false,
        }))
    }
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub held: Held,
    #[command(flatten)]
    pub next: ClaimNext,
    /// The result, as text
    #[arg(long, value_name = "TEXT", conflicts_with = "result_file")]
    pub result: Option<String>,
    /// Read the result from a file (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    pub result_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FailArgs {
    #[command(flatten)]
    pub held: Held,
    /// What went wrong
    #[arg(long, value_name = "TEXT")]
    pub error: String,
    /// The failure would be the same on every attempt: the task goes to
    /// `dead` at once, without retries (`retry` brings it back)
    #[arg(long)]
    pub permanent: bool,
    #[command(flatten)]
    pub next: ClaimNext,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The task id
    pub id: String,
    /// Why (recorded as the task's error)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The task id
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this state (repeatable)
    #[arg(long = "status", short = 's', value_name = "S")]
    pub status: Vec<String>,
    /// Only tasks with this tag
    #[arg(long = "tag", value_name = "T")]
    pub tag: Option<String>,
    /// Only the tasks a claim could take now, in claim order (priority, then
    /// creation)
    #[arg(long, conflicts_with_all = ["status", "blocked"])]
    pub ready: bool,
    /// Only the tasks held back by dependencies, with the dependencies each
    /// waits on and their state
    #[arg(long, conflicts_with = "status")]
    pub blocked: bool,
    /// List the archived tasks (archive/, see `orchestrate archive`) instead
    #[arg(long, conflicts_with_all = ["ready", "blocked"])]
    pub archived: bool,
}

/// `orchestrate archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Only tasks finished at least this long ago: 0, 30m, 2h, 7d
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = parse_age)]
    pub older_than: std::time::Duration,
    /// Only tasks in these states (repeatable or comma-separated: completed, cancelled, dead)
    #[arg(long = "status", short = 's', value_name = "S", value_delimiter = ',')]
    pub status: Vec<String>,
    /// Print what would move and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// A duration for --older-than: `0`, or a humantime duration (`30m`, `7d`).
fn parse_age(s: &str) -> std::result::Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: use a duration such as 0, 30m, 2h or 7d"))
}

/// `orchestrate status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Show this run configuration file's settings and tasks (the Python tool's `status -c`) instead of the queue
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `orchestrate ready`.
#[derive(Args, Debug)]
pub struct ReadyArgs {
    /// Only tasks with this tag
    #[arg(long = "tag", value_name = "T")]
    pub tag: Option<String>,
}

/// The directory from --dir / $COORDINATION_DIR / ./.coordination.
pub fn dir(g: &Global) -> PathBuf {
    resolve_dir(g.dir.as_deref())
}

/// Opens the coordination directory with the global flags applied.
pub fn open(g: &Global) -> Result<Coordination> {
    let mut c = Coordination::open(dir(g))?;
    if let Some(t) = g.lock_timeout {
        c = c.with_lock_timeout_ms(t.as_millis() as u64);
    }
    Ok(c)
}

pub fn edit(g: &Global, a: EditArgs) -> Result<u8> {
    let list = |v: &[String], clear: bool| (clear || !v.is_empty()).then(|| v.to_vec());
    let opt = |v: &Option<String>, clear: bool| (clear || v.is_some()).then(|| v.clone());
    let e = orchestrate::TaskEdit {
        description: a.description.clone(),
        command: opt(&a.command, a.no_command),
        priority: a.priority,
        tags: list(&a.tags, a.no_tags),
        hints: opt(&a.hints, a.no_hints),
        files: list(&a.files, a.no_files),
        max_attempts: a.max_attempts,
        dependencies: list(&a.depends, a.no_depends),
    };
    let c = open(g)?;
    let (t, changed, blocked) = c.edit(&a.id, &e)?;
    if g.json {
        output::json(
            &json!({ "task": t, "changed": changed, "blocked": blocked.iter().map(|b| b.id.to_string()).collect::<Vec<_>>() }),
        )?;
    } else if changed.is_empty() {
        output::line(format!("{} unchanged: the edit matches what it has", t.id))?;
    } else {
        output::line(format!("edited {}: {}", t.id, changed.join(", ")))?;
        if t.status == Status::Blocked {
            output::line(format!(
                "{} is blocked: {}; `orchestrate retry {}` once that is fixed",
                t.id,
                t.error.as_deref().unwrap_or("a dependency failed"),
                t.id
            ))?;
        }
        for b in &blocked {
            output::line(format!("blocked {} (depends on {})", b.id, t.id))?;
        }
        if matches!(t.status, Status::Dead | Status::Cancelled) {
            output::line(format!(
                "{} is {}; `orchestrate retry {}` runs it again",
                t.id, t.status, t.id
            ))?;
        }
    }
    Ok(0)
}

fn print_task(g: &Global, t: &Task, human: impl FnOnce() -> String) -> Result<u8> {
    if g.json {
        output::json(t)?;
    } else {
        output::line(human())?;
    }
    Ok(0)
}

pub fn init(g: &Global, a: InitArgs) -> Result<u8> {
    let d = orchestrate::init_dir(g.dir.as_deref());
    // Validate the config file target before touching anything.
    if let Some(out) = &a.output {
        if out.exists() && !a.force {
            return Err(Usage(format!(
                "`{}` already exists; pass --force to overwrite it",
                out.display()
            ))
            .into());
        }
    }
    let sharing = if a.group_shared {
        orchestrate::protocol::Sharing::Group
    } else if a.private {
        orchestrate::protocol::Sharing::Private
    } else {
        orchestrate::protocol::Sharing::Default
    };
    let (c, created) = Coordination::init_shared(&d, a.goal.clone(), sharing)?;
    let mut config_file = None;
    if let Some(out) = &a.output {
        let wd = match &a.cwd {
            Some(p) => std::path::absolute(p)?,
            None => std::env::current_dir()?,
        };
        let doc = json!({
            "goal": a.goal.clone().unwrap_or_default(),
            "working_directory": wd,
            "max_workers": 3,
            "model": std::env::var("CLAUDE_MODEL").unwrap_or_else(|_| "claude-sonnet-4-20250514".into()),
            "task_timeout": 600,
            "tasks": [],
        });
        write_json_file(out, &doc)?;
        config_file = Some(out.clone());
    }
    if g.json {
        output::json(&json!({
            "dir": c.layout().root(),
            "created": created,
            "config": c.config(),
            "config_file": config_file,
        }))?;
    } else {
        if created {
            output::line(format!("Initialized {}", c.layout().root().display()))?;
        } else {
            output::line(format!(
                "{} already initialized; nothing changed",
                c.layout().root().display()
            ))?;
            if a.goal
                .as_deref()
                .is_some_and(|goal| goal != c.config().goal)
            {
                output::line(format!(
                    "(its goal stays \"{}\"; edit config.json to change it)",
                    c.config().goal
                ))?;
            }
        }
        if let Some(f) = config_file {
            output::line(format!(
                "Config created: {}\nAdd tasks with `orchestrate create-task DESC -c {}`, run with `orchestrate from-config {}`",
                f.display(),
                f.display(),
                f.display()
            ))?;
        }
    }
    Ok(0)
}

/// Writes a JSON document to a user file atomically (temp file + rename).
pub fn write_json_file(path: &Path, doc: &Value) -> Result<()> {
    // Replacing a device, FIFO or directory with a regular file would break
    // the system (`-o /dev/null` as root) or someone else's pipe: refuse.
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            return Err(Usage(format!(
                "`{}` exists and is not a regular file (a device, FIFO or directory); name a file",
                path.display()
            ))
            .into());
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&parent)
        .with_context(|| format!("create a temp file in {}", parent.display()))?;
    serde_json::to_writer_pretty(&mut tmp, doc)?;
    std::io::Write::write_all(&mut tmp, b"\n")?;
    // tempfile creates 0600; keep the existing file's mode, else 0644.
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644);
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

pub fn create(g: &Global, a: CreateArgs) -> Result<u8> {
    let mut a = a;
    // Inside an agent started by `run` or `work`, follow-up tasks carry the
    // worker's tags so that the same workers pick them up.
    if let Ok(tags) = std::env::var("ORCHESTRATE_TAGS") {
        for t in tags.split(',').filter(|t| !t.is_empty()) {
            if !a.tags.iter().any(|x| x == t) {
                a.tags.push(t.to_string());
            }
        }
    }
    let spec = NewTask {
        id: a.id.clone(),
        description: a.description.clone(),
        priority: Some(a.priority),
        dependencies: a.depends.clone(),
        context: Context {
            files: a.files.clone(),
            hints: a.hints.clone(),
            tags: a.tags.clone(),
        },
        command: a.command.clone(),
        max_attempts: a.max_attempts,
        backoff: None,
    };
    orchestrate::protocol::task::validate_new(&spec)?;
    if let Some(cfg) = &a.config {
        return create_in_config(g, cfg, &a);
    }
    let c = open(g)?;
    let t = c.create(spec)?;
    print_task(g, &t, || t.id.to_string())
}

fn create_in_config(g: &Global, cfg: &Path, a: &CreateArgs) -> Result<u8> {
    if !cfg.exists() {
        return Err(Error::Invalid(format!(
            "configuration file `{}` not found; create it with `orchestrate init GOAL -o {}`",
            cfg.display(),
            cfg.display()
        ))
        .into());
    }
    // Non-blocking, regular files only, bounded: a FIFO or /dev/zero here
    // is refused (`spec` 4.7).
    let text = orchestrate::run::plan::read_user_file(cfg, "configuration file")?;
    let mut doc: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("`{}` is not valid JSON: {e}", cfg.display())))?;
    let tasks = doc
        .as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("`{}` is not a JSON object", cfg.display())))?
        .entry("tasks")
        .or_insert_with(|| Value::Array(vec![]));
    let arr = tasks
        .as_array_mut()
        .ok_or_else(|| Error::Invalid(format!("`tasks` in `{}` is not an array", cfg.display())))?;
    let mut entry = serde_json::Map::new();
    if let Some(id) = &a.id {
        entry.insert("id".into(), json!(id));
    }
    entry.insert("description".into(), json!(a.description));
    entry.insert("priority".into(), json!(a.priority));
    if !a.depends.is_empty() {
        entry.insert("dependencies".into(), json!(a.depends));
    }
    if !a.files.is_empty() {
        entry.insert("context_files".into(), json!(a.files));
    }
    if let Some(h) = &a.hints {
        entry.insert("hints".into(), json!(h));
    }
    if let Some(c) = &a.command {
        entry.insert("command".into(), json!(c));
    }
    if !a.tags.is_empty() {
        entry.insert("tags".into(), json!(a.tags));
    }
    if let Some(m) = a.max_attempts {
        entry.insert("max_attempts".into(), json!(m));
    }
    let entry = Value::Object(entry);
    arr.push(entry.clone());
    let index = arr.len() - 1;
    // The same checks `from-config` makes, now, so that a bad dependency
    // or a cycle is refused here and the file is left as it was.
    let queue = open(g).ok();
    let errs = match orchestrate::run::plan::tasks_from_value(&doc) {
        Ok(tasks) => orchestrate::run::plan::check_batch(&tasks, &|id| {
            queue.as_ref().is_some_and(|c| c.get(id).is_ok())
        }),
        Err(errs) => errs,
    };
    if !errs.is_empty() {
        return Err(Error::Invalid(format!(
            "the task cannot be added to `{}`; nothing was written:\n  {}",
            cfg.display(),
            errs.join("\n  ")
        ))
        .into());
    }
    write_json_file(cfg, &doc)?;
    if g.json {
        output::json(&json!({ "config_file": cfg, "index": index, "task": entry }))?;
    } else {
        output::line(format!("Task added to {}", cfg.display()))?;
    }
    Ok(0)
}

fn claim_json(t: &Task) -> Value {
    json!({
        "task": t,
        "fencing_token": t.fencing_token,
        "attempt": t.attempts,
        "lease_expires_at": t.lease_expires_at.map(|x| clock::format(&x)),
    })
}

/// Workers (`run`, `work`) heartbeat every third of their lease; a lease
/// below three of the shortest interval a holder can keep up (1 s, the
/// granularity of a worker's heartbeat loop) is lost to the first hiccup.
const MIN_SAFE_LEASE_MS: u64 = 3_000;

/// Warns on stderr about a lease too short for a holder to keep up.
fn warn_short_lease(l: std::time::Duration) {
    let ms = l.as_millis() as u64;
    // A zero lease is refused as invalid before anything is done.
    if ms > 0 && ms < MIN_SAFE_LEASE_MS {
        output::eline(format!(
            "orchestrate: warning: a lease of {} is shorter than 3 heartbeat intervals of 1 s; heartbeat at least every {} ms or the task is reclaimed (workers heartbeat every third of their lease)",
            humantime::format_duration(l),
            ms / 3
        ));
    }
}

/// The `--json` document of a claim's outcome (`spec` 11, `claim`) and its
/// exit code: 0 claimed, 3 nothing ready.
fn claim_outcome_json(outcome: &ClaimOutcome) -> (Value, u8) {
    match outcome {
        ClaimOutcome::Claimed(t) => (claim_json(t), 0),
        ClaimOutcome::NothingReady(nr) => (
            json!({
                "task": null,
                "reason": nr.reason,
                "next_ready_at": nr.next_ready_at.map(|x| clock::format(&x)),
                "message": nr.message,
            }),
            3,
        ),
    }
}

/// Prints a claim's outcome for people: the claimed task on stdout, or
/// why nothing was claimed on stderr. Returns the exit code (0 or 3).
fn print_claim_human(outcome: &ClaimOutcome) -> Result<u8> {
    match outcome {
        ClaimOutcome::Claimed(t) => {
            output::line(format!(
                "claimed {} (token {}, attempt {}/{}, lease until {})\n{}",
                t.id,
                t.fencing_token,
                t.attempts,
                t.max_attempts,
                t.lease_expires_at
                    .map(|x| clock::format(&x))
                    .unwrap_or_default(),
                t.description
            ))?;
            Ok(0)
        }
        ClaimOutcome::NothingReady(nr) => {
            output::eline(format!(
                "orchestrate: nothing ready to claim: {}",
                nr.message
            ));
            Ok(3)
        }
    }
}

pub fn claim(g: &Global, a: ClaimArgs) -> Result<u8> {
    let c = open(g)?;
    if let Some(l) = a.lease {
        warn_short_lease(l);
    }
    let req = ClaimRequest {
        agent: a.who.require()?,
        task_id: a.task_id,
        tags: a.tags,
        lease_ms: a.lease.map(|d| d.as_millis() as u64),
        only_if_idle: false,
    };
    let outcome = match &a.wait {
        None => c.claim(&req)?,
        Some(d) => {
            let timeout = d
                .as_deref()
                .map(humantime::parse_duration)
                .transpose()
                .map_err(|e| Usage(format!("--wait: {e} (use e.g. 30s, 5m)")))?;
            c.claim_wait(&req, timeout, a.poll)?
        }
    };
    if g.json {
        let (doc, code) = claim_outcome_json(&outcome);
        output::json(&doc)?;
        Ok(code)
    } else {
        print_claim_human(&outcome)
    }
}

/// Reports a held task and, with `--claim-next`, claims the next one in
/// the same transaction (`spec` 5.10). `human` says what the report did,
/// for people.
fn report(
    g: &Global,
    held: &Held,
    next: &ClaimNext,
    r: Report,
    human: impl FnOnce(&Task) -> String,
) -> Result<u8> {
    let req = next.request()?;
    let c = open(g)?;
    let Some(req) = req else {
        let t = c.report(&held.id, held.token, r, None)?;
        return print_task(g, &t, || human(&t));
    };
    let (t, outcome) = c.report_and_claim(&held.id, held.token, r, None, &req, &|| true)?;
    let outcome = outcome
        .ok_or_else(|| Error::Other("the claim was not attempted".into()))
        .and_then(|o| o)
        .with_context(|| {
            format!(
                "task `{}` is {} as asked, but claiming the next task failed",
                t.id, t.status
            )
        })?;
    if g.json {
        let (doc, code) = claim_outcome_json(&outcome);
        output::json(&json!({ "reported": t, "next": doc }))?;
        Ok(code)
    } else {
        output::line(human(&t))?;
        print_claim_human(&outcome)
    }
}

pub fn heartbeat(g: &Global, a: TokenArgs) -> Result<u8> {
    let c = open(g)?;
    let t = c.heartbeat(
        &a.held.id,
        a.held.token,
        a.lease.map(|d| d.as_millis() as u64),
    )?;
    print_task(g, &t, || {
        format!(
            "lease of {} extended until {}",
            t.id,
            t.lease_expires_at
                .map(|x| clock::format(&x))
                .unwrap_or_default()
        )
    })
}

/// Longest `--result-file` accepted, in bytes (1 MiB).
const MAX_RESULT_BYTES: u64 = 1 << 20;

pub fn complete(g: &Global, a: CompleteArgs) -> Result<u8> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = match (&a.result, &a.result_file) {
        (Some(r), _) => Some(Value::String(r.clone())),
        (None, Some(f)) => {
            let mut buf = String::new();
            let read = if f.as_os_str() == "-" {
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), MAX_RESULT_BYTES + 1),
                    &mut buf,
                )
            } else {
                // A result file that cannot be opened is a bad argument (2),
                // like one that cannot be read below, not an I/O failure of
                // the coordination directory (74).
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(f)
                    .map_err(|e| {
                        Error::Invalid(format!("cannot read result from `{}`: {e}", f.display()))
                    })?;
                if !file.metadata().is_ok_and(|m| m.is_file()) {
                    return Err(Error::Invalid(format!(
                        "cannot read result from `{}`: not a regular file (use --result-file - to read stdin)",
                        f.display()
                    ))
                    .into());
                }
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(file, MAX_RESULT_BYTES + 1),
                    &mut buf,
                )
            };
            read.map_err(|e| {
                Error::Invalid(format!("cannot read result from `{}`: {e}", f.display()))
            })?;
            if buf.len() as u64 > MAX_RESULT_BYTES {
                return Err(Error::Invalid(format!(
                    "result is over {MAX_RESULT_BYTES} bytes; store it in a file and put the path in the result"
                ))
                .into());
            }
            Some(Value::String(buf))
        }
        (None, None) => None,
    };
    report(g, &a.held, &a.next, Report::Complete { result }, |t| {
        format!("completed {}", t.id)
    })
}

pub fn fail(g: &Global, a: FailArgs) -> Result<u8> {
    let r = Report::Fail {
        error: a.error.clone(),
        result: None,
        permanent: a.permanent,
    };
    report(g, &a.held, &a.next, r, |t| {
        match t.status {
        Status::Dead if a.permanent => format!(
            "{} failed permanently (attempt {}/{}); it is dead, `orchestrate retry {}` brings it back",
            t.id, t.attempts, t.max_attempts, t.id
        ),
        Status::Dead => format!(
            "{} failed for good: attempts exhausted ({}/{}); it is dead",
            t.id, t.attempts, t.max_attempts
        ),
        _ => format!(
            "{} failed (attempt {}/{}); retry after {}",
            t.id,
            t.attempts,
            t.max_attempts,
            t.not_before.map(|x| clock::format(&x)).unwrap_or_default()
        ),
    }
    })
}

pub fn release(g: &Global, a: ReleaseArgs) -> Result<u8> {
    let c = open(g)?;
    let t = c.release(&a.held.id, a.held.token)?;
    print_task(g, &t, || format!("released {}", t.id))
}

fn affected_json(v: &[Task]) -> Value {
    json!({ "task": v.first(), "affected": &v[1.min(v.len())..] })
}

pub fn cancel(g: &Global, a: CancelArgs) -> Result<u8> {
    let c = open(g)?;
    let v = c.cancel(&a.id, a.reason)?;
    if g.json {
        output::json(&affected_json(&v))?;
    } else {
        output::line(format!("cancelled {}", a.id))?;
        for t in &v[1..] {
            output::line(format!("blocked {}", t.id))?;
        }
    }
    Ok(0)
}

pub fn retry(g: &Global, a: IdArg) -> Result<u8> {
    let c = open(g)?;
    let v = c.retry(&a.id)?;
    if g.json {
        output::json(&affected_json(&v))?;
    } else {
        output::line(format!("{} is pending again", a.id))?;
        for t in &v[1..] {
            output::line(format!("unblocked {}", t.id))?;
        }
    }
    Ok(0)
}

pub fn reap(g: &Global) -> Result<u8> {
    let c = open(g)?;
    let v = c.reap()?;
    if g.json {
        output::json(&json!({ "reaped": v }))?;
    } else if v.is_empty() {
        output::line("no expired leases")?;
    } else {
        for r in &v {
            output::line(format!(
                "{}: lease of {} (token {}) expired; now {}",
                r.task_id,
                r.agent_id.as_deref().unwrap_or("-"),
                r.fencing_token,
                r.status
            ))?;
        }
    }
    Ok(0)
}

pub fn list(g: &Global, a: ListArgs) -> Result<u8> {
    let statuses = a
        .status
        .iter()
        .map(|s| Status::parse(s))
        .collect::<orchestrate::Result<Vec<_>>>()?;
    let c = open(g)?;
    let keep = |t: &Task| {
        (statuses.is_empty() || statuses.contains(&t.status))
            && a.tag
                .as_ref()
                .is_none_or(|tag| t.context.tags.contains(tag))
    };
    if g.json && !a.ready && !a.blocked {
        // Streamed: one task at a time from its file to stdout (spec 11).
        let mut doc = output::JsonArrayDoc::start("tasks")?;
        let mut errors: Vec<String> = Vec::new();
        let mut each = |r: std::result::Result<Task, orchestrate::Error>| -> Result<()> {
            match r {
                Ok(t) if keep(&t) => doc.push(&shown(t, a.archived))?,
                Ok(_) => {}
                Err(e) => {
                    output::eline(format!("orchestrate: warning: {e}"));
                    errors.push(e.to_string());
                }
            }
            Ok(())
        };
        if a.archived {
            c.for_each_archived(&mut each)?;
        } else {
            c.for_each_task_in_order(&mut each)?;
        }
        let mut rest = serde_json::Map::new();
        rest.insert("errors".into(), json!(errors));
        doc.finish(rest)?;
        return Ok(0);
    }
    let mut listing = if a.archived {
        let mut l = orchestrate::Listing::default();
        c.for_each_archived(|r| {
            match r {
                Ok(t) => l.tasks.push(shown(t, true)),
                Err(e) => l.errors.push(e),
            }
            Ok::<(), orchestrate::Error>(())
        })?;
        l.tasks.sort_by(|a, b| (a.seq, &a.id).cmp(&(b.seq, &b.id)));
        l
    } else if a.ready {
        // One listing, with its errors, held once in memory.
        c.ready_listing()?
    } else {
        c.list()?
    };
    let mut waiting_on: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    if a.blocked {
        let w = c.waiting()?;
        for (t, open) in &w {
            waiting_on.insert(
                t.id.to_string(),
                open.iter()
                    .map(|(d, s)| json!({ "id": d, "status": s.map(|s| s.to_string()) }))
                    .collect(),
            );
        }
        listing.tasks = w.into_iter().map(|(t, _)| t).collect();
    }
    let tasks: Vec<&Task> = listing.tasks.iter().filter(|t| keep(t)).collect();
    for e in &listing.errors {
        output::eline(format!("orchestrate: warning: {e}"));
    }
    if g.json {
        // Written task by task, never as one JSON value tree (which took
        // five times the tasks' own memory).
        let mut doc = output::JsonArrayDoc::start("tasks")?;
        for t in &tasks {
            doc.push(t)?;
        }
        let mut rest = serde_json::Map::new();
        rest.insert(
            "errors".into(),
            json!(listing
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()),
        );
        if a.blocked {
            rest.insert("waiting_on".into(), json!(waiting_on));
        }
        doc.finish(rest)?;
    } else if tasks.is_empty() {
        output::line(if a.ready {
            "no task is ready"
        } else if a.archived {
            "no archived tasks"
        } else if a.blocked {
            "no task waits on a dependency"
        } else {
            "no tasks"
        })?;
    } else if a.blocked {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let on = waiting_on.get(t.id.as_str()).map_or_else(String::new, |v| {
                    v.iter()
                        .map(|d| {
                            format!(
                                "{} ({})",
                                d["id"].as_str().unwrap_or_default(),
                                d["status"].as_str().unwrap_or("missing")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                vec![
                    t.id.to_string(),
                    t.status.to_string(),
                    output::truncate(&on, 50),
                    output::truncate(&t.description, 40),
                ]
            })
            .collect();
        output::line(output::table(
            &["ID", "STATUS", "WAITING ON", "DESCRIPTION"],
            &rows,
        ))?;
    } else {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    t.status.to_string(),
                    t.priority.to_string(),
                    format!("{}/{}", t.attempts, t.max_attempts),
                    t.claimed_by.clone().unwrap_or_else(|| "-".into()),
                    if t.dependencies.is_empty() {
                        "-".into()
                    } else {
                        output::truncate(
                            &t.dependencies
                                .iter()
                                .map(|d| d.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                            30,
                        )
                    },
                    output::truncate(&t.description, 50),
                ]
            })
            .collect();
        output::line(output::table(
            &[
                "ID",
                "STATUS",
                "PRI",
                "ATTEMPTS",
                "AGENT",
                "DEPENDS",
                "DESCRIPTION",
            ],
            &rows,
        ))?;
    }
    Ok(0)
}

/// `t` as `show` and `list` print it: an archived task carries
/// `"archived": true` (spec 18.1).
fn shown(mut t: Task, archived: bool) -> Task {
    if archived {
        t.extra.insert("archived".into(), json!(true));
    }
    t
}

pub fn show(g: &Global, a: IdArg) -> Result<u8> {
    let c = open(g)?;
    // tasks/ first, then archive/: a task being archived is in one of the
    // two whenever either is read (spec 18.2).
    let t = match c.get(&a.id) {
        Err(orchestrate::Error::TaskNotFound(id)) => match c.get_archived(&a.id)? {
            Some(t) => shown(t, true),
            None => return Err(orchestrate::Error::TaskNotFound(id).into()),
        },
        r => r?,
    };
    print_task(g, &t, || {
        let mut s = output::task_details(&t);
        if t.extra.contains_key("archived") {
            s.push_str(&format!("\narchived:    archive/{}.json", t.id));
        }
        s
    })
}

pub fn archive(g: &Global, a: ArchiveArgs) -> Result<u8> {
    let statuses = a
        .status
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Status::parse(s.trim()))
        .collect::<orchestrate::Result<Vec<_>>>()?;
    let c = open(g)?;
    let req = orchestrate::protocol::archive::ArchiveRequest {
        older_than_ms: u64::try_from(a.older_than.as_millis()).unwrap_or(u64::MAX),
        statuses,
        dry_run: a.dry_run,
    };
    let r = c.archive(&req)?;
    if r.rotated_segment.is_some() {
        // Counters keep what the rotated segment held (spec 3.7); a
        // failure only makes the next `metrics` read more.
        if let Err(e) = orchestrate::observe::metrics::collect(&c) {
            output::eline(format!("orchestrate: warning: metrics checkpoint: {e}"));
        }
    }
    if g.json {
        output::json(&r)?;
        return Ok(0);
    }
    let verb = if r.dry_run {
        "would archive"
    } else {
        "archived"
    };
    let n = r.archived.len();
    output::line(format!("{verb} {n} task{}", if n == 1 { "" } else { "s" }))?;
    for t in &r.archived {
        output::line(format!("  {} ({}) -> {}", t.id, t.status, t.path))?;
    }
    for k in &r.kept {
        output::line(format!(
            "  kept {}: task {} still depends on it",
            k.id, k.needed_by
        ))?;
    }
    if let Some(k) = r.rotated_segment {
        output::line(format!("event log rotated into events/{k:012}.jsonl"))?;
    }
    Ok(0)
}

pub fn status(g: &Global) -> Result<u8> {
    let c = open(g)?;
    let s = c.status()?;
    if g.json {
        output::json(&s)?;
        return Ok(0);
    }
    if !s.goal.is_empty() {
        output::line(format!("goal: {}", s.goal))?;
    }
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    output::line(format!("tasks: {} ({})", s.total, counts.join(", ")))?;
    if s.ready_next.is_empty() {
        output::line(format!("ready: {}", s.ready))?;
    } else {
        let more = if s.ready > s.ready_next.len() {
            ", ..."
        } else {
            ""
        };
        output::line(format!(
            "ready: {} (next: {}{more})",
            s.ready,
            s.ready_next.join(", ")
        ))?;
    }
    if let Some(age) = s.oldest_pending_age_ms {
        output::line(format!("oldest pending: {:.1}s", age as f64 / 1000.0))?;
    }
    if let Some(t) = s.next_ready_at {
        output::line(format!("next backoff ends: {}", clock::format(&t)))?;
    }
    if !s.agents.is_empty() {
        let rows: Vec<Vec<String>> = s
            .agents
            .iter()
            .map(|(a, ids)| vec![a.clone(), ids.len().to_string(), ids.join(", ")])
            .collect();
        output::line(output::table(&["AGENT", "HOLDS", "TASKS"], &rows))?;
    }
    for u in &s.unreadable {
        output::line(format!("unreadable: {u}"))?;
    }
    Ok(0)
}

pub fn reindex(g: &Global) -> Result<u8> {
    let c = open(g)?;
    c.reindex()?;
    if g.json {
        output::json(&json!({ "reindexed": true }))?;
    } else {
        output::line("index rebuilt")?;
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Repair what can be repaired (quarantine unreadable files, remove temps, rebuild the index, block what must be blocked)
    #[arg(long)]
    pub fix: bool,
    /// Also check that the file system is safe to share between hosts (mount type and options: GlusterFS, NFSv4, CephFS...)
    #[arg(long)]
    pub shared: bool,
}

pub fn doctor(g: &Global, a: DoctorArgs) -> Result<u8> {
    let c = open(g)?;
    let mut r = orchestrate::observe::doctor::run(&c, a.fix)?;
    let mount = a
        .shared
        .then(|| orchestrate::observe::mount::probe(c.layout().root()));
    if let Some(m) = &mount {
        let found = orchestrate::observe::mount::findings(m);
        if found
            .iter()
            .any(|f| f.severity == orchestrate::observe::doctor::Severity::Error)
        {
            r.clean = false;
        }
        r.findings.extend(found);
        if !g.json {
            output::line(format!(
                "file system: {} at {} ({:?})",
                m.fs_type.as_deref().unwrap_or("?"),
                m.mount_point.as_deref().unwrap_or("?"),
                m.verdict
            ))?;
        }
    }
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(m) = &mount {
            v["mount"] = serde_json::to_value(m)?;
        }
        output::json(&v)?;
    } else {
        if r.findings.is_empty() {
            output::line(format!(
                "{} checked; no problems found",
                output::count(r.tasks_checked, "task")
            ))?;
        }
        for f in &r.findings {
            let sev = match f.severity {
                orchestrate::observe::doctor::Severity::Error => "error",
                orchestrate::observe::doctor::Severity::Warning => "warning",
            };
            let state = if f.fixed {
                " [fixed]"
            } else if f.fixable && !a.fix {
                " [--fix repairs this]"
            } else {
                ""
            };
            output::line(format!(
                "{sev}: {}: {}{state}
  fix: {}",
                f.file, f.message, f.fix
            ))?;
        }
        if !r.findings.is_empty() {
            output::line(format!(
                "{} checked; {}",
                output::count(r.tasks_checked, "task"),
                if r.clean {
                    "no damage left"
                } else {
                    "damage remains"
                }
            ))?;
        }
    }
    Ok(if r.clean { 0 } else { 65 })
}
