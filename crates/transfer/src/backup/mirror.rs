//! One upload's mirroring to the nodes connected when it began: every
//! batch the PUT writes goes to each node's queue, and the commit closes
//! the transfer on each.
//!
//! A node whose queue is full holds the upload back (the PUT reads no
//! further frames until the node takes the batch), but for no longer than
//! `backup.timeout_ms` in all: past that it is dropped from this upload,
//! marked behind, and gets the file later from catch-up. Dropping the
//! mirror before [`PutMirror::finish`] (the upload failed or paused) aborts
//! the transfer on every node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::node_id::NodeId;
use super::queue::{FeedQueue, Push};
use super::registry::Backups;

struct Target {
    id: NodeId,
    queue: Arc<FeedQueue>,
    /// Pieces of the current batch this node has not taken yet.
    pending: Option<Vec<(u64, Bytes)>>,
    /// Time this node held the upload back, before the current stall.
    waited: Duration,
    /// When the current stall began.
    since: Option<Instant>,
}

pub struct PutMirror {
    backups: Arc<Backups>,
    transfer: u64,
    name: String,
    /// Largest BACKUPDATA payload of file bytes.
    piece: usize,
    patience: Duration,
    targets: Vec<Target>,
    progress: watch::Receiver<u64>,
    finished: bool,
}

