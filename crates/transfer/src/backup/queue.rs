//! One node connection's queue of live upload data: filled by PUT sessions,
//! drained by the node's feed session, bounded in bytes.
//!
//! A PUT never blocks on a push: a full queue answers [`Push::Full`] and
//! the PUT decides how long to wait for room ([`super::mirror`]). Items are
//! `Bytes` slices of the batches the PUT writes, so mirroring copies
//! nothing until the socket write. Each connection gets a new queue, and
//! closing it when the connection ends makes every later push answer
//! [`Push::Closed`], so uploads that began on an old connection cannot
//! leak into a new one.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use super::MAX_LIVE_TRANSFERS;

/// Bytes an item costs besides its data, so that a client sending tiny
/// DATA frames cannot queue millions of items within the byte bound.
const ITEM_COST: u64 = 128;
/// Bound on Begin/Done/Abort items (at most three per live transfer).
const MAX_CONTROL_ITEMS: usize = 4 * MAX_LIVE_TRANSFERS;

/// What the feed session sends to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// A live upload starts: BACKUPINFO.
    Begin { transfer: u64, name: String, size: Option<u64> },
    /// Bytes of it: BACKUPDATA.
    Data { transfer: u64, offset: u64, data: Bytes },
    /// The upload is stored: BACKUPDONE.
    Done { transfer: u64, name: String, size: u64, blake3: String, etag: String },
    /// The upload failed or this node was dropped from it: BACKUPABORT.
    Abort { transfer: u64, name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// No room now (bytes, or live transfers); nothing was queued.
    Full,
    /// The connection is gone.
    Closed,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<FeedItem>,
    /// Cost of the Data items queued (bytes plus [`ITEM_COST`] each).
    cost: u64,
    control: usize,
    /// Live transfers begun and not yet done or aborted.
    live: usize,
    closed: bool,
    /// A producer found the queue full and waits for room.
    wanted: bool,
}

#[derive(Debug)]
pub struct FeedQueue {
    max_bytes: u64,
    inner: Mutex<Inner>,
    ready: Notify,
}

