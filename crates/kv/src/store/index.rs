//! The index of one shard: an open-addressing table (linear probing) of 16-byte slots, each the low half of
//! the key's hash (its `tag`) next to the pointer to the entry, found by a hash computed once per request.
//!
//! A key is hashed once ([`Key::new`], foldhash with the store's random seed): the hash's top bits pick the
//! shard and its low 32 bits (the `tag`, kept in the slot and in the entry) pick the slot and are compared
//! before anything else. A get reads the slot (its tag and pointer in one cache line, with the next slots of
//! its probe run), then the entry it points at: two dependent cache misses per key, as memcached takes (its
//! bucket, then the item). A `hashbrown` table took three: its control bytes, then the 8-byte slot (in
//! another cache line), then the entry; with many keys per request that was a fifth of the server's CPU
//! (`Index::get` held 23 % of the samples of the 16-key multiget mix, 7 % of the single-key mix). The price
//! is memory: 16 bytes a slot at 37 % to 75 % full, about 14 bytes per item more than `hashbrown`'s 9 at 44 %
//! to 88 %.
//!
//! Growing the table rehashes from the tags without hashing any key again. Removal shifts the rest of the
//! probe run back (no tombstones), so lookups never slow down with churn.

use std::hash::{BuildHasher, Hasher};

use super::{Entry, SHARDS};

/// The index's hasher: foldhash with one random seed per store, not std's SipHash (SipHash took 1.4 % of the
/// server's CPU in a 90 % get load). The random seed keeps clients from choosing colliding keys in advance; as
/// foldhash's documentation says, it is no defence against an attacker who learns the seed by timing the
/// replies.
pub(super) type KeyHasher = foldhash::fast::RandomState;

/// Bits of the hash that pick the shard (its top bits).
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const _: () = assert!(SHARDS == 1 << SHARD_BITS && SHARD_BITS > 0);

/// Slots of a table's first allocation.
const MIN_SLOTS: usize = 16;
/// The table grows (doubles) before it is more than `MAX_LOAD_NUM / MAX_LOAD_DEN` full: linear probing stays
/// short up to there (2.5 slots per hit, 8.5 per miss, mostly in the same cache lines).
const MAX_LOAD_NUM: usize = 3;
const MAX_LOAD_DEN: usize = 4;
/// Bound on a shard's slots: the bucket is taken from the 32-bit tag, so a larger table would leave slots
/// unused. 2^31 slots of 16 bytes (32 GiB per shard) is far past any `max_memory`.
const MAX_SLOTS: usize = 1 << 31;

/// A client's key with its hash.
#[derive(Clone, Copy)]
pub(super) struct Key<'a> {
    pub bytes: &'a [u8],
    hash: u64,
}

