//! `ferry serve`: bind every enabled service, publish the addresses, serve.

use std::sync::Arc;

use anyhow::Context;
use ferry_core::data_dir::DataDir;
use ferry_core::server::Server;
use ferry_files::FileStore;
use ferry_kv::KvService;
use ferry_transfer::TransferService;

use super::config::effective;
use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let config = effective(&args)?;
    let data = DataDir::new(config.data.clone());
    let root = config.root_dir();
    let mut server = Server::new(config.clone()).await?;
    if server.is_upgrade() {
        tracing::info!("started by a live upgrade; taking over");
    }
    let store = FileStore::open(&root, &data.uploads())
        .with_context(|| format!("cannot open the file store at {}", root.display()))?;
    let store = Arc::new(store);

    let mut services = 0;
    if config.transfer.enabled {
        let service = TransferService::with_backup(store.clone(), config.transfer.clone(), config.backup.clone());
        service.spawn_housekeeping();
        server.add_service(service, config.transfer.port, config.transfer.max_connections);
        services += 1;
    }
    if config.kv.enabled {
        let dir = config.data.join("kv");
        let kv_config = config.kv.clone();
        let kv = tokio::task::spawn_blocking(move || KvService::open(&dir, kv_config))
            .await
            .context("kv store task failed")?
            .with_context(|| format!("cannot open the kv store in {}", config.data.join("kv").display()))?;
        server.add_service(kv, config.kv.port, config.kv.max_connections);
        services += 1;
    }
    for (name, enabled) in [("http", config.http.enabled), ("sync", config.sync.enabled)] {
        if enabled {
            tracing::debug!("the {name} service is not part of this release yet");
        }
    }
    if services == 0 {
        anyhow::bail!("every service is disabled; nothing to serve");
    }
    server.run().await?;
    Ok(())
}
