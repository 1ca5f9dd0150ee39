//! [`Padded`]: a value alone on its cache lines.
//!
//! Both session threads read the store's lookup state (the hasher, the
//! shard table, the flush deadline) on every get, and write its counters
//! and log state on every set. Were they on the same cache line, each set
//! on one CPU would cost the next get on the other a cross-core transfer;
//! were two shards' locks on one line, taking one would take the line from
//! the CPU holding the other.

use std::ops::{Deref, DerefMut};

/// `T`, aligned to (and so sized in multiples of) 128 bytes: a cache line and the neighbour the CPU
/// prefetches with it, as crossbeam's `CachePadded` pads on x86-64.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Padded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_never_share_a_line() {
        let pair = [Padded(1u8), Padded(2u8)];
        let (a, b) = (&pair[0] as *const _ as usize, &pair[1] as *const _ as usize);
        assert_eq!(a % 128, 0);
        assert_eq!(b - a, 128);
        assert_eq!(*pair[1], 2);
    }
}
