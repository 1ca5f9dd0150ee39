//! The md5 of every chunk of one version of a file, kept so that sending it needs no MD5 pass.
//!
//! Every File Chunk carries its chunk's md5. A sender that has already digested the chunks — the client
//! when it noticed the change (it digests the whole file then, and each chunk in the same pass,
//! [`crate::twin_md5`]), the server when it checked the upload it now pushes — keeps those digests and
//! sends them instead of digesting every byte again. They are only reused for the same content cut the
//! same way: same name, size, whole-file md5 and chunk size. Should the bytes read at send time differ
//! after all (a file changed under the sender), the receiver's check fails the chunk, the sender digests
//! what it actually sends for the resend, and Finished's whole-file md5 still decides.
//!
//! Memory is bounded: 16 bytes per chunk, at most [`MAX_CHUNKS`] per file (a larger file is digested as
//! it is sent), and the cache holds at most [`CACHE_CHUNKS`] digests and [`CACHE_FILES`] files, oldest
//! out first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ferry_files::SafeName;

use crate::Md5Sum;

/// Most chunks whose digests are kept for one file: 1 MiB of digests, a 64 GiB file at 1 MiB chunks.
pub const MAX_CHUNKS: usize = 1 << 16;
/// Most digests a cache holds over all its files (4 MiB).
pub const CACHE_CHUNKS: usize = 4 * MAX_CHUNKS;
/// Most files a cache holds.
pub const CACHE_FILES: usize = 4096;

/// The chunk digests of one file, in order, as they are collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDigests {
    chunk_size: u32,
    md5s: Vec<Md5Sum>,
    bytes: u64,
    /// A chunk shorter than `chunk_size` came: it must be the last.
    short_seen: bool,
}

impl ChunkDigests {
    /// None collected yet; the first chunk sets the chunk size.
    pub fn new() -> ChunkDigests {
        ChunkDigests { chunk_size: 0, md5s: Vec::new(), bytes: 0, short_seen: false }
    }

    /// Adds the digest of the next chunk, `len` bytes long. `false` if the file cannot be described
    /// this way (chunks of unequal sizes before the last, or more than [`MAX_CHUNKS`]): the caller drops
    /// it.
    pub fn push(&mut self, md5: Md5Sum, len: u32) -> bool {
        if len == 0 || self.short_seen || self.md5s.len() >= MAX_CHUNKS {
            return false;
        }
        if self.md5s.is_empty() {
            self.chunk_size = len;
        } else if len > self.chunk_size {
            return false;
        }
        self.short_seen = len < self.chunk_size;
        self.md5s.push(md5);
        self.bytes += u64::from(len);
        true
    }

    /// The chunk size the file was cut at (0 before the first chunk).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes the digests cover.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.md5s.len()
    }

    pub fn is_empty(&self) -> bool {
        self.md5s.is_empty()
    }

    /// The digest of the chunk that starts at byte `offset`, `len` bytes long, if that is one of these
    /// chunks.
    pub fn at(&self, offset: u64, len: u64) -> Option<Md5Sum> {
        let size = u64::from(self.chunk_size);
        if size == 0 || offset % size != 0 || offset.checked_add(len)? > self.bytes {
            return None;
        }
        let index = usize::try_from(offset / size).ok()?;
        let expected = size.min(self.bytes - offset);
        (len == expected).then(|| self.md5s.get(index).copied()).flatten()
    }
}

impl Default for ChunkDigests {
    fn default() -> Self {
        ChunkDigests::new()
    }
}

/// What the digests are of: a file's content (its size and whole-file md5) cut at a chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestedVersion {
    pub size: u64,
    pub md5: Md5Sum,
    pub chunk_size: u32,
}

/// Chunk digests of recently digested files, one version per name, bounded (module doc).
#[derive(Debug, Default)]
pub struct DigestCache {
    files: HashMap<SafeName, (DigestedVersion, Arc<ChunkDigests>)>,
    /// Names in the order they were stored, for eviction; a name stored again moves to the back.
    order: VecDeque<SafeName>,
    chunks: usize,
}

impl DigestCache {
    pub fn new() -> DigestCache {
        DigestCache::default()
    }

