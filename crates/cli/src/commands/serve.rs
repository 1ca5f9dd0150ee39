//! `ferry serve`: bind every enabled service, publish the addresses, serve.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::data_dir::DataDir;
use ferry_core::server::Server;
use ferry_files::{CacheConfig, CachePolicyKind, FileCache, FileStore};
use ferry_http::{ExtraStatus, HttpEntry, HttpLimits};
use ferry_kv::KvService;
use ferry_sync::server::{HubConfig, SyncHub, SyncPushService, SyncUpdateService};
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
    let cache = file_cache(&config)?;

    let mut services = 0;
    if config.transfer.enabled {
        let service = TransferService::with_backup(store.clone(), config.transfer.clone(), config.backup.clone());
        service.use_cache(cache.clone());
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
    if config.http.enabled {
        let limits = HttpLimits {
            max_upload_bytes: config.http.max_upload_bytes,
            max_connections: config.http.max_connections,
            idle_timeout: Duration::from_secs(config.http.idle_timeout_secs),
            header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
            drain_timeout: Duration::from_secs(config.upgrade.drain_secs),
            stream_buffer_bytes: usize::try_from(config.http.stream_buffer_bytes).unwrap_or(usize::MAX),
            ..HttpLimits::default()
        };
        let shown = cache.clone();
        let extra: ExtraStatus = Arc::new(move |status| {
            status.insert("cache".into(), serde_json::to_value(shown.snapshot()).unwrap_or_default());
        });
        let entry = HttpEntry::new(config.http.port, store.clone(), limits, Some(cache.clone()), Some(extra))
            .with_workers(config.http.workers);
        server.add_entry(Arc::new(entry));
        services += 1;
    }
    if config.sync.enabled {
        let dir = config.data.join("sync");
        let hub_config = HubConfig::from_config(&config.sync);
        // A live upgrade's new process only reads here; it takes the state over in catch_up.
        let fresh = !server.is_upgrade();
        let open_dir = dir.clone();
        let hub = tokio::task::spawn_blocking(move || SyncHub::open(&open_dir, hub_config, fresh))
            .await
            .context("sync state task failed")?
            .with_context(|| format!("cannot open the sync state in {}", dir.display()))?;
        hub.spawn_housekeeping();
        let max = config.sync.max_clients;
        server.add_service(SyncUpdateService::new(hub.clone()), config.sync.port, max);
        server.add_service(SyncPushService::new(hub), config.sync.push_port, max);
        services += 1;
    }
    if services == 0 {
        anyhow::bail!("every service is disabled; nothing to serve");
    }
    server.run().await?;
    Ok(())
}

/// The file cache the native GET and HTTP share, as `[cache]` configures it.
fn file_cache(config: &ferry_core::Config) -> anyhow::Result<Arc<FileCache>> {
    let policy: CachePolicyKind = config.cache.policy.parse().context("[cache] policy")?;
    let cache = CacheConfig { max_bytes: config.cache.max_bytes, max_item_bytes: config.cache.max_item_bytes, policy };
    Ok(Arc::new(FileCache::new(cache)))
}
