//! Cut-through: the chunks of a large upload, relayed to other clients while the upload goes on.
//!
//! Without it a large file crosses the chain one stage after the other: the uploader sends it, the
//! server commits it (its fsync bounds that stage by the disk), and only then does any other client
//! get its first byte. With it, the update connection hands each chunk it has checked to the push
//! connections of the clients that were idle when the upload began, and those send it on at once;
//! the receivers write the file into their temporary files while the server writes its own copy.
//!
//! The rule that no client sees a file before the server has committed it still holds: a push ends
//! with Finished, which carries the whole file's md5 and makes the receiver rename its temporary file
//! into place, and a relayed push sends Finished only after the server's commit (fsync and rename).
//! Until then the relay is one [`RelaySource`] (held by the upload) and one [`RelayTap`] per receiving
//! client (held by its push connection), joined by
//!
//! - a bounded channel of chunks per tap: the uploader never waits for a receiver. A tap holding
//!   `sync.relay_per_client_bytes`, or finding the server's `sync.relay_total_bytes` for all relays spent, has fallen
//!   behind and is cut off; its push connection waits for the commit and then sends the rest from the
//!   committed file (a slow receiver never makes the server buffer the file). The allowance is large
//!   because a receiver does a little more work per byte than the server (it checks and writes the
//!   same bytes, on the same cores): a small one would cut off every receiver of a large file early;
//! - the upload's outcome, which every tap watches: [`RelayOutcome::Committed`] (the push connection
//!   goes on as a normal push of the committed file from where it is, ending with Finished), or
//!   [`RelayOutcome::Aborted`] (the upload failed, the client went away, or the connection parked for
//!   a live upgrade: the push connection sends Abort File, and the receiver drops its temporary file).
//!
//! A client's entry in the client table records the relay its push connection is bound to
//! ([`super::client_table`]); a commit does not queue the file for the clients bound to its relay,
//! since they get it through it, and sets the outcome while it holds the table's lock. A push
//! connection that lets go of a relay does so under the same lock, so it either sees the commit (and
//! queues the file for its client itself: [`super::hub::SyncHub::abandon_relay`]) or is not skipped by
//! it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_files::SafeName;
use tokio::sync::{mpsc, watch};

use crate::Md5Sum;

/// Relay only uploads whose first chunk is at least this large: a small file is one chunk and its
/// commit is quick, so it is pushed the usual way.
pub(crate) const RELAY_FROM: usize = 256 * 1024;
/// Chunks one receiving client may have waiting (whatever their size).
const RELAY_MAX_CHUNKS: usize = 4096;

/// Bytes of relayed chunks that may still be queued, shared by every relay of a server.
#[derive(Debug, Clone)]
pub(crate) struct RelayBudget(Arc<AtomicUsize>);

impl RelayBudget {
    pub fn new(bytes: usize) -> RelayBudget {
        RelayBudget(Arc::new(AtomicUsize::new(bytes)))
    }

    /// Takes `n` bytes of the budget, if that many are left.
    fn take(&self, n: usize) -> bool {
        take(&self.0, n)
    }

    fn give(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

fn take(counter: &AtomicUsize, n: usize) -> bool {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(n)).is_ok()
}

/// The source's side of one tap.
struct Feed {
    sender: mpsc::Sender<RelayChunk>,
    /// Bytes this tap may still have queued (shared with the tap, which gives back what it takes).
    room: Arc<AtomicUsize>,
}

/// A checked chunk of the upload, and its md5.
pub(crate) type RelayChunk = (Bytes, Md5Sum);

/// What became of the relayed upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayOutcome {
    /// The upload goes on.
    Pending,
    /// The server committed the file as this version, with this size, md5 and mtime.
    Committed { version: u64, size: u64, md5: Md5Sum, mtime_ns: i64 },
    /// The upload ended without a commit.
    Aborted,
}

/// The upload's end of a relay.
pub(crate) struct RelaySource {
    id: u64,
    name: SafeName,
    per_tap: usize,
    budget: RelayBudget,
    outcome: watch::Sender<RelayOutcome>,
    /// One per tap still fed; a tap that fell behind (or went away) is dropped from here.
    taps: Vec<Feed>,
}

