//! Server-wide counters for `stats`, named as memcached names them so that
//! monitoring written for memcached reads them unchanged.
//!
//! Kept per thread, as memcached keeps them, and summed when `stats` asks:
//! one set of counters shared by every session thread would bounce its
//! cache lines between the CPUs on every request (a get adds to three or
//! four counters).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Sets of counters; a thread uses the one its index picks. More threads
/// than this share sets (still exact, only slower).
const SHARDS: usize = 16;

/// The server's counters: one [`KvStats`] per thread, on cache lines of its own.
#[derive(Debug)]
pub struct KvStatShards {
    shards: Box<[Shard]>,
}

/// One set of counters, aligned so that no two sets share a cache line
/// (128: the pair of lines the adjacent-line prefetcher fetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(KvStats);

/// The next thread's index.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's set of counters in every [`KvStatShards`].
    static THREAD_SHARD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl Default for KvStatShards {
    fn default() -> Self {
        KvStatShards { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

impl KvStatShards {
    /// The counters of the calling thread. A session takes them once and
    /// keeps them: it runs on one thread for its life.
    pub fn local(&self) -> &KvStats {
        let i = THREAD_SHARD.with(|i| *i);
        &self.shards[i % self.shards.len()].0
    }

    /// The sums over all threads. A connection may end on another thread
    /// than it began on (one counter went up, another down): the sums wrap,
    /// so their totals come out right.
    pub fn total(&self) -> KvStats {
        let total = KvStats::default();
        for shard in self.shards.iter() {
            total.add_all(&shard.0);
        }
        total
    }
}

#[derive(Debug, Default)]
pub struct KvStats {
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub cmd_get: AtomicU64,
    pub cmd_set: AtomicU64,
    pub cmd_flush: AtomicU64,
    pub cmd_touch: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    pub delete_hits: AtomicU64,
    pub delete_misses: AtomicU64,
    pub incr_hits: AtomicU64,
    pub incr_misses: AtomicU64,
    pub decr_hits: AtomicU64,
    pub decr_misses: AtomicU64,
    pub cas_hits: AtomicU64,
    pub cas_misses: AtomicU64,
    pub cas_badval: AtomicU64,
    pub touch_hits: AtomicU64,
    pub touch_misses: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl KvStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds every counter of `other` to this one's (wrapping).
    fn add_all(&self, other: &KvStats) {
        let pairs = [
            (&self.curr_connections, &other.curr_connections),
            (&self.total_connections, &other.total_connections),
            (&self.cmd_get, &other.cmd_get),
            (&self.cmd_set, &other.cmd_set),
            (&self.cmd_flush, &other.cmd_flush),
            (&self.cmd_touch, &other.cmd_touch),
            (&self.get_hits, &other.get_hits),
            (&self.get_misses, &other.get_misses),
            (&self.delete_hits, &other.delete_hits),
            (&self.delete_misses, &other.delete_misses),
            (&self.incr_hits, &other.incr_hits),
            (&self.incr_misses, &other.incr_misses),
            (&self.decr_hits, &other.decr_hits),
            (&self.decr_misses, &other.decr_misses),
            (&self.cas_hits, &other.cas_hits),
            (&self.cas_misses, &other.cas_misses),
            (&self.cas_badval, &other.cas_badval),
            (&self.touch_hits, &other.touch_hits),
            (&self.touch_misses, &other.touch_misses),
            (&self.bytes_read, &other.bytes_read),
            (&self.bytes_written, &other.bytes_written),
        ];
        for (sum, part) in pairs {
            sum.fetch_add(part.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_thread_and_survive_a_count_moving_between_threads() {
        let shards = KvStatShards::default();
        KvStats::add(&shards.local().cmd_get, 2);
        KvStats::add(&shards.local().curr_connections, 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                KvStats::add(&shards.local().cmd_get, 3);
                // The connection counted up on the other thread ends here.
                shards.local().curr_connections.fetch_sub(1, Ordering::Relaxed);
            });
        });
        let total = shards.total();
        assert_eq!(KvStats::get(&total.cmd_get), 5);
        assert_eq!(KvStats::get(&total.curr_connections), 0);
    }
}
