//! `hook <event>` (called by Claude Code) and `hooks install|uninstall|show`.

use super::exit::Usage;
use super::output;
use super::tasks::write_json_file;
use super::Global;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use orchestrate::claude::hook::{self, HookEvent, HookOptions};
use orchestrate::claude::settings::{self, Scope};
use orchestrate::Coordination;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The event: session-start, user-prompt-submit, stop, subagent-stop, session-end
    pub event: String,
    /// Act as this agent instead of the session id [env: ORCHESTRATE_AGENT_ID]
    #[arg(
        long = "agent",
        env = "ORCHESTRATE_AGENT_ID",
        hide_env = true,
        value_name = "ID"
    )]
    pub agent: Option<String>,
    /// Lease for tasks the hook claims or heartbeats
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: std::time::Duration,
    /// Stop-hook blocks in a row without progress before Claude may stop anyway
    #[arg(long, default_value_t = hook::DEFAULT_MAX_BLOCKS, value_name = "N")]
    pub max_blocks: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// .claude/settings.json in the project (shared)
    Project,
    /// .claude/settings.local.json in the project (this checkout)
    Local,
    /// ~/.claude/settings.json (every project)
    User,
}

#[derive(Debug, Args)]
pub struct HooksArgs {
    #[command(subcommand)]
    pub action: HooksAction,
}

#[derive(Debug, Subcommand)]
pub enum HooksAction {
    /// Add our hook entries to a Claude Code settings file (keeps everything else)
    Install(ScopeArgs),
    /// Remove only our hook entries
    Uninstall(ScopeArgs),
    /// Print the settings file as install would write it
    Show(ScopeArgs),
}

#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Which settings file
    #[arg(long, value_enum, default_value = "project")]
    pub scope: ScopeArg,
    /// Project root [default: current directory]
    #[arg(long, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Program name or path written into the hook commands
    #[arg(long, default_value = "orchestrate", value_name = "PATH")]
    pub program: String,
}

/// Runs one hook. Never blocks the session on our own failure: errors are
/// one line on stderr and exit 1 (non-blocking for Claude Code).
pub fn hook(g: &Global, a: HookArgs) -> Result<u8> {
    match hook_inner(g, &a) {
        Ok(()) => Ok(0),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            output::eline(format!("orchestrate hook {}: {msg}", a.event));
            Ok(1)
        }
    }
}

/// The program word for handed-over commands: as the hook was invoked when
/// that is a bare name (found on `PATH`) or an absolute path, so it is the
/// word `hooks install --program` wrote into the command and allow rules;
/// else this executable's absolute path.
fn hook_program() -> String {
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    let word = match argv0 {
        Some(p) if p.is_absolute() || p.components().count() == 1 => p,
        _ => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("orchestrate")),
    };
    orchestrate::run::agent::shell_word(&word.to_string_lossy())
}