impl PutMirror {
    /// Starts mirroring `name` to every connected node that has room for
    /// another live transfer; `None` if there is none. `piece` bounds the
    /// bytes of one BACKUPDATA frame.
    pub fn begin(backups: &Arc<Backups>, name: &str, size: Option<u64>, piece: usize) -> Option<PutMirror> {
        assert!(piece > 0, "BACKUPDATA pieces must hold bytes");
        let transfer = backups.next_transfer();
        let targets: Vec<Target> = backups
            .connected()
            .into_iter()
            .filter(|(_, queue)| queue.begin(transfer, name, size) == Push::Queued)
            .map(|(node, queue)| Target {
                id: node.id.clone(),
                queue,
                pending: None,
                waited: Duration::ZERO,
                since: None,
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        Some(PutMirror {
            backups: backups.clone(),
            transfer,
            name: name.to_string(),
            piece,
            patience: Duration::from_millis(backups.config().timeout_ms),
            targets,
            progress: backups.subscribe(),
            finished: false,
        })
    }

    /// Hands the batch written at `offset` to every node. Call only when
    /// not [`PutMirror::stalled`].
    pub fn offer(&mut self, offset: u64, batch: &[Bytes]) {
        debug_assert!(!self.stalled(), "a new batch while the last one is still pending");
        let mut pieces = Vec::new();
        let mut at = offset;
        for data in batch {
            let mut start = 0;
            while start < data.len() {
                let end = (start + self.piece).min(data.len());
                pieces.push((at + start as u64, data.slice(start..end)));
                start = end;
            }
            at += data.len() as u64;
        }
        if pieces.is_empty() {
            return;
        }
        for t in &mut self.targets {
            t.pending = Some(pieces.clone());
        }
        self.retry();
    }

    /// Offers pending batches again; drops nodes out of patience. Returns
    /// whether every node took the batch.
    pub fn retry(&mut self) -> bool {
        let now = Instant::now();
        let transfer = self.transfer;
        self.targets.retain_mut(|t| {
            let Some(pieces) = &t.pending else { return true };
            match t.queue.data(transfer, pieces) {
                Push::Queued => {
                    t.pending = None;
                    if let Some(since) = t.since.take() {
                        t.waited += now - since;
                    }
                    true
                }
                Push::Full => {
                    t.since.get_or_insert(now);
                    true
                }
                Push::Closed => false,
            }
        });
        self.expire(now);
        !self.stalled()
    }

    /// Whether a node has not taken the last batch yet.
    pub fn stalled(&self) -> bool {
        self.targets.iter().any(|t| t.pending.is_some())
    }

    /// When the first stalled node runs out of patience.
    pub fn deadline(&self) -> Option<Instant> {
        self.targets.iter().filter_map(|t| t.since.map(|since| since + self.patience.saturating_sub(t.waited))).min()
    }

    fn expire(&mut self, now: Instant) {
        let mut dropped = Vec::new();
        let (transfer, patience) = (self.transfer, self.patience);
        self.targets.retain(|t| {
            let waited = t.waited + t.since.map_or(Duration::ZERO, |since| now - since);
            if t.pending.is_some() && waited >= patience {
                let _ = t.queue.abort(transfer, &self.name);
                dropped.push(t.id.clone());
                return false;
            }
            true
        });
        if !dropped.is_empty() {
            tracing::warn!(name = %self.name, nodes = dropped.len(), "backup nodes too slow for this upload; dropped");
            self.backups.mark_behind(&dropped);
        }
    }

    /// Completes when a queue may have room again (or anything else changed
    /// for the nodes); then [`PutMirror::retry`].
    pub async fn changed(&mut self) {
        if self.progress.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Nodes still mirroring this upload.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.targets.iter().map(|t| t.id.clone()).collect()
    }

    /// The upload is stored: closes the transfer on every node with the
    /// commit. Returns the nodes that will get the whole file this way, and
    /// the longest any of them held the upload back (which the wait for
    /// their confirmations must leave out of its `backup.timeout_ms`).
    pub fn finish(mut self, size: u64, blake3: &str, etag: &str) -> (Vec<NodeId>, Duration) {
        self.finished = true;
        let transfer = self.transfer;
        let name = std::mem::take(&mut self.name);
        let mut got = Vec::new();
        let mut longest = Duration::ZERO;
        for t in self.targets.drain(..) {
            tracing::debug!(name = %name, node = %t.id, waited_ms = t.waited.as_millis() as u64, "upload mirrored");
            if t.pending.is_none() && t.queue.done(transfer, &name, size, blake3, etag) == Push::Queued {
                longest = longest.max(t.waited);
                got.push(t.id);
            } else {
                let _ = t.queue.abort(transfer, &name);
            }
        }
        (got, longest)
    }
}

impl Drop for PutMirror {
    fn drop(&mut self) {
        if !self.finished {
            for t in &self.targets {
                let _ = t.queue.abort(self.transfer, &self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_core::config::BackupConfig;

    use super::super::queue::FeedItem;
    use super::*;

    fn setup(max_queue_bytes: u64, timeout_ms: u64) -> (Arc<Backups>, Arc<FeedQueue>, NodeId) {
        let config = BackupConfig { max_queue_bytes, timeout_ms, ..BackupConfig::default() };
        let backups = Backups::new(config, 100);
        let id = NodeId::random();
        let c = backups.connect(&id, "p".into(), BTreeMap::new(), BTreeMap::new(), 0).unwrap();
        c.node.lock().behind = false;
        (backups, c.queue, id)
    }

    fn drain(q: &FeedQueue) -> Vec<FeedItem> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[tokio::test]
    async fn batches_are_split_into_pieces_and_committed() {
        let (backups, queue, id) = setup(1 << 20, 1000);
        let mut m = PutMirror::begin(&backups, "f", Some(10), 4).unwrap();
        m.offer(0, &[Bytes::from_static(b"0123456789")]);
        assert!(!m.stalled());
        assert_eq!(m.finish(10, "h", "e"), (vec![id], Duration::ZERO));
        let items = drain(&queue);
        let offsets: Vec<_> = items
            .iter()
            .filter_map(
                |i| if let FeedItem::Data { offset, data, .. } = i { Some((*offset, data.len())) } else { None },
            )
            .collect();
        assert_eq!(offsets, [(0, 4), (4, 4), (8, 2)]);
        assert!(matches!(items.first(), Some(FeedItem::Begin { size: Some(10), .. })));
        assert!(matches!(items.last(), Some(FeedItem::Done { size: 10, .. })));
    }

    #[tokio::test]
    async fn a_full_queue_stalls_then_the_node_is_dropped_after_the_timeout() {
        tokio::time::pause();
        let (backups, queue, id) = setup(1 << 20, 500);
        let mut m = PutMirror::begin(&backups, "f", None, 1 << 20).unwrap();
        m.offer(0, &[Bytes::from(vec![0u8; 1 << 20])]);
        m.offer(1 << 20, &[Bytes::from(vec![0u8; 1 << 20])]);
        assert!(m.stalled(), "the second MiB does not fit");
        let deadline = m.deadline().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!m.retry());
        assert_eq!(m.deadline(), Some(deadline));
        tokio::time::sleep_until(deadline).await;
        assert!(m.retry(), "dropped: nothing pending any more");
        assert!(m.nodes().is_empty());
        assert!(backups.ack_set().is_empty(), "{id} is behind now");
        assert!(matches!(drain(&queue).last(), Some(FeedItem::Abort { .. })));
        assert!(m.finish(2 << 20, "h", "e").0.is_empty());
    }

    #[tokio::test]
    async fn patience_is_counted_over_the_whole_upload() {
        tokio::time::pause();
        let (backups, queue, _) = setup(1 << 20, 500);
        let mib = || Bytes::from(vec![0u8; 1 << 20]);
        let mut m = PutMirror::begin(&backups, "f", None, 1 << 20).unwrap();
        m.offer(0, &[mib()]);
        m.offer(1 << 20, &[mib()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain(&queue);
        assert!(m.retry(), "taken after 300 ms");
        let waited = m.targets[0].waited;
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(310), "{waited:?}");
        m.offer(2 << 20, &[mib()]);
        assert!(m.stalled());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(m.retry(), "550 ms in all is past the 500 ms timeout: dropped");
        assert!(m.nodes().is_empty());
    }

    #[tokio::test]
    async fn dropping_an_unfinished_mirror_aborts() {
        let (backups, queue, _) = setup(1 << 20, 1000);
        let m = PutMirror::begin(&backups, "f", None, 16).unwrap();
        drop(m);
        assert!(matches!(drain(&queue)[..], [FeedItem::Begin { .. }, FeedItem::Abort { .. }]));
        assert_eq!(queue.load(), (0, 0));
    }
}
