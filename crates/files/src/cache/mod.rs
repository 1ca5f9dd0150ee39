//! The byte-bounded file cache shared by the native GET and HTTP.
//!
//! Entries are whole files keyed by name and checked by etag, so a file that
//! changed on disk is never served from memory. [`FileCache`] adds to an
//! [`EvictionPolicy`] (which sees only keys and sizes) the file contents, the
//! counters, single flight for concurrent misses, and the listing. The one
//! lock is held only for map and policy updates: never across I/O or an
//! await, and evicted contents are freed after it is released.
//!
//! An entry may also keep the open file its bytes were read from (see
//! [`Loaded`]), so that a server can hand the kernel the file instead of
//! copying the bytes into a socket. Those descriptors are bounded
//! ([`open_files`]) and closed with their entry.

pub mod config;
pub mod fifo;
pub mod key_queue;
pub mod lru;
pub mod open_files;
pub mod policy;
pub mod queue_policy;
pub mod s3fifo;
pub mod single_flight;
pub mod snapshot;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::etag::Etag;
pub use config::{CacheConfig, CachePolicyKind, UnknownPolicy};
pub use policy::{EvictionPolicy, Limits, PolicyKey, eviction_order, new_policy};
pub use s3fifo::S3FifoParams;
use single_flight::{Join, SingleFlight};
pub use snapshot::{CacheEntryInfo, CacheSnapshot};
pub use stats::CacheStats;

/// A file's contents from [`FileCache::get_or_load`].
#[derive(Clone, Debug)]
pub struct CacheRead {
    pub bytes: Bytes,
    /// Served from memory, without waiting for any load.
    pub hit: bool,
    /// The open file `bytes` were read from, if the entry keeps one (see
    /// [`Loaded::file`]); `None` on a miss that waited for another caller's
    /// load, and for files the cache does not admit.
    pub file: Option<Arc<File>>,
}

/// What a load hands the cache: the file's bytes and, if the caller wants
/// the entry to keep it, the file they were read from.
///
/// The file is kept open for as long as the entry is cached (dropping the
/// entry, by eviction, invalidation or a newer version, closes it), so that
/// the bytes can be sent from the page cache by `sendfile` rather than
/// copied from `bytes`. An open descriptor keeps its inode: a file replaced
/// by rename (every atomic writer, ferry's PUT among them) leaves it
/// reading exactly the bytes loaded. A file written in place is another
/// matter: the descriptor reads the new bytes. The cache cannot see that;
/// its callers look at the file (a `stat` against the entry's etag) before
/// every use, as they do for the bytes.
#[derive(Debug)]
pub struct Loaded {
    pub bytes: Bytes,
    pub file: Option<File>,
}

impl From<Bytes> for Loaded {
    fn from(bytes: Bytes) -> Loaded {
        Loaded { bytes, file: None }
    }
}

/// The file cache; share it as `Arc<FileCache>`.
#[derive(Debug)]
pub struct FileCache {
    config: CacheConfig,
    /// Names to policy keys; random per process, so that clients cannot pick
    /// names that collide on purpose.
    hasher: RandomState,
    inner: Mutex<Inner>,
    flights: SingleFlight<(Arc<str>, Etag)>,
    /// Bound on the entries that keep their file open ([`open_files`]).
    max_open_files: usize,
}

#[derive(Debug)]
struct Inner {
    policy: Box<dyn EvictionPolicy>,
    entries: HashMap<PolicyKey, Entry>,
    /// Sum of `entries[..].bytes.len()`, kept equal to the policy's count.
    bytes: u64,
    stats: CacheStats,
    /// Reused buffer for the keys one insert evicts.
    evicted: Vec<PolicyKey>,
    /// Entries holding an open file; at most `FileCache::max_open_files`.
    open_files: usize,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    etag: Etag,
    bytes: Bytes,
    /// The file `bytes` were read from, kept open ([`Loaded`]).
    file: Option<Arc<File>>,
    hits: u64,
    cached_at: Instant,
}