fn hook_inner(g: &Global, a: &HookArgs) -> Result<()> {
    let event = HookEvent::parse(&a.event)?;
    let mut buf = Vec::new();
    std::io::stdin()
        .take(hook::MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .context("read the hook input from stdin")?;
    if hook::hooks_disabled() {
        // A Claude process that a worker started: the worker owns its task.
        tracing::debug!("hooks are off in this process ({}=off)", hook::HOOKS_ENV);
        return Ok(());
    }
    let input = hook::parse_input(&buf)?;
    let cwd = input.cwd.as_deref().map(PathBuf::from);
    let dir = hook::find_dir(g.dir.as_deref(), cwd.as_deref()).ok_or_else(|| {
        anyhow::anyhow!(
            "no .coordination/ found from {}; run `orchestrate init` in the project or set COORDINATION_DIR",
            cwd.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the current directory".into())
        )
    })?;
    let c = Coordination::open(&dir)?.with_lock_timeout_ms(
        g.lock_timeout
            .map(|d| d.as_millis() as u64)
            .unwrap_or(5_000),
    );
    // The commands we hand over carry --dir literally; a path that is not
    // UTF-8 cannot be written into them without a lossy or `$'...'` form
    // (which Claude Code will not pre-approve), so refuse it clearly.
    if c.layout().root().to_str().is_none() {
        anyhow::bail!(
            "the coordination directory {} is not valid UTF-8, so the commands handed to Claude cannot name it; move the project or point COORDINATION_DIR at a UTF-8 path",
            c.layout().root().display()
        );
    }
    let (agent, note) = hook::resolve_agent(&c, &input, a.agent.as_deref())?;
    let opts = HookOptions {
        agent,
        note,
        lease_ms: a.lease.as_millis() as u64,
        max_blocks: a.max_blocks,
        program: hook_program(),
    };
    let out = hook::handle(&c, event, &input, &opts)?;
    if let Some(v) = out.stdout {
        let mut so = std::io::stdout().lock();
        serde_json::to_writer(&mut so, &v)?;
        so.write_all(b"\n")?;
    }
    Ok(())
}

pub fn hooks(g: &Global, a: HooksArgs) -> Result<u8> {
    let (args, action) = match &a.action {
        HooksAction::Install(s) => (s, "install"),
        HooksAction::Uninstall(s) => (s, "uninstall"),
        HooksAction::Show(s) => (s, "show"),
    };
    let project = match &args.project_dir {
        Some(p) => p.clone(),
        None => std::env::current_dir()?,
    };
    let scope = match args.scope {
        ScopeArg::Project => Scope::Project,
        ScopeArg::Local => Scope::Local,
        ScopeArg::User => Scope::User,
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut path = settings::settings_path(scope, &project, home.as_deref())?;
    // A settings file kept elsewhere and linked in (dotfiles): edit the
    // file it points to, not the link, but only when that file is the
    // user's own, and say so (`spec` 14.4); someone else's link would
    // have us rewrite any JSON file we can write.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        let target = std::fs::canonicalize(&path).map_err(|e| {
            orchestrate::Error::Invalid(format!(
                "`{}` is a symlink that points nowhere ({e}); fix or remove it",
                path.display()
            ))
        })?;
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let owned = std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == me)
            && std::fs::metadata(&target).is_ok_and(|m| m.uid() == me && m.is_file());
        if !owned {
            return Err(orchestrate::Error::Invalid(format!(
                "`{}` is a symlink to `{}`, which is not a regular file of yours; nothing was changed",
                path.display(),
                target.display()
            ))
            .into());
        }
        if action != "show" {
            output::eline(format!(
                "orchestrate: {} is a symlink; editing its target {}",
                path.display(),
                target.display()
            ));
        }
        path = target;
    }
    // Non-blocking, regular files only, bounded: a FIFO here is refused.
    let text = if std::fs::symlink_metadata(&path).is_ok() {
        Some(orchestrate::run::plan::read_user_file(
            &path,
            "Claude settings file",
        )?)
    } else {
        None
    };
    let mut doc = settings::parse(&path, text.as_deref())?;
    if args.program.trim().is_empty() {
        return Err(Usage("--program must not be empty".into()).into());
    }
    let changed = match action {
        "uninstall" => settings::uninstall(&mut doc),
        _ => settings::install(&mut doc, &args.program),
    };
    let value = serde_json::Value::Object(doc);
    if action != "show" && changed {
        write_json_file(&path, &value)?;
    }
    // The hooks find the queue as every command does; with none above the
    // project they have nothing to hand out, which looks like a broken
    // install. Say so now rather than leave the user to wonder.
    let warning = (action == "install"
        && g.dir.is_none()
        && std::env::var_os("COORDINATION_DIR").is_none_or(|d| d.is_empty())
        && orchestrate::protocol::find_dir_from(&project).is_none())
    .then(|| {
        format!(
            "no .coordination/ found in {} or above: the hooks do nothing until you run `orchestrate init GOAL` there",
            project.display()
        )
    });
    if let Some(w) = &warning {
        output::eline(format!("orchestrate: warning: {w}"));
    }
    if g.json || action == "show" {
        if action == "show" && !g.json {
            output::line(serde_json::to_string_pretty(&value)?)?;
        } else {
            output::json(
                &serde_json::json!({ "file": path, "changed": changed && action != "show", "settings": value, "warning": warning }),
            )?;
        }
    } else {
        let what = match (action, changed) {
            ("install", true) => "installed the orchestrate hooks in",
            ("install", false) => "the orchestrate hooks are already in",
            (_, true) => "removed the orchestrate hooks from",
            (_, false) => "no orchestrate hooks to remove in",
        };
        output::line(format!("{what} {}", path.display()))?;
    }
    Ok(0)
}