impl RelaySource {
    /// A relay of `name` whose taps each hold at most `per_tap` bytes of chunks, and all together
    /// no more than `budget` has left.
    pub fn new(id: u64, name: SafeName, per_tap: usize, budget: RelayBudget) -> RelaySource {
        let outcome = watch::channel(RelayOutcome::Pending).0;
        RelaySource { id, name, per_tap, budget, outcome, taps: Vec::new() }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// A new receiver of this relay's chunks from now on.
    pub fn tap(&mut self) -> RelayTap {
        let (sender, chunks) = mpsc::channel(RELAY_MAX_CHUNKS);
        let room = Arc::new(AtomicUsize::new(self.per_tap));
        self.taps.push(Feed { sender, room: room.clone() });
        RelayTap {
            id: self.id,
            name: self.name.clone(),
            chunks: Some(chunks),
            room,
            budget: self.budget.clone(),
            outcome: self.outcome.subscribe(),
        }
    }

    /// Whether any tap is still fed.
    #[cfg(test)]
    pub fn is_fed(&self) -> bool {
        !self.taps.is_empty()
    }

    /// Hands a checked chunk to every tap that has room for it; a tap without room is cut off.
    pub fn forward(&mut self, data: &Bytes, md5: Md5Sum) {
        let (budget, len) = (&self.budget, data.len());
        self.taps.retain(|feed| {
            if !take(&feed.room, len) {
                return false;
            }
            if !budget.take(len) {
                feed.room.fetch_add(len, Ordering::AcqRel);
                return false;
            }
            if feed.sender.try_send((data.clone(), md5)).is_err() {
                feed.room.fetch_add(len, Ordering::AcqRel);
                budget.give(len);
                return false;
            }
            true
        });
    }

    /// The upload is committed. The caller holds the client table's lock (see the module doc).
    pub fn commit(mut self, version: u64, size: u64, md5: Md5Sum, mtime_ns: i64) {
        self.taps.clear();
        self.outcome.send_replace(RelayOutcome::Committed { version, size, md5, mtime_ns });
    }
}

impl Drop for RelaySource {
    /// An upload that ends any other way than by [`RelaySource::commit`] aborts its relay.
    fn drop(&mut self) {
        self.outcome.send_if_modified(|outcome| {
            let pending = *outcome == RelayOutcome::Pending;
            if pending {
                *outcome = RelayOutcome::Aborted;
            }
            pending
        });
    }
}

/// A receiving client's end of a relay.
#[derive(Debug)]
pub(crate) struct RelayTap {
    pub id: u64,
    pub name: SafeName,
    /// `None` once the source stopped feeding this tap and every chunk it sent was taken.
    chunks: Option<mpsc::Receiver<RelayChunk>>,
    /// What the chunks taken give back to.
    room: Arc<AtomicUsize>,
    budget: RelayBudget,
    outcome: watch::Receiver<RelayOutcome>,
}

impl RelayTap {
    /// The upload's outcome so far.
    pub fn outcome(&self) -> RelayOutcome {
        *self.outcome.borrow()
    }

    /// Whether chunks may still come through this tap.
    pub fn is_fed(&self) -> bool {
        self.chunks.is_some()
    }

