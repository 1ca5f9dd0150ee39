//! The byte-bounded file cache shared by the native GET and HTTP.
//!
//! Entries are whole files keyed by name and checked by etag, so a file that
//! changed on disk is never served from memory. [`FileCache`] adds to an
//! [`EvictionPolicy`] (which sees only keys and sizes) the file contents, the
//! counters, single flight for concurrent misses, and the listing. The one
//! lock is held only for map and policy updates: never across I/O or an
//! await, and evicted contents are freed after it is released.

pub mod config;
pub mod fifo;
pub mod key_queue;
pub mod lru;
pub mod policy;
pub mod queue_policy;
pub mod s3fifo;
pub mod single_flight;
pub mod snapshot;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRead {
    pub bytes: Bytes,
    /// Served from memory, without waiting for any load.
    pub hit: bool,
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
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    etag: Etag,
    bytes: Bytes,
    hits: u64,
    cached_at: Instant,
}

/// Entries taken out under the lock, to be freed after it is released.
type Dropped = Vec<Entry>;

impl FileCache {
    pub fn new(config: CacheConfig) -> FileCache {
        let inner = Inner::new(&config);
        FileCache { config, hasher: RandomState::new(), inner: Mutex::new(inner), flights: SingleFlight::default() }
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
            Some(bytes) => inner.stats.record_hit(bytes.len() as u64),
            None => inner.stats.record_miss(etag.size_hint().unwrap_or(0)),
        }
        drop(inner);
        drop(dropped);
        found
    }

    /// The contents of `name` at version `etag` (whose size is `size`): from
    /// memory on a hit; else loaded by `load` and cached if admitted.
    ///
    /// Concurrent misses on one (name, etag) call one `load`; the others wait
    /// for it and get its bytes (or a copy of its error). If that caller is
    /// cancelled or panics, a waiter loads instead. `load` should return a
    /// `Bytes` of exactly the file (not a slice of something larger, which
    /// the cache would keep alive without counting it).
    pub async fn get_or_load<F, Fut>(&self, name: &str, etag: &Etag, size: u64, load: F) -> io::Result<CacheRead>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<Bytes>>,
    {
        let key = self.key(name);
        {
            let mut dropped = Dropped::new();
            let mut inner = self.lock();
            let found = inner.lookup(key, name, etag, &mut dropped);
            match found {
                Some(bytes) => {
                    inner.stats.record_hit(bytes.len() as u64);
                    return Ok(CacheRead { bytes, hit: true });
                }
                None => inner.stats.record_miss(size),
            }
        }
        if !self.admits(size) {
            return Ok(CacheRead { bytes: load().await?, hit: false });
        }
        let flight_key: (Arc<str>, Etag) = (name.into(), etag.clone());
        let mut load = Some(load);
        loop {
            match self.flights.join(flight_key.clone()) {
                Join::Lead(leader) => {
                    // A previous leader may have finished between our miss
                    // and our joining: then there is nothing to load.
                    if let Some(bytes) = self.peek(key, name, etag) {
                        leader.finish(&Ok(bytes.clone()));
                        return Ok(CacheRead { bytes, hit: false });
                    }
                    // Only a leader calls `load`, and a leader returns below.
                    let Some(load) = load.take() else { return Err(io::Error::other("cache load already used")) };
                    let outcome = load().await;
                    if let Ok(bytes) = &outcome {
                        self.insert(name, etag, bytes.clone());
                    }
                    leader.finish(&outcome);
                    return outcome.map(|bytes| CacheRead { bytes, hit: false });
                }
                Join::Wait(waiter) => match waiter.wait().await {
                    Some(outcome) => return outcome.map(|bytes| CacheRead { bytes, hit: false }),
                    // The leader went away without an outcome: look again.
                    None => continue,
                },
            }
        }
    }

    /// Caches `bytes` as `name` at version `etag`, replacing any other version,
    /// evicting as the policy decides. Returns whether it is now cached.
    pub fn insert(&self, name: &str, etag: &Etag, bytes: Bytes) -> bool {
        let key = self.key(name);
        let mut dropped = Dropped::new();
        let cached = {
            let mut inner = self.lock();
            if let Some(old) = inner.remove(key, name) {
                dropped.push(old);
            }
            let cached = self.admits(bytes.len() as u64) && inner.insert(key, name, etag, bytes, &mut dropped);
            inner.check();
            cached
        };
        drop(dropped);
        cached
    }

    /// Forgets `name` (it was written or deleted). Not counted as an eviction.
    pub fn invalidate(&self, name: &str) {
        let key = self.key(name);
        let old = {
            let mut inner = self.lock();
            let old = inner.remove(key, name);
            inner.check();
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
    fn peek(&self, key: PolicyKey, name: &str, etag: &Etag) -> Option<Bytes> {
        let inner = self.lock();
        inner.entries.get(&key).filter(|e| &*e.name == name && &e.etag == etag).map(|e| e.bytes.clone())
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
        }
    }

    /// The entry's contents if it is `name` at `etag` (recording the hit with
    /// the policy); a stale version is removed into `dropped`.
    fn lookup(&mut self, key: PolicyKey, name: &str, etag: &Etag, dropped: &mut Dropped) -> Option<Bytes> {
        let entry = self.entries.get_mut(&key)?;
        if &*entry.name != name {
            return None; // Another name with the same key; it stays.
        }
        if &entry.etag != etag {
            dropped.extend(self.remove(key, name));
            self.check();
            return None;
        }
        entry.hits += 1;
        let bytes = entry.bytes.clone();
        self.policy.on_hit(key);
        Some(bytes)
    }

    fn insert(&mut self, key: PolicyKey, name: &str, etag: &Etag, bytes: Bytes, dropped: &mut Dropped) -> bool {
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
                self.stats.evictions += 1;
                dropped.push(entry);
            }
        }
        self.evicted = evicted;
        if admitted {
            let entry = Entry { name: name.into(), etag: etag.clone(), bytes, hits: 0, cached_at: Instant::now() };
            self.entries.insert(key, entry);
            self.bytes += size;
        }
        self.check();
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
        Some(entry)
    }

    /// The invariants, after every change: the map and the policy hold the
    /// same entries and bytes, within the bounds.
    fn check(&self) {
        assert_eq!(self.bytes, self.policy.bytes_held(), "bytes held by the map and by the policy");
        assert_eq!(self.entries.len(), self.policy.len(), "entries in the map and in the policy");
        policy::assert_within_limits(self.policy.as_ref());
    }
}
