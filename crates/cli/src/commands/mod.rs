//! One module per subcommand.

mod backup;
mod cache;
mod config;
mod get;
mod ls;
mod put;
mod serve;
mod status;
mod sync;
mod upgrade;

use std::time::Duration;

use ferry_transfer::client::ClientOptions;

use crate::cli::{Cli, ClientArgs, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Get(args) => get::run(args).await,
        Command::Put(args) => put::run(args).await,
        Command::Ls(args) => ls::run(args).await,
        Command::Cache(args) => cache::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Upgrade(args) => upgrade::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Config(args) => config::run(args),
        Command::Sync(args) => sync::run(args).await,
    }
}

/// Client settings from the common flags.
fn client_options(args: &ClientArgs) -> ClientOptions {
    ClientOptions {
        server: args.server.clone(),
        retries: args.retries,
        limit_rate: args.limit_rate,
        io_timeout: Duration::from_secs(args.timeout.max(1)),
        ..ClientOptions::default()
    }
}

/// Logs go to stderr; `FERRY_LOG` (or `RUST_LOG`) picks the level.
fn init_logging(default: &str) {
    let filter =
        std::env::var("FERRY_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
