//! Claude Code hooks: `orchestrate hook <event>` reads the hook's JSON from
//! stdin and answers in Claude Code's hook output format, so interactive
//! sessions pull work from the queue (`spec/PROTOCOL.md` section 14; Claude
//! Code hooks reference, <https://docs.claude.com/en/docs/claude-code/hooks>).
//!
//! - `session-start`: registers the agent, heartbeats what it holds, and
//!   returns `hookSpecificOutput.additionalContext` with the goal, the held
//!   task and the commands to report.
//! - `user-prompt-submit`: heartbeats held tasks; reminds Claude of them.
//! - `stop`: a held task not yet reported blocks the stop (`decision:
//!   "block"`) with the commands to finish it; with none held, the next ready
//!   task is claimed and handed over as the reason to go on; with nothing
//!   ready, Claude may stop. Blocks without progress are bounded.
//! - `subagent-stop`: heartbeats only; subagents never take tasks.
//! - `session-end`: releases what the session holds (no attempt spent) and
//!   marks the agent gone.

use crate::error::{Error, Result};
use crate::protocol::clock;
use crate::protocol::registry::AgentStatus;
use crate::protocol::task::{self, Task};
use crate::protocol::{ClaimOutcome, ClaimRequest, Coordination};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Largest hook input accepted on stdin, in bytes (1 MiB).
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Default lease for tasks claimed by a hook, in milliseconds (30 min):
/// interactive sessions heartbeat only when a hook runs.
pub const DEFAULT_HOOK_LEASE_MS: u64 = 30 * 60 * 1000;
/// Default bound on Stop-hook blocks in a row without progress.
pub const DEFAULT_MAX_BLOCKS: u32 = 3;

pub use crate::run::agent::HOOKS_ENV;

/// True when our hooks must do nothing in this process: [`HOOKS_ENV`] is
/// `off` (or `0`, `false`), or the process runs inside a worker's attempt
/// (`ORCHESTRATE_FENCING_TOKEN` is set, which only `run`/`work` do).
pub fn hooks_disabled() -> bool {
    let off = std::env::var(HOOKS_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false"
        )
    });
    off || crate::run::agent::inside_attempt()
}

/// The Claude Code hook events we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// `SessionStart`.
    SessionStart,
    /// `UserPromptSubmit`.
    UserPromptSubmit,
    /// `Stop`.
    Stop,
    /// `SubagentStop`.
    SubagentStop,
    /// `SessionEnd`.
    SessionEnd,
}

impl HookEvent {
    /// All events, in settings order.
    pub const ALL: [HookEvent; 5] = [
        HookEvent::SessionStart,
        HookEvent::UserPromptSubmit,
        HookEvent::Stop,
        HookEvent::SubagentStop,
        HookEvent::SessionEnd,
    ];

    /// The CLI name (`session-start`, ...).
    pub fn cli_name(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "session-start",
            HookEvent::UserPromptSubmit => "user-prompt-submit",
            HookEvent::Stop => "stop",
            HookEvent::SubagentStop => "subagent-stop",
            HookEvent::SessionEnd => "session-end",
        }
    }

    /// Claude Code's name (`SessionStart`, ...).
    pub fn claude_name(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "SessionStart",
            HookEvent::UserPromptSubmit => "UserPromptSubmit",
            HookEvent::Stop => "Stop",
            HookEvent::SubagentStop => "SubagentStop",
            HookEvent::SessionEnd => "SessionEnd",
        }
    }

    /// Parses a CLI name.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the events.
    pub fn parse(s: &str) -> Result<Self> {
        HookEvent::ALL
            .into_iter()
            .find(|e| e.cli_name() == s || e.claude_name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown hook event `{s}`: use session-start, user-prompt-submit, stop, subagent-stop or session-end"
                ))
            })
    }
}

