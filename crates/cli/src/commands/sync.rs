//! `ferry sync HOST FOLDER`: keeps FOLDER in sync until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use ferry_sync::ClientId;
use ferry_sync::client::{self, Silent, SyncObserver, SyncOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::SyncArgs;
use crate::sync_display::SyncDisplay;

pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let mut options = SyncOptions::new(args.host, args.folder);
    options.port = args.port;
    options.push_port = args.push_port;
    options.chunk_size = u32::try_from(args.chunk_size).context("--chunk-size is too large")?;
    options.limit_rate = args.limit_rate;
    if let Some(id) = args.client_id {
        options.client_id = Some(ClientId::parse(&id).with_context(|| format!("--client-id {id:?}"))?);
    }
    let observer: Arc<dyn SyncObserver> =
        if !args.quiet && std::io::stdout().is_terminal() { Arc::new(SyncDisplay::new()) } else { Arc::new(Silent) };
    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let on_signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        on_signal.cancel();
    });
    client::run(options, observer, stop).await?;
    Ok(())
}
