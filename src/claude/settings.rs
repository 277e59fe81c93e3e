//! Merging our hook entries into Claude Code settings files
//! (`.claude/settings.json`, `.claude/settings.local.json`,
//! `~/.claude/settings.json`), keeping every other key and hook
//! (`spec/PROTOCOL.md` section 14.4; Claude Code settings and hooks
//! reference, <https://docs.claude.com/en/docs/claude-code/hooks>).

use crate::claude::hook::HookEvent;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Which settings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `<project>/.claude/settings.json`, shared through the repository.
    Project,
    /// `<project>/.claude/settings.local.json`, this checkout only.
    Local,
    /// `~/.claude/settings.json`, every project of this user.
    User,
}

/// The settings file for `scope`; `project` is the project root and `home`
/// the user's home directory.
pub fn settings_path(scope: Scope, project: &Path, home: Option<&Path>) -> Result<PathBuf> {
    Ok(match scope {
        Scope::Project => project.join(".claude").join("settings.json"),
        Scope::Local => project.join(".claude").join("settings.local.json"),
        Scope::User => home
            .ok_or_else(|| {
                Error::Invalid("no home directory ($HOME is not set) for --scope user".into())
            })?
            .join(".claude")
            .join("settings.json"),
    })
}

/// Timeout written for each hook, in seconds (Claude Code's default is 60).
pub const HOOK_TIMEOUT_S: u64 = 30;

/// The command Claude Code runs for `event`, with `program` as the
/// `orchestrate` executable.
pub fn hook_command(program: &str, event: HookEvent) -> String {
    // Quoted for the shell Claude Code runs the command with, when needed.
    format!(
        "{} hook {}",
        crate::run::agent::shell_word(program),
        event.cli_name()
    )
}

/// The first word of a shell command, with single quotes removed.
fn first_word(command: &str) -> (String, &str) {
    let c = command.trim_start();
    if let Some(rest) = c.strip_prefix('\'') {
        // '...' possibly with '\'' escapes.
        let mut word = String::new();
        let mut r = rest;
        loop {
            match r.find('\'') {
                Some(i) => {
                    word.push_str(&r[..i]);
                    r = &r[i + 1..];
                    if let Some(after) = r.strip_prefix("\\''") {
                        word.push('\'');
                        r = after;
                    } else {
                        return (word, r);
                    }
                }
                None => return (word + r, ""),
            }
        }
    }
    match c.find(char::is_whitespace) {
        Some(i) => (c[..i].to_string(), &c[i..]),
        None => (c.to_string(), ""),
    }
}

/// True for hook commands that this tool wrote (any program path ending in
/// `orchestrate`, then ` hook <event>`).
pub fn is_ours(command: &str) -> bool {
    let (prog, rest) = first_word(command);
    let mut words = rest.split_whitespace();
    let is_orch = prog == "orchestrate" || prog.ends_with("/orchestrate");
    is_orch
        && words.next() == Some("hook")
        && words.next().is_some_and(|e| HookEvent::parse(e).is_ok())
}

/// Parses an existing settings file's text (empty or absent: `{}`).
///
/// # Errors
/// [`Error::Corrupt`] when it is not a JSON object or its `hooks` is not an
/// object of arrays; the file must then be left alone.
pub fn parse(path: &Path, text: Option<&str>) -> Result<Map<String, Value>> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Map::new());
    };
    let v: Value = serde_json::from_str(text).map_err(|e| {
        Error::corrupt(
            path,
            format!("not valid JSON ({e}); fix or move it, nothing was changed"),
        )
    })?;
    let Value::Object(o) = v else {
        return Err(Error::corrupt(
            path,
            "is not a JSON object; nothing was changed",
        ));
    };
    if let Some(h) = o.get("hooks") {
        let ok = h
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_array));
        if !ok {
            return Err(Error::corrupt(
                path,
                "`hooks` is not an object of arrays; nothing was changed",
            ));
        }
    }
    if let Some(p) = o.get("permissions") {
        let ok = p.as_object().is_some_and(|m| {
            m.get("allow")
                .is_none_or(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        });
        if !ok {
            return Err(Error::corrupt(
                path,
                "`permissions` is not an object whose `allow` is an array of strings; nothing was changed",
            ));
        }
    }
    Ok(o)
}

/// True for a permission rule that [`install`] wrote: `Bash(PROGRAM SUB:*)`
/// with a program ending in `orchestrate` and one of
/// [`crate::run::agent::MODEL_SUBCOMMANDS`].
pub fn is_our_rule(rule: &str) -> bool {
    let Some(inner) = rule
        .strip_prefix("Bash(")
        .and_then(|r| r.strip_suffix(":*)"))
    else {
        return false;
    };
    let (prog, rest) = first_word(inner);
    let is_orch = prog == "orchestrate" || prog.ends_with("/orchestrate");
    is_orch && crate::run::agent::MODEL_SUBCOMMANDS.contains(&rest.trim())
}

