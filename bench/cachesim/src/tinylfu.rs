//! W-TinyLFU (Einziger, Friedman, Manes, "TinyLFU: A Highly Efficient Cache
//! Admission Policy", 2017), by bytes, as Caffeine does it: the reference
//! the default policy is measured against. It lives only here.
//!
//! A small LRU window (1% of the bytes) takes every new key; keys leaving the
//! window become candidates for the main area, a segmented LRU (probation,
//! protected = 80% of main). A candidate enters only by beating the main
//! area's next victim on estimated recent frequency (a count-min sketch of
//! every request, halved periodically); otherwise it is the one evicted.
//! The window is static here; Caffeine adapts it by hill climbing, which
//! matters for recency-heavy traffic, not for the static Zipf streams here.

use ferry_files::cache::key_queue::KeyQueue;
use ferry_files::cache::policy::{EvictionPolicy, Limits, PolicyKey};

use crate::count_min::CountMin;

/// Caffeine's initial window; its hill climbing moves it from there.
pub const DEFAULT_WINDOW_PERCENT: u64 = 1;
const PROTECTED_PERCENT: u64 = 80;

#[derive(Clone, Debug)]
pub struct WTinyLfu {
    limits: Limits,
    window: KeyQueue<u64>,
    probation: KeyQueue<u64>,
    protected: KeyQueue<u64>,
    window_bytes: u64,
    probation_bytes: u64,
    protected_bytes: u64,
    window_max: u64,
    protected_max: u64,
    sketch: CountMin,
}

/// Where a victim comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Area {
    Window,
    Probation,
    Protected,
}

impl WTinyLfu {
    /// A window of `window_percent` of the bytes (0: plain TinyLFU in front
    /// of a segmented LRU).
    pub fn new(limits: Limits, window_percent: u64) -> WTinyLfu {
        assert!(window_percent <= 100);
        let window_max = (u128::from(limits.max_bytes) * u128::from(window_percent) / 100) as u64;
        let protected_max = (limits.max_bytes - window_max) * PROTECTED_PERCENT / 100;
        WTinyLfu {
            limits,
            window: KeyQueue::default(),
            probation: KeyQueue::default(),
            protected: KeyQueue::default(),
            window_bytes: 0,
            probation_bytes: 0,
            protected_bytes: 0,
            window_max,
            protected_max,
            sketch: CountMin::new(limits.max_entries),
        }
    }

    fn over_limits(&self) -> bool {
        self.bytes_held() > self.limits.max_bytes || self.len() > self.limits.max_entries
    }

    fn take(&mut self, area: Area, key: PolicyKey) -> Option<u64> {
        let (queue, bytes) = match area {
            Area::Window => (&mut self.window, &mut self.window_bytes),
            Area::Probation => (&mut self.probation, &mut self.probation_bytes),
            Area::Protected => (&mut self.protected, &mut self.protected_bytes),
        };
        let size = queue.remove(key)?;
        *bytes -= size;
        Some(size)
    }

    /// The main area's next victim, not counting the `candidates` newest
    /// probation entries (the keys just moved out of the window).
    fn victim(&self, candidates: usize) -> Option<(Area, PolicyKey)> {
        if self.probation.len() > candidates {
            return self.probation.back().map(|(k, _)| (Area::Probation, k));
        }
        if let Some((k, _)) = self.protected.back() {
            return Some((Area::Protected, k));
        }
        self.window.back().map(|(k, _)| (Area::Window, k))
    }

    /// The newest candidate, if any.
    fn candidate(&self, candidates: usize) -> Option<PolicyKey> {
        if candidates == 0 {
            return None;
        }
        self.probation.front().map(|(k, _)| k)
    }
}

impl EvictionPolicy for WTinyLfu {
    fn name(&self) -> &'static str {
        "w-tinylfu"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn bytes_held(&self) -> u64 {
        self.window_bytes + self.probation_bytes + self.protected_bytes
    }

