//! `run`, `from-config` and `work`: the supervisor and worker loops.

use super::exit::Usage;
use super::output;
use super::tasks::{open, write_json_file, AgentId};
use super::Global;
use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use orchestrate::run::agent::{AgentKind, AgentSpec, ClaudeOptions};
use orchestrate::run::supervisor::{self, Progress, RunOptions, RunReport, WorkerOptions};
use orchestrate::{run::plan, Coordination, Status};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// The Claude Code CLI, headless
    Claude,
    /// The task's `command`, through `sh -c`
    Shell,
}

impl From<Kind> for AgentKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Claude => AgentKind::Claude,
            Kind::Shell => AgentKind::Shell,
        }
    }
}

/// Adapter flags shared by run, from-config and work.
#[derive(Debug, Args, Clone)]
pub struct AdapterArgs {
    /// Claude model for the agents [env: CLAUDE_MODEL]
    #[arg(
        short = 'm',
        long,
        env = "CLAUDE_MODEL",
        hide_env = true,
        value_name = "MODEL"
    )]
    pub model: Option<String>,
    /// Path of the Claude Code CLI [env: ORCHESTRATE_CLAUDE_BIN]
    #[arg(
        long,
        env = "ORCHESTRATE_CLAUDE_BIN",
        hide_env = true,
        default_value = "claude",
        value_name = "PATH"
    )]
    pub claude_bin: PathBuf,
    /// Claude permission mode passed as --permission-mode ("none" to pass nothing)
    #[arg(long, default_value = "acceptEdits", value_name = "MODE")]
    pub permission_mode: String,
    /// An extra argument for the agent command (repeatable), e.g. --agent-arg=--max-turns --agent-arg=30
    #[arg(long = "agent-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub agent_args: Vec<String>,
}

impl AdapterArgs {
    fn spec(&self, kind: AgentKind, model_override: Option<String>) -> AgentSpec {
        AgentSpec {
            kind,
            claude: ClaudeOptions {
                bin: self.claude_bin.clone(),
                model: model_override.or_else(|| self.model.clone()),
                permission_mode: (self.permission_mode != "none")
                    .then(|| self.permission_mode.clone()),
                extra_args: self.agent_args.clone(),
                // The commands handed to the model name this very binary,
                // so the allow rules match what it will run.
                orchestrate_bin: std::env::current_exe()
                    .unwrap_or_else(|_| PathBuf::from("orchestrate")),
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The goal
    pub goal: String,
    /// Number of workers [env: ORCHESTRATOR_MAX_WORKERS]
    #[arg(short = 'w', long, env = "ORCHESTRATOR_MAX_WORKERS", hide_env = true, default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Seconds allowed per task attempt; the process group is killed after it [env: ORCHESTRATOR_TASK_TIMEOUT]
    #[arg(short = 't', long, env = "ORCHESTRATOR_TASK_TIMEOUT", hide_env = true, default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "SECONDS")]
    pub timeout: u64,
    /// Working directory of the agents (the queue is the nearest .coordination/ in DIR or a parent, else a new DIR/.coordination, unless --dir)
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Let the leader plan the goal (default, unless --tasks is given)
    #[arg(long, overrides_with = "no_plan")]
    pub plan: bool,
    /// Do not plan: run the tasks of --tasks
    #[arg(long = "no-plan")]
    pub no_plan: bool,
    /// Predefined tasks: a JSON array (the Python tool's format) or {"tasks": [...]}
    #[arg(short = 'f', long = "tasks", value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    #[command(flatten)]
    pub common: RunCommon,
}

/// Flags `run` and `from-config` share: the report and the agent.
#[derive(Debug, Args)]
pub struct RunCommon {
    /// Write a JSON run report to FILE
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Start a new run with new task ids, even when an unfinished run of these tasks (or this goal) is in the queue; without it, that run is resumed
    #[arg(long)]
    pub fresh: bool,
    /// Do not write the final summary (by the leader with the claude adapter, from the results with shell)
    #[arg(long = "no-summary")]
    pub no_summary: bool,
    /// Which adapter runs tasks (`--agent claude|shell`, the Python tool's spelling, is accepted too)
    #[arg(
        long = "adapter",
        alias = "agent",
        value_enum,
        default_value = "claude",
        value_name = "ADAPTER"
    )]
    pub agent: Kind,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

#[derive(Debug, Args)]
pub struct FromConfigArgs {
    /// The configuration file (orchestration.json)
    pub file: PathBuf,
    /// Override max_workers from the file
    #[arg(short = 'w', long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    #[command(flatten)]
    pub common: RunCommon,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    #[command(flatten)]
    pub who: AgentId,
    /// Which adapter runs tasks (`--agent` names this worker)
    #[arg(
        long = "adapter",
        value_enum,
        default_value = "claude",
        value_name = "ADAPTER"
    )]
    pub adapter_kind: Kind,
    /// Exit when the queue has nothing pending instead of waiting for more
    #[arg(long)]
    pub until_empty: bool,
    /// Only claim tasks with this tag (repeatable)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Seconds allowed per task attempt
    #[arg(short = 't', long, env = "ORCHESTRATOR_TASK_TIMEOUT", hide_env = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..), value_name = "SECONDS")]
    pub timeout: u64,
    /// Working directory of the agent processes
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

/// SIGINT and SIGTERM end `run` and `work` within 2 s: the first signal
/// asks the workers to stop (children killed, tasks released, exit 128 +
/// the signal); if they have not finished 1.5 s later (a worker blocked in
/// a write to a full pipe, say), or on a second signal, this kills every
/// child's process group, releases the held tasks itself and exits.
fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_interrupt_handler_now);
}