    /// Waits for the next chunk (if `want_chunk`) or the outcome, whichever comes first. Cancel-safe.
    pub async fn next_event(&mut self, want_chunk: bool) -> TapEvent {
        let RelayTap { chunks, outcome, room, budget, .. } = self;
        let got = match chunks.as_mut() {
            Some(receiver) if want_chunk => tokio::select! {
                chunk = receiver.recv() => Some(chunk),
                () = settled(outcome) => None,
            },
            _ => {
                settled(outcome).await;
                None
            }
        };
        match got {
            Some(chunk) => {
                match &chunk {
                    Some((data, _)) => {
                        room.fetch_add(data.len(), Ordering::AcqRel);
                        budget.give(data.len());
                    }
                    None => *chunks = None,
                }
                TapEvent::Chunk(chunk)
            }
            None => TapEvent::Settled,
        }
    }
}

impl Drop for RelayTap {
    /// Gives back what the chunks still queued took.
    fn drop(&mut self) {
        if let Some(chunks) = self.chunks.as_mut() {
            chunks.close();
            while let Ok((data, _)) = chunks.try_recv() {
                self.budget.give(data.len());
            }
        }
    }
}

/// What a tap waited for.
#[derive(Debug)]
pub(crate) enum TapEvent {
    /// The next chunk, or `None`: no more come through this tap.
    Chunk(Option<RelayChunk>),
    /// The upload was committed or failed.
    Settled,
}

async fn settled(outcome: &mut watch::Receiver<RelayOutcome>) {
    // An error means the source is gone, which sets the outcome before it goes.
    let _ = outcome.wait_for(|outcome| *outcome != RelayOutcome::Pending).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    impl RelayTap {
        /// The next chunk, waiting for it even once the outcome is known.
        async fn next_chunk(&mut self) -> Option<RelayChunk> {
            let chunk = self.chunks.as_mut()?.recv().await;
            match &chunk {
                Some((data, _)) => {
                    self.room.fetch_add(data.len(), Ordering::AcqRel);
                    self.budget.give(data.len());
                }
                None => self.chunks = None,
            }
            chunk
        }

        async fn settled(&mut self) {
            assert!(matches!(self.next_event(false).await, TapEvent::Settled));
        }
    }

    fn source(per_tap: usize, budget: &RelayBudget) -> RelaySource {
        RelaySource::new(7, SafeName::parse("big.bin", 1024).unwrap(), per_tap, budget.clone())
    }

    #[tokio::test]
    async fn chunks_reach_every_tap_in_order_and_the_commit_follows() {
        let budget = RelayBudget::new(1 << 20);
        let mut source = source(1 << 20, &budget);
        let (mut a, mut b) = (source.tap(), source.tap());
        for i in 0..3u8 {
            let data = Bytes::from(vec![i; 10]);
            source.forward(&data, Md5Sum::of(&data));
        }
        assert_eq!(a.outcome(), RelayOutcome::Pending);
        source.commit(4, 30, Md5Sum::ZERO, 99);
        for tap in [&mut a, &mut b] {
            for i in 0..3u8 {
                let (data, md5) = tap.next_chunk().await.unwrap();
                assert_eq!((data.as_ref(), md5), (&[i; 10][..], Md5Sum::of(&[i; 10])));
            }
            assert!(tap.next_chunk().await.is_none(), "the commit ends the chunks");
            assert!(!tap.is_fed());
            tap.settled().await;
            assert_eq!(
                tap.outcome(),
                RelayOutcome::Committed { version: 4, size: 30, md5: Md5Sum::ZERO, mtime_ns: 99 }
            );
        }
        assert_eq!(budget.available(), 1 << 20, "every chunk taken gave its bytes back");
    }

    #[tokio::test]
    async fn a_tap_that_falls_behind_is_cut_off_and_the_others_go_on() {
        // Room for two chunks per tap, three in all.
        let budget = RelayBudget::new(15);
        let mut source = source(10, &budget);
        let (mut slow, mut quick) = (source.tap(), source.tap());
        let data = Bytes::from_static(b"chunk");
        for _ in 0..2 {
            source.forward(&data, Md5Sum::ZERO);
            assert!(quick.next_chunk().await.is_some());
        }
        assert_eq!(budget.available(), 5, "slow holds two chunks");
        source.forward(&data, Md5Sum::ZERO);
        assert!(source.is_fed());
        assert!(quick.next_chunk().await.is_some());
        for _ in 0..2 {
            assert!(slow.next_chunk().await.is_some(), "what it had room for arrives");
        }
        assert!(slow.next_chunk().await.is_none(), "then nothing: it was cut off");
        source.forward(&data, Md5Sum::ZERO);
        assert!(quick.next_chunk().await.is_some());
        assert_eq!(slow.outcome(), RelayOutcome::Pending, "the outcome still comes to a cut-off tap");
        drop(quick);
        source.forward(&data, Md5Sum::ZERO);
        assert!(!source.is_fed(), "a tap that went away is not fed");
        assert_eq!(budget.available(), 15);
    }

    #[tokio::test]
    async fn the_budget_of_all_relays_bounds_them_together() {
        let budget = RelayBudget::new(10);
        let mut first = source(100, &budget);
        let mut second = source(100, &budget);
        let (a, mut b) = (first.tap(), second.tap());
        let data = Bytes::from_static(b"chunk");
        first.forward(&data, Md5Sum::ZERO);
        first.forward(&data, Md5Sum::ZERO);
        assert_eq!(budget.available(), 0);
        second.forward(&data, Md5Sum::ZERO);
        assert!(!second.is_fed(), "no budget left: cut off");
        assert!(b.next_chunk().await.is_none());
        // A tap that goes away gives back what it held.
        drop(a);
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test]
    async fn an_upload_that_ends_without_a_commit_aborts_its_relay() {
        let budget = RelayBudget::new(1 << 20);
        let mut source = source(1 << 20, &budget);
        let mut tap = source.tap();
        let data = Bytes::from_static(b"chunk");
        source.forward(&data, Md5Sum::ZERO);
        let waiting = tokio::spawn(async move {
            // A chunk first, then the outcome, whichever way the tap is asked.
            assert!(matches!(tap.next_event(true).await, TapEvent::Chunk(Some(_))));
            let mut events = Vec::new();
            loop {
                match tap.next_event(true).await {
                    TapEvent::Settled => break,
                    event => events.push(format!("{event:?}")),
                }
            }
            (events, tap.outcome())
        });
        tokio::task::yield_now().await;
        drop(source);
        let (events, outcome) = waiting.await.unwrap();
        assert_eq!(outcome, RelayOutcome::Aborted);
        assert!(events.len() <= 1, "at most the end of the chunks before the outcome: {events:?}");
    }
}