impl<'a> Key<'a> {
    pub fn new(hasher: &KeyHasher, bytes: &'a [u8]) -> Key<'a> {
        let mut h = hasher.build_hasher();
        h.write(bytes);
        Key { bytes, hash: h.finish() }
    }

    /// The shard that holds the key: the hash's top bits (the table uses the low 32).
    pub fn shard(&self) -> usize {
        (self.hash >> (64 - SHARD_BITS)) as usize
    }

    /// What the slot and the entry keep of the hash.
    pub fn tag(&self) -> u32 {
        self.hash as u32
    }
}

/// One occupied slot: 16 bytes (the pointer's niche makes `Option<Slot>` no larger).
struct Slot {
    tag: u32,
    entry: Entry,
}

const _: () = assert!(std::mem::size_of::<Option<Slot>>() == 16);

/// One shard's items, looked up by key.
#[derive(Default)]
pub(super) struct Index {
    /// A power of two long (or empty), never full: a probe always ends at an empty slot.
    slots: Box<[Option<Slot>]>,
    len: usize,
}

/// Where a probe for a key ended.
enum Probe {
    Found(usize),
    /// The empty slot that ends the key's probe run (where it would go).
    Vacant(usize),
}

impl Index {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|s| &s.entry))
    }

    pub fn get(&self, k: Key<'_>) -> Option<&Entry> {
        match self.probe(k.tag(), k.bytes)? {
            Probe::Found(i) => self.slots[i].as_ref().map(|s| &s.entry),
            Probe::Vacant(_) => None,
        }
    }

    /// Removes and returns the entry under `k`.
    pub fn take(&mut self, k: Key<'_>) -> Option<Entry> {
        let Probe::Found(i) = self.probe(k.tag(), k.bytes)? else { return None };
        let taken = self.slots[i].take().map(|s| s.entry);
        self.len -= 1;
        self.close_gap(i);
        taken
    }

    /// Inserts `e` (its tag must be its key's, from [`Key::tag`]); returns the entry it replaced.
    pub fn replace(&mut self, e: Entry) -> Option<Entry> {
        if (self.len + 1) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
            self.grow();
        }
        let tag = e.tag;
        match self.probe(tag, e.key()) {
            Some(Probe::Found(i)) => {
                let slot = self.slots[i].as_mut()?;
                Some(std::mem::replace(&mut slot.entry, e))
            }
            Some(Probe::Vacant(i)) => {
                self.slots[i] = Some(Slot { tag, entry: e });
                self.len += 1;
                None
            }
            None => unreachable!("the table has room after growing"),
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`, or the empty slot that ends its probe run; `None` if the table is empty.
    fn probe(&self, tag: u32, key: &[u8]) -> Option<Probe> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = tag as usize & mask;
        // The table is never full, so an empty slot ends every run; the count only bounds the loop.
        for _ in 0..self.slots.len() {
            match &self.slots[i] {
                None => return Some(Probe::Vacant(i)),
                Some(s) if s.tag == tag && s.entry.key() == key => return Some(Probe::Found(i)),
                Some(_) => i = (i + 1) & mask,
            }
        }
        unreachable!("an index table is never full")
    }

    /// After slot `hole` was emptied: moves back every later slot of the run that its home allows, so that
    /// no probe run has a gap (backward-shift deletion).
    fn close_gap(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        while let Some(s) = &self.slots[i] {
            let home = s.tag as usize & mask;
            // The slot may move to the hole if its home is not cyclically in (hole, i].
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[i].take();
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table, placing every entry by its tag (no key is hashed again).
    fn grow(&mut self) {
        let new_len = (self.slots.len() * 2).max(MIN_SLOTS);
        assert!(new_len <= MAX_SLOTS, "a kv index shard is limited to {MAX_SLOTS} slots");
        let old = std::mem::replace(&mut self.slots, (0..new_len).map(|_| None).collect());
        let mask = self.mask();
        for s in old.into_vec().into_iter().flatten() {
            let mut i = s.tag as usize & mask;
            while self.slots[i].is_some() {
                i = (i + 1) & mask;
            }
            self.slots[i] = Some(s);
        }
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    fn entry(hasher: &KeyHasher, key: &[u8], cas: u64) -> Entry {
        Entry::new(Key::new(hasher, key), &[b"v"], 0, 0, cas, 0)
    }

    #[test]
    fn the_same_key_hashes_the_same_and_shards_stay_in_range() {
        let h = KeyHasher::default();
        let mut seen = [false; SHARDS];
        for i in 0..10_000u32 {
            let key = format!("key:{i}");
            let (a, b) = (Key::new(&h, key.as_bytes()), Key::new(&h, key.as_bytes()));
            assert_eq!((a.hash, a.shard()), (b.hash, b.shard()));
            seen[a.shard()] = true;
        }
        assert!(seen.iter().all(|&s| s), "10,000 keys should reach every shard");
    }

    #[test]
    fn get_take_replace_agree_with_a_map_through_growth() {
        let h = KeyHasher::default();
        let mut index = Index::default();
        let mut model = std::collections::HashMap::new();
        for round in 0..3u64 {
            for i in 0..5_000u64 {
                let key = format!("k{}", i * 7 % 5_003);
                let cas = round * 10_000 + i;
                let old = index.replace(entry(&h, key.as_bytes(), cas)).map(|e| e.cas);
                assert_eq!(old, model.insert(key, cas));
            }
            for i in (0..5_003u64).step_by(3) {
                let key = format!("k{i}");
                let k = Key::new(&h, key.as_bytes());
                assert_eq!(index.take(k).map(|e| e.cas), model.remove(&key));
                assert!(index.get(k).is_none());
            }
            assert_eq!(index.len(), model.len());
            for (key, &cas) in &model {
                let e = index.get(Key::new(&h, key.as_bytes())).unwrap();
                assert_eq!((e.key(), e.cas), (key.as_bytes(), cas));
            }
        }
        assert_eq!(index.iter().count(), model.len());
    }

    #[test]
    fn a_key_with_the_same_tag_is_still_told_apart_by_its_bytes() {
        let h = KeyHasher::default();
        let mut index = Index::default();
        index.replace(entry(&h, b"a", 1));
        // A key that claims "a"'s hash: found only if the bytes match too.
        let forged = Key { bytes: b"b", hash: Key::new(&h, b"a").hash };
        assert!(index.get(forged).is_none());
        assert!(index.take(forged).is_none());
        assert_eq!(index.get(Key::new(&h, b"a")).map(|e| e.cas), Some(1));
    }

    #[test]
    fn runs_that_wrap_and_collide_survive_removal_in_any_order() {
        // Tags chosen to pile up at the table's last slots and wrap to its first: every removal must shift the
        // rest of the run back without losing an entry or stranding one behind a gap.
        for order in 0..4u64 {
            let mut index = Index::default();
            let mut live = Vec::new();
            for i in 0..11u64 {
                let key = format!("c{i}");
                let tag = if i % 3 == 0 { 13 + (i as u32 % 2) } else { 15 };
                let k = Key { bytes: key.as_bytes(), hash: u64::from(tag) };
                assert!(index.replace(Entry::new(k, &[b"v"], 0, 0, i, 0)).is_none());
                live.push((key, tag, i));
            }
            assert_eq!(index.slots.len(), 16);
            let mut step = 0u64;
            while !live.is_empty() {
                let at = ((step * 7 + order) % live.len() as u64) as usize;
                let (key, tag, cas) = live.remove(at);
                let k = Key { bytes: key.as_bytes(), hash: u64::from(tag) };
                assert_eq!(index.take(k).map(|e| e.cas), Some(cas));
                assert!(index.get(k).is_none());
                for (key, tag, cas) in &live {
                    let k = Key { bytes: key.as_bytes(), hash: u64::from(*tag) };
                    assert_eq!(index.get(k).map(|e| e.cas), Some(*cas), "{key} lost after removing step {step}");
                }
                assert_eq!(index.len(), live.len());
                step += 1;
            }
            assert_eq!(index.iter().count(), 0);
        }
    }

    #[test]
    fn the_table_never_fills() {
        let h = KeyHasher::default();
        let mut index = Index::default();
        for i in 0..10_000u64 {
            index.replace(entry(&h, format!("k{i}").as_bytes(), i));
            assert!(index.len() * MAX_LOAD_DEN <= index.slots.len() * MAX_LOAD_NUM);
        }
        assert_eq!(index.slots.iter().filter(|s| s.is_some()).count(), 10_000);
    }
}
