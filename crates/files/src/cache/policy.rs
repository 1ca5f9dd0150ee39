//! What an eviction policy is, independent of files.
//!
//! A policy sees only opaque keys and byte sizes. That keeps it small enough
//! to test exhaustively, and lets the hit-ratio simulator (bench/cachesim)
//! drive the very code the server runs, instead of a re-implementation.

use std::fmt;

use super::config::CachePolicyKind;
use super::fifo::Fifo;
use super::lru::Lru;
use super::s3fifo::{S3Fifo, S3FifoParams};

/// An entry's identity as a policy sees it. The file cache derives it from the
/// file name with a per-process random hasher; the simulator uses ranks.
pub type PolicyKey = u64;

/// The two bounds every policy enforces after every operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the sizes of resident keys, never exceeded.
    pub max_bytes: u64,
    /// Resident keys, never exceeded: without it, empty or tiny files could
    /// make the cache's bookkeeping (names, map slots) unbounded.
    pub max_entries: usize,
}

impl Limits {
    /// Whether `size` more bytes in one more entry fit next to `bytes` in `len`.
    pub fn fits(&self, bytes: u64, len: usize, size: u64) -> bool {
        bytes.checked_add(size).is_some_and(|total| total <= self.max_bytes) && len < self.max_entries
    }

    /// Whether an entry of `size` bytes could ever be resident.
    pub fn can_hold(&self, size: u64) -> bool {
        size <= self.max_bytes && self.max_entries > 0
    }
}

/// A replacement policy over keys with byte sizes.
///
/// Contract, checked by the shared tests in this module for every policy:
/// `bytes_held()` is the sum of the sizes of resident keys and never exceeds
/// `limits().max_bytes`; `len()` never exceeds `limits().max_entries`;
/// `evict()` removes and returns exactly the key the policy would evict next
/// to make room, so draining a clone lists the entries in eviction order.
pub trait EvictionPolicy: Send + Sync + fmt::Debug {
    /// The configuration name ("fifo", "lru", "s3fifo", ...).
    fn name(&self) -> &'static str;

    fn limits(&self) -> Limits;

    fn bytes_held(&self) -> u64;

    /// Resident keys.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, key: PolicyKey) -> bool;

    /// Records a hit on a resident key (a no-op for absent keys).
    fn on_hit(&mut self, key: PolicyKey);

    /// Offers an absent key of `size` bytes after a miss. Evicts what it must
    /// to stay within the limits, appending the evicted keys to `evicted`
    /// (which can include `key` itself if the policy admits and then rejects
    /// it, or other keys even when `key` is refused). Returns whether `key` is
    /// now resident.
    fn insert(&mut self, key: PolicyKey, size: u64, evicted: &mut Vec<PolicyKey>) -> bool;

    /// Forgets a key (its file changed or was replaced); not an eviction.
    /// Returns its size if it was resident.
    fn remove(&mut self, key: PolicyKey) -> Option<u64>;

    /// Evicts the next victim, as making room for an insert would.
    fn evict(&mut self) -> Option<PolicyKey>;

    /// A copy of the whole state, for listing the eviction order outside the
    /// cache's lock.
    fn clone_boxed(&self) -> Box<dyn EvictionPolicy>;
}

/// Builds the policy `kind` with its default parameters.
pub fn new_policy(kind: CachePolicyKind, limits: Limits) -> Box<dyn EvictionPolicy> {
    match kind {
        CachePolicyKind::Fifo => Box::new(Fifo::new(limits)),
        CachePolicyKind::Lru => Box::new(Lru::new(limits)),
        CachePolicyKind::S3Fifo => Box::new(S3Fifo::new(limits, S3FifoParams::default())),
    }
}

/// Resident keys, next victim first: what `evict()` would return, one after
/// the other, if nothing else happened. Computed on a copy, so `policy` is
/// unchanged. At most `limits().max_entries` keys.
pub fn eviction_order(policy: &dyn EvictionPolicy) -> Vec<PolicyKey> {
    let mut copy = policy.clone_boxed();
    let mut order = Vec::with_capacity(copy.len());
    while let Some(key) = copy.evict() {
        order.push(key);
    }
    assert!(copy.is_empty() && copy.bytes_held() == 0, "{} left keys after draining", policy.name());
    order
}