fn install_interrupt_handler_now() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if supervisor::interrupted() {
                stop_now();
            }
            supervisor::interrupt_with(sig);
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(1500));
                stop_now();
            });
            // Last, and on its own thread: stderr may be a full pipe.
            std::thread::spawn(move || {
                let what = if sig == SIGTERM {
                    "terminated (SIGTERM)"
                } else {
                    "interrupted; Ctrl-C again to quit at once"
                };
                output::eline(format!(
                    "orchestrate: {what}: stopping workers and releasing their tasks"
                ));
            });
        }
    });
}

fn stop_now() -> ! {
    orchestrate::run::agent::kill_all_children();
    supervisor::release_held(300);
    std::process::exit(i32::from(supervisor::interrupted_exit_code()));
}

/// Progress of a run or worker: lines on stderr, and on a terminal (stdout
/// and stderr both) a progress bar with completed/failed/running counts.
/// Nothing with `-q`.
fn progress_printer(quiet: bool, with_bar: bool) -> impl Fn(Progress) + Sync {
    let start = Instant::now();
    let bar =
        (with_bar && !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal())
            .then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.enable_steady_tick(Duration::from_millis(200));
                b
            });
    let counts = std::sync::Mutex::new((0u64, 0u64, 0i64)); // completed, failed for good, running
    move |p: Progress| {
        if quiet {
            return;
        }
        let line = format!(
            "[{:7.1}s] {}",
            start.elapsed().as_secs_f64(),
            progress_line(&p)
        );
        let Some(b) = &bar else {
            output::eline(line);
            return;
        };
        if let Ok(mut c) = counts.lock() {
            match &p {
                Progress::Created(n) => b.set_length(*n as u64),
                Progress::Started { .. } => c.2 += 1,
                Progress::Finished { task, .. } => {
                    c.2 -= 1;
                    match task.status {
                        Status::Completed => {
                            c.0 += 1;
                            b.inc(1);
                        }
                        Status::Pending => {}
                        _ => {
                            c.1 += 1;
                            b.inc(1);
                        }
                    }
                }
                Progress::LeaseLost { .. } | Progress::Cancelled { .. } => c.2 -= 1,
                _ => {}
            }
            b.set_message(format!(
                "{} completed, {} failed, {} running",
                c.0,
                c.1,
                c.2.max(0)
            ));
        }
        b.println(line);
        if matches!(p, Progress::Finished { .. }) && b.length() == Some(b.position()) {
            b.finish_and_clear();
        }
    }
}

