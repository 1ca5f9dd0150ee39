//! Remembered digests of stored files.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

use crate::etag::Etag;
use crate::name::SafeName;

/// Read size for hashing: large enough for blake3's SIMD paths to pay off.
const READ_BYTES: usize = 1 << 20;

type Key = (SafeName, Etag);

/// Known BLAKE3 digests of stored files keyed by (name, etag), so a GET need
/// not re-read a file to announce its hash. The etag changes whenever the file
/// does, so an entry can be stale only in being useless, never wrong.
/// Bounded: at most `max_entries`; when full, the oldest insertion is evicted.
#[derive(Debug)]
pub struct HashCache {
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, blake3::Hash>,
    order: VecDeque<Key>,
}

impl HashCache {
    pub fn new(max_entries: usize) -> Self {
        HashCache { max_entries, inner: Mutex::new(Inner::default()) }
    }

    // A panic while holding the lock cannot leave the map half-updated in a
    // way that matters (worst case a key is missing from `order`), so a
    // poisoned lock is simply taken over.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, name: &SafeName, etag: &Etag) -> Option<blake3::Hash> {
        self.lock().map.get(&(name.clone(), etag.clone())).copied()
    }

    pub fn insert(&self, name: &SafeName, etag: Etag, hash: blake3::Hash) {
        if self.max_entries == 0 {
            return;
        }
        let mut inner = self.lock();
        let key = (name.clone(), etag);
        if let Some(v) = inner.map.get_mut(&key) {
            *v = hash;
            return;
        }
        while inner.map.len() >= self.max_entries {
            match inner.order.pop_front() {
                Some(old) => inner.map.remove(&old),
                None => break,
            };
        }
        inner.order.push_back(key.clone());
        inner.map.insert(key, hash);
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hashes the whole file with positional reads (so a shared fd's cursor is
/// untouched) until end of file.
pub fn hash_file(file: &File) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::DEFAULT_MAX_NAME_BYTES;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn e(s: &str) -> Etag {
        Etag::parse(s).unwrap()
    }

    #[test]
    fn bounded_and_keyed_by_etag() {
        let c = HashCache::new(2);
        let h = |b: &[u8]| blake3::hash(b);
        c.insert(&n("a"), e("1"), h(b"a1"));
        c.insert(&n("a"), e("2"), h(b"a2"));
        assert_eq!(c.get(&n("a"), &e("1")), Some(h(b"a1")));
        assert_eq!(c.get(&n("a"), &e("3")), None);
        c.insert(&n("a"), e("2"), h(b"again"));
        assert_eq!(c.len(), 2);
        c.insert(&n("b"), e("1"), h(b"b1"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&n("a"), &e("1")), None, "oldest evicted");
        assert_eq!(c.get(&n("a"), &e("2")), Some(h(b"again")));
        let none = HashCache::new(0);
        none.insert(&n("a"), e("1"), h(b""));
        assert!(none.is_empty());
    }

    #[test]
    fn hashes_whole_file() {
        let data: Vec<u8> = (0..(3 * READ_BYTES + 17)).map(|i| (i % 253) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        assert_eq!(hash_file(&f).unwrap(), blake3::hash(&data));
        assert_eq!(hash_file(&tempfile::tempfile().unwrap()).unwrap(), blake3::hash(b""));
    }
}
