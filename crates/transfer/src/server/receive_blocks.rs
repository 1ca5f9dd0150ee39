//! [`ReceiveBlocks`]: reusable read buffers for PUTs, so a steady upload
//! receives into memory that is already paged in.
//!
//! A PUT splits each DATA frame off the connection's read buffer as a
//! `Bytes` that shares the buffer's allocation, and hands it to the file
//! write and to every backup node's queue. While any of those frames lives
//! the buffer cannot reclaim its memory in place, so it grows into a fresh
//! allocation; once the last frame drops, the old one is freed, and the
//! allocator gives large freed blocks back to the kernel. Every MiB
//! received then faults its pages in anew (7-10 % of the server's CPU with
//! one node connected, where the frames live longest).
//!
//! Here a PUT swaps the connection's read buffer for a [`BLOCK`] from a
//! pool before the buffer would have to grow, carrying over only the
//! partial frame at its end. The frames split off a block keep it alive on
//! their own; the pool keeps a handle to every block it made and takes a
//! block again once [`BytesMut::try_reclaim`] finds it unshared (every
//! frame of it written and sent to every node). A steady stream thus
//! cycles through the same few blocks.
//!
//! Bounds: the pool keeps at most its limit of blocks. A PUT that finds
//! every block still in use and the pool at its limit does not wait: it
//! keeps its read buffer, which grows by allocation as before (counted in
//! [`PoolStats::missed`]). Each PUT holds at most one block outside the
//! pool (its connection's read buffer), and gives it back when it ends.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ferry_core::Conn;

/// Bytes of one block: four of the largest reads (1 MiB) the connection
/// makes, so a block is used at least three-quarters before it is swapped.
pub(super) const BLOCK: usize = 4 << 20;
/// Spare room below which the read buffer is swapped for a fresh block.
/// The connection grows its buffer only when a read's room (at most 1 MiB)
/// does not fit in the spare capacity, so with this much it never does.
pub(super) const MIN_ROOM: usize = 1 << 20;
/// Fewest blocks the pool may keep: one being read into, one being
/// written, two in a node's queue.
const MIN_BLOCKS: usize = 4;

/// Counters of a [`ReceiveBlocks`] pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PoolStats {
    /// Blocks the pool keeps (in use or free).
    pub kept: usize,
    /// Blocks ever allocated (reuse keeps this at the working set).
    pub made: u64,
    /// Blocks handed to a PUT.
    pub taken: u64,
    /// Times a PUT found no free block and the pool at its limit.
    pub missed: u64,
}

/// The process's pool of PUT read buffers.
pub(super) struct ReceiveBlocks {
    inner: Mutex<Inner>,
    limit: usize,
}

struct Inner {
    /// Every block the pool keeps and no PUT reads into: free, or still
    /// shared with frames that are being written or wait in a node's queue.
    blocks: Vec<BytesMut>,
    stats: PoolStats,
}

impl ReceiveBlocks {
    /// A pool that keeps enough blocks for `held_bytes` of frames alive at
    /// once (what a PUT's write, gathered input and node queues may hold),
    /// and never fewer than [`MIN_BLOCKS`].
    pub fn new(held_bytes: u64) -> Arc<ReceiveBlocks> {
        // A block is swapped out with up to MIN_ROOM unused.
        let per_block = (BLOCK - MIN_ROOM) as u64;
        let limit = usize::try_from(held_bytes.div_ceil(per_block)).unwrap_or(usize::MAX).max(MIN_BLOCKS);
        Arc::new(ReceiveBlocks { inner: Mutex::new(Inner { blocks: Vec::new(), stats: PoolStats::default() }), limit })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Most blocks the pool keeps.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        PoolStats { kept: inner.blocks.len(), ..inner.stats }
    }

    /// An empty block with [`BLOCK`] bytes of room: a kept one no frame
    /// uses any more, else a new one if the pool is below its limit.
    fn take(&self) -> Option<BytesMut> {
        let mut inner = self.lock();
        let free = inner.blocks.iter_mut().position(|b| {
            b.clear();
            b.try_reclaim(BLOCK)
        });
        let block = match free {
            Some(i) => inner.blocks.swap_remove(i),
            None if inner.blocks.len() < self.limit => {
                inner.stats.made += 1;
                BytesMut::with_capacity(BLOCK)
            }
            None => {
                inner.stats.missed += 1;
                return None;
            }
        };
        inner.stats.taken += 1;
        Some(block)
    }

    /// Keeps `block` (which frames may still share) for reuse, if the pool
    /// is below its limit.
    fn give(&self, mut block: BytesMut) {
        block.clear();
        let mut inner = self.lock();
        if inner.blocks.len() < self.limit {
            inner.blocks.push(block);
        }
    }
}

/// One PUT's use of the pool: whether its connection reads into a block.
pub(super) struct PutReads {
    pool: Arc<ReceiveBlocks>,
    /// The connection's read buffer is a pool block (else its own).
    holds_block: bool,
}

impl PutReads {
    pub fn new(pool: Arc<ReceiveBlocks>) -> PutReads {
        PutReads { pool, holds_block: false }
    }

