//! [`AlignedBlock`]: a [`BLOCK`]-sized buffer that `O_DIRECT` can write
//! from, and [`BlockPool`], which bounds how many exist and reuses them.
//!
//! The node receives each file's bytes straight into such a block (the
//! connection reads BACKUPDATA payloads into it, past the read buffer) and
//! the writer thread hashes and writes the block as it is: one copy out of
//! the kernel and no copy in user space. Blocks travel from the connection
//! task to the writer thread and come back to the pool when dropped, so a
//! steady stream allocates (and page-faults in) no new memory.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Alignment of buffer address, length and file offset for `O_DIRECT`
/// (the largest logical block size of common disks).
pub(super) const ALIGN: usize = 4096;
/// Bytes gathered before one direct write: large enough that the syscall,
/// the device request, its completion and the writer's wake-ups are small
/// per byte (on a virtio disk the request submission alone was 4 % of the
/// node's CPU with 1 MiB blocks), and within one request of a disk that
/// takes 4 MiB (`max_sectors_kb`). Side by side, 2 MiB blocks took 0.88 of
/// the node's CPU per GiB that 1 MiB blocks took, and 4 MiB 0.90 of 2 MiB.
pub(super) const BLOCK: usize = 4 << 20;
/// Pooled blocks that exist at once: one being filled, one queued for the
/// writer, two being written (`block_writes::WRITES_IN_FLIGHT`). A reader
/// that finds none waits for the disk to finish one, so the disk paces the
/// socket.
pub(super) const MAX_BLOCKS: usize = 4;

/// A [`BLOCK`]-sized buffer whose first byte is [`ALIGN`]-aligned, and the
/// bytes filled in it from its start.
pub(super) struct AlignedBlock {
    mem: Vec<u8>,
    /// Index in `mem` of the aligned start.
    start: usize,
    filled: usize,
}

impl AlignedBlock {
    /// `None` if no aligned start can be found (the caller does without).
    pub fn new() -> Option<AlignedBlock> {
        let mem = vec![0u8; BLOCK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(AlignedBlock { mem, start, filled: 0 })
    }

    /// The filled bytes; they start at an [`ALIGN`]-aligned address.
    pub fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.filled]
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_full(&self) -> bool {
        self.filled == BLOCK
    }

    /// The room after the filled bytes, to be filled and then counted with
    /// [`AlignedBlock::advance`].
    pub fn room(&mut self) -> &mut [u8] {
        let at = self.start + self.filled;
        &mut self.mem[at..self.start + BLOCK]
    }

    /// Counts `n` more bytes of [`AlignedBlock::room`] as filled.
    pub fn advance(&mut self, n: usize) {
        assert!(self.filled + n <= BLOCK, "filled past the block: {} + {n}", self.filled);
        self.filled += n;
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn append(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(BLOCK - self.filled);
        self.room()[..take].copy_from_slice(&data[..take]);
        self.filled += take;
        take
    }

    /// Drops the first `n` filled bytes, moving the rest to the start.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.filled, "consuming {n} of {} bytes", self.filled);
        self.mem.copy_within(self.start + n..self.start + self.filled, self.start);
        self.filled -= n;
    }

    pub fn clear(&mut self) {
        self.filled = 0;
    }
}

/// The node's blocks: at most [`MAX_BLOCKS`] exist at once.
pub(super) struct BlockPool {
    inner: Mutex<PoolInner>,
    returned: Notify,
}

struct PoolInner {
    spare: Vec<AlignedBlock>,
    /// Blocks handed out and not yet back.
    out: usize,
}

impl BlockPool {
    pub fn new() -> Arc<BlockPool> {
        Arc::new(BlockPool { inner: Mutex::new(PoolInner { spare: Vec::new(), out: 0 }), returned: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty block, or `None` if [`MAX_BLOCKS`] are out (wait with
    /// [`BlockPool::returned`]) or no aligned memory could be had.
    pub fn take(self: &Arc<BlockPool>) -> Option<PooledBlock> {
        let mut inner = self.lock();
        if inner.out >= MAX_BLOCKS {
            return None;
        }
        let block = match inner.spare.pop() {
            Some(block) => block,
            None => AlignedBlock::new()?,
        };
        inner.out += 1;
        Some(PooledBlock { block: Some(block), pool: self.clone() })
    }

    /// Resolves once a block came back after this call (a `take` that
    /// found none may then succeed).
    pub async fn returned(&self) {
        self.returned.notified().await;
    }

    /// Blocks handed out and not back.
    #[cfg(test)]
    pub fn out(&self) -> usize {
        self.lock().out
    }
}

/// A block out of the pool; it goes back when dropped.
pub(super) struct PooledBlock {
    block: Option<AlignedBlock>,
    pool: Arc<BlockPool>,
}

impl std::ops::Deref for PooledBlock {
    type Target = AlignedBlock;

    fn deref(&self) -> &AlignedBlock {
        // Only `drop` takes the block out.
        self.block.as_ref().unwrap_or_else(|| unreachable!("a pooled block used after it went back"))
    }
}

impl std::ops::DerefMut for PooledBlock {
    fn deref_mut(&mut self) -> &mut AlignedBlock {
        self.block.as_mut().unwrap_or_else(|| unreachable!("a pooled block used after it went back"))
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        let Some(mut block) = self.block.take() else { return };
        block.clear();
        {
            let mut inner = self.pool.lock();
            inner.out = inner.out.saturating_sub(1);
            if inner.spare.len() < MAX_BLOCKS {
                inner.spare.push(block);
            }
        }
        // `notify_one` stores a permit if nobody waits yet, so a reader that
        // found the pool empty and then waits does not miss this return.
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_aligned_and_fills_to_its_size() {
        let mut b = AlignedBlock::new().unwrap();
        assert_eq!(b.filled().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.append(&[7u8; 10]), 10);
        assert_eq!(b.room().len(), BLOCK - 10);
        b.room()[..5].copy_from_slice(b"hello");
        b.advance(5);
        assert_eq!(&b.filled()[10..], b"hello");
        assert_eq!(b.append(&vec![1u8; BLOCK]), BLOCK - 15);
        assert!(b.is_full());
        b.consume(BLOCK - 3);
        assert_eq!(b.filled(), &[1u8, 1, 1]);
        assert_eq!(b.filled().as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn the_pool_bounds_and_reuses_its_blocks() {
        let pool = BlockPool::new();
        let mut held: Vec<PooledBlock> = (0..MAX_BLOCKS).map(|_| pool.take().unwrap()).collect();
        assert!(pool.take().is_none(), "more than MAX_BLOCKS out");
        let mut first = held.remove(0);
        first.append(b"old bytes");
        let addr = first.filled().as_ptr();
        drop(first);
        assert_eq!(pool.out(), MAX_BLOCKS - 1);
        let again = pool.take().unwrap();
        assert_eq!(again.len(), 0, "a returned block comes back empty");
        assert_eq!(again.filled().as_ptr(), addr, "the returned block is reused");
        drop(held);
        drop(again);
        assert_eq!(pool.out(), 0);
    }

    #[tokio::test]
    async fn a_return_wakes_a_waiting_taker() {
        let pool = BlockPool::new();
        let held: Vec<PooledBlock> = (0..MAX_BLOCKS).map(|_| pool.take().unwrap()).collect();
        assert!(pool.take().is_none());
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(block) = pool.take() {
                        return block.len();
                    }
                    pool.returned().await;
                }
            })
        };
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got, 0);
    }
}
