//! [`BlockWrites`]: the node's whole-block `O_DIRECT` writes, handed to two
//! disk threads so that two are in the disk's queue at once.
//!
//! An `O_DIRECT` write returns when the device has the bytes, so a writer
//! that waits for each 4 MiB block before it starts the next keeps one
//! request in the disk's queue, and the disk idles between them. On the
//! benchmark machine's virtio disk, 1 GiB of 4 MiB `O_DIRECT` writes took
//! 1.22 to 1.39 s one at a time and 0.81 to 0.93 s two at a time: one at a
//! time, the node's disk was slower than the upload it mirrors. The writer
//! thread still hashes every block in order and decides what is written
//! where; only the `pwrite` of a whole aligned block moves here, and the
//! writer waits for a file's writes before anything else touches that file
//! (a partial block, the tail, the commit).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::aligned_block::{MAX_BLOCKS, PooledBlock};

/// Block writes in the disk's queue at once: one per disk thread.
pub(super) const WRITES_IN_FLIGHT: usize = 2;

/// A block to write at `at`; the block goes back to the pool once written.
struct Job {
    file: Arc<File>,
    at: u64,
    block: PooledBlock,
    outstanding: Arc<Outstanding>,
}

/// The disk threads and the queue to them. Dropping it lets the queued
/// writes finish and joins the threads.
pub(super) struct BlockWrites {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl BlockWrites {
    pub fn start() -> io::Result<BlockWrites> {
        // The pool bounds the blocks in existence, so the queue never holds
        // more than that: a send never waits long.
        let (jobs, queue) = sync_channel::<Job>(MAX_BLOCKS);
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::with_capacity(WRITES_IN_FLIGHT);
        for _ in 0..WRITES_IN_FLIGHT {
            let queue = queue.clone();
            let thread = std::thread::Builder::new().name("ferry-backup-disk".into()).spawn(move || serve(&queue))?;
            threads.push(thread);
        }
        Ok(BlockWrites { jobs: Some(jobs), threads })
    }

    /// Queues the write of `block`'s bytes at `at` in `file`, counted in
    /// `outstanding` until it is done.
    pub fn submit(&self, file: &Arc<File>, at: u64, block: PooledBlock, outstanding: &Arc<Outstanding>) {
        outstanding.add();
        let job = Job { file: file.clone(), at, block, outstanding: outstanding.clone() };
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            // The threads are gone (they only end when this is dropped):
            // write it here rather than lose it.
            write(job);
        }
    }
}

impl Drop for BlockWrites {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        write(job);
    }
}

fn write(job: Job) {
    let Job { file, at, block, outstanding } = job;
    let result = file.write_all_at(block.filled(), at);
    // The block goes back to the pool and the file is let go before the
    // writer hears of it: one that waits for this file then holds it alone
    // and finds the block free.
    drop(block);
    drop(file);
    outstanding.done(result);
}

/// One file's writes on the disk threads: how many are not done, and the
/// first that failed.
#[derive(Default)]
pub(super) struct Outstanding {
    state: Mutex<OutstandingState>,
    idle: Condvar,
}

#[derive(Default)]
struct OutstandingState {
    writes: usize,
    error: Option<io::Error>,
}

impl Outstanding {
    fn lock(&self) -> MutexGuard<'_, OutstandingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) {
        let mut state = self.lock();
        state.writes += 1;
        // Each counted write holds a pooled block, except that a disk thread
        // returns its block just before it counts the write done (at most
        // one such write per thread).
        assert!(state.writes <= MAX_BLOCKS + WRITES_IN_FLIGHT, "more block writes of one file than blocks exist");
    }

    fn done(&self, result: io::Result<()>) {
        let mut state = self.lock();
        assert!(state.writes > 0, "a block write finished that was never counted");
        state.writes -= 1;
        if let Err(e) = result {
            state.error.get_or_insert(e);
        }
        if state.writes == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until every write counted so far is done; the first error any
    /// of them met (once: the file is not written further after it).
    pub fn wait(&self) -> io::Result<()> {
        let mut state = self.lock();
        while state.writes > 0 {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        match state.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::aligned_block::{BLOCK, BlockPool};
    use super::*;

    #[test]
    fn blocks_written_two_at_a_time_read_back_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        let writes = BlockWrites::start().unwrap();
        let outstanding = Arc::new(Outstanding::default());
        let pool = BlockPool::new();
        let count = 2 * MAX_BLOCKS + 1;
        let data: Vec<u8> = (0..count * BLOCK).map(|i| (i % 251) as u8).collect();
        for (n, chunk) in data.chunks(BLOCK).enumerate() {
            // The pool bounds the blocks in flight, as it does for the node.
            let mut block = loop {
                if let Some(block) = pool.take() {
                    break block;
                }
                std::thread::yield_now();
            };
            assert_eq!(block.append(chunk), BLOCK);
            writes.submit(&file, (n * BLOCK) as u64, block, &outstanding);
        }
        outstanding.wait().unwrap();
        assert_eq!(pool.out(), 0, "every block went back to the pool");
        assert!(std::fs::read(&path).unwrap() == data, "contents differ");
    }

    #[test]
    fn a_failed_write_is_reported_once_by_the_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails (EBADF).
        let file = Arc::new(File::open(&path).unwrap());
        let writes = BlockWrites::start().unwrap();
        let outstanding = Arc::new(Outstanding::default());
        let pool = BlockPool::new();
        for n in 0..2 {
            let mut block = pool.take().unwrap();
            block.append(&[1u8; 4096]);
            writes.submit(&file, n * 4096, block, &outstanding);
        }
        assert!(outstanding.wait().is_err(), "a failed write went unnoticed");
        assert!(outstanding.wait().is_ok(), "the error is reported once");
        drop(writes);
        assert_eq!(pool.out(), 0);
    }
}