/// An error on one line, whole: the reason is never cut (up to 2 000
/// characters, which no error of ours reaches).
fn one_line(s: &str) -> String {
    output::truncate(s.trim(), 2000)
}

fn progress_line(p: &Progress) -> String {
    match p.clone() {
        Progress::Planning => "leader is planning…".to_string(),
        Progress::PlanRejected(errs) => format!(
            "plan rejected, asking the leader again:\n  {}",
            errs.join("\n  ")
        ),
        Progress::Created(n) => format!("{n} task{} queued", if n == 1 { "" } else { "s" }),
        Progress::Note(text) => text,
        Progress::Started {
            task_id,
            agent_id,
            attempt,
        } => {
            format!("start    {task_id} ({agent_id}, attempt {attempt})")
        }
        Progress::Finished { task, agent_id } => match task.status {
            Status::Completed => format!("done     {} ({agent_id})", task.id),
            Status::Pending => format!(
                "failed   {} ({agent_id}): {}; retrying (attempt {}/{} next)",
                task.id,
                one_line(task.error.as_deref().unwrap_or("")),
                task.attempts + 1,
                task.max_attempts
            ),
            s => format!(
                "{:<8} {} ({agent_id}): {}",
                s.to_string(),
                task.id,
                one_line(task.error.as_deref().unwrap_or(""))
            ),
        },
        Progress::LeaseLost { task_id, agent_id } => {
            format!("lease lost {task_id} ({agent_id}); result discarded")
        }
        Progress::Cancelled { task_id, agent_id } => {
            format!("cancelled {task_id} ({agent_id}); its process was stopped")
        }
    }
}

fn summary_table(r: &RunReport) -> String {
    let rows: Vec<Vec<String>> = r
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.status.to_string(),
                format!("{}/{}", t.attempts, t.max_attempts),
                t.duration_ms
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                output::truncate(
                    &match t.status {
                        Status::Completed => t
                            .result
                            .as_ref()
                            .map(|v| match v {
                                serde_json::Value::String(s) => s.clone(),
                                serde_json::Value::Object(o) => o
                                    .get("result")
                                    .or_else(|| o.get("output"))
                                    .and_then(|x| x.as_str())
                                    .unwrap_or("")
                                    .trim()
                                    .to_string(),
                                other => other.to_string(),
                            })
                            .unwrap_or_default(),
                        _ => t.error.clone().unwrap_or_default(),
                    },
                    60,
                ),
            ]
        })
        .collect();
    let mut s = output::table(
        &["TASK", "STATUS", "ATTEMPTS", "TIME", "RESULT / ERROR"],
        &rows,
    );
    s += &format!(
        "\n\n{} in {:.1}s{}",
        r.totals.describe(),
        r.duration_ms as f64 / 1000.0,
        match (r.interrupted, r.resumed) {
            (true, _) => " (interrupted; the same command resumes it)".to_string(),
            (false, true) => format!(" (resumed run {})", r.correlation_id),
            _ => String::new(),
        }
    );
    s
}

struct Plan {
    goal: String,
    working_dir: PathBuf,
    workers: usize,
    timeout: u64,
    tasks: Option<Vec<orchestrate::NewTask>>,
    master_plan: Option<String>,
    output: Option<PathBuf>,
    fresh: bool,
    spec: AgentSpec,
    summary: bool,
}