    fn len(&self) -> usize {
        self.window.len() + self.probation.len() + self.protected.len()
    }

    fn contains(&self, key: PolicyKey) -> bool {
        self.window.contains(key) || self.probation.contains(key) || self.protected.contains(key)
    }

    fn on_hit(&mut self, key: PolicyKey) {
        self.sketch.increment(key);
        if self.window.move_to_front(key) || self.protected.move_to_front(key) {
            return;
        }
        let Some(size) = self.take(Area::Probation, key) else { return };
        self.protected.push_front(key, size);
        self.protected_bytes += size;
        while self.protected_bytes > self.protected_max {
            let Some((k, s)) = self.protected.pop_back() else { break };
            self.protected_bytes -= s;
            self.probation.push_front(k, s);
            self.probation_bytes += s;
        }
    }

    fn insert(&mut self, key: PolicyKey, size: u64, evicted: &mut Vec<PolicyKey>) -> bool {
        assert!(!self.contains(key), "insert of resident key {key:#x}");
        self.sketch.increment(key);
        if !self.limits.can_hold(size) {
            return false;
        }
        self.window.push_front(key, size);
        self.window_bytes += size;
        let mut candidates = 0;
        while self.window_bytes > self.window_max {
            let Some((k, s)) = self.window.pop_back() else { break };
            self.window_bytes -= s;
            self.probation.push_front(k, s);
            self.probation_bytes += s;
            candidates += 1;
        }
        while self.over_limits() {
            let loser = match (self.candidate(candidates), self.victim(candidates)) {
                (Some(c), Some((area, v))) => {
                    if self.sketch.estimate(c) > self.sketch.estimate(v) {
                        (area, v)
                    } else {
                        candidates -= 1;
                        (Area::Probation, c)
                    }
                }
                (Some(c), None) => {
                    candidates -= 1;
                    (Area::Probation, c)
                }
                (None, Some(victim)) => victim,
                (None, None) => break,
            };
            self.take(loser.0, loser.1);
            evicted.push(loser.1);
        }
        self.contains(key)
    }

    fn remove(&mut self, key: PolicyKey) -> Option<u64> {
        [Area::Window, Area::Probation, Area::Protected].into_iter().find_map(|a| self.take(a, key))
    }

    fn evict(&mut self) -> Option<PolicyKey> {
        let (area, key) = self.victim(0)?;
        self.take(area, key);
        Some(key)
    }

    fn clone_boxed(&self) -> Box<dyn EvictionPolicy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frequent_key_beats_a_new_one() {
        let mut p = WTinyLfu::new(Limits { max_bytes: 1000, max_entries: 100 }, DEFAULT_WINDOW_PERCENT);
        let mut ev = Vec::new();
        // Fill main with 1..=9 (100 bytes each), key 1 requested often.
        for k in 1..=9 {
            assert!(p.insert(k, 100, &mut ev));
        }
        for _ in 0..5 {
            p.on_hit(1);
        }
        assert!(ev.is_empty());
        // A new key requested once cannot push out anything more popular.
        assert!(p.insert(50, 100, &mut ev));
        assert!(!p.insert(51, 100, &mut ev) || !ev.is_empty());
        assert!(p.contains(1));
        assert!(p.bytes_held() <= 1000);
    }

    #[test]
    fn bounds_hold_over_a_random_walk() {
        let mut p = WTinyLfu::new(Limits { max_bytes: 5000, max_entries: 20 }, DEFAULT_WINDOW_PERCENT);
        let mut ev = Vec::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut resident = std::collections::HashSet::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 64) * (x % 64) / 64;
            if p.contains(key) {
                p.on_hit(key);
            } else {
                ev.clear();
                if p.insert(key, 50 + key * 13 % 400, &mut ev) {
                    resident.insert(key);
                }
                for k in &ev {
                    assert!(resident.remove(k) || *k == key);
                }
            }
            assert!(p.bytes_held() <= 5000 && p.len() <= 20);
            assert_eq!(p.len(), resident.len());
        }
    }
}