    /// Keeps `digests` as those of `name`'s content `version`, replacing what `name` had. Digests that
    /// do not cover `version` (another size or chunk size) are not kept.
    pub fn insert(&mut self, name: &SafeName, version: DigestedVersion, digests: ChunkDigests) {
        self.remove(name);
        if digests.bytes() != version.size || digests.chunk_size() != version.chunk_size || digests.is_empty() {
            return;
        }
        while self.files.len() >= CACHE_FILES || self.chunks + digests.len() > CACHE_CHUNKS {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some((_, old)) = self.files.remove(&oldest) {
                self.chunks -= old.len();
            }
        }
        self.chunks += digests.len();
        self.order.push_back(name.clone());
        self.files.insert(name.clone(), (version, Arc::new(digests)));
        debug_assert_eq!(self.chunks, self.files.values().map(|(_, d)| d.len()).sum::<usize>());
    }

    /// The digests of `name` if they are of `version`.
    pub fn get(&self, name: &SafeName, version: DigestedVersion) -> Option<Arc<ChunkDigests>> {
        self.files.get(name).filter(|(v, _)| *v == version).map(|(_, d)| d.clone())
    }

    pub fn remove(&mut self, name: &SafeName) {
        if let Some((_, old)) = self.files.remove(name) {
            self.chunks -= old.len();
            self.order.retain(|n| n != name);
        }
    }

    /// Digests held, over all files.
    pub fn chunks(&self) -> usize {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn digests(sizes: &[u32]) -> ChunkDigests {
        let mut d = ChunkDigests::new();
        for (i, len) in sizes.iter().enumerate() {
            assert!(d.push(Md5Sum::of(&i.to_le_bytes()), *len));
        }
        d
    }

    #[test]
    fn equal_chunks_then_a_shorter_last_one() {
        let d = digests(&[4, 4, 3]);
        assert_eq!((d.chunk_size(), d.len(), d.bytes()), (4, 3, 11));
        assert_eq!(d.at(0, 4), Some(Md5Sum::of(&0usize.to_le_bytes())));
        assert_eq!(d.at(8, 3), Some(Md5Sum::of(&2usize.to_le_bytes())));
        assert_eq!(d.at(8, 4), None, "past the end");
        assert_eq!(d.at(2, 4), None, "not at a chunk boundary");
        assert_eq!(d.at(4, 3), None, "not a whole chunk");
        let mut d = d;
        assert!(!d.push(Md5Sum::ZERO, 1), "nothing after the short chunk");
    }

    #[test]
    fn unequal_chunks_are_refused() {
        let mut d = digests(&[4]);
        assert!(!d.push(Md5Sum::ZERO, 5));
        assert!(!d.push(Md5Sum::ZERO, 0));
    }

    #[test]
    fn the_number_of_chunks_is_bounded() {
        let mut d = ChunkDigests::new();
        for _ in 0..MAX_CHUNKS {
            assert!(d.push(Md5Sum::ZERO, 1));
        }
        assert!(!d.push(Md5Sum::ZERO, 1));
    }

    #[test]
    fn the_cache_gives_back_only_the_same_version() {
        let mut cache = DigestCache::new();
        let v = DigestedVersion { size: 11, md5: Md5Sum::of(b"x"), chunk_size: 4 };
        cache.insert(&n("a"), v, digests(&[4, 4, 3]));
        assert!(cache.get(&n("a"), v).is_some());
        assert!(cache.get(&n("b"), v).is_none());
        assert!(cache.get(&n("a"), DigestedVersion { md5: Md5Sum::of(b"y"), ..v }).is_none());
        assert!(cache.get(&n("a"), DigestedVersion { chunk_size: 8, ..v }).is_none());
        // Digests that do not cover the version are not kept (and drop the old ones).
        cache.insert(&n("a"), DigestedVersion { size: 12, ..v }, digests(&[4, 4, 3]));
        assert!(cache.get(&n("a"), v).is_none());
        assert_eq!(cache.chunks(), 0);
    }

    #[test]
    fn the_cache_is_bounded_oldest_out_first() {
        let mut cache = DigestCache::new();
        let mut big = ChunkDigests::new();
        for _ in 0..MAX_CHUNKS {
            big.push(Md5Sum::ZERO, 1);
        }
        let v = DigestedVersion { size: MAX_CHUNKS as u64, md5: Md5Sum::ZERO, chunk_size: 1 };
        for name in ["a", "b", "c", "d", "e"] {
            cache.insert(&n(name), v, big.clone());
            assert!(cache.chunks() <= CACHE_CHUNKS);
        }
        assert!(cache.get(&n("a"), v).is_none(), "the oldest went");
        assert!(cache.get(&n("e"), v).is_some());
        assert_eq!(cache.chunks(), CACHE_CHUNKS);
    }
}
