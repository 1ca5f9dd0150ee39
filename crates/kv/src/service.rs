//! The kv service as the runtime sees it: sessions, limits, and the store's
//! part in a live upgrade (the new process opens and replays the log while
//! the old one serves, then replays only the tail after the pause).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_core::config::{KvConfig, KvDurability};
use ferry_core::{Conn, Service, SessionCtx, SessionEnd};

use crate::commands::ServerInfo;
use crate::protocol::Limits;
use crate::session::{KvState, STATE_FORMAT};
use crate::stats::KvStats;
use crate::store::{Durability, Store, StoreConfig, StoreError};
use crate::workers::{SessionWorkers, worker_count};

pub struct KvService {
    pub(crate) store: Arc<Store>,
    pub(crate) stats: KvStats,
    pub(crate) config: KvConfig,
    pub(crate) limits: Limits,
    pub(crate) info: ServerInfo,
    /// Set between `prepare_handover` and a rollback.
    handed_over: AtomicBool,
    /// The threads sessions run on, started with the first session (a
    /// service opened only for its store starts none). `None` inside: they
    /// could not be started, and sessions run on the accepting runtime.
    workers: OnceLock<Option<SessionWorkers>>,
}

impl KvService {
    /// Opens (and replays) the store in `dir`. Blocking: call it before the
    /// runtime serves, or from a blocking thread.
    pub fn open(dir: &std::path::Path, config: KvConfig) -> Result<Arc<KvService>, StoreError> {
        let store = Store::open(StoreConfig {
            dir: dir.to_path_buf(),
            durability: match config.durability {
                KvDurability::Os => Durability::Os,
                KvDurability::Fsync => Durability::Fsync,
                KvDurability::Memory => Durability::Memory,
            },
            max_memory: config.max_memory,
            max_item_bytes: config.max_item_bytes,
            compact_min_bytes: config.compact_min_bytes,
            compact_garbage_ratio: config.compact_garbage_ratio,
            group_commit_interval: Duration::from_micros(config.group_commit_interval_us),
            group_commit_threads: config.group_commit_threads,
        })?;
        let limits = Limits { max_item_bytes: config.max_item_bytes as usize, ..Limits::default() };
        let info = ServerInfo {
            version: format!("1.6.18-ferry-{}", ferry_core::version::version()),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            max_memory: config.max_memory,
            max_connections: config.max_connections,
        };
        Ok(Arc::new(KvService {
            store: Arc::new(store),
            stats: KvStats::default(),
            config,
            limits,
            info,
            handed_over: AtomicBool::new(false),
            workers: OnceLock::new(),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Service for KvService {
    type State = KvState;
    const NAME: &'static str = "kv";

    fn max_read_buffer(&self) -> usize {
        // One largest item with its command line, plus a read's worth.
        self.config.max_item_bytes as usize + 64 * 1024 + 512 * 1024
    }

    fn run(
        self: Arc<Self>,
        conn: Conn,
        resume: Option<KvState>,
        ctx: SessionCtx,
    ) -> impl Future<Output = SessionEnd<KvState>> + Send {
        crate::session::run(self, conn, resume, ctx)
    }

    fn session_runtime(&self) -> Option<tokio::runtime::Handle> {
        let workers = self.workers.get_or_init(|| match SessionWorkers::start(worker_count()) {
            Ok(workers) => Some(workers),
            Err(e) => {
                tracing::error!("kv: cannot start session threads, serving on the main runtime: {e}");
                None
            }
        });
        workers.as_ref().map(SessionWorkers::next)
    }

    fn check_state(&self, state: &KvState) -> Result<(), String> {
        if state.format > STATE_FORMAT {
            return Err(format!("kv state format {} is newer than this build reads ({STATE_FORMAT})", state.format));
        }
        Ok(())
    }

    fn prepare_handover(&self) -> Result<(), String> {
        self.store.prepare_handover().map_err(|e| e.to_string())?;
        self.handed_over.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn resume_after_rollback(&self) {
        if self.handed_over.swap(false, Ordering::SeqCst)
            && let Err(e) = self.store.resume_after_rollback()
        {
            tracing::error!("kv store cannot resume after a rolled back upgrade: {e}");
        }
    }

    fn catch_up(&self) -> Result<(), String> {
        let replayed = self.store.catch_up().map_err(|e| e.to_string())?;
        tracing::info!("kv: replayed {replayed} records written during the handover");
        Ok(())
    }

    async fn refuse(&self, mut conn: Conn, _reason: String) {
        // memcached's answer when it is out of connections.
        conn.queue(bytes::Bytes::from_static(b"ERROR Too many open connections\r\n"));
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.shutdown()).await;
    }
}
