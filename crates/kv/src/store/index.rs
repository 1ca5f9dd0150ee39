//! The index of one shard: its entries in a `hashbrown::HashTable`, found by a hash computed once per request.
//!
//! A key is hashed once ([`Key::new`], foldhash with the store's random seed): the hash's top bits pick the
//! shard and its low 32 bits (the entry's `tag`, kept in the entry) are what the table hashes by. So a get does
//! one hash, one probe of the table's control bytes and one key compare; the entry's tag is compared before
//! its key (the tag sits in the item's head, in the key's cache line), and growing the table rehashes from the
//! tags without hashing any key again. A slot is one pointer (the `entry` module): the table's control bytes
//! and slots of a shard stay small enough to stay in cache, and a hit reads one more cache line, the item's.

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

use super::{Entry, SHARDS};

/// The index's hasher: foldhash with one random seed per store, not std's SipHash (SipHash took 1.4 % of the
/// server's CPU in a 90 % get load). The random seed keeps clients from choosing colliding keys in advance; as
/// foldhash's documentation says, it is no defence against an attacker who learns the seed by timing the
/// replies.
pub(super) type KeyHasher = foldhash::fast::RandomState;

/// Bits of the hash that pick the shard (its top bits).
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const _: () = assert!(SHARDS == 1 << SHARD_BITS && SHARD_BITS > 0);

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

    /// What the entry keeps of the hash.
    pub fn tag(&self) -> u32 {
        self.hash as u32
    }
}

/// The hash the table sees, rebuilt from an entry's tag: the tag's low bits choose the bucket and its top bits
/// fill hashbrown's 7-bit control byte (taken from the top of the 64-bit hash), so the two stay independent.
fn table_hash(tag: u32) -> u64 {
    let t = u64::from(tag);
    (t << 32) | t
}

fn is(e: &Entry, tag: u32, key: &[u8]) -> bool {
    e.tag == tag && e.key() == key
}

/// One shard's items, looked up by key.
#[derive(Default)]
pub(super) struct Index {
    table: HashTable<Entry>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    pub fn get(&self, k: Key<'_>) -> Option<&Entry> {
        let tag = k.tag();
        self.table.find(table_hash(tag), |e| is(e, tag, k.bytes))
    }

    /// Removes and returns the entry under `k`.
    pub fn take(&mut self, k: Key<'_>) -> Option<Entry> {
        let tag = k.tag();
        self.table.find_entry(table_hash(tag), |e| is(e, tag, k.bytes)).ok().map(|o| o.remove().0)
    }

    /// Inserts `e` (its tag must be its key's, from [`Key::tag`]); returns the entry it replaced.
    pub fn replace(&mut self, e: Entry) -> Option<Entry> {
        let tag = e.tag;
        match self.table.entry(table_hash(tag), |x| is(x, tag, e.key()), |x| table_hash(x.tag)) {
            Slot::Occupied(mut o) => Some(std::mem::replace(o.get_mut(), e)),
            Slot::Vacant(v) => {
                v.insert(e);
                None
            }
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
}
