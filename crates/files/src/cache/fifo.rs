//! First in, first out: the seed's policy.
//!
//! Hits change nothing; the oldest insertion is always the next victim. Cheap
//! and predictable, but a popular file is evicted as soon as it is the oldest.

use super::queue_policy::QueuePolicy;

/// Hits change nothing; the oldest insertion is the next victim.
pub type Fifo = QueuePolicy<false>;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::policy::{EvictionPolicy, Limits, contract, eviction_order};
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
