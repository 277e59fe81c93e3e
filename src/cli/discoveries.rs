//! `discover` and `discoveries`: record what an agent found, and list it
//! (`spec/PROTOCOL.md` sections 3.6 and 11).

use super::output;
use super::tasks::{open, AgentId};
use super::Global;
use anyhow::Result;
use clap::Args;
use orchestrate::{Discovery, NewDiscovery};
use serde_json::json;

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// A one-line summary of what was found
    pub title: String,
    /// The details
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub content: String,
    #[command(flatten)]
    pub who: AgentId,
    /// The task it was found in [env: ORCHESTRATE_TASK_ID]
    #[arg(long, env = "ORCHESTRATE_TASK_ID", hide_env = true, value_name = "ID")]
    pub task: Option<String>,
    /// A tag (repeatable)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DiscoveriesArgs {
    /// Only the discoveries made in this task
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Only the newest N
    #[arg(short = 'n', long = "last", value_name = "N")]
    pub last: Option<usize>,
}

pub fn discover(g: &Global, a: DiscoverArgs) -> Result<u8> {
    let d = NewDiscovery {
        title: a.title,
        content: a.content,
        agent_id: a.who.agent.filter(|s| !s.is_empty()),
        task_id: a.task.filter(|s| !s.is_empty()),
        tags: a.tags,
    };
    orchestrate::protocol::discovery::validate_new(&d)?;
    let c = open(g)?;
    let rec = c.add_discovery(d)?;
    if g.json {
        output::json(&rec)?;
    } else {
        output::line(&rec.id)?;
    }
    Ok(0)
}

pub fn discoveries(g: &Global, a: DiscoveriesArgs) -> Result<u8> {
    let c = open(g)?;
    let mut v: Vec<Discovery> = c
        .discoveries()?
        .into_iter()
        .filter(|d| {
            a.task
                .as_deref()
                .is_none_or(|t| d.related_task.as_deref() == Some(t))
        })
        .collect();
    if let Some(n) = a.last {
        let from = v.len().saturating_sub(n);
        v.drain(..from);
    }
    if g.json {
        output::json(&json!({ "discoveries": v }))?;
        return Ok(0);
    }
    if v.is_empty() {
        output::line("no discoveries")?;
    }
    for d in &v {
        output::line(format!(
            "{}  {}  {}{}",
            d.id,
            orchestrate::protocol::clock::format(&d.created_at),
            d.agent_id.as_deref().unwrap_or("-"),
            d.related_task
                .as_deref()
                .map(|t| format!("  task {t}"))
                .unwrap_or_default()
        ))?;
        output::line(format!("  {}", d.title.trim()))?;
        for l in d.content.trim_end().lines() {
            output::line(format!("    {l}"))?;
        }
    }
    Ok(0)
}
