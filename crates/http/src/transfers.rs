//! Downloads and uploads in progress over HTTP, with bytes done and total,
//! for the dashboard and `/api/status`.
//!
//! A transfer is registered when a file body starts and removed when its
//! [`TransferGuard`] drops: after the last byte, or when the connection is
//! cut. Progress is one relaxed atomic add per body piece; the table lock
//! is taken only at the start and end of a transfer and for a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Transfers tracked at once. With one request per HTTP/1.1 connection this
/// is never reached under the connection limit; past it, a transfer is still
/// served, only not listed.
pub const MAX_TRACKED_TRANSFERS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferKind {
    Download,
    Upload,
}

/// One transfer as `/api/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    pub id: u64,
    pub kind: TransferKind,
    pub name: String,
    /// Body bytes sent (download) or received (upload) so far.
    pub done: u64,
    /// Body length when known (always for downloads; uploads only with a
    /// `Content-Length`).
    pub total: Option<u64>,
    pub started_unix_ms: u64,
}

#[derive(Debug)]
struct Live {
    kind: TransferKind,
    name: String,
    total: Option<u64>,
    started_unix_ms: u64,
    done: AtomicU64,
}

/// The table of live transfers.
#[derive(Debug, Default)]
pub struct TransferTable {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Live>>>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TransferTable {
    /// A poisoned lock only means another thread panicked while holding it;
    /// the map itself is always consistent, so keep serving.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Live>>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a transfer; it stays listed until the guard drops.
    pub fn begin(self: &Arc<Self>, kind: TransferKind, name: &str, total: Option<u64>) -> TransferGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            kind,
            name: name.to_owned(),
            total,
            started_unix_ms: now_unix_ms(),
            done: AtomicU64::new(0),
        });
        let mut map = self.lock();
        let tracked = map.len() < MAX_TRACKED_TRANSFERS;
        if tracked {
            map.insert(id, live.clone());
        }
        drop(map);
        TransferGuard { table: self.clone(), id, live, tracked }
    }

    /// Transfers in progress, oldest first.
    pub fn snapshot(&self) -> Vec<TransferInfo> {
        self.lock()
            .iter()
            .map(|(&id, t)| TransferInfo {
                id,
                kind: t.kind,
                name: t.name.clone(),
                done: t.done.load(Ordering::Relaxed),
                total: t.total,
                started_unix_ms: t.started_unix_ms,
            })
            .collect()
    }

    /// How many transfers of `kind` are in progress.
    pub fn count(&self, kind: TransferKind) -> usize {
        self.lock().values().filter(|t| t.kind == kind).count()
    }
}

/// Keeps a transfer listed; counts its progress.
#[derive(Debug)]
pub struct TransferGuard {
    table: Arc<TransferTable>,
    id: u64,
    live: Arc<Live>,
    tracked: bool,
}

impl TransferGuard {
    pub fn add(&self, n: u64) {
        self.live.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.live.done.load(Ordering::Relaxed)
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if self.tracked {
            self.table.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_guarded() {
        let table = Arc::new(TransferTable::default());
        let a = table.begin(TransferKind::Download, "a.bin", Some(100));
        let b = table.begin(TransferKind::Upload, "b.bin", None);
        a.add(40);
        a.add(10);
        let snap = table.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].name.as_str(), snap[0].done, snap[0].total), ("a.bin", 50, Some(100)));
        assert_eq!((snap[1].kind, snap[1].total), (TransferKind::Upload, None));
        assert_eq!(table.count(TransferKind::Download), 1);
        drop(a);
        assert_eq!(table.snapshot().len(), 1);
        assert_eq!(table.count(TransferKind::Download), 0);
        drop(b);
        assert!(table.snapshot().is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let table = Arc::new(TransferTable::default());
        let guards: Vec<_> =
            (0..MAX_TRACKED_TRANSFERS + 5).map(|i| table.begin(TransferKind::Download, &i.to_string(), None)).collect();
        assert_eq!(table.snapshot().len(), MAX_TRACKED_TRANSFERS);
        let untracked = guards.last().unwrap();
        untracked.add(7);
        assert_eq!(untracked.done(), 7, "progress still counts");
        drop(guards);
        assert!(table.snapshot().is_empty());
    }
}
