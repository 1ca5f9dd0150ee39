//! One queue of entries, evicted from the back: FIFO when a hit changes
//! nothing, LRU when a hit moves the entry to the front. The two policies
//! differ only there, so they share this one implementation
//! ([`super::fifo::Fifo`], [`super::lru::Lru`]).

use super::key_queue::KeyQueue;
use super::policy::{EvictionPolicy, Limits, PolicyKey};

#[derive(Clone, Debug)]
pub struct QueuePolicy<const PROMOTE_ON_HIT: bool> {
    limits: Limits,
    /// Key -> size; the next victim at the back (the oldest insertion for
    /// FIFO, the least recently used entry for LRU).
    queue: KeyQueue<u64>,
    bytes: u64,
}

impl<const PROMOTE_ON_HIT: bool> QueuePolicy<PROMOTE_ON_HIT> {
    pub fn new(limits: Limits) -> Self {
        QueuePolicy { limits, queue: KeyQueue::default(), bytes: 0 }
    }
}

impl<const PROMOTE_ON_HIT: bool> EvictionPolicy for QueuePolicy<PROMOTE_ON_HIT> {
    fn name(&self) -> &'static str {
        if PROMOTE_ON_HIT { "lru" } else { "fifo" }
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
        if PROMOTE_ON_HIT {
            self.queue.move_to_front(key);
        }
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
