//! One item in memory: its metadata, key and value in one allocation, reached from the index through an
//! 8-byte slot.
//!
//! A get with one request in flight is bound by cache misses, not instructions. With the item's metadata in
//! a 48-byte slot of the hash table and its key and value in a separate buffer, a hit took three dependent
//! misses (the table's control bytes, the slot, the buffer) where memcached takes about two (its bucket, then
//! the item). Here the slot is one thin pointer ([`triomphe::ThinArc`]), so the table of a shard is a sixth of
//! the size and mostly stays in cache, and the one allocation it points at holds the metadata ([`Head`]),
//! then the key, then the value: the tag compare, the key compare and the first bytes of the value share a
//! cache line.
//!
//! The metadata that changes after an item is stored (its expiry on a touch, its flag bits on a get) is in
//! atomics so that the item can be shared (`Send + Sync`) with a `Bytes` handed out by a get. Every change
//! happens under the item's shard lock, so the atomics are only read and written, never read-modify-written,
//! with `Relaxed` ordering: plain loads and stores on the machine.

use std::ops::Deref;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use triomphe::ThinArc;

use super::index::Key;
use super::{Item, MAX_KEY_LEN, TOKEN_SENT};

/// What an item knows besides its key and value; kept in front of them, in the same allocation.
pub(super) struct Head {
    pub cas: u64,
    pub exptime: Exptime,
    /// Unix second the item was stored (a delayed `flush_all` invalidates items stored before its deadline).
    pub time: u32,
    pub flags: u32,
    /// The low half of the key's hash ([`Key::tag`]): the index compares and rehashes by it.
    pub tag: u32,
    pub key_len: u8,
    bits: AtomicU8,
}

/// An item's expiry (absolute unix seconds, 0 = never), changed in place by a touch.
pub(super) struct Exptime(AtomicU64);

impl Exptime {
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    pub fn set(&self, exptime: u64) {
        self.0.store(exptime, Relaxed);
    }
}

/// The key followed by the value, shared by reference count with the index (and with a `Bytes` handed out
/// by a get that keeps a large value past the shard lock).
#[derive(Clone)]
pub(super) struct Data(ThinArc<Head, u8>);

impl Deref for Data {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.slice
    }
}

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// One item, as the index holds it: a single pointer. Its [`Head`] fields are read through `Deref`
/// (`entry.cas`, `entry.exptime.get()`), its key and value with [`Entry::key`] and [`Entry::value`].
pub(super) struct Entry {
    pub data: Data,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 8);

impl Deref for Entry {
    type Target = Head;

    fn deref(&self) -> &Head {
        &self.data.0.header.header
    }
}

impl Entry {
    pub fn new(key: Key<'_>, value: &[&[u8]], flags: u32, exptime: u64, cas: u64, time: u64) -> Entry {
        let mut v = Vec::with_capacity(key.bytes.len() + value.iter().map(|p| p.len()).sum::<usize>());
        v.extend_from_slice(key.bytes);
        for p in value {
            v.extend_from_slice(p);
        }
        Entry::from_data(v.into_boxed_slice(), key.bytes.len(), key.tag(), flags, exptime, cas, time)
    }

    /// An entry over `data`, which starts with a key of `key_len` bytes whose [`Key::tag`] is `tag`.
    pub fn from_data(
        data: Box<[u8]>,
        key_len: usize,
        tag: u32,
        flags: u32,
        exptime: u64,
        cas: u64,
        time: u64,
    ) -> Entry {
        assert!(key_len <= MAX_KEY_LEN && key_len <= data.len(), "an entry's key is at most {MAX_KEY_LEN} bytes");
        let head = Head {
            cas,
            exptime: Exptime(AtomicU64::new(exptime)),
            time: u32::try_from(time).unwrap_or(u32::MAX),
            flags,
            tag,
            key_len: key_len as u8,
            bits: AtomicU8::new(0),
        };
        Entry { data: Data(ThinArc::from_header_and_slice(head, &data)) }
    }

    pub fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    pub fn value(&self) -> &[u8] {
        &self.data[usize::from(self.key_len)..]
    }

    pub fn has(&self, bit: u8) -> bool {
        self.bits.load(Relaxed) & bit != 0
    }

    /// Sets or clears `bit`; writes the item's memory only if that changes it (a get marks an item fetched
    /// and referenced: after the first get of an item that is a read, not a write of its cache line).
    pub fn set_bit(&self, bit: u8, on: bool) {
        let b = self.bits.load(Relaxed);
        let n = if on { b | bit } else { b & !bit };
        if n != b {
            self.bits.store(n, Relaxed);
        }
    }

    /// The value as a `Bytes` that shares the item's memory.
    pub fn share_value(&self) -> Bytes {
        Bytes::from_owner(self.data.clone()).slice(usize::from(self.key_len)..)
    }

    pub fn item(&self) -> Item {
        Item {
            flags: self.flags,
            exptime: self.exptime.get(),
            cas: self.cas,
            value: self.share_value(),
            token_sent: self.has(TOKEN_SENT),
        }
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;
    use crate::store::index::KeyHasher;

    #[test]
    fn an_entry_keeps_its_key_value_and_metadata_together() {
        let h = KeyHasher::default();
        let k = Key::new(&h, b"key");
        let e = Entry::new(k, &[b"val", b"ue"], 7, 99, 42, 1_000);
        assert_eq!((e.key(), e.value()), (&b"key"[..], &b"value"[..]));
        assert_eq!((e.flags, e.exptime.get(), e.cas, e.time, e.tag), (7, 99, 42, 1_000, k.tag()));
        e.exptime.set(5);
        assert_eq!(e.item().exptime, 5);
        let shared = e.share_value();
        drop(e);
        assert_eq!(&shared[..], b"value", "a shared value outlives the entry");
    }

    #[test]
    fn bits_set_and_clear_independently() {
        let e = Entry::new(Key::new(&KeyHasher::default(), b"k"), &[], 0, 0, 1, 0);
        assert!(e.value().is_empty());
        e.set_bit(1, true);
        e.set_bit(4, true);
        e.set_bit(4, true);
        assert!(e.has(1) && e.has(4) && !e.has(2));
        e.set_bit(1, false);
        assert!(!e.has(1) && e.has(4));
    }

    #[test]
    fn a_time_past_u32_saturates() {
        let e = Entry::new(Key::new(&KeyHasher::default(), b"k"), &[b"v"], 0, 0, 1, u64::MAX);
        assert_eq!(e.time, u32::MAX);
    }
}
