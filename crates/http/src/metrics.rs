//! The gateway's own counters: relaxed atomics bumped on the hot path and
//! read by `/api/status` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::transfers::{TransferInfo, TransferKind, TransferTable};

#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    responses: [AtomicU64; 5],
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_evictions: AtomicU64,
    transfers: Arc<TransferTable>,
}

/// A consistent-enough copy of the counters (each read is atomic, the set is not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Responses by status class, `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; 5],
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub transfers: Vec<TransferInfo>,
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl HttpMetrics {
    /// Counts one response by its status class.
    pub fn record_response(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        add(&self.responses[class], 1);
    }

    /// Bytes written to (`sent`) and read from (`received`) connections.
    pub fn record_io(&self, sent: u64, received: u64) {
        if sent > 0 {
            add(&self.sent_bytes, sent);
        }
        if received > 0 {
            add(&self.received_bytes, received);
        }
    }

    /// The cache hook: the runtime calls this from the whole-file read path
    /// once that path goes through the shared cache.
    pub fn record_cache_read(&self, hit: bool) {
        add(if hit { &self.cache_hits } else { &self.cache_misses }, 1);
    }

    /// The cache hook for entries the cache evicted to admit an HTTP read.
    pub fn record_cache_evictions(&self, n: u64) {
        add(&self.cache_evictions, n);
    }

    pub(crate) fn connection_opened(&self) {
        add(&self.connections_total, 1);
        add(&self.connections_open, 1);
    }

    pub(crate) fn connection_closed(&self) {
        let before = self.connections_open.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "more connections closed than opened");
    }

    pub(crate) fn connection_refused(&self) {
        add(&self.connections_refused, 1);
    }

    /// Live transfers, for handlers to register theirs.
    pub fn transfers(&self) -> &Arc<TransferTable> {
        &self.transfers
    }

    pub fn connections_open(&self) -> u64 {
        load(&self.connections_open)
    }

    pub fn active_transfers(&self, kind: TransferKind) -> usize {
        self.transfers.count(kind)
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            responses: std::array::from_fn(|i| load(&self.responses[i])),
            sent_bytes: load(&self.sent_bytes),
            received_bytes: load(&self.received_bytes),
            connections_open: load(&self.connections_open),
            connections_total: load(&self.connections_total),
            connections_refused: load(&self.connections_refused),
            cache_hits: load(&self.cache_hits),
            cache_misses: load(&self.cache_misses),
            cache_evictions: load(&self.cache_evictions),
            transfers: self.transfers.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_io() {
        let m = HttpMetrics::default();
        for code in [200, 206, 304, 404, 416, 500, 101] {
            m.record_response(StatusCode::from_u16(code).unwrap());
        }
        m.record_io(10, 0);
        m.record_io(5, 7);
        m.record_cache_read(true);
        m.record_cache_read(false);
        m.record_cache_read(true);
        m.record_cache_evictions(3);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.connection_refused();
        let s = m.snapshot();
        assert_eq!(s.responses, [1, 2, 1, 2, 1]);
        assert_eq!((s.sent_bytes, s.received_bytes), (15, 7));
        assert_eq!((s.cache_hits, s.cache_misses, s.cache_evictions), (2, 1, 3));
        assert_eq!((s.connections_open, s.connections_total, s.connections_refused), (1, 2, 1));
        let _t = m.transfers().begin(TransferKind::Upload, "x", Some(3));
        assert_eq!(m.active_transfers(TransferKind::Upload), 1);
        assert_eq!(m.snapshot().transfers.len(), 1);
    }
}