impl FeedQueue {
    pub fn new(max_bytes: u64) -> FeedQueue {
        FeedQueue { max_bytes, inner: Mutex::default(), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn control(&self, item: FeedItem, opens: bool, closes: bool) -> Push {
        {
            let mut q = self.lock();
            if q.closed {
                return Push::Closed;
            }
            if q.control >= MAX_CONTROL_ITEMS || (opens && q.live >= MAX_LIVE_TRANSFERS) {
                return Push::Full;
            }
            if opens {
                q.live += 1;
            }
            if closes {
                q.live = q.live.saturating_sub(1);
            }
            q.control += 1;
            q.items.push_back(item);
        }
        self.ready.notify_one();
        Push::Queued
    }

    /// Opens a live transfer, unless [`MAX_LIVE_TRANSFERS`] are open.
    pub fn begin(&self, transfer: u64, name: &str, size: Option<u64>) -> Push {
        self.control(FeedItem::Begin { transfer, name: name.to_string(), size }, true, false)
    }

    /// Queues a batch, all of it or nothing: `(offset, bytes)` pieces. An
    /// empty queue takes any batch, so one larger than the bound still
    /// goes through.
    pub fn data(&self, transfer: u64, pieces: &[(u64, Bytes)]) -> Push {
        let cost: u64 = pieces.iter().map(|(_, b)| b.len() as u64 + ITEM_COST).sum();
        {
            let mut q = self.lock();
            if q.closed {
                return Push::Closed;
            }
            if q.cost > 0 && q.cost + cost > self.max_bytes {
                q.wanted = true;
                return Push::Full;
            }
            q.cost += cost;
            for (offset, data) in pieces {
                q.items.push_back(FeedItem::Data { transfer, offset: *offset, data: data.clone() });
            }
        }
        self.ready.notify_one();
        Push::Queued
    }

    /// Closes a live transfer with its commit.
    pub fn done(&self, transfer: u64, name: &str, size: u64, blake3: &str, etag: &str) -> Push {
        let item =
            FeedItem::Done { transfer, name: name.into(), size, blake3: blake3.to_string(), etag: etag.to_string() };
        self.control(item, false, true)
    }

    /// Closes a live transfer without a commit.
    pub fn abort(&self, transfer: u64, name: &str) -> Push {
        self.control(FeedItem::Abort { transfer, name: name.to_string() }, false, true)
    }

    /// The next item for the socket.
    pub fn pop(&self) -> Option<FeedItem> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        match &item {
            FeedItem::Data { data, .. } => q.cost -= data.len() as u64 + ITEM_COST,
            _ => q.control -= 1,
        }
        Some(item)
    }

    /// The next piece of a transfer's bytes, if it is the front item: a
    /// Data item of `transfer` at `offset` with at most `most` bytes. The
    /// feed joins such pieces into one BACKUPDATA frame.
    pub fn pop_following(&self, transfer: u64, offset: u64, most: usize) -> Option<Bytes> {
        let mut q = self.lock();
        let Some(FeedItem::Data { transfer: t, offset: o, data }) = q.items.front() else { return None };
        if *t != transfer || *o != offset || data.len() > most {
            return None;
        }
        let data = data.clone();
        q.items.pop_front();
        q.cost -= data.len() as u64 + ITEM_COST;
        Some(data)
    }

    /// Whether a producer waited for room and there is plenty now (half the
    /// bound), which the feed announces to waiting uploads.
    pub fn take_room_signal(&self) -> bool {
        let mut q = self.lock();
        let signal = q.wanted && q.cost <= self.max_bytes / 2;
        if signal {
            q.wanted = false;
        }
        signal
    }

    /// Ends the queue: drops what is queued and refuses every later push.
    pub fn close(&self) {
        {
            let mut q = self.lock();
            q.closed = true;
            q.items.clear();
            q.cost = 0;
            q.control = 0;
            q.live = 0;
        }
        // The feed session of a connection replaced by a newer one learns
        // it this way.
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Completes when an item may have been queued (or [`FeedQueue::wake`]
    /// was called) since the last wait.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Wakes the feed session (other work arrived for it).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Data bytes queued and live transfers open.
    pub fn load(&self) -> (u64, usize) {
        let q = self.lock();
        let data =
            q.items.iter().map(|i| if let FeedItem::Data { data, .. } = i { data.len() as u64 } else { 0 }).sum();
        (data, q.live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(offset: u64, len: usize) -> (u64, Bytes) {
        (offset, Bytes::from(vec![7u8; len]))
    }

    #[test]
    fn data_is_bounded_but_an_empty_queue_takes_any_batch() {
        let q = FeedQueue::new(1000);
        assert_eq!(q.begin(1, "a", None), Push::Queued);
        assert_eq!(q.data(1, &[piece(0, 5000)]), Push::Queued, "empty queue takes an oversized batch");
        assert_eq!(q.data(1, &[piece(5000, 1)]), Push::Full);
        assert!(!q.take_room_signal(), "no room yet");
        assert!(matches!(q.pop(), Some(FeedItem::Begin { .. })));
        assert!(matches!(q.pop(), Some(FeedItem::Data { offset: 0, .. })));
        assert!(q.take_room_signal());
        assert!(!q.take_room_signal(), "signalled once");
        assert_eq!(q.data(1, &[piece(5000, 100), piece(5100, 100)]), Push::Queued);
        assert_eq!(q.load(), (200, 1));
        // 2 × (100 + 128) queued; another 500 + 128 would pass 1000.
        assert_eq!(q.data(1, &[piece(5200, 500)]), Push::Full);
        assert_eq!(q.done(1, "a", 5200, "h", "e"), Push::Queued, "control items are not held by data");
        assert_eq!(q.load(), (200, 0));
    }

    #[test]
    fn only_the_continuation_of_a_transfer_follows() {
        let q = FeedQueue::new(1 << 20);
        assert_eq!(q.data(1, &[piece(0, 100), piece(100, 50), piece(150, 10)]), Push::Queued);
        assert_eq!(q.data(2, &[piece(160, 10)]), Push::Queued);
        assert!(q.pop_following(1, 0, 99).is_none(), "too large");
        assert!(q.pop_following(1, 5, 1000).is_none(), "another offset");
        assert!(q.pop_following(2, 0, 1000).is_none(), "another transfer");
        assert_eq!(q.pop_following(1, 0, 100).map(|b| b.len()), Some(100));
        assert_eq!(q.pop_following(1, 100, 1000).map(|b| b.len()), Some(50));
        assert_eq!(q.pop_following(1, 150, 1000).map(|b| b.len()), Some(10));
        assert!(q.pop_following(1, 160, 1000).is_none(), "the next item is transfer 2's");
        assert_eq!(q.load(), (10, 0));
        assert!(matches!(q.pop(), Some(FeedItem::Data { transfer: 2, .. })));
        assert!(q.pop_following(2, 170, 1000).is_none(), "empty");
        assert_eq!(q.load(), (0, 0));
        assert_eq!(q.data(3, &[piece(0, 1)]), Push::Queued, "the cost went back to 0");
    }

    #[test]
    fn tiny_pieces_cost_their_overhead() {
        let q = FeedQueue::new(10 * ITEM_COST);
        let pieces: Vec<_> = (0..10).map(|i| piece(i, 1)).collect();
        assert_eq!(q.data(1, &pieces), Push::Queued);
        assert_eq!(q.data(1, &[piece(10, 1)]), Push::Full);
    }

    #[test]
    fn live_transfers_are_bounded() {
        let q = FeedQueue::new(1 << 20);
        for t in 0..MAX_LIVE_TRANSFERS as u64 {
            assert_eq!(q.begin(t, "x", Some(1)), Push::Queued);
        }
        assert_eq!(q.begin(999, "x", Some(1)), Push::Full);
        assert_eq!(q.abort(0, "x"), Push::Queued);
        assert_eq!(q.begin(999, "x", Some(1)), Push::Queued);
    }

    #[test]
    fn a_closed_queue_refuses_and_forgets() {
        let q = FeedQueue::new(1 << 20);
        assert_eq!(q.begin(1, "a", Some(1)), Push::Queued);
        q.close();
        assert!(q.is_closed());
        assert_eq!(q.pop(), None);
        assert_eq!(q.data(1, &[piece(0, 1)]), Push::Closed);
        assert_eq!(q.done(1, "a", 1, "h", "e"), Push::Closed);
        assert_eq!(q.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_push_wakes_the_feed() {
        let q = std::sync::Arc::new(FeedQueue::new(1 << 20));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        q.begin(1, "a", None);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
