//! Argument parsing (clap derive; doc comments are the `--help` text) and
//! dispatch. Commands call the library and hand data to `output`.

mod config;
mod discoveries;
mod exit;
mod hooks;
mod logging;
mod observe;
mod output;
mod run;
mod tasks;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Coordinate many AI coding agents and worker processes through a shared
/// `.coordination/` directory: create, claim, heartbeat, complete, fail and
/// retry tasks atomically, with no server.
///
/// Exit codes: 0 done, 1 failure, 2 usage, 3 not found / nothing ready,
/// 4 conflict (wrong state, lease lost, id taken, cycle), 5 timed out,
/// 65 bad data, 74 I/O error, 130 interrupted.
#[derive(Debug, Parser)]
#[command(
    name = "orchestrate",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The coordination directory [default: $COORDINATION_DIR, else the nearest .coordination/ here or in a parent, as git finds .git]
    #[arg(long, global = true, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Print JSON on stdout instead of text: one document, or JSON Lines for streams (events, watch)
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr: text or json [env: ORCHESTRATE_LOG_FORMAT]
    #[arg(long, global = true, env = "ORCHESTRATE_LOG_FORMAT", hide_env = true, value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// On network and FUSE file systems (NFS, GlusterFS, CephFS, SMB...), do not look again every 500 ms while waiting: only changes made on this host wake a waiter
    #[arg(long, global = true)]
    pub no_poll: bool,
    /// How long to wait for the directory lock, e.g. 10s, 500ms
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lock_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the coordination directory (safe to run twice); with -o also
    /// write a run configuration file (orchestration.json)
    Init(tasks::InitArgs),
    /// Add a task to the queue (or, with -c FILE, to a configuration file)
    CreateTask(tasks::CreateArgs),
    /// Claim the most urgent ready task (or the named one); exit 3 if none
    Claim(tasks::ClaimArgs),
    /// Extend the lease of a task you hold
    Heartbeat(tasks::TokenArgs),
    /// Report a task you hold as completed
    Complete(tasks::CompleteArgs),
    /// Report the current attempt of a task you hold as failed
    Fail(tasks::FailArgs),
    /// Give a task you hold back to the queue without spending an attempt
    Release(tasks::ReleaseArgs),
    /// Cancel a pending, claimed or blocked task (its dependents become blocked)
    Cancel(tasks::CancelArgs),
    /// Change a task that is not claimed or completed (description, command, priority, dependencies, ...)
    Edit(tasks::EditArgs),
    /// Bring a dead, cancelled or blocked task back to pending, with its blocked dependents
    Retry(tasks::IdArg),
    /// Reclaim expired leases now and print what was done
    Reap,
    /// List tasks (--ready: claimable now, in claim order; --blocked: what holds each back)
    List(tasks::ListArgs),
    /// The tasks a claim could take now, in claim order (same as list --ready)
    Ready(tasks::ReadyArgs),
    /// Show one task
    Show(tasks::IdArg),
    /// Counts per state, ready tasks, holdings per agent, oldest pending age;
    /// with -c FILE, a run configuration's settings and tasks instead
    Status(tasks::StatusArgs),
    /// Print an example orchestration.json (or tasks file) on stdout, with comments on stderr
    Example(config::ExampleArgs),
    /// Record a discovery: something found that the other agents should know
    Discover(discoveries::DiscoverArgs),
    /// List the discoveries agents recorded (discoveries.json), oldest first
    Discoveries(discoveries::DiscoveriesArgs),
    /// Rebuild the derived claim index from the task files
    Reindex,
    /// Move finished tasks older than --older-than out of tasks/ into
    /// archive/ (show and list --archived still read them), then rotate the
    /// event log into a segment
    Archive(tasks::ArchiveArgs),
    /// Check every file against the spec; --fix repairs what can be repaired (exit 65: damage left)
    Doctor(tasks::DoctorArgs),
    /// Plan a goal with a leader agent (or take --tasks) and run N workers until done
    Run(run::RunArgs),
    /// Run a saved configuration (orchestration.json)
    FromConfig(run::FromConfigArgs),
    /// Run one worker loop that joins the queue (claim, execute, report, repeat)
    Work(run::WorkArgs),
    /// Answer a Claude Code hook event (reads the hook JSON on stdin)
    Hook(hooks::HookArgs),
    /// Install, remove or show our hooks in Claude Code settings
    Hooks(hooks::HooksArgs),
    /// Print the event log (events.jsonl), optionally following it
    Events(observe::EventsArgs),
    /// Print (or follow with -f) the output of a task's attempt
    Logs(observe::LogsArgs),
    /// Metrics in the Prometheus text format (or --json, or --textfile DIR)
    Metrics(observe::MetricsArgs),
    /// The task DAG as Graphviz DOT or Mermaid, coloured by state
    Graph(observe::GraphArgs),
    /// A live view of the queue that updates on file changes
    Watch(observe::WatchArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help`, `--version` (stdout, exit 0) and usage errors (stderr,
        // exit 2), as clap prints them; a closed stdout ends us quietly and
        // a full one is an I/O error (exit 74), as for every other output.
        Err(e) => {
            let code = e.exit_code();
            return match e.print() {
                Err(io) if io.kind() == std::io::ErrorKind::BrokenPipe => exit::exit(0),
                Err(io) => {
                    output::eline(format!("orchestrate: error: writing to stdout: {io}"));
                    exit::exit(74)
                }
                Ok(()) => exit::exit(u8::try_from(code).unwrap_or(2)),
            };
        }
    };
    logging::init(&cli.global);
    let json = cli.global.json;
    match run(cli) {
        Ok(code) => exit::exit(code),
        Err(e) => {
            if output::is_broken_pipe(&e) {
                // The reader went away (`| head`): that ends us quietly.
                return exit::exit(0);
            }
            let code = exit::code_of(&e);
            if json {
                let _ = output::json(&serde_json::json!({
                    "error": { "kind": exit::kind_of(&e), "message": exit::render(&e), "exit_code": code }
                }));
            }
            output::eline(format!("orchestrate: error: {}", exit::render(&e)));
            exit::exit(code)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    if g.no_poll {
        orchestrate::protocol::watch::set_shared_mount_polling(false);
    }
    match cli.command {
        Command::Init(a) => tasks::init(g, a),
        Command::CreateTask(a) => tasks::create(g, a),
        Command::Claim(a) => tasks::claim(g, a),
        Command::Heartbeat(a) => tasks::heartbeat(g, a),
        Command::Complete(a) => tasks::complete(g, a),
        Command::Fail(a) => tasks::fail(g, a),
        Command::Release(a) => tasks::release(g, a),
        Command::Cancel(a) => tasks::cancel(g, a),
        Command::Edit(a) => tasks::edit(g, a),
        Command::Retry(a) => tasks::retry(g, a),
        Command::Reap => tasks::reap(g),
        Command::List(a) => tasks::list(g, a),
        Command::Ready(a) => tasks::list(
            g,
            tasks::ListArgs {
                status: Vec::new(),
                tag: a.tag,
                ready: true,
                blocked: false,
                archived: false,
            },
        ),
        Command::Show(a) => tasks::show(g, a),
        Command::Status(a) => match &a.config {
            Some(f) => config::status_config(g, f),
            None => tasks::status(g),
        },
        Command::Reindex => tasks::reindex(g),
        Command::Example(a) => config::example(g, a),
        Command::Discover(a) => discoveries::discover(g, a),
        Command::Discoveries(a) => discoveries::discoveries(g, a),
        Command::Archive(a) => tasks::archive(g, a),
        Command::Doctor(a) => tasks::doctor(g, a),
        Command::Run(a) => run::run(g, a),
        Command::FromConfig(a) => run::from_config(g, a),
        Command::Work(a) => run::work(g, a),
        Command::Hook(a) => hooks::hook(g, a),
        Command::Hooks(a) => hooks::hooks(g, a),
        Command::Events(a) => observe::events(g, a),
        Command::Logs(a) => observe::logs(g, a),
        Command::Metrics(a) => observe::metrics(g, a),
        Command::Graph(a) => observe::graph(g, a),
        Command::Watch(a) => observe::watch(g, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