/// Entries taken out under the lock, to be freed after it is released.
type Dropped = Vec<Entry>;

impl FileCache {
    /// A cache whose entries may keep up to [`open_files::open_file_bound`]
    /// files open.
    pub fn new(config: CacheConfig) -> FileCache {
        FileCache::with_open_files(config, open_files::open_file_bound())
    }

    /// A cache whose entries keep at most `max_open_files` files open; a
    /// load's file beyond that is closed, and its entry keeps the bytes only.
    pub fn with_open_files(config: CacheConfig, max_open_files: usize) -> FileCache {
        let inner = Inner::new(&config);
        let (hasher, flights) = (RandomState::new(), SingleFlight::default());
        FileCache { config, hasher, inner: Mutex::new(inner), flights, max_open_files }
    }

    /// Entries that keep their file open now.
    pub fn open_files(&self) -> usize {
        self.lock().open_files
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Whether a file of `size` bytes may be cached; larger files are read
    /// from disk by every request.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.config.max_item_bytes && size <= self.config.max_bytes
    }

    /// The cached contents of `name` if they are the version `etag`; counts a
    /// hit or a miss. An entry of another version is dropped.
    pub fn get(&self, name: &str, etag: &Etag) -> Option<Bytes> {
        let key = self.key(name);
        let mut dropped = Dropped::new();
        let mut inner = self.lock();
        let found = inner.lookup(key, name, etag, &mut dropped);
        match &found {
            Some((bytes, _)) => inner.stats.record_hit(bytes.len() as u64),
            None => inner.stats.record_miss(etag.size_hint().unwrap_or(0)),
        }
        drop(inner);
        drop(dropped);
        found.map(|(bytes, _)| bytes)
    }

    /// The contents of `name` at version `etag` (whose size is `size`): from
    /// memory on a hit; else loaded by `load` and cached if admitted.
    ///
    /// Concurrent misses on one (name, etag) call one `load`; the others wait
    /// for it and get its bytes (or a copy of its error). If that caller is
    /// cancelled or panics, a waiter loads instead. `load` should return a
    /// `Bytes` of exactly the file (not a slice of something larger, which
    /// the cache would keep alive without counting it), or a [`Loaded`]
    /// with the file too, for the entry to keep.
    pub async fn get_or_load<F, Fut, L>(&self, name: &str, etag: &Etag, size: u64, load: F) -> io::Result<CacheRead>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<L>>,
        L: Into<Loaded>,
    {
        let key = self.key(name);
        {
            let mut dropped = Dropped::new();
            let mut inner = self.lock();
            let found = inner.lookup(key, name, etag, &mut dropped);
            match found {
                Some((bytes, file)) => {
                    inner.stats.record_hit(bytes.len() as u64);
                    return Ok(CacheRead { bytes, hit: true, file });
                }
                None => inner.stats.record_miss(size),
            }
        }
        if !self.admits(size) {
            return Ok(CacheRead { bytes: load().await?.into().bytes, hit: false, file: None });
        }
        let flight_key: (Arc<str>, Etag) = (name.into(), etag.clone());
        let mut load = Some(load);
        loop {
            match self.flights.join(flight_key.clone()) {
                Join::Lead(leader) => {
                    // A previous leader may have finished between our miss
                    // and our joining: then there is nothing to load.
                    if let Some((bytes, file)) = self.peek(key, name, etag) {
                        leader.finish(Ok(&bytes));
                        return Ok(CacheRead { bytes, hit: false, file });
                    }
                    // Only a leader calls `load`, and a leader returns below.
                    let Some(load) = load.take() else { return Err(io::Error::other("cache load already used")) };
                    let read = load().await.map(|loaded| {
                        let Loaded { bytes, file } = loaded.into();
                        let (_, file) = self.insert_with_file(name, etag, bytes.clone(), file);
                        CacheRead { bytes, hit: false, file }
                    });
                    leader.finish(read.as_ref().map(|r| &r.bytes));
                    return read;
                }
                Join::Wait(waiter) => match waiter.wait().await {
                    Some(outcome) => return outcome.map(|bytes| CacheRead { bytes, hit: false, file: None }),
                    // The leader went away without an outcome: look again.
                    None => continue,
                },
            }
        }
    }

