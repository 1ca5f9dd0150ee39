//! `ferry`: one binary for the server and its clients.

/// `println!` for command output: a closed pipe (`ferry ls | head -1`) ends
/// the process quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::format::write_stdout(format_args!($($arg)*))
    };
}

mod backup_status;
mod cli;
mod commands;
mod format;
mod progress;
mod sync_display;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // A backup node is one connection task feeding a writer thread of its
    // own: on a multi-threaded runtime each hand-off between them also
    // woke an idle worker thread (a futex call each), CPU the node takes
    // from the machine it may share with the server.
    let mut builder = match cli.command {
        cli::Command::Backup(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes.
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            eprintln!("ferry: {msg}");
            ExitCode::FAILURE
        }
    }
}