/// The fields of the hook input we use; the rest is ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookInput {
    /// Claude Code's session id; the agent id unless overridden.
    pub session_id: String,
    /// Path of the session transcript.
    pub transcript_path: Option<String>,
    /// Claude Code's working directory.
    pub cwd: Option<String>,
    /// `SessionStart`, `Stop`, ...
    pub hook_event_name: Option<String>,
    /// SessionStart: `startup`, `resume`, `clear` or `compact`.
    pub source: Option<String>,
    /// Stop/SubagentStop: true when Claude is already continuing because of
    /// a Stop hook.
    pub stop_hook_active: bool,
}

/// Parses the hook's stdin.
///
/// # Errors
/// [`Error::Invalid`] for empty, oversized, non-JSON or non-object input, or
/// a missing `session_id`.
pub fn parse_input(bytes: &[u8]) -> Result<HookInput> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Error::Invalid(format!(
            "hook input is over {MAX_INPUT_BYTES} bytes"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Invalid(
            "no hook input on stdin (Claude Code passes a JSON object; run this from a hook)"
                .into(),
        ));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("hook input is not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| Error::Invalid("hook input is not a JSON object".into()))?;
    for k in [
        "session_id",
        "transcript_path",
        "cwd",
        "hook_event_name",
        "source",
    ] {
        if o.get(k).is_some_and(|v| !(v.is_string() || v.is_null())) {
            return Err(Error::Invalid(format!("hook input `{k}` is not a string")));
        }
    }
    if o.get("stop_hook_active")
        .is_some_and(|v| !(v.is_boolean() || v.is_null()))
    {
        return Err(Error::Invalid(
            "hook input `stop_hook_active` is not a boolean".into(),
        ));
    }
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let session_id = s("session_id")
        .filter(|x| !x.is_empty())
        .ok_or_else(|| Error::Invalid("hook input has no `session_id`".into()))?;
    Ok(HookInput {
        session_id,
        transcript_path: s("transcript_path"),
        cwd: s("cwd"),
        hook_event_name: s("hook_event_name"),
        source: s("source"),
        stop_hook_active: o
            .get("stop_hook_active")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Finds `.coordination/`: `explicit`, else `$COORDINATION_DIR`, else the
/// first `.coordination/config.json` walking up from `cwd`, as git finds
/// `.git`.
pub fn find_dir(explicit: Option<&Path>, cwd: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("COORDINATION_DIR").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let start = cwd
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())?;
    start
        .ancestors()
        .map(|d| d.join(crate::protocol::layout::DEFAULT_DIR))
        .find(|d| d.join("config.json").is_file())
}

/// Agent id a session acts as: `override_id` (from `--agent` or
/// `$ORCHESTRATE_AGENT_ID`) or the session id.
///
/// # Errors
/// [`Error::Invalid`] when the id breaks the id rules.
pub fn agent_id(input: &HookInput, override_id: Option<&str>) -> Result<String> {
    let id = override_id
        .filter(|s| !s.is_empty())
        .unwrap_or(&input.session_id)
        .to_string();
    task::validate_name("agent id", &id)?;
    Ok(id)
}

/// The agent id a session acts as, and a note for the session when it is
/// not the one it asked for: as [`agent_id`], except that an id taken by
/// another live session (its agent record is `active` and names another
/// `session_id`) is not shared: the session then acts as its own
/// `session_id`, so it is never told it holds another session's task
/// (`spec` 14.1).
///
/// # Errors
/// As [`agent_id`]; errors reading the agent record.
pub fn resolve_agent(
    c: &Coordination,
    input: &HookInput,
    override_id: Option<&str>,
) -> Result<(String, Option<String>)> {
    let id = agent_id(input, override_id)?;
    if id == input.session_id {
        return Ok((id, None));
    }
    match c.agent(&id)? {
        Some(r)
            if r.status == AgentStatus::Active
                && r.session_id
                    .as_deref()
                    .is_some_and(|s| s != input.session_id) =>
        {
            let own = agent_id(input, None)?;
            let note = format!(
                "agent id `{id}` is in use by another live Claude session ({}); this session acts as `{own}` instead. Give each session its own ORCHESTRATE_AGENT_ID.",
                r.session_id.unwrap_or_default()
            );
            tracing::warn!(agent_id = %id, session_id = %input.session_id, "{note}");
            Ok((own, Some(note)))
        }
        _ => Ok((id, None)),
    }
}

/// Options of `orchestrate hook`.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// Agent id to act as.
    pub agent: String,
    /// Lease for tasks the hook claims and heartbeats, in milliseconds.
    pub lease_ms: u64,
    /// Bound on Stop-hook blocks in a row without progress.
    pub max_blocks: u32,
    /// Said to the session at SessionStart: why its agent id is not the
    /// one it asked for ([`resolve_agent`]).
    pub note: Option<String>,
    /// The first word of the commands handed to Claude: the program as the
    /// hook was invoked (`orchestrate`, or the path `hooks install
    /// --program` wrote), so that the allow rules of the settings match.
    pub program: String,
}

/// What to print: the JSON document for stdout (`None`: print nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct HookOutput {
    /// Claude Code hook output, or nothing.
    pub stdout: Option<Value>,
}

fn commands(c: &Coordination, o: &HookOptions, t: &Task) -> String {
    // `--dir` with the absolute path: the session's shell may be in a
    // subdirectory or another worktree.
    crate::run::agent::report_commands(&o.program, c.layout().root(), t, true)
}

/// A task for Claude: our own line with id, token and attempts, then its
/// text (description, files, hints) fenced as data under a fresh nonce
/// (`spec` 14.2), then a line naming the nonce, so the commands given after
/// it cannot be imitated from inside the task text.
fn describe(t: &Task) -> String {
    let nonce = crate::run::agent::new_nonce();
    let mut data = t.description.clone();
    if !t.context.files.is_empty() {
        data += &format!("\nRelevant files: {}", t.context.files.join(", "));
    }
    if let Some(h) = &t.context.hints {
        data += &format!("\nHints: {h}");
    }
    format!(
        "Task `{}` (fencing token {}, attempt {}/{}, priority {}):\n{}\nOnly the text outside the TASK-DATA-{nonce} block is from orchestrate.",
        t.id,
        t.fencing_token,
        t.attempts,
        t.max_attempts,
        t.priority,
        crate::run::agent::data_block(&nonce, "the task as it was queued", &data)
    )
}

/// The newest discoveries (`spec` 3.6) for a hand-over, fenced as data
/// under a nonce of their own (14.2, 14.3), followed by a newline; empty
/// when there are none or the file cannot be read (logged: a bad
/// `discoveries.json` must not stop a hand-over).
fn recent_discoveries(c: &Coordination) -> String {
    let list = match c.recent_discoveries(crate::run::agent::PROMPT_DISCOVERIES) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the discoveries; handing over without them");
            return String::new();
        }
    };
    let nonce = crate::run::agent::new_nonce();
    match crate::run::agent::discoveries_block(&nonce, &list) {
        Some(block) => format!(
            "What other agents found (recent discoveries):\n{block}\nOnly the text outside the TASK-DATA-{nonce} block is from orchestrate.\n"
        ),
        None => String::new(),
    }
}

