//! S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
//! SOSP 2023), by bytes and size-aware: the default policy.
//!
//! New entries go to a small FIFO queue holding a few percent of the bytes.
//! An entry reaching the small queue's end is promoted to the main FIFO queue
//! if it was hit while there, else evicted and remembered in a ghost queue of
//! keys only; a key found in the ghost queue on a miss goes straight to main.
//! The main queue gives an entry that was hit since it last passed its end
//! another round (lazy promotion, like CLOCK). Files read once therefore leave
//! after a short stay in the small queue without disturbing the popular ones
//! in main: that is what makes it scan-resistant, with FIFO's cheap hits (a
//! counter increment, no list move).
//!
//! Files differ in size by a factor of a thousand, so ferry's default adds
//! one thing to the paper: a large file costs more hits to keep than a small
//! one (`cost = 1 + size / (2 x mean entry size)`), both to be promoted and
//! per extra round in main, with counters up to 15 so that popular large
//! files can still pay. Keeping two small popular files instead of one large
//! one of the same popularity serves more requests from the same bytes. The
//! settings were chosen with bench/cachesim; the numbers are in docs/cache.md.

use super::key_queue::KeyQueue;
use super::policy::{EvictionPolicy, Limits, PolicyKey};

/// The knobs of the algorithm: [`S3FifoParams::default`] is ferry's setting,
/// [`S3FifoParams::PAPER`] the paper's. Public so that the simulator can
/// compare variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S3FifoParams {
    /// Share of `max_bytes` the small queue may hold before it, rather than
    /// main, gives up the next victim.
    pub small_percent: u64,
    /// Saturation of the per-entry hit counter: how many extra rounds in main
    /// a hit-often entry can earn.
    pub max_freq: u8,
    /// Hits in the small queue needed to be promoted to main.
    pub promote_min_freq: u8,
    /// The ghost queue remembers evicted keys whose sizes sum to at most this
    /// share of `max_bytes` (and at most `max_entries` keys).
    pub ghost_percent: u64,
    /// Size awareness: an entry costs `1 + size / unit` hits, see [`SizeUnit`].
    /// Used by `promote_by_cost` and `age_by_cost`.
    pub size_unit: SizeUnit,
    /// Promotion from small to main needs `promote_min_freq * cost` hits.
    pub promote_by_cost: bool,
    /// A main entry passing the queue's end loses `cost` from its counter
    /// instead of 1: large entries get fewer extra rounds per hit.
    pub age_by_cost: bool,
}

impl S3FifoParams {
    /// The paper's setting: small queue 10%, counters up to 3, promotion
    /// after one hit, a ghost as large as main, every entry costs 1.
    pub const PAPER: S3FifoParams = S3FifoParams {
        small_percent: 10,
        max_freq: 3,
        promote_min_freq: 1,
        ghost_percent: 90,
        size_unit: SizeUnit::None,
        promote_by_cost: false,
        age_by_cost: false,
    };
}

impl Default for S3FifoParams {
    /// ferry's setting: the best of the variants tried on the Zipf streams
    /// of docs/cache.md, by object and by byte hit ratio.
    fn default() -> Self {
        S3FifoParams {
            small_percent: 5,
            max_freq: 15,
            promote_min_freq: 1,
            ghost_percent: 25,
            size_unit: SizeUnit::MeanPercent(200),
            promote_by_cost: true,
            age_by_cost: true,
        }
    }
}

/// The size that costs one hit more to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    /// Every entry costs 1 (plain S3-FIFO).
    None,
    /// `max_bytes / n`.
    CacheFraction(u64),
    /// This percentage of the mean size of the resident entries.
    MeanPercent(u64),
}

#[derive(Clone, Copy, Debug)]
struct Item {
    size: u64,
    freq: u8,
}