/// Checks the policy's own accounting; used after every operation in tests
/// and by the file cache after every change.
pub fn assert_within_limits(policy: &dyn EvictionPolicy) {
    let limits = policy.limits();
    assert!(
        policy.bytes_held() <= limits.max_bytes,
        "{} holds {} bytes, bound {}",
        policy.name(),
        policy.bytes_held(),
        limits.max_bytes
    );
    assert!(policy.len() <= limits.max_entries, "{} holds {} entries", policy.name(), policy.len());
}

/// Tests every policy must pass; each policy's module runs them on itself.
#[cfg(test)]
pub(crate) mod contract {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// One step of a random workload.
    #[derive(Clone, Debug)]
    pub enum Op {
        /// A request: hit if resident, else a miss followed by an insert.
        Access {
            key: PolicyKey,
            size: u64,
        },
        Remove(PolicyKey),
        Evict,
    }

    pub fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            8 => (0u64..40, 0u64..300).prop_map(|(key, size)| Op::Access { key, size }),
            1 => (0u64..40).prop_map(Op::Remove),
            1 => Just(Op::Evict),
        ];
        proptest::collection::vec(op, 0..400)
    }

    /// Runs `ops` against `policy` and a model of what is resident, checking
    /// after every step that the model and the policy agree on keys and sizes,
    /// that the bounds hold, and that evictions are reported exactly.
    pub fn run(policy: &mut dyn EvictionPolicy, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut resident: HashMap<PolicyKey, u64> = HashMap::new();
        let mut sizes: HashMap<PolicyKey, u64> = HashMap::new();
        let mut evicted = Vec::new();
        for op in ops {
            match *op {
                Op::Access { key, size } => {
                    if policy.contains(key) {
                        prop_assert!(resident.contains_key(&key));
                        policy.on_hit(key);
                    } else {
                        prop_assert!(!resident.contains_key(&key));
                        // Sizes are per key, as a file's is per etag.
                        let size = *sizes.entry(key).or_insert(size);
                        evicted.clear();
                        let admitted = policy.insert(key, size, &mut evicted);
                        if admitted {
                            resident.insert(key, size);
                        }
                        for k in &evicted {
                            prop_assert!(resident.remove(k).is_some(), "evicted {} which was not resident", k);
                            prop_assert!(!policy.contains(*k));
                        }
                        if !policy.limits().can_hold(size) {
                            prop_assert!(!admitted, "an oversized key was admitted");
                        }
                    }
                }
                Op::Remove(key) => {
                    prop_assert_eq!(policy.remove(key), resident.remove(&key));
                }
                Op::Evict => match policy.evict() {
                    Some(k) => prop_assert!(resident.remove(&k).is_some()),
                    None => prop_assert!(resident.is_empty()),
                },
            }
            assert_within_limits(policy);
            prop_assert_eq!(policy.len(), resident.len());
            prop_assert_eq!(policy.bytes_held(), resident.values().sum::<u64>());
            for &k in resident.keys() {
                prop_assert!(policy.contains(k));
            }
        }
        // The listed order is the order evictions really happen in.
        let order = eviction_order(policy);
        prop_assert_eq!(order.len(), resident.len());
        for want in order {
            prop_assert_eq!(policy.evict(), Some(want));
        }
        prop_assert_eq!(policy.evict(), None);
        prop_assert_eq!(policy.bytes_held(), 0);
        Ok(())
    }

    /// Small limits so that the random workloads evict constantly.
    pub fn small_limits() -> impl Strategy<Value = Limits> {
        (0u64..1200, 0usize..12).prop_map(|(max_bytes, max_entries)| Limits { max_bytes, max_entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_arithmetic() {
        let l = Limits { max_bytes: 100, max_entries: 2 };
        assert!(l.fits(0, 0, 100));
        assert!(!l.fits(1, 0, 100));
        assert!(!l.fits(0, 2, 1));
        assert!(!l.fits(u64::MAX, 0, 1), "no overflow");
        assert!(l.can_hold(100) && !l.can_hold(101));
        assert!(!Limits { max_bytes: 100, max_entries: 0 }.can_hold(1));
    }

    #[test]
    fn every_kind_builds_with_its_name() {
        let limits = Limits { max_bytes: 10, max_entries: 10 };
        for kind in [CachePolicyKind::Fifo, CachePolicyKind::Lru, CachePolicyKind::S3Fifo] {
            let p = new_policy(kind, limits);
            assert_eq!(p.name(), kind.as_str());
            assert_eq!(p.limits(), limits);
            assert!(p.is_empty());
        }
    }
}