fn execute(g: &Global, p: Plan) -> Result<u8> {
    let dir = match &g.dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("COORDINATION_DIR").filter(|s| !s.is_empty()) {
            Some(d) => PathBuf::from(d),
            // The project's queue when the working directory is inside
            // one (as every other command finds it), else a new one there.
            None => orchestrate::protocol::find_dir_from(
                &std::path::absolute(&p.working_dir).unwrap_or_else(|_| p.working_dir.clone()),
            )
            .unwrap_or_else(|| p.working_dir.join(".coordination")),
        },
    };
    // Before anything is created: a report path that cannot be written, a
    // missing agent binary, an empty or invalid tasks file, shell tasks
    // without a command are usage errors.
    if let Some(out) = &p.output {
        if out.is_dir() {
            return Err(Usage(format!(
                "-o {}: is a directory; give a file name for the run report",
                out.display()
            ))
            .into());
        }
    }
    if p.spec.kind == AgentKind::Claude {
        orchestrate::run::agent::check_claude(&p.spec.claude)?;
    }
    if let Some(tasks) = &p.tasks {
        if tasks.is_empty() {
            return Err(Usage("the tasks file has no tasks".into()).into());
        }
        if p.spec.kind == AgentKind::Shell {
            let missing: Vec<String> = tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.command.as_deref().is_none_or(|c| c.trim().is_empty()))
                .map(|(i, t)| t.id.clone().unwrap_or_else(|| format!("task {}", i + 1)))
                .collect();
            if !missing.is_empty() {
                return Err(Usage(format!(
                    "the shell adapter runs each task's `command`, and these tasks have none: {}; add a \"command\" to each, or use --adapter claude",
                    missing.join(", ")
                ))
                .into());
            }
        }
        let existing = Coordination::open(&dir).ok();
        let errs = plan::check_batch(tasks, &|id| {
            existing.as_ref().is_some_and(|c| c.get(id).is_ok())
        });
        if !errs.is_empty() {
            return Err(orchestrate::Error::Invalid(format!(
                "the tasks are invalid; nothing was created:\n  {}",
                errs.join("\n  ")
            ))
            .into());
        }
    }
    let (c, _) = Coordination::init(&dir, Some(p.goal.clone()))?;
    // The same command again continues its unfinished run (spec 13.6).
    let resume = if p.fresh {
        None
    } else {
        orchestrate::run::resume::find(&c, &p.goal, p.tasks.as_deref())?
    };
    let fresh = p.fresh;
    match execute_run(g, &p, &c, resume)? {
        Attempted::Done(code) => Ok(code),
        // The same file's run, started by another process a moment ago,
        // took the ids first (nothing of ours was created): resume it.
        Attempted::IdsTaken if !fresh => {
            let again = orchestrate::run::resume::find(&c, &p.goal, p.tasks.as_deref())?;
            match execute_run(g, &p, &c, again)? {
                Attempted::Done(code) => Ok(code),
                Attempted::IdsTaken => Err(orchestrate::Error::Invalid(
                    "task ids of this file are taken by tasks of no run of it; pass --fresh, or rename them".into(),
                )
                .into()),
            }
        }
        Attempted::IdsTaken => unreachable_ids_taken(),
    }
}

/// What one try at a run came to.
enum Attempted {
    /// The run happened; its exit code.
    Done(u8),
    /// Its create found an id of the file taken (`BatchIds::Exact`).
    IdsTaken,
}

fn unreachable_ids_taken() -> Result<u8> {
    // `--fresh` creates with local keys, which never fail on a taken id.
    Err(orchestrate::Error::Other("a --fresh run found an id taken".into()).into())
}

