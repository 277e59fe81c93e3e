//! The one place where errors become exit codes and messages
//! (`spec/PROTOCOL.md` section 12, DESIGN.md section 7).

use orchestrate::Error;
use std::process::ExitCode;

/// Exit code for a usage error.
pub const USAGE: u8 = 2;

/// Finds the library error in an anyhow chain, if any.
pub fn lib_error(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}

/// The exit code for `e`: the library error's code, 2 for a usage error
/// flagged by [`Usage`], 74 for a bare I/O error, else 1.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if let Some(le) = lib_error(e) {
        return le.exit_code();
    }
    if e.chain().any(|c| c.downcast_ref::<Usage>().is_some()) {
        return USAGE;
    }
    if e.chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some())
    {
        return 74;
    }
    1
}

/// Stable name of the error kind for `--json` error documents.
pub fn kind_of(e: &anyhow::Error) -> &'static str {
    if let Some(le) = lib_error(e) {
        return le.kind();
    }
    if e.chain().any(|c| c.downcast_ref::<Usage>().is_some()) {
        return "usage";
    }
    if e.chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some())
    {
        return "io";
    }
    "other"
}

/// A usage error raised by the binary itself (exit 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// Converts a numeric code into an [`ExitCode`].
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// The error chain as one line: each context, then the library error, whose
/// own message already names its cause (so the cause is not repeated).
pub fn render(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for c in e.chain() {
        parts.push(c.to_string());
        if c.is::<Error>() {
            break;
        }
    }
    parts.join(": ")
}
