//! `example` and `status -c`: the Python tool's helpers for run
//! configuration files (`spec/PROTOCOL.md` sections 11 and 13.3). Neither
//! opens the coordination directory.

use super::output;
use super::Global;
use anyhow::Result;
use clap::{Args, ValueEnum};
use orchestrate::run::plan;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum Example {
    /// A run configuration file, for `from-config FILE`
    #[default]
    Config,
    /// A tasks file, for `run GOAL --tasks FILE`
    Tasks,
}

#[derive(Debug, Args)]
pub struct ExampleArgs {
    /// Which example: the configuration (orchestration.json) or a tasks file
    #[arg(value_enum, default_value = "config")]
    pub what: Example,
}

fn model() -> String {
    std::env::var("CLAUDE_MODEL")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "claude-sonnet-4-20250514".into())
}

fn comments(list: &[(&str, &str)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
    )
}

fn print_comments(g: &Global, head: &[&str], list: &[(&str, &str)]) {
    if g.quiet {
        return;
    }
    for h in head {
        output::eline(format!("# {h}"));
    }
    let w = list.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in list {
        output::eline(format!("#   {k:<w$}  {v}"));
    }
}

/// The JSON goes to stdout alone, so `orchestrate example >
/// orchestration.json` is a valid file; the comments (JSON has none) go to
/// stderr.
pub fn example(g: &Global, a: ExampleArgs) -> Result<u8> {
    let config = plan::example_config(&model());
    let tasks = plan::example_tasks();
    if g.json {
        output::json(&json!({
            "config": config,
            "tasks": tasks,
            "comments": {
                "config": comments(plan::CONFIG_COMMENTS),
                "task": comments(plan::TASK_COMMENTS),
            },
        }))?;
        return Ok(0);
    }
    match a.what {
        Example::Config => {
            print_comments(
                g,
                &[
                    "An example run configuration (orchestration.json); comments on stderr, the file on stdout.",
                    "Save and run it:  orchestrate example > orchestration.json && orchestrate from-config orchestration.json --adapter shell   (each task's command runs; without --adapter shell, Claude Code does the work)",
                    "(--adapter shell runs each task's `command` instead of Claude; `orchestrate status -c orchestration.json` shows its tasks)",
                ],
                plan::CONFIG_COMMENTS,
            );
            print_comments(g, &["Each task:"], plan::TASK_COMMENTS);
            output::line(serde_json::to_string_pretty(&config)?)?;
        }
        Example::Tasks => {
            print_comments(
                g,
                &[
                    "An example tasks file; comments on stderr, the file on stdout.",
                    "Save and run it:  orchestrate example tasks > tasks.json && orchestrate run 'Add /health' --tasks tasks.json --adapter shell   (or the default --adapter claude)",
                    "Each task:",
                ],
                plan::TASK_COMMENTS,
            );
            output::line(serde_json::to_string_pretty(&tasks)?)?;
        }
    }
    Ok(0)
}

/// `status -c FILE`: a run configuration's settings and tasks, read as
/// `from-config` reads it (an invalid file is `invalid`, exit 2).
pub fn status_config(g: &Global, file: &Path) -> Result<u8> {
    let rf = plan::read_run_file(file)?;
    let tasks: Vec<Value> = rf.tasks.iter().map(plan::task_entry).collect();
    if g.json {
        output::json(&json!({
            "config_file": file,
            "goal": rf.goal,
            "working_directory": rf.working_directory,
            "max_workers": rf.max_workers,
            "model": rf.model,
            "task_timeout": rf.task_timeout,
            "master_plan": rf.master_plan,
            "total": tasks.len(),
            "tasks": tasks,
        }))?;
        return Ok(0);
    }
    output::line(format!("configuration: {}", file.display()))?;
    output::line(format!("goal: {}", rf.goal))?;
    let or_default = |v: Option<String>, d: &str| v.unwrap_or_else(|| d.to_string());
    output::line(format!(
        "workers: {}   model: {}   task timeout: {}",
        or_default(rf.max_workers.map(|n| n.to_string()), "3 (default)"),
        or_default(rf.model.clone(), "the CLI's default"),
        or_default(rf.task_timeout.map(|t| format!("{t} s")), "600 s (default)")
    ))?;
    if let Some(w) = &rf.working_directory {
        output::line(format!("working directory: {}", w.display()))?;
    }
    if rf.tasks.is_empty() {
        output::line("tasks: none; `from-config` lets the leader plan the goal")?;
        return Ok(0);
    }
    output::line(format!("tasks: {}", rf.tasks.len()))?;
    let rows: Vec<Vec<String>> = rf
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vec![
                (i + 1).to_string(),
                t.id.clone().unwrap_or_else(|| "-".into()),
                t.priority
                    .unwrap_or(orchestrate::protocol::task::DEFAULT_PRIORITY)
                    .to_string(),
                if t.dependencies.is_empty() {
                    "-".into()
                } else {
                    output::truncate(&t.dependencies.join(","), 30)
                },
                output::truncate(&t.description, 50),
            ]
        })
        .collect();
    output::line(output::table(
        &["#", "ID", "PRI", "DEPENDS", "DESCRIPTION"],
        &rows,
    ))?;
    Ok(0)
}