fn execute_run(
    g: &Global,
    p: &Plan,
    c: &Coordination,
    resume: Option<orchestrate::run::resume::Resume>,
) -> Result<Attempted> {
    let c = c.clone();
    let run_id = resume
        .as_ref()
        .map(|r| r.run_id.clone())
        .unwrap_or_else(supervisor::new_run_id);
    let mut c = c.with_correlation_id(Some(run_id.clone()));
    if let Some(t) = g.lock_timeout {
        c = c.with_lock_timeout_ms(t.as_millis() as u64);
    }
    let opts = RunOptions {
        goal: p.goal.clone(),
        working_dir: p.working_dir.clone(),
        workers: p.workers,
        timeout: Duration::from_secs(p.timeout),
        agent: p.spec.clone(),
        tasks: p.tasks.clone(),
        master_plan: p.master_plan.clone(),
        run_tag: run_id,
        resume,
        fresh: p.fresh,
        idle_poll_ms: 500,
        summary: p.summary,
    };
    install_interrupt_handler();
    // With JSON logs, stderr stays JSON: progress is in the logs (-v).
    let printer = progress_printer(g.quiet || g.log_format.as_deref() == Some("json"), true);
    let report = match supervisor::run(&c, &opts, &printer) {
        Ok(r) => r,
        Err(orchestrate::Error::Interrupted) => {
            output::eline("orchestrate: interrupted before any task was created");
            return Ok(Attempted::Done(supervisor::interrupted_exit_code()));
        }
        Err(orchestrate::Error::IdTaken(_)) if !p.fresh => return Ok(Attempted::IdsTaken),
        Err(e) => return Err(e.into()),
    };
    if let Some(out) = &p.output {
        write_json_file(out, &supervisor::report_json(&report))
            .with_context(|| format!("write the run report to {}", out.display()))?;
    }
    // The run is done and its report is in files: a reader that went away
    // (`| head`) does not change its exit status.
    if let Err(e) = print_run_summary(g, &report, c.layout().root()) {
        if !output::is_broken_pipe(&e) {
            return Err(e);
        }
    }
    Ok(Attempted::Done(if report.interrupted {
        supervisor::interrupted_exit_code()
    } else if report.success {
        0
    } else {
        1
    }))
}

fn print_run_summary(g: &Global, report: &supervisor::RunReport, dir: &Path) -> Result<()> {
    if g.json {
        output::json(&report)?;
    } else {
        output::line(summary_table(report))?;
        for t in report
            .tasks
            .iter()
            .filter(|t| t.status != Status::Completed)
        {
            output::line(format!(
                "{} {}: {}{}",
                t.id,
                t.status,
                t.error.as_deref().unwrap_or("-"),
                t.log_file
                    .as_ref()
                    .map(|l| format!(" (log: {}/{l})", dir.display()))
                    .unwrap_or_default()
            ))?;
        }
        if !report.discoveries.is_empty() {
            output::line(format!("\nDiscoveries ({}):", report.discoveries.len()))?;
            for d in &report.discoveries {
                output::line(format!(
                    "- {}{}",
                    output::truncate(d.title.trim(), 100),
                    d.related_task
                        .as_deref()
                        .map(|t| format!(" (task {t})"))
                        .unwrap_or_default()
                ))?;
            }
        }
        if let Some(s) = &report.summary {
            output::line(format!(
                "\nSummary ({}):\n{}",
                match report.summary_by.as_deref() {
                    Some("leader") => "by the leader",
                    _ => "from the results",
                },
                s
            ))?;
        }
    }
    Ok(())
}

fn working_dir(cwd: Option<&Path>) -> Result<PathBuf> {
    let d = match cwd {
        Some(p) => std::path::absolute(p)?,
        None => std::env::current_dir()?,
    };
    if !d.is_dir() {
        return Err(Usage(format!(
            "working directory `{}` does not exist",
            d.display()
        ))
        .into());
    }
    Ok(d)
}

pub fn run(g: &Global, a: RunArgs) -> Result<u8> {
    let working_dir = working_dir(a.cwd.as_deref())?;
    // --tasks always wins; without it, plan unless --no-plan.
    let tasks =
        match &a.tasks {
            Some(f) => Some(plan::read_tasks_file(f)?),
            None if a.no_plan && !a.plan => return Err(Usage(
                "no tasks provided: pass --tasks FILE, or drop --no-plan to let the leader plan"
                    .into(),
            )
            .into()),
            None => None,
        };
    let kind: AgentKind = a.common.agent.into();
    if tasks.is_none() && kind == AgentKind::Shell {
        return Err(Usage(
            "the shell agent cannot plan: pass --no-plan --tasks FILE with a `command` per task"
                .into(),
        )
        .into());
    }
    execute(
        g,
        Plan {
            goal: a.goal,
            working_dir,
            workers: a.workers as usize,
            timeout: a.timeout,
            tasks,
            master_plan: None,
            output: a.common.output,
            fresh: a.common.fresh,
            summary: !a.common.no_summary,
            spec: a.common.adapter.spec(kind, None),
        },
    )
}

