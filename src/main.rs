//! The `orchestrate` command line: parse, set up logging, call the library,
//! map the outcome to an exit code (`spec/PROTOCOL.md` section 12).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