/// Adds our hook entries for every event unless an identical command is
/// there, and the allow rules of [`crate::run::agent::allow_rules`] to
/// `permissions.allow`, so that the commands the hooks hand to Claude run
/// without a person approving them (`spec` 14.4). Other keys, hooks and
/// rules are kept in place. Returns true when it changed.
pub fn install(settings: &mut Map<String, Value>, program: &str) -> bool {
    let mut changed = install_rules(settings, program);
    changed |= install_hooks(settings, program);
    changed
}

fn install_rules(settings: &mut Map<String, Value>, program: &str) -> bool {
    let perms = settings
        .entry("permissions")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(perms) = perms.as_object_mut() else {
        return false;
    };
    let allow = perms
        .entry("allow")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(allow) = allow.as_array_mut() else {
        return false;
    };
    let mut changed = false;
    for rule in crate::run::agent::allow_rules(&crate::run::agent::shell_word(program)) {
        if !allow.iter().any(|r| r.as_str() == Some(&rule)) {
            allow.push(Value::String(rule));
            changed = true;
        }
    }
    changed
}

fn uninstall_rules(settings: &mut Map<String, Value>) -> bool {
    let Some(perms) = settings
        .get_mut("permissions")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    let Some(allow) = perms.get_mut("allow").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = allow.len();
    allow.retain(|r| !r.as_str().is_some_and(is_our_rule));
    let changed = allow.len() != before;
    if changed && allow.is_empty() {
        perms.remove("allow");
        if perms.is_empty() {
            settings.remove("permissions");
        }
    }
    changed
}

fn install_hooks(settings: &mut Map<String, Value>, program: &str) -> bool {
    let hooks = settings
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(hooks) = hooks.as_object_mut() else {
        return false;
    };
    let mut changed = false;
    for event in HookEvent::ALL {
        let cmd = hook_command(program, event);
        let groups = hooks
            .entry(event.claude_name())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(groups) = groups.as_array_mut() else {
            continue;
        };
        let present = groups.iter().any(|g| {
            g.get("hooks").and_then(Value::as_array).is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.get("command").and_then(Value::as_str) == Some(&cmd))
            })
        });
        if !present {
            groups.push(json!({
                "hooks": [{ "type": "command", "command": cmd, "timeout": HOOK_TIMEOUT_S }]
            }));
            changed = true;
        }
    }
    changed
}

/// Removes every hook entry and allow rule of ours, and groups, events and
/// keys left empty by that. Returns true when it changed.
pub fn uninstall(settings: &mut Map<String, Value>) -> bool {
    let rules = uninstall_rules(settings);
    uninstall_hooks(settings) | rules
}

fn uninstall_hooks(settings: &mut Map<String, Value>) -> bool {
    let Some(hooks) = settings.get_mut("hooks").and_then(Value::as_object_mut) else {
        return false;
    };
    let mut changed = false;
    let events: Vec<String> = hooks.keys().cloned().collect();
    for ev in events {
        let Some(groups) = hooks.get_mut(&ev).and_then(Value::as_array_mut) else {
            continue;
        };
        for g in groups.iter_mut() {
            if let Some(hs) = g.get_mut("hooks").and_then(Value::as_array_mut) {
                let before = hs.len();
                hs.retain(|h| {
                    !h.get("command")
                        .and_then(Value::as_str)
                        .is_some_and(is_ours)
                });
                if hs.len() != before {
                    changed = true;
                }
            }
        }
        let before = groups.len();
        groups.retain(|g| {
            !g.get("hooks")
                .and_then(Value::as_array)
                .is_some_and(|hs| hs.is_empty())
        });
        changed |= groups.len() != before;
        if groups.is_empty() && changed {
            hooks.remove(&ev);
        }
    }
    if hooks.is_empty() && changed {
        settings.remove("hooks");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_commands() {
        assert!(is_ours("orchestrate hook stop"));
        assert!(is_ours("/usr/local/bin/orchestrate hook session-start"));
        assert!(!is_ours("orchestrate-other hook stop"));
        assert!(!is_ours("orchestrate hook nonsense"));
        assert!(!is_ours("./lint.sh"));
        assert!(is_ours(&hook_command(
            "/opt/my tools/orchestrate",
            HookEvent::Stop
        )));
        assert_eq!(
            hook_command("/opt/my tools/orchestrate", HookEvent::Stop),
            "'/opt/my tools/orchestrate' hook stop"
        );
        assert!(is_ours(&hook_command(
            "/opt/it's/orchestrate",
            HookEvent::SessionEnd
        )));
    }
}
