//! Least recently used.
//!
//! A hit moves the entry to the front; the entry untouched for longest is the
//! next victim. Better than FIFO on skewed traffic, but one large scan of
//! files read once pushes out everything popular.

use super::key_queue::KeyQueue;
use super::policy::{EvictionPolicy, Limits, PolicyKey};

#[derive(Clone, Debug)]
pub struct Lru {
    limits: Limits,
    /// Key -> size, least recently used at the back.
    queue: KeyQueue<u64>,
    bytes: u64,
}

impl Lru {
    pub fn new(limits: Limits) -> Lru {
        Lru { limits, queue: KeyQueue::default(), bytes: 0 }
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn bytes_held(&self) -> u64 {
        self.bytes
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn contains(&self, key: PolicyKey) -> bool {
        self.queue.contains(key)
    }

    fn on_hit(&mut self, key: PolicyKey) {
        self.queue.move_to_front(key);
    }

    fn insert(&mut self, key: PolicyKey, size: u64, evicted: &mut Vec<PolicyKey>) -> bool {
        assert!(!self.queue.contains(key), "insert of resident key {key:#x}");
        if !self.limits.can_hold(size) {
            return false;
        }
        while !self.limits.fits(self.bytes, self.queue.len(), size) {
            match self.evict() {
                Some(victim) => evicted.push(victim),
                None => return false,
            }
        }
        self.queue.push_front(key, size);
        self.bytes += size;
        true
    }

    fn remove(&mut self, key: PolicyKey) -> Option<u64> {
        let size = self.queue.remove(key)?;
        self.bytes -= size;
        Some(size)
    }

    fn evict(&mut self) -> Option<PolicyKey> {
        let (key, size) = self.queue.pop_back()?;
        self.bytes -= size;
        Some(key)
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

    #[test]
    fn a_hit_protects_an_entry() {
        let mut p = Lru::new(Limits { max_bytes: 30, max_entries: 10 });
        let mut ev = Vec::new();
        for k in 1..=3 {
            assert!(p.insert(k, 10, &mut ev));
        }
        p.on_hit(1);
        p.on_hit(99);
        assert_eq!(eviction_order(&p), [2, 3, 1]);
        assert!(p.insert(4, 10, &mut ev));
        assert_eq!(ev, [2]);
        assert_eq!(eviction_order(&p), [3, 1, 4]);
    }

    proptest! {
        #[test]
        fn keeps_the_contract(limits in contract::small_limits(), ops in contract::ops()) {
            contract::run(&mut Lru::new(limits), &ops)?;
        }
    }
}
