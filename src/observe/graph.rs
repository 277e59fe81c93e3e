//! The task DAG as Graphviz DOT or as a Mermaid flowchart, nodes coloured by
//! state (`spec/PROTOCOL.md` section 16.3).

use crate::protocol::task::{Status, Task};
use std::fmt::Write as _;

fn colour(s: Status) -> &'static str {
    match s {
        Status::Pending => "#d9d9d9",
        Status::Claimed => "#8ecae6",
        Status::Completed => "#95d5b2",
        Status::Dead => "#f28482",
        Status::Cancelled => "#bdb2ff",
        Status::Blocked => "#ffd166",
    }
}

fn label(t: &Task) -> String {
    let d: String = t.description.chars().take(40).collect();
    let d = if d.len() < t.description.len() {
        format!("{d}…")
    } else {
        d
    };
    format!("{}\n{} · p{}\n{}", t.id, t.status, t.priority, d)
}

/// Graphviz DOT: one node per task, an edge from each dependency to its
/// dependent.
pub fn to_dot(tasks: &[Task]) -> String {
    let mut s = String::from("digraph tasks {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    for t in tasks {
        let l = label(t)
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(
            s,
            "  \"{}\" [label=\"{l}\", fillcolor=\"{}\"];",
            t.id,
            colour(t.status)
        );
    }
    for t in tasks {
        for d in &t.dependencies {
            let _ = writeln!(s, "  \"{d}\" -> \"{}\";", t.id);
        }
    }
    s.push_str("}\n");
    s
}

fn mermaid_id(id: &str) -> String {
    // Mermaid ids: letters, digits, underscores.
    let mut out = String::from("t_");
    for c in id.chars() {
        out.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    out
}

/// A Mermaid flowchart with one class per state. Node ids are derived from
/// task ids and made unique (`a.b` and `a_b` would otherwise collide).
pub fn to_mermaid(tasks: &[Task]) -> String {
    let mut ids: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    for t in tasks {
        let base = mermaid_id(t.id.as_str());
        let mut cand = base.clone();
        let mut n = 2;
        while used.contains(&cand) {
            cand = format!("{base}_{n}");
            n += 1;
        }
        used.insert(cand.clone());
        ids.insert(t.id.as_str(), cand);
    }
    let node = |id: &str| ids.get(id).cloned().unwrap_or_else(|| mermaid_id(id));
    let mut s = String::from("flowchart LR\n");
    for t in tasks {
        let l = label(t).replace('"', "#quot;").replace('\n', "<br/>");
        let _ = writeln!(s, "  {}[\"{l}\"]:::{}", node(t.id.as_str()), t.status);
    }
    for t in tasks {
        for d in &t.dependencies {
            let _ = writeln!(s, "  {} --> {}", node(d.as_str()), node(t.id.as_str()));
        }
    }
    for st in Status::ALL {
        let _ = writeln!(s, "  classDef {st} fill:{},stroke:#333", colour(st));
    }
    s
}