#[derive(Clone, Debug)]
pub struct S3Fifo {
    limits: Limits,
    params: S3FifoParams,
    small: KeyQueue<Item>,
    main: KeyQueue<Item>,
    /// Evicted keys with their sizes; never resident.
    ghost: KeyQueue<u64>,
    small_bytes: u64,
    main_bytes: u64,
    ghost_bytes: u64,
}

impl S3Fifo {
    pub fn new(limits: Limits, params: S3FifoParams) -> S3Fifo {
        assert!(params.small_percent <= 100 && params.ghost_percent <= 1000, "{params:?}");
        S3Fifo {
            limits,
            params,
            small: KeyQueue::default(),
            main: KeyQueue::default(),
            ghost: KeyQueue::default(),
            small_bytes: 0,
            main_bytes: 0,
            ghost_bytes: 0,
        }
    }

    fn share(&self, percent: u64) -> u64 {
        // u128: max_bytes * percent must not overflow for huge bounds.
        (u128::from(self.limits.max_bytes) * u128::from(percent) / 100) as u64
    }

    /// What keeping an entry of `size` bytes costs, in units of hits.
    fn cost(&self, size: u64) -> u8 {
        let unit = match self.params.size_unit {
            SizeUnit::None => return 1,
            SizeUnit::CacheFraction(n) => self.limits.max_bytes / n.max(1),
            SizeUnit::MeanPercent(p) => {
                let len = self.len() as u64;
                if len == 0 {
                    return 1;
                }
                // u128: bytes_held * percent must not overflow for huge bounds.
                (u128::from(self.bytes_held() / len) * u128::from(p) / 100) as u64
            }
        };
        u8::try_from(1 + size / unit.max(1)).unwrap_or(u8::MAX)
    }

