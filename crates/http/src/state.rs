//! What every request handler shares: the store, the limits, the live
//! status supplied by the runtime, and the gateway's own metrics.

use std::sync::Arc;
use std::time::Duration;

use ferry_files::{FileCache, FileStore};

use crate::connection_slots::ConnectionSlots;
use crate::metrics::HttpMetrics;
use crate::piece_budget::PieceBudget;
use crate::resolved_names::ResolvedNames;

/// Supplies the live server status (connections, transfers with progress,
/// upgrade history, cache snapshot) as JSON; the runtime wires it to the
/// core's status and the cache. Called once per `/api/status`, `/api/cache`
/// and `/metrics` request, so it should be quick and must not block on I/O.
///
/// The gateway reads these fields when present (see docs/http.md): `sessions`
/// (`[{service, ...}]`), `transfers` (`[{kind, name, size, offset, ...}]`),
/// `upgrades`, `connections`, and `cache` (the cache snapshot: `hits`,
/// `misses`, `evictions`, `bytes_held`, `max_bytes`, `entries`, ...).
pub type StatusSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Every bound the gateway enforces. All of them come from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest `PUT` body; more is refused with 413.
    pub max_upload_bytes: u64,
    /// Open connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From the end of the previous response (or the accept) to the end of
    /// the next request's head. This also bounds how long an idle keep-alive
    /// connection is kept, and stops slow-header (slowloris) clients.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long
    /// is closed, also in the middle of a body: it stops stalled readers and
    /// stalled uploaders from holding a connection slot forever.
    pub idle_timeout: Duration,
    /// Files up to this size are read whole (through [`crate::load_whole`],
    /// the cache's entry point); larger ones are streamed in pieces.
    pub whole_file_max_bytes: u64,
    /// After `stop`, how long open connections may take to finish before
    /// they are cut.
    pub drain_timeout: Duration,
    /// Bound on the files one `/api/files` listing returns.
    pub max_list_entries: usize,
    /// Bound on a request head (request line plus headers). hyper needs at
    /// least 8 KiB; smaller values are raised to that.
    pub max_header_bytes: usize,
    /// Bytes that streamed downloads may hold in memory, all together:
    /// pieces read from the disk and not yet sent. Past it, downloads read
    /// 64 KiB pieces outside the budget (see `piece_budget`).
    pub stream_buffer_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            // The native protocol's file bound; the disk is the real limit.
            max_upload_bytes: 1 << 40,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            whole_file_max_bytes: 8 << 20,
            drain_timeout: Duration::from_secs(300),
            max_list_entries: 100_000,
            max_header_bytes: 64 << 10,
            stream_buffer_bytes: 64 << 20,
        }
    }
}

/// Cheap to clone: everything is behind one `Arc`.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Shared>,
}

struct Shared {
    store: Arc<FileStore>,
    limits: HttpLimits,
    status: StatusSource,
    metrics: Arc<HttpMetrics>,
    /// Whole-file reads go through it when set (shared with the native GET).
    cache: Option<Arc<FileCache>>,
    /// Names checked a moment ago: their GETs skip the blocking pool.
    resolved: ResolvedNames,
    /// Shared by every streamed download.
    pieces: Arc<PieceBudget>,
    /// The connection limit, shared by every worker's accept loop.
    slots: ConnectionSlots,
}

impl HttpState {
    pub fn new(store: Arc<FileStore>, limits: HttpLimits, status: StatusSource) -> HttpState {
        HttpState::with_cache(store, limits, status, None)
    }

    /// As [`HttpState::new`], reading whole files through `cache`.
    pub fn with_cache(
        store: Arc<FileStore>,
        limits: HttpLimits,
        status: StatusSource,
        cache: Option<Arc<FileCache>>,
    ) -> HttpState {
        let metrics = Arc::new(HttpMetrics::default());
        let resolved = ResolvedNames::default();
        let pieces = Arc::new(PieceBudget::new(limits.stream_buffer_bytes));
        let slots = ConnectionSlots::new(limits.max_connections);
        HttpState { inner: Arc::new(Shared { store, limits, status, metrics, cache, resolved, pieces, slots }) }
    }

    pub fn cache(&self) -> Option<&Arc<FileCache>> {
        self.inner.cache.as_ref()
    }

    pub(crate) fn resolved(&self) -> &ResolvedNames {
        &self.inner.resolved
    }

    pub(crate) fn slots(&self) -> &ConnectionSlots {
        &self.inner.slots
    }

    pub(crate) fn pieces(&self) -> &Arc<PieceBudget> {
        &self.inner.pieces
    }

    pub fn store(&self) -> &Arc<FileStore> {
        &self.inner.store
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.inner.limits
    }

    /// The gateway's counters; the runtime feeds cache hits and misses of
    /// HTTP reads through [`HttpMetrics::record_cache_read`].
    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.inner.metrics
    }

    /// Calls the status source.
    pub fn status(&self) -> serde_json::Value {
        (self.inner.status)()
    }
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").field("root", &self.inner.store.root()).field("limits", &self.inner.limits).finish()
    }
}