    /// Before a read: if the read buffer has less than [`MIN_ROOM`] spare,
    /// swaps it for a pool block holding the same unread bytes. The old
    /// buffer goes back to the pool if it was a block (the frames split off
    /// it keep their bytes), or is dropped if it was the connection's own.
    pub fn make_room(&mut self, conn: &mut Conn) {
        let buf = conn.read_buf();
        if buf.capacity() - buf.len() >= MIN_ROOM || buf.len() > BLOCK - MIN_ROOM {
            // Room enough; or a partial frame too large for a block, which
            // the connection's own growth handles.
            return;
        }
        let Some(mut block) = self.pool.take() else { return };
        block.extend_from_slice(buf);
        assert!(block.capacity() - block.len() >= MIN_ROOM, "a block without room for a read");
        let old = std::mem::replace(buf, block);
        if self.holds_block {
            self.pool.give(old);
        }
        self.holds_block = true;
    }

    /// When the PUT ends: gives the connection back a read buffer of its
    /// own with the unread bytes, and the block back to the pool, so an
    /// idle connection holds no block.
    pub fn give_back(self, conn: &mut Conn) {
        if !self.holds_block {
            return;
        }
        let buf = conn.read_buf();
        let own = BytesMut::from(&buf[..]);
        let block = std::mem::replace(buf, own);
        self.pool.give(block);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Whether `data` lies inside one of `blocks`' allocations.
    fn inside(data: &Bytes, blocks: &[(usize, usize)]) -> bool {
        let p = data.as_ptr() as usize;
        blocks.iter().any(|&(start, len)| p >= start && p + data.len() <= start + len)
    }

    #[test]
    fn the_limit_covers_the_held_bytes() {
        assert_eq!(ReceiveBlocks::new(0).limit(), MIN_BLOCKS);
        let pool = ReceiveBlocks::new(64 << 20);
        assert!(pool.limit() * (BLOCK - MIN_ROOM) >= 64 << 20);
        assert!((pool.limit() - 1) * (BLOCK - MIN_ROOM) < 64 << 20);
    }

    #[test]
    fn a_block_is_reused_only_once_no_frame_holds_it() {
        let pool = ReceiveBlocks::new(0);
        let mut a = pool.take().unwrap();
        let at = a.as_ptr() as usize;
        a.extend_from_slice(b"frame bytes");
        let frame = a.split_to(5).freeze();
        pool.give(a);
        // Still shared with `frame`: a new block is made.
        let b = pool.take().unwrap();
        assert_ne!(b.as_ptr() as usize, at);
        pool.give(b);
        drop(frame);
        let again = pool.take().unwrap();
        assert_eq!(again.as_ptr() as usize, at, "the freed block is taken again");
        assert!(again.is_empty() && again.capacity() >= BLOCK);
        assert_eq!(pool.stats().made, 2);
    }

    #[test]
    fn a_full_pool_misses_instead_of_growing() {
        let pool = ReceiveBlocks::new(0);
        let mut frames = Vec::new();
        for _ in 0..MIN_BLOCKS {
            let mut block = pool.take().unwrap();
            block.extend_from_slice(b"x");
            frames.push(block.split().freeze());
            pool.give(block);
        }
        assert!(pool.take().is_none());
        assert_eq!(pool.stats(), PoolStats { kept: MIN_BLOCKS, made: MIN_BLOCKS as u64, taken: 4, missed: 1 });
        frames.pop();
        assert!(pool.take().is_some());
    }

    /// A stream of frames read through `make_room`, with the frames kept
    /// alive a while (as a node's queue does), lands in a few pool blocks
    /// and no read buffer grows by allocation.
    #[tokio::test]
    async fn a_steady_stream_cycles_through_pool_blocks() {
        const FRAME: usize = 256 * 1024 + 13;
        const FRAMES: usize = 200;
        let (mut client, server) = pair().await;
        let sender = tokio::spawn(async move {
            let frame: Vec<u8> = (0..FRAME).map(|i| (i % 251) as u8).collect();
            for _ in 0..FRAMES {
                client.write_all(&frame).await.unwrap();
            }
        });
        let pool = ReceiveBlocks::new(8 << 20);
        let mut conn = Conn::new(server, 16 << 20);
        let mut reads = PutReads::new(pool.clone());
        let mut held = std::collections::VecDeque::new();
        let mut got = 0;
        let mut seen = Vec::new();
        while got < FRAMES {
            reads.make_room(&mut conn);
            let buf = conn.read_buf();
            let block = (buf.as_ptr() as usize, buf.capacity());
            if !seen.contains(&block) {
                seen.push(block);
            }
            let event = conn.pump(true).await.unwrap();
            assert!(!event.peer_closed(), "closed after {got} frames");
            while conn.read_buf().len() >= FRAME {
                let frame = conn.read_buf().split_to(FRAME).freeze();
                assert_eq!(frame[FRAME - 1], ((FRAME - 1) % 251) as u8);
                assert!(inside(&frame, &seen), "frame {got} is outside the pool's blocks");
                held.push_back(frame);
                // Eight frames (2 MiB) stay alive, like a node's queue.
                if held.len() > 8 {
                    held.pop_front();
                }
                got += 1;
            }
        }
        sender.await.unwrap();
        drop(held);
        reads.give_back(&mut conn);
        let stats = pool.stats();
        assert_eq!(stats.missed, 0);
        assert!(stats.made <= 3, "{} blocks made for 2 MiB held", stats.made);
        assert!(stats.taken >= (FRAMES * FRAME / BLOCK) as u64, "blocks were not swapped: {stats:?}");
        assert!(conn.read_buf().capacity() < BLOCK, "the connection kept a block");
        // Every kept block is free again: taking them all makes none.
        let again: Vec<_> = (0..stats.made).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.stats().made, stats.made, "a kept block was still in use");
        drop(again);
    }
}
