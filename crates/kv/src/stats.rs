//! Server-wide counters for `stats`, named as memcached names them so that
//! monitoring written for memcached reads them unchanged.
//!
//! The per-request counters are kept per session thread, as memcached keeps
//! per-thread stats and sums them only when `stats` asks: one counter that
//! every worker adds to on every request is a cache line the CPUs pass back
//! and forth (a cross-core transfer, 100 ns and more, for each `fetch_add`
//! that finds the line on the other CPU). Each worker thread owns one slot
//! on cache lines of its own and adds to it without a locked instruction
//! (it is the slot's only writer); sessions that run outside the workers
//! (their threads could not be started) share one more slot and add with
//! `fetch_add`. `stats` sums the slots: every count a session made before
//! it sent its reply is in the sum.

use std::sync::atomic::{AtomicU64, Ordering};

/// A per-request counter (memcached's name, lower-cased, is [`Stat::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    CmdGet,
    CmdSet,
    CmdFlush,
    CmdTouch,
    GetHits,
    GetMisses,
    DeleteHits,
    DeleteMisses,
    IncrHits,
    IncrMisses,
    DecrHits,
    DecrMisses,
    CasHits,
    CasMisses,
    CasBadval,
    TouchHits,
    TouchMisses,
    BytesRead,
    BytesWritten,
}

impl Stat {
    /// Every counter, in the order `stats` reports them.
    pub const ALL: [Stat; 19] = [
        Stat::CmdGet,
        Stat::CmdSet,
        Stat::CmdFlush,
        Stat::CmdTouch,
        Stat::GetHits,
        Stat::GetMisses,
        Stat::DeleteMisses,
        Stat::DeleteHits,
        Stat::IncrMisses,
        Stat::IncrHits,
        Stat::DecrMisses,
        Stat::DecrHits,
        Stat::CasMisses,
        Stat::CasHits,
        Stat::CasBadval,
        Stat::TouchHits,
        Stat::TouchMisses,
        Stat::BytesRead,
        Stat::BytesWritten,
    ];
    const COUNT: usize = Stat::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Stat::CmdGet => "cmd_get",
            Stat::CmdSet => "cmd_set",
            Stat::CmdFlush => "cmd_flush",
            Stat::CmdTouch => "cmd_touch",
            Stat::GetHits => "get_hits",
            Stat::GetMisses => "get_misses",
            Stat::DeleteHits => "delete_hits",
            Stat::DeleteMisses => "delete_misses",
            Stat::IncrHits => "incr_hits",
            Stat::IncrMisses => "incr_misses",
            Stat::DecrHits => "decr_hits",
            Stat::DecrMisses => "decr_misses",
            Stat::CasHits => "cas_hits",
            Stat::CasMisses => "cas_misses",
            Stat::CasBadval => "cas_badval",
            Stat::TouchHits => "touch_hits",
            Stat::TouchMisses => "touch_misses",
            Stat::BytesRead => "bytes_read",
            Stat::BytesWritten => "bytes_written",
        }
    }
}

/// One thread's counters, alone on its cache lines (128 bytes: a line and
/// the neighbour the CPU prefetches with it, as crossbeam pads).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot([AtomicU64; Stat::COUNT]);

/// Per-connection counters, on a line of their own too.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Connections {
    pub curr: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Debug)]
pub struct KvStats {
    pub connections: Connections,
    /// One slot per worker thread, then the shared slot.
    slots: Box<[Slot]>,
}

impl KvStats {
    /// Counters for `workers` worker threads (and the shared slot).
    pub fn new(workers: usize) -> KvStats {
        assert!(workers <= crate::workers::MAX_WORKERS, "{workers} workers");
        KvStats { connections: Connections::default(), slots: (0..=workers).map(|_| Slot::default()).collect() }
    }

    /// How a session adds: to worker `worker`'s own slot (the caller runs on
    /// that worker's thread and nothing else adds to it), or with `None` (or
    /// a worker this has no slot for) to the shared slot.
    pub fn writer(&self, worker: Option<usize>) -> StatsWriter<'_> {
        let shared = self.slots.len() - 1;
        match worker.filter(|&w| w < shared) {
            Some(w) => StatsWriter { stats: self, slot: &self.slots[w], owned: true },
            None => StatsWriter { stats: self, slot: &self.slots[shared], owned: false },
        }
    }

    /// The sum over every slot.
    pub fn get(&self, stat: Stat) -> u64 {
        self.slots.iter().fold(0u64, |sum, slot| sum.wrapping_add(slot.0[stat as usize].load(Ordering::Relaxed)))
    }

    pub fn add_connection(&self) {
        self.connections.curr.fetch_add(1, Ordering::Relaxed);
        self.connections.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove_connection(&self) {
        self.connections.curr.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session's handle on its slot.
#[derive(Debug)]
pub struct StatsWriter<'a> {
    stats: &'a KvStats,
    slot: &'a Slot,
    /// Whether this thread is the slot's only writer.
    owned: bool,
}

impl StatsWriter<'_> {
    pub fn add(&self, stat: Stat, n: u64) {
        let counter = &self.slot.0[stat as usize];
        if self.owned {
            // The only writer: a plain load and store, no locked instruction. Readers on other threads see
            // either value, never a torn one.
            counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every counter, for `stats`.
    pub fn all(&self) -> &KvStats {
        self.stats
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn names_are_distinct_and_in_range() {
        let mut seen = std::collections::BTreeSet::new();
        for stat in Stat::ALL {
            assert!((stat as usize) < Stat::COUNT);
            assert!(seen.insert(stat.name()), "{} twice", stat.name());
        }
        assert_eq!(seen.len(), Stat::COUNT);
    }

    #[test]
    fn slots_are_on_their_own_lines() {
        assert_eq!(std::mem::align_of::<Slot>(), 128);
        let stats = KvStats::new(2);
        let a = stats.writer(Some(0)).slot as *const Slot as usize;
        let b = stats.writer(Some(1)).slot as *const Slot as usize;
        assert!(b - a >= 128);
    }

    /// Owned slots on their threads and the shared slot from many threads
    /// all count, and `get` sums them exactly.
    #[test]
    fn the_sum_counts_every_add_of_every_thread() {
        let stats = Arc::new(KvStats::new(2));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    // Threads 0 and 1 own their slots; the others share the last one (and an index past the
                    // workers falls back to it too).
                    let w = stats.writer(if t < 2 {
                        Some(t)
                    } else if t == 5 {
                        Some(9)
                    } else {
                        None
                    });
                    for i in 0..10_000u64 {
                        w.add(Stat::CmdGet, 1);
                        w.add(Stat::BytesRead, i % 7);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bytes: u64 = (0..10_000u64).map(|i| i % 7).sum();
        assert_eq!(stats.get(Stat::CmdGet), 60_000);
        assert_eq!(stats.get(Stat::BytesRead), 6 * bytes);
        assert_eq!(stats.get(Stat::CmdSet), 0);
        assert!(stats.writer(Some(1)).owned && !stats.writer(Some(2)).owned && !stats.writer(None).owned);
    }

    #[test]
    fn connections_count_up_and_down() {
        let stats = KvStats::new(1);
        stats.add_connection();
        stats.add_connection();
        stats.remove_connection();
        assert_eq!(stats.connections.curr.load(Ordering::Relaxed), 1);
        assert_eq!(stats.connections.total.load(Ordering::Relaxed), 2);
    }
}