    fn remember(&mut self, key: PolicyKey, size: u64) {
        let cap = self.share(self.params.ghost_percent);
        if size > cap || self.limits.max_entries == 0 {
            return;
        }
        if let Some(old) = self.ghost.remove(key) {
            self.ghost_bytes -= old;
        }
        self.ghost.push_front(key, size);
        self.ghost_bytes += size;
        while self.ghost_bytes > cap || self.ghost.len() > self.limits.max_entries {
            match self.ghost.pop_back() {
                Some((_, s)) => self.ghost_bytes -= s,
                None => break,
            }
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn name(&self) -> &'static str {
        "s3fifo"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn bytes_held(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }

    fn contains(&self, key: PolicyKey) -> bool {
        self.small.contains(key) || self.main.contains(key)
    }

    fn on_hit(&mut self, key: PolicyKey) {
        let max = self.params.max_freq;
        if let Some(item) = self.small.get_mut(key).or_else(|| self.main.get_mut(key)) {
            item.freq = item.freq.saturating_add(1).min(max);
        }
    }

    fn insert(&mut self, key: PolicyKey, size: u64, evicted: &mut Vec<PolicyKey>) -> bool {
        assert!(!self.contains(key), "insert of resident key {key:#x}");
        if !self.limits.can_hold(size) {
            return false;
        }
        while !self.limits.fits(self.bytes_held(), self.len(), size) {
            match self.evict() {
                Some(victim) => evicted.push(victim),
                None => return false,
            }
        }
        let item = Item { size, freq: 0 };
        if let Some(ghost_size) = self.ghost.remove(key) {
            self.ghost_bytes -= ghost_size;
            self.main.push_front(key, item);
            self.main_bytes += size;
        } else {
            self.small.push_front(key, item);
            self.small_bytes += size;
        }
        true
    }

    fn remove(&mut self, key: PolicyKey) -> Option<u64> {
        if let Some(item) = self.small.remove(key) {
            self.small_bytes -= item.size;
            return Some(item.size);
        }
        let item = self.main.remove(key)?;
        self.main_bytes -= item.size;
        Some(item.size)
    }

    fn evict(&mut self) -> Option<PolicyKey> {
        let small_target = self.share(self.params.small_percent);
        // Every pass either shrinks the small queue or lowers a main entry's
        // counter, so this ends after at most len * (max_freq + 1) passes.
        loop {
            let from_small = !self.small.is_empty() && (self.small_bytes >= small_target || self.main.is_empty());
            if from_small {
                let (_, &item) = self.small.back()?;
                // Costs are worked out while the entry still counts towards
                // the mean size.
                let cost = if self.params.promote_by_cost { self.cost(item.size) } else { 1 };
                let (key, item) = self.small.pop_back()?;
                self.small_bytes -= item.size;
                if u32::from(item.freq) >= u32::from(self.params.promote_min_freq) * u32::from(cost) {
                    self.main.push_front(key, Item { size: item.size, freq: 0 });
                    self.main_bytes += item.size;
                    continue;
                }
                self.remember(key, item.size);
                return Some(key);
            }
            let (_, &item) = self.main.back()?;
            let cost = if self.params.age_by_cost { self.cost(item.size) } else { 1 };
            let (key, item) = self.main.pop_back()?;
            if item.freq > 0 {
                self.main.push_front(key, Item { size: item.size, freq: item.freq.saturating_sub(cost) });
                continue;
            }
            self.main_bytes -= item.size;
            return Some(key);
        }
    }

    fn clone_boxed(&self) -> Box<dyn EvictionPolicy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::policy::{contract, eviction_order};
    use super::*;

    fn limits(max_bytes: u64) -> Limits {
        Limits { max_bytes, max_entries: 1000 }
    }

    #[test]
    fn one_hit_wonders_leave_through_the_small_queue() {
        let mut p = S3Fifo::new(limits(100), S3FifoParams::default());
        let mut ev = Vec::new();
        // A popular key, hit while in the small queue, is promoted to main.
        assert!(p.insert(1, 10, &mut ev));
        p.on_hit(1);
        // A scan of keys read once.
        for k in 100..120 {
            assert!(p.insert(k, 10, &mut ev));
        }
        assert!(p.contains(1), "the hit key survived a scan of twice the cache");
        assert!(!ev.contains(&1));
        assert_eq!(p.bytes_held(), 100);
        assert_eq!(p.main_bytes, 10);
    }

    #[test]
    fn ghost_hit_goes_to_main() {
        let mut p = S3Fifo::new(limits(30), S3FifoParams::PAPER);
        let mut ev = Vec::new();
        for k in 1..=4 {
            assert!(p.insert(k, 10, &mut ev));
        }
        assert_eq!(ev, [1]);
        assert!(p.ghost.contains(1));
        assert!(p.insert(1, 10, &mut ev));
        assert!(p.main.contains(1) && !p.ghost.contains(1));
        assert_eq!(p.ghost_bytes, p.ghost.iter_oldest_first().map(|(_, s)| *s).sum::<u64>());
    }

    #[test]
    fn main_gives_hit_entries_another_round() {
        // With no small-queue share, evict() takes from the small queue first,
        // so main can be filled through the ghost: insert, evict, re-insert.
        let params = S3FifoParams { small_percent: 0, ..S3FifoParams::PAPER };
        let mut p = S3Fifo::new(limits(1000), params);
        let mut ev = Vec::new();
        for k in 1..=3 {
            assert!(p.insert(k, 10, &mut ev));
            assert_eq!(p.evict(), Some(k));
            assert!(p.insert(k, 10, &mut ev));
        }
        assert_eq!(p.main.len(), 3);
        p.on_hit(1);
        p.on_hit(1);
        p.on_hit(2);
        // 3 has no hits; 2 is out after one more round, 1 after two.
        assert_eq!(eviction_order(&p), [3, 2, 1]);
    }

    #[test]
    fn cost_grows_with_size() {
        let mut p = S3Fifo::new(limits(1000), S3FifoParams::default());
        let mut ev = Vec::new();
        for (k, size) in [(1, 10), (2, 30), (3, 20)] {
            assert!(p.insert(k, size, &mut ev));
        }
        // Mean 20, unit 40.
        assert_eq!((p.cost(10), p.cost(39), p.cost(40), p.cost(85)), (1, 1, 2, 3));
        p.params.size_unit = SizeUnit::CacheFraction(20); // unit 50
        assert_eq!((p.cost(49), p.cost(50), p.cost(u64::MAX)), (1, 2, u8::MAX));
        p.params.size_unit = SizeUnit::None;
        assert_eq!(p.cost(u64::MAX), 1);
    }

    #[test]
    fn large_entries_need_more_hits_to_be_promoted() {
        let params = S3FifoParams {
            small_percent: 0,
            ghost_percent: 0,
            size_unit: SizeUnit::CacheFraction(20),
            ..S3FifoParams::default()
        };
        let mut p = S3Fifo::new(limits(1000), params);
        let mut ev = Vec::new();
        for (k, size) in [(1, 10), (2, 10), (3, 100), (4, 100)] {
            assert!(p.insert(k, size, &mut ev));
        }
        p.on_hit(1);
        p.on_hit(3);
        p.on_hit(3);
        for _ in 0..3 {
            p.on_hit(4);
        }
        // 2: no hit; 3: two hits, too few for 100 bytes (cost 3); 1 and 4:
        // promoted with one hit per unit of cost, then out of main in turn.
        assert_eq!(eviction_order(&p), [2, 3, 1, 4]);
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(3));
        assert!(p.main.contains(1) && p.small.contains(4));
        assert_eq!(p.evict(), Some(1));
        assert!(p.main.contains(4), "promoted on its way out of the small queue");
    }

    #[test]
    fn large_entries_age_faster_in_main() {
        let mut p = S3Fifo::new(limits(1000), S3FifoParams::default());
        for (k, size) in [(1, 10), (2, 300)] {
            p.main.push_front(k, Item { size, freq: 4 });
            p.main_bytes += size;
        }
        p.params.size_unit = SizeUnit::None;
        assert_eq!(eviction_order(&p), [1, 2], "equal counters, equal rounds: the older goes first");
        p.params.size_unit = SizeUnit::CacheFraction(10); // unit 100: costs 1 and 4
        assert_eq!(eviction_order(&p), [2, 1], "4 hits buy the large entry one round, the small one four");
    }

    #[test]
    fn ghost_is_bounded_by_bytes_and_entries() {
        let params = S3FifoParams { ghost_percent: 50, ..S3FifoParams::PAPER };
        let mut p = S3Fifo::new(Limits { max_bytes: 100, max_entries: 3 }, params);
        let mut ev = Vec::new();
        for k in 0..50 {
            assert!(p.insert(k, 10, &mut ev));
            assert!(p.ghost_bytes <= 50 && p.ghost.len() <= 3);
        }
        assert_eq!(p.ghost.len(), 3);
        assert!(!p.insert(1000, 101, &mut ev));
    }

    proptest! {
        #[test]
        fn keeps_the_contract(limits in contract::small_limits(), ops in contract::ops()) {
            contract::run(&mut S3Fifo::new(limits, S3FifoParams::default()), &ops)?;
            contract::run(&mut S3Fifo::new(limits, S3FifoParams::PAPER), &ops)?;
        }

        #[test]
        fn every_variant_keeps_the_contract(
            limits in contract::small_limits(),
            small_percent in 0u64..=100,
            max_freq in 0u8..8,
            promote_min_freq in 0u8..4,
            ghost_percent in 0u64..300,
            size_unit in prop_oneof![
                Just(SizeUnit::None),
                (0u64..300).prop_map(SizeUnit::CacheFraction),
                (0u64..400).prop_map(SizeUnit::MeanPercent),
            ],
            promote_by_cost: bool,
            age_by_cost: bool,
            ops in contract::ops(),
        ) {
            let params = S3FifoParams {
                small_percent, max_freq, promote_min_freq, ghost_percent, size_unit, promote_by_cost, age_by_cost,
            };
            contract::run(&mut S3Fifo::new(limits, params), &ops)?;
        }
    }
}
