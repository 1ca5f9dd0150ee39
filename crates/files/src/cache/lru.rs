//! Least recently used.
//!
//! A hit moves the entry to the front; the entry untouched for longest is the
//! next victim. Better than FIFO on skewed traffic, but one large scan of
//! files read once pushes out everything popular.

use super::queue_policy::QueuePolicy;

/// A hit moves the entry to the front; the least recently used is the next victim.
pub type Lru = QueuePolicy<true>;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::policy::{EvictionPolicy, Limits, contract, eviction_order};
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
