//! `ferry backup --dir DIR [--server HOST:PORT]`: runs a backup node until
//! SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use ferry_transfer::client::backup::{self, BackupOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::backup_status::BackupStatus;
use crate::cli::BackupArgs;

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let mut opts = BackupOptions::new(&args.server, args.dir.clone());
    opts.io_timeout = Duration::from_secs(args.timeout.max(1));
    opts.adopt = args.adopt;
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let mut status = BackupStatus::new(&args.dir, args.quiet);
    backup::run(&opts, &mut status, shutdown).await.with_context(|| format!("backup into {}", args.dir.display()))?;
    status.finish();
    Ok(())
}
