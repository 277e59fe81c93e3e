//! The only stdout writer: human text or one `--json` document
//! (`spec/PROTOCOL.md` section 11).

use orchestrate::{protocol::clock, Task};
use serde::Serialize;
use std::io::Write;

/// Prints `value` as one pretty JSON document on stdout, in one `write`
/// (stdout is line-buffered: writing through it costs one system call per
/// line, 30 for a claimed task; issue 15).
pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut buf = serde_json::to_vec_pretty(value)?;
    buf.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// One pretty JSON document `{"<key>": [ ...items... ], ...}` written on
/// stdout as the items come ([`JsonArrayDoc::push`]), so memory does not
/// grow with their number (`list --json` at 100,000 tasks); the members
/// after the array are written by [`JsonArrayDoc::finish`].
pub struct JsonArrayDoc {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    first: bool,
}

impl JsonArrayDoc {
    /// Starts the document and its array member `key`.
    pub fn start(key: &str) -> anyhow::Result<Self> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        write!(out, "{{\n  {}: [", serde_json::to_string(key)?)?;
        Ok(JsonArrayDoc { out, first: true })
    }

    /// Writes one item of the array.
    pub fn push(&mut self, item: &impl Serialize) -> anyhow::Result<()> {
        self.out
            .write_all(if self.first { b"\n    " } else { b",\n    " })?;
        self.first = false;
        let text = serde_json::to_string_pretty(item)?;
        self.out
            .write_all(text.replace('\n', "\n    ").as_bytes())?;
        Ok(())
    }

    /// Closes the array, writes the members `rest` after it, and ends the
    /// document.
    pub fn finish(
        mut self,
        rest: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<()> {
        self.out
            .write_all(if self.first { b"]" } else { b"\n  ]" })?;
        for (k, v) in rest {
            let text = serde_json::to_string_pretty(&v)?;
            write!(
                self.out,
                ",\n  {}: {}",
                serde_json::to_string(&k)?,
                text.replace('\n', "\n  ")
            )?;
        }
        self.out.write_all(b"\n}\n")?;
        self.out.flush()?;
        Ok(())
    }
}

