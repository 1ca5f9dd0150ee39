//! The registry of live sessions, their transfers and server-wide counters:
//! what `ferry status` reports.
//!
//! Sessions update their own progress with relaxed atomics on the hot path;
//! the registry lock is taken only when a session or transfer starts or
//! ends, and when a status snapshot is made.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::status::{CounterStatus, FinishedTransfer, SessionStatus, TransferStatus};

/// Finished transfers remembered for `ferry status`.
const RECENT_TRANSFERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferKind {
    Get,
    Put,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[derive(Debug, Default)]
struct Counters {
    connections_total: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    transfers_completed: AtomicU64,
    transfers_failed: AtomicU64,
}

#[derive(Debug)]
struct Transfer {
    kind: TransferKind,
    name: String,
    size: Option<u64>,
    start_offset: u64,
    started_unix_ms: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    service: &'static str,
    peer: String,
    started_unix_ms: u64,
    transfer: Mutex<Option<Transfer>>,
    /// Current offset of the transfer, if any.
    offset: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: BTreeMap<u64, Arc<Entry>>,
    recent: VecDeque<FinishedTransfer>,
}

/// Live sessions and counters of one server process.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry { next_id: AtomicU64::new(1), ..Default::default() })
    }

    /// Registers a session; it stays listed until the handle is dropped.
    pub fn register(self: &Arc<Self>, service: &'static str, peer: String) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            id,
            service,
            peer,
            started_unix_ms: now_unix_ms(),
            transfer: Mutex::new(None),
            offset: AtomicU64::new(0),
        });
        lock(&self.inner).sessions.insert(id, entry.clone());
        SessionHandle { registry: self.clone(), entry }
    }

    /// Live sessions, all services.
    pub fn session_count(&self) -> usize {
        lock(&self.inner).sessions.len()
    }

    pub fn add_sent(&self, n: u64) {
        self.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_received(&self, n: u64) {
        self.counters.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sessions(&self) -> Vec<SessionStatus> {
        let inner = lock(&self.inner);
        inner
            .sessions
            .values()
            .map(|e| SessionStatus {
                id: e.id,
                service: e.service.to_string(),
                peer: e.peer.clone(),
                started_unix_ms: e.started_unix_ms,
            })
            .collect()
    }

    pub fn transfers(&self) -> Vec<TransferStatus> {
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        for e in inner.sessions.values() {
            if let Some(t) = lock(&e.transfer).as_ref() {
                out.push(TransferStatus {
                    session: e.id,
                    kind: t.kind,
                    name: t.name.clone(),
                    size: t.size,
                    start_offset: t.start_offset,
                    offset: e.offset.load(Ordering::Relaxed),
                    started_unix_ms: t.started_unix_ms,
                });
            }
        }
        out
    }

    pub fn recent_transfers(&self) -> Vec<FinishedTransfer> {
        lock(&self.inner).recent.iter().cloned().collect()
    }

    pub fn counters(&self) -> CounterStatus {
        let c = &self.counters;
        CounterStatus {
            connections_total: c.connections_total.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            transfers_completed: c.transfers_completed.load(Ordering::Relaxed),
            transfers_failed: c.transfers_failed.load(Ordering::Relaxed),
        }
    }

    fn unregister(&self, id: u64) {
        lock(&self.inner).sessions.remove(&id);
    }

    fn finish(&self, entry: &Entry, ok: bool, error: Option<String>) {
        let Some(t) = lock(&entry.transfer).take() else { return };
        let offset = entry.offset.load(Ordering::Relaxed);
        let counter = if ok { &self.counters.transfers_completed } else { &self.counters.transfers_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let record = FinishedTransfer {
            session: entry.id,
            kind: t.kind,
            name: t.name,
            size: t.size,
            start_offset: t.start_offset,
            end_offset: offset,
            started_unix_ms: t.started_unix_ms,
            finished_unix_ms: now_unix_ms(),
            ok,
            error,
        };
        let mut inner = lock(&self.inner);
        if inner.recent.len() == RECENT_TRANSFERS {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record);
    }
}

/// A session's entry in the registry. Dropping it unregisters the session;
/// a transfer still open at that point is recorded as interrupted.
#[derive(Debug)]
pub struct SessionHandle {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
}

impl SessionHandle {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// Marks the start of a transfer (replacing any previous one).
    pub fn begin_transfer(&self, kind: TransferKind, name: &str, size: Option<u64>, start_offset: u64) {
        *lock(&self.entry.transfer) =
            Some(Transfer { kind, name: name.to_string(), size, start_offset, started_unix_ms: now_unix_ms() });
        self.entry.offset.store(start_offset, Ordering::Relaxed);
    }

    /// Updates the transfer's current offset (hot path: one relaxed store).
    pub fn progress(&self, offset: u64) {
        self.entry.offset.store(offset, Ordering::Relaxed);
    }

    /// Records the transfer as finished.
    pub fn end_transfer(&self, ok: bool, error: Option<String>) {
        self.registry.finish(&self.entry, ok, error);
    }

    /// Sets the size once it becomes known (uploads from a stream).
    pub fn set_size(&self, size: u64) {
        if let Some(t) = lock(&self.entry.transfer).as_mut() {
            t.size = Some(size);
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.registry.finish(&self.entry, false, Some("connection ended".to_string()));
        self.registry.unregister(self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_transfers_are_listed_until_dropped() {
        let registry = Registry::new();
        let handle = registry.register("transfer", "127.0.0.1:1".into());
        handle.begin_transfer(TransferKind::Get, "a.bin", Some(100), 10);
        handle.progress(50);
        let transfers = registry.transfers();
        assert_eq!(transfers.len(), 1);
        assert_eq!(transfers[0].offset, 50);
        handle.progress(100);
        handle.end_transfer(true, None);
        assert!(registry.transfers().is_empty());
        let recent = registry.recent_transfers();
        assert_eq!(recent.len(), 1);
        assert_eq!((recent[0].start_offset, recent[0].end_offset, recent[0].ok), (10, 100, true));
        drop(handle);
        assert_eq!(registry.session_count(), 0);
        assert_eq!(registry.counters().transfers_completed, 1);
    }

    #[test]
    fn dropping_mid_transfer_records_failure() {
        let registry = Registry::new();
        let handle = registry.register("transfer", "p".into());
        handle.begin_transfer(TransferKind::Put, "x", None, 0);
        drop(handle);
        assert_eq!(registry.counters().transfers_failed, 1);
        assert!(!registry.recent_transfers()[0].ok);
    }
}
