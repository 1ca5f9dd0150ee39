//! The transfer service's server side: one session per connection, each a
//! small state machine (idle → GET or PUT → idle, or idle → backup feed)
//! that can pause at any frame boundary and resume from its
//! [`SessionState`].

mod backup_feed;
mod backup_register;
mod get;
mod hashes;
mod list;
mod put;
mod put_confirm;
mod receive_blocks;
mod session;
mod state;
mod upload_leases;

use std::sync::Arc;
use std::time::Duration;

use ferry_core::config::{BackupConfig, TransferConfig};
use ferry_core::{Conn, HandoverMode, Service, SessionCtx, SessionEnd};
use ferry_files::{FileCache, FileStore};

pub use hashes::HashService;
pub use state::{ConfirmState, FeedState, GetState, Phase, PutState, RegisterState, STATE_FORMAT, SessionState};

use crate::backup::registry::Backups;
use crate::error_code::ErrorCode;
use crate::frame::Frame;

/// How often expired partial uploads are swept.
const EXPIRY_SWEEP: Duration = Duration::from_secs(3600);
/// Entries kept in the BLAKE3 cache of stored files.
const HASH_CACHE_ENTRIES: usize = 100_000;

/// The native transfer service over one file store.
pub struct TransferService {
    store: Arc<FileStore>,
    hashes: Arc<HashService>,
    uploads: Arc<upload_leases::UploadLeases>,
    backups: Arc<Backups>,
    config: TransferConfig,
    /// Read buffers PUTs receive into and reuse.
    receive_blocks: Arc<receive_blocks::ReceiveBlocks>,
    /// The file cache shared with HTTP, if the server runs one.
    cache: std::sync::OnceLock<Arc<FileCache>>,
}

impl TransferService {
    /// A service with the default backup settings.
    pub fn new(store: Arc<FileStore>, config: TransferConfig) -> Arc<TransferService> {
        TransferService::with_backup(store, config, BackupConfig::default())
    }

    pub fn with_backup(store: Arc<FileStore>, config: TransferConfig, backup: BackupConfig) -> Arc<TransferService> {
        // Frames a PUT may hold alive at once: a node's queue, the batch
        // being written, and what is gathered and buffered behind it.
        let held = backup.max_queue_bytes + 2 * put::read_high_water(config.max_frame_bytes) as u64;
        let receive_blocks = receive_blocks::ReceiveBlocks::new(held);
        let backups = Backups::new(backup, config.max_list_entries);
        Arc::new(TransferService {
            store,
            hashes: Arc::new(HashService::new(HASH_CACHE_ENTRIES)),
            uploads: Arc::default(),
            backups,
            config,
            receive_blocks,
            cache: std::sync::OnceLock::new(),
        })
    }

    /// Serves GETs of files the cache admits from memory (set once, before
    /// serving).
    pub fn use_cache(&self, cache: Arc<FileCache>) {
        let _ = self.cache.set(cache);
    }

    pub(crate) fn cache(&self) -> Option<&Arc<FileCache>> {
        self.cache.get()
    }

    /// The backup nodes of this process.
    pub fn backups(&self) -> &Arc<Backups> {
        &self.backups
    }

    pub fn store(&self) -> &Arc<FileStore> {
        &self.store
    }

    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// Starts the background sweep of expired partial uploads.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let svc = self.clone();
        tokio::spawn(async move {
            let max_age = Duration::from_secs(svc.config.upload_expiry_secs);
            loop {
                let store = svc.store.clone();
                match tokio::task::spawn_blocking(move || store.expire_uploads(max_age)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!("removed {n} expired partial uploads"),
                    Ok(Err(e)) => tracing::warn!("cannot sweep partial uploads: {e}"),
                    _ => {}
                }
                tokio::time::sleep(EXPIRY_SWEEP).await;
            }
        });
    }
}

impl Service for TransferService {
    type State = SessionState;
    const NAME: &'static str = "transfer";

    fn max_read_buffer(&self) -> usize {
        // What a PUT buffers while writing, plus one read's worth.
        put::read_high_water(self.config.max_frame_bytes) + 512 * 1024
    }

    fn run(
        self: Arc<Self>,
        conn: Conn,
        resume: Option<SessionState>,
        ctx: SessionCtx,
    ) -> impl Future<Output = SessionEnd<SessionState>> + Send {
        session::run(self, conn, resume, ctx)
    }

    /// Streamed: a transfer session shares only the file store, which both
    /// processes see on disk (a GET's cache entry is keyed by the file's
    /// etag, so a GET in the old process never serves bytes older than a
    /// PUT the new one has stored). Not while backup nodes are known: a PUT
    /// is mirrored through the process's own registry of nodes and feeds,
    /// so feeds and PUTs move together, all at once.
    fn handover_mode(&self) -> HandoverMode {
        if self.backups.status().is_empty() { HandoverMode::Streamed } else { HandoverMode::AllAtOnce }
    }

    fn check_state(&self, state: &SessionState) -> Result<(), String> {
        if state.format > STATE_FORMAT {
            return Err(format!(
                "session state format {} is newer than this build reads ({STATE_FORMAT})",
                state.format
            ));
        }
        Ok(())
    }

    fn status(&self) -> Option<serde_json::Value> {
        let backups = self.backups.status();
        Some(serde_json::json!({ "backups": backups }))
    }

    async fn refuse(&self, mut conn: Conn, reason: String) {
        crate::wire::queue_frame(&mut conn, &Frame::Error(ErrorCode::Busy.message(reason)));
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.shutdown()).await;
    }
}

#[cfg(test)]
mod pause_tests;