pub fn from_config(g: &Global, a: FromConfigArgs) -> Result<u8> {
    let rf = plan::read_run_file(&a.file)?;
    let base = a
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let wd = match &rf.working_directory {
        Some(w) if w.is_absolute() => w.clone(),
        Some(w) => base.join(w),
        None => base.to_path_buf(),
    };
    let working_dir = working_dir(Some(&wd))?;
    let kind: AgentKind = a.common.agent.into();
    let tasks = (!rf.tasks.is_empty()).then_some(rf.tasks);
    if tasks.is_none() && kind == AgentKind::Shell {
        return Err(Usage("the configuration has no tasks and the shell agent cannot plan: add tasks with `create-task -c FILE`".into()).into());
    }
    let workers = a
        .workers
        .map(|w| w as usize)
        .or(rf.max_workers)
        .unwrap_or(3);
    if workers == 0 {
        return Err(Usage("max_workers must be at least 1".into()).into());
    }
    execute(
        g,
        Plan {
            goal: rf.goal,
            working_dir,
            workers,
            timeout: rf.task_timeout.unwrap_or(600).max(1),
            tasks,
            master_plan: rf.master_plan,
            output: a.common.output,
            fresh: a.common.fresh,
            summary: !a.common.no_summary,
            spec: a.common.adapter.spec(kind, rf.model),
        },
    )
}

pub fn work(g: &Global, a: WorkArgs) -> Result<u8> {
    let agent_id = a.who.require()?;
    if matches!(agent_id.as_str(), "shell" | "claude")
        && !std::env::args().any(|x| x == "--adapter")
    {
        output::eline(format!(
            "orchestrate: note: `--agent {agent_id}` names this worker; the runner is chosen with `--adapter {agent_id}` (default: claude)"
        ));
    }
    orchestrate::protocol::task::validate_name("agent id", &agent_id)?;
    let c = open(g)?;
    let kind: AgentKind = a.adapter_kind.into();
    let spec = a.adapter.spec(kind, None);
    if kind == AgentKind::Claude {
        orchestrate::run::agent::check_claude(&spec.claude)?;
    }
    install_interrupt_handler();
    if !g.quiet {
        output::eline(format!(
            "orchestrate: worker {agent_id} on the queue {}",
            c.layout().root().display()
        ));
    }
    let opts = WorkerOptions {
        agent_id,
        tags: a.tags,
        agent: spec,
        working_dir: working_dir(a.cwd.as_deref())?,
        timeout: Duration::from_secs(a.timeout),
        goal: c.config().goal.clone(),
        until_empty: a.until_empty,
        idle_poll_ms: 5_000,
        correlation_id: std::env::var("ORCHESTRATE_CORRELATION_ID").ok(),
        watch_files: true,
    };
    let printer = progress_printer(g.quiet, false);
    let summary = supervisor::work(&c, &opts, &printer)?;
    let printed = if g.json {
        output::json(&summary)
    } else {
        // Tasks, then attempts: "5 failed" next to "1 completed" read as
        // five failed tasks when it was one task's five attempts.
        output::line(format!(
            "{} completed, {} dead ({} failed in all), {} released, {} lease lost",
            output::count(summary.completed, "task"),
            summary.dead,
            output::count(summary.failed, "attempt"),
            summary.released,
            summary.lease_lost
        ))
    };
    if let Err(e) = printed {
        if !output::is_broken_pipe(&e) {
            return Err(e);
        }
    }
    Ok(if supervisor::interrupted() {
        supervisor::interrupted_exit_code()
    } else if summary.dead > 0 {
        1
    } else {
        0
    })
}