    /// Caches `bytes` as `name` at version `etag`, replacing any other version,
    /// evicting as the policy decides. Returns whether it is now cached.
    pub fn insert(&self, name: &str, etag: &Etag, bytes: Bytes) -> bool {
        self.insert_with_file(name, etag, bytes, None).0
    }

    /// [`FileCache::insert`] of a load's bytes and file: whether it is now
    /// cached, and the file if the entry keeps it (under the open-file bound).
    fn insert_with_file(&self, name: &str, etag: &Etag, bytes: Bytes, file: Option<File>) -> (bool, Option<Arc<File>>) {
        let key = self.key(name);
        let mut dropped = Dropped::new();
        let outcome = {
            let mut inner = self.lock();
            if let Some(old) = inner.remove(key, name) {
                dropped.push(old);
            }
            // After the old version is gone, whose file no longer counts.
            let file = file.filter(|_| inner.open_files < self.max_open_files).map(Arc::new);
            let kept = file.clone();
            let cached = self.admits(bytes.len() as u64) && inner.insert(key, name, etag, bytes, file, &mut dropped);
            inner.check(self.max_open_files);
            (cached, kept.filter(|_| cached))
        };
        drop(dropped);
        outcome
    }

    /// Forgets `name` (it was written or deleted). Not counted as an eviction.
    pub fn invalidate(&self, name: &str) {
        let key = self.key(name);
        let old = {
            let mut inner = self.lock();
            let old = inner.remove(key, name);
            inner.check(self.max_open_files);
            old
        };
        drop(old);
    }

    /// The entries, next victim first, and the counters.
    pub fn snapshot(&self) -> CacheSnapshot {
        // Under the lock only copies (names are shared `Arc`s); the eviction
        // order is worked out on the policy's copy after releasing it.
        let (policy, infos, stats, bytes_held) = {
            let inner = self.lock();
            let infos: HashMap<PolicyKey, (Arc<str>, u64, u64, Instant)> = inner
                .entries
                .iter()
                .map(|(&k, e)| (k, (e.name.clone(), e.bytes.len() as u64, e.hits, e.cached_at)))
                .collect();
            (inner.policy.clone_boxed(), infos, inner.stats, inner.bytes)
        };
        let now = Instant::now();
        let entries: Vec<CacheEntryInfo> = eviction_order(policy.as_ref())
            .into_iter()
            .filter_map(|key| infos.get(&key))
            .map(|(name, size, hits, cached_at)| CacheEntryInfo {
                name: name.to_string(),
                size: *size,
                hits: *hits,
                age_ms: u64::try_from(now.saturating_duration_since(*cached_at).as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        assert_eq!(entries.len(), infos.len(), "every entry has a place in the eviction order");
        CacheSnapshot {
            policy: policy.name().to_string(),
            max_bytes: self.config.max_bytes,
            bytes_held,
            entries,
            hits: stats.hits,
            misses: stats.misses,
            hit_bytes: stats.hit_bytes,
            miss_bytes: stats.miss_bytes,
            evictions: stats.evictions,
            object_hit_ratio: stats.object_hit_ratio(),
            byte_hit_ratio: stats.byte_hit_ratio(),
        }
    }

    /// Bytes of file contents held now.
    pub fn bytes_held(&self) -> u64 {
        self.lock().bytes
    }

    /// Files cached now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn key(&self, name: &str) -> PolicyKey {
        self.hasher.hash_one(name)
    }

    /// Like `get` but uncounted: for looking again after a wait.
    fn peek(&self, key: PolicyKey, name: &str, etag: &Etag) -> Option<(Bytes, Option<Arc<File>>)> {
        let inner = self.lock();
        inner
            .entries
            .get(&key)
            .filter(|e| &*e.name == name && &e.etag == etag)
            .map(|e| (e.bytes.clone(), e.file.clone()))
    }

    /// The lock, taken over after a panic elsewhere by emptying the cache: a
    /// panic between the policy's update and the map's could have left them
    /// disagreeing, and an empty cache is always consistent.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                let stats = guard.stats;
                *guard = Inner::new(&self.config);
                guard.stats = stats;
                self.inner.clear_poison();
                guard
            }
        }
    }
}