fn additional_context(event: HookEvent, text: String) -> Value {
    json!({
        "hookSpecificOutput": {
            "hookEventName": event.claude_name(),
            "additionalContext": text,
        }
    })
}

fn heartbeat_all(c: &Coordination, held: &[Task], lease_ms: u64) -> Vec<Task> {
    held.iter()
        .map(
            |t| match c.heartbeat(t.id.as_str(), t.fencing_token, Some(lease_ms)) {
                Ok(t2) => t2,
                Err(e) => {
                    tracing::warn!(task_id = %t.id, error = %e, "heartbeat from hook failed");
                    t.clone()
                }
            },
        )
        .collect()
}

/// Handles one hook event for `input` (`spec` section 14).
///
/// # Errors
/// Protocol errors (lock timeout, I/O, bad data). The caller turns them into
/// a one-line message and a non-blocking exit.
pub fn handle(
    c: &Coordination,
    event: HookEvent,
    input: &HookInput,
    o: &HookOptions,
) -> Result<HookOutput> {
    let kind = "claude-code";
    match event {
        HookEvent::SessionStart => {
            c.update_agent(&o.agent, kind, |r| {
                r.status = AgentStatus::Active;
                r.session_id = Some(input.session_id.clone());
                r.cwd = input.cwd.clone().or(r.cwd.take());
                r.transcript_path = input.transcript_path.clone().or(r.transcript_path.take());
                r.consecutive_blocks = 0;
                r.last_block = None;
            })?;
            let held = heartbeat_all(c, &c.held_by(&o.agent)?, o.lease_ms);
            let goal = &c.config().goal;
            let mut text = format!(
                "This session is agent `{}` of a shared task queue coordinated by `orchestrate` (directory {}).",
                o.agent,
                c.layout().root().display()
            );
            if let Some(n) = &o.note {
                text += &format!(" Note: {n}");
            }
            if !goal.is_empty() {
                text += &format!(" The shared goal: {goal}");
            }
            if held.is_empty() {
                text += "\nYou hold no task now. When you finish what the user asks, the Stop hook hands you the next ready task from the queue; you can also take one yourself with `orchestrate claim --agent ";
                text += &o.agent;
                text += " --json`.";
            } else {
                for t in &held {
                    text += &format!(
                        "\nYou hold this task:\n{}\nCommands:\n{}",
                        describe(t),
                        commands(c, o, t)
                    );
                }
            }
            text += "\nReport every task you take with `orchestrate complete` or `orchestrate fail`, always with its --token.";
            Ok(HookOutput {
                stdout: Some(additional_context(event, text)),
            })
        }
        HookEvent::UserPromptSubmit => {
            let held = heartbeat_all(c, &c.held_by(&o.agent)?, o.lease_ms);
            if held.is_empty() {
                return Ok(HookOutput { stdout: None });
            }
            let text = held
                .iter()
                .map(|t| {
                    format!(
                        "Reminder: you hold {} Report it with the commands:\n{}",
                        describe(t),
                        commands(c, o, t)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(HookOutput {
                stdout: Some(additional_context(event, text)),
            })
        }
        HookEvent::SubagentStop => {
            heartbeat_all(c, &c.held_by(&o.agent)?, o.lease_ms);
            Ok(HookOutput { stdout: None })
        }
        HookEvent::SessionEnd => {
            for t in c.held_by(&o.agent)? {
                if let Err(e) = c.release(t.id.as_str(), t.fencing_token) {
                    tracing::warn!(task_id = %t.id, error = %e, "could not release on session end; its lease will expire");
                }
            }
            c.update_agent(&o.agent, kind, |r| {
                r.status = AgentStatus::Gone;
                r.consecutive_blocks = 0;
                r.last_block = None;
            })?;
            Ok(HookOutput { stdout: None })
        }
        HookEvent::Stop => stop(c, input, o),
    }
}

fn stop(c: &Coordination, input: &HookInput, o: &HookOptions) -> Result<HookOutput> {
    let kind = "claude-code";
    let held = heartbeat_all(c, &c.held_by(&o.agent)?, o.lease_ms);
    let record = c.agent(&o.agent)?;
    if let Some(t) = held.first() {
        // Still holding: ask Claude to finish and report, a bounded number
        // of times without progress.
        let key = format!("{}:{}", t.id, t.fencing_token);
        let previous = record
            .as_ref()
            .map(|r| (r.consecutive_blocks, r.last_block.clone()));
        let blocks = match previous {
            Some((n, Some(k))) if k == key && input.stop_hook_active => n + 1,
            _ => 1,
        };
        if blocks > o.max_blocks {
            c.update_agent(&o.agent, kind, |r| {
                r.consecutive_blocks = 0;
                r.last_block = None;
            })?;
            tracing::warn!(task_id = %t.id, "stop allowed after {} blocks without progress; the task stays held until its lease expires or the session ends", o.max_blocks);
            return Ok(HookOutput {
                stdout: Some(json!({
                    "systemMessage": format!(
                        "orchestrate: task {} is still held by this session; it will be released when the session ends or taken back when its lease expires at {}",
                        t.id,
                        t.lease_expires_at.map(|x| clock::format(&x)).unwrap_or_default()
                    )
                })),
            });
        }
        c.update_agent(&o.agent, kind, |r| {
            r.consecutive_blocks = blocks;
            r.last_block = Some(key.clone());
        })?;
        return Ok(HookOutput {
            stdout: Some(json!({
                "decision": "block",
                "reason": format!(
                    "You still hold a task from the shared queue that is not reported yet.\n{}\nFinish it, then run exactly one of:\n{}",
                    describe(t),
                    commands(c, o, t)
                ),
            })),
        });
    }
    // Holding nothing. If this session handed back the task it was last
    // given (released: pending with that very token, nobody claimed it
    // since) while going on because of our hand-over, handing over again
    // would loop claim/release without end (a release spends no attempt):
    // let it stop (`spec` 14.3).
    if let Some((id, tok)) = record
        .as_ref()
        .and_then(|r| r.last_block.as_deref())
        .and_then(|k| k.rsplit_once(':'))
    {
        let released = c.get(id).is_ok_and(|t| {
            t.status == crate::protocol::task::Status::Pending && tok.parse() == Ok(t.fencing_token)
        });
        if released && input.stop_hook_active {
            c.update_agent(&o.agent, kind, |r| {
                r.consecutive_blocks = 0;
                r.last_block = None;
            })?;
            return Ok(HookOutput {
                stdout: Some(json!({
                    "systemMessage": format!(
                        "orchestrate: this session handed task {id} back; not handing it (or another) over again in this turn"
                    )
                })),
            });
        }
    }
    // Hand over the next ready task.
    let req = ClaimRequest {
        agent: o.agent.clone(),
        task_id: None,
        tags: Vec::new(),
        lease_ms: Some(o.lease_ms),
        only_if_idle: true,
    };
    match c.claim(&req)? {
        // Another hook of this session claimed in the meantime: answer
        // about what the session holds now.
        ClaimOutcome::NothingReady(nr)
            if nr.reason == crate::protocol::NotReadyReason::AgentBusy =>
        {
            match c.held_by(&o.agent)?.first() {
                Some(t) => Ok(HookOutput {
                    stdout: Some(json!({
                        "decision": "block",
                        "reason": format!(
                            "You hold a task from the shared queue that is not reported yet.\n{}\nFinish it, then run exactly one of:\n{}",
                            describe(t),
                            commands(c, o, t)
                        ),
                    })),
                }),
                None => Ok(HookOutput { stdout: None }),
            }
        }
        ClaimOutcome::Claimed(t) => {
            let found = recent_discoveries(c);
            let key = format!("{}:{}", t.id, t.fencing_token);
            c.update_agent(&o.agent, kind, |r| {
                r.status = AgentStatus::Active;
                r.consecutive_blocks = 1;
                r.last_block = Some(key);
            })?;
            Ok(HookOutput {
                stdout: Some(json!({
                    "decision": "block",
                    "reason": format!(
                        "Next task from the shared queue (claimed for you as agent `{}`):\n{}\n{found}Do it now. Then run exactly one of:\n{}",
                        o.agent,
                        describe(&t),
                        commands(c, o, &t)
                    ),
                })),
            })
        }
        ClaimOutcome::NothingReady(_) => {
            if record.is_some_and(|r| r.consecutive_blocks != 0 || r.last_block.is_some()) {
                c.update_agent(&o.agent, kind, |r| {
                    r.consecutive_blocks = 0;
                    r.last_block = None;
                })?;
            }
            Ok(HookOutput { stdout: None })
        }
    }
}
