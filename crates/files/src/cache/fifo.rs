//! First in, first out: the seed's policy.
//!
//! Hits change nothing; the oldest insertion is always the next victim. Cheap
//! and predictable, but a popular file is evicted as soon as it is the oldest.

use super::key_queue::KeyQueue;
use super::policy::{EvictionPolicy, Limits, PolicyKey};

#[derive(Clone, Debug)]
pub struct Fifo {
    limits: Limits,
    /// Key -> size, oldest at the back.
    queue: KeyQueue<u64>,
    bytes: u64,
}

impl Fifo {
    pub fn new(limits: Limits) -> Fifo {
        Fifo { limits, queue: KeyQueue::default(), bytes: 0 }
    }
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
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

    fn on_hit(&mut self, _key: PolicyKey) {}

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
    fn evicts_in_insertion_order_regardless_of_hits() {
        let mut p = Fifo::new(Limits { max_bytes: 30, max_entries: 10 });
        let mut ev = Vec::new();
        for k in 1..=3 {
            assert!(p.insert(k, 10, &mut ev));
        }
        p.on_hit(1);
        assert_eq!(eviction_order(&p), [1, 2, 3]);
        assert!(p.insert(4, 15, &mut ev));
        assert_eq!(ev, [1, 2], "two victims to make room for 15 bytes");
        assert_eq!(p.bytes_held(), 25);
        assert!(!p.insert(5, 31, &mut ev), "larger than the whole cache");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn entry_bound_evicts_too() {
        let mut p = Fifo::new(Limits { max_bytes: 1000, max_entries: 2 });
        let mut ev = Vec::new();
        for k in 1..=3 {
            assert!(p.insert(k, 0, &mut ev));
        }
        assert_eq!(ev, [1]);
        assert_eq!(p.len(), 2);
    }

    proptest! {
        #[test]
        fn keeps_the_contract(limits in contract::small_limits(), ops in contract::ops()) {
            contract::run(&mut Fifo::new(limits), &ops)?;
        }
    }
}