impl Inner {
    fn new(config: &CacheConfig) -> Inner {
        let limits = Limits { max_bytes: config.max_bytes, max_entries: config.max_entries() };
        Inner {
            policy: new_policy(config.policy, limits),
            entries: HashMap::new(),
            bytes: 0,
            stats: CacheStats::default(),
            evicted: Vec::new(),
            open_files: 0,
        }
    }

    /// The entry's contents (and open file) if it is `name` at `etag`
    /// (recording the hit with the policy); a stale version is removed into
    /// `dropped`.
    fn lookup(
        &mut self,
        key: PolicyKey,
        name: &str,
        etag: &Etag,
        dropped: &mut Dropped,
    ) -> Option<(Bytes, Option<Arc<File>>)> {
        let entry = self.entries.get_mut(&key)?;
        if &*entry.name != name {
            return None; // Another name with the same key; it stays.
        }
        if &entry.etag != etag {
            dropped.extend(self.remove(key, name));
            self.check(usize::MAX);
            return None;
        }
        entry.hits += 1;
        let found = (entry.bytes.clone(), entry.file.clone());
        self.policy.on_hit(key);
        Some(found)
    }

    fn insert(
        &mut self,
        key: PolicyKey,
        name: &str,
        etag: &Etag,
        bytes: Bytes,
        file: Option<Arc<File>>,
        dropped: &mut Dropped,
    ) -> bool {
        // A key of another name (a hash collision) makes way for this one.
        if let Some(other) = self.entries.get(&key).map(|e| e.name.clone()) {
            dropped.extend(self.remove(key, &other));
        }
        let size = bytes.len() as u64;
        let mut evicted = std::mem::take(&mut self.evicted);
        evicted.clear();
        let admitted = self.policy.insert(key, size, &mut evicted);
        for victim in evicted.drain(..) {
            if let Some(entry) = self.entries.remove(&victim) {
                self.bytes -= entry.bytes.len() as u64;
                self.open_files -= usize::from(entry.file.is_some());
                self.stats.evictions += 1;
                dropped.push(entry);
            }
        }
        self.evicted = evicted;
        if admitted {
            self.open_files += usize::from(file.is_some());
            let entry =
                Entry { name: name.into(), etag: etag.clone(), bytes, file, hits: 0, cached_at: Instant::now() };
            self.entries.insert(key, entry);
            self.bytes += size;
        }
        self.check(usize::MAX);
        admitted
    }

    fn remove(&mut self, key: PolicyKey, name: &str) -> Option<Entry> {
        if self.entries.get(&key).is_none_or(|e| &*e.name != name) {
            return None;
        }
        let entry = self.entries.remove(&key)?;
        let size = entry.bytes.len() as u64;
        let policy_size = self.policy.remove(key);
        assert_eq!(policy_size, Some(size), "policy and map disagree on {name:?}");
        self.bytes -= size;
        self.open_files -= usize::from(entry.file.is_some());
        Some(entry)
    }

    /// The invariants, after every change: the map and the policy hold the
    /// same entries and bytes, within the bounds, and no more open files
    /// than `max_open_files` (`usize::MAX` where the caller does not know
    /// it; the public methods check it).
    fn check(&self, max_open_files: usize) {
        assert_eq!(self.bytes, self.policy.bytes_held(), "bytes held by the map and by the policy");
        assert_eq!(self.entries.len(), self.policy.len(), "entries in the map and in the policy");
        assert!(self.open_files <= self.entries.len().min(max_open_files), "{} open files", self.open_files);
        policy::assert_within_limits(self.policy.as_ref());
    }
}