/// Prints one JSON Lines record on stdout and flushes it.
pub fn json_line(value: &impl Serialize) -> anyhow::Result<()> {
    let mut buf = serde_json::to_vec(value)?;
    buf.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// `s` made safe for a terminal (`spec` 11, human output): control
/// characters (C0 but line feed and tab, DEL, C1) and the bidirectional
/// overrides and isolates (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F,
/// U+061C) are written as `\x1b` or `\u{202e}`, so text from task files
/// cannot move the cursor, set the title, hide a command or reorder a line.
/// `--json` output is never changed.
pub fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
    };
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints `s` (made [`safe`]; no newline added) on stdout.
pub fn text(s: impl AsRef<str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(safe(s.as_ref()).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints a line on stderr, ignoring failure: a closed or full stderr must
/// never stop (or panic) a command whose real output is elsewhere. Use this
/// instead of `eprintln!`, which panics when the write fails.
pub fn eline(s: impl AsRef<str>) {
    let mut line = safe(s.as_ref()).into_owned();
    line.push('\n');
    let _ = StderrNoWait.write_all(line.as_bytes());
}

/// stderr that never blocks and never fails: a write that would wait (a
/// full pipe nobody reads) is dropped, as is one to a closed or full
/// stderr. For progress lines and logs, which must never hold up a worker,
/// a signal's shutdown, or a thread holding the directory lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrNoWait;

impl Write for StderrNoWait {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: 2,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own; write of our own buffer to fd 2.
        unsafe {
            if libc::poll(&mut pfd, 1, 0) != 1 || pfd.revents & libc::POLLOUT == 0 {
                return Ok(buf.len());
            }
            // A pipe with room for PIPE_BUF bytes says POLLOUT; write what
            // fits of a longer line, never waiting for the rest.
            let chunk = buf.len().min(libc::PIPE_BUF);
            let n = libc::write(2, buf.as_ptr().cast(), chunk);
            if n < 0 {
                return Ok(buf.len());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// True when `e` is, somewhere in its chain, a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// Prints a line of human text (made [`safe`]) on stdout.
pub fn line(s: impl AsRef<str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(safe(s.as_ref()).as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Cuts `s` (on one line) to at most `n` terminal columns, between
/// grapheme clusters (never inside one: an emoji with modifiers, a letter
/// with its accents), marking the cut with `…`.
pub fn truncate(s: &str, n: usize) -> String {
    use unicode_segmentation::UnicodeSegmentation;
    use unicode_width::UnicodeWidthStr;
    let one_line = s.replace('\n', " ");
    if one_line.width() <= n {
        return one_line;
    }
    let mut t = String::new();
    let mut w = 0;
    for g in one_line.graphemes(true) {
        let gw = g.width();
        if w + gw + 1 > n {
            break;
        }
        t.push_str(g);
        w += gw;
    }
    t.push('…');
    t
}

/// Display width of `s` in terminal columns.
fn width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// `n` and `noun`, plural when `n` is not 1: `1 task`, `3 tasks`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Renders rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(width(&safe(c)));
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let c = safe(c);
                s.push_str(&c);
                s.push_str(&" ".repeat(widths[i].saturating_sub(width(&c)) + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = fmt_row(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&fmt_row(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A task in human form, as `show` prints it.
pub fn task_details(t: &Task) -> String {
    let ts = |x: &Option<orchestrate::Timestamp>| {
        x.as_ref().map(clock::format).unwrap_or_else(|| "-".into())
    };
    // One line per field: a newline inside a value is shown as `\n`, so a
    // description cannot forge the fields below it.
    let one = |v: &str| v.replace('\n', "\\n");
    let mut s = format!(
        "id:            {}\nstatus:        {}\npriority:      {}\ndescription:   {}\n",
        t.id,
        t.status,
        t.priority,
        one(&t.description)
    );
    let deps: Vec<String> = t.dependencies.iter().map(|d| d.to_string()).collect();
    s += &format!(
        "dependencies:  {}\n",
        if deps.is_empty() {
            "-".into()
        } else {
            deps.join(", ")
        }
    );
    s += &format!("attempts:      {}/{}\n", t.attempts, t.max_attempts);
    s += &format!(
        "claimed_by:    {}\n",
        t.claimed_by.as_deref().unwrap_or("-")
    );
    s += &format!("fencing_token: {}\n", t.fencing_token);
    s += &format!("lease_expires: {}\n", ts(&t.lease_expires_at));
    s += &format!("not_before:    {}\n", ts(&t.not_before));
    s += &format!("created_at:    {}\n", clock::format(&t.created_at));
    s += &format!("claimed_at:    {}\n", ts(&t.claimed_at));
    s += &format!("completed_at:  {}\n", ts(&t.completed_at));
    if let Some(c) = &t.command {
        s += &format!("command:       {}\n", one(c));
    }
    if !t.context.files.is_empty() {
        s += &format!("files:         {}\n", t.context.files.join(", "));
    }
    if let Some(h) = &t.context.hints {
        s += &format!("hints:         {}\n", one(&h.to_string()));
    }
    if !t.context.tags.is_empty() {
        s += &format!("tags:          {}\n", one(&t.context.tags.join(", ")));
    }
    if let Some(e) = &t.error {
        s += &format!("error:         {}\n", one(e));
    }
    if let Some(l) = &t.log_file {
        s += &format!("log_file:      {l}\n");
    }
    if let Some(r) = &t.result {
        let r = match r {
            serde_json::Value::String(s) => s.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        s += &format!("result:\n{r}\n");
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_between_grapheme_clusters_by_display_width() {
        let family = "\u{1f469}\u{200d}\u{1f469}\u{200d}\u{1f467}";
        let s = format!("{family}{family}{family}");
        let t = truncate(&s, 5);
        // Each family is one cluster, two columns wide: two fit with the `…`.
        assert_eq!(t, format!("{family}{family}…"));
        assert_eq!(truncate("e\u{301}e\u{301}e\u{301}", 2), "e\u{301}…");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn count_is_singular_only_for_one() {
        assert_eq!(count(0, "task"), "0 tasks");
        assert_eq!(count(1, "task"), "1 task");
        assert_eq!(count(2, "attempt"), "2 attempts");
    }

    #[test]
    fn safe_escapes_controls_and_bidi_but_keeps_newlines() {
        assert_eq!(safe("a\u{1b}[2Kb\n\u{202e}c"), "a\\x1b[2Kb\n\\u{202e}c");
        assert_eq!(safe("plain"), "plain");
    }
}
