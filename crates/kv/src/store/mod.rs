//! The persistent store: in-memory index and values, append-only log on disk.
//!
//! Every item lives in memory, in one of [`SHARDS`] hash tables each behind its own mutex (picked by the top
//! bits of the key's hash, which is computed once per request: see the `index` module), so that gets from many
//! connections rarely contend. In the persistent modes every change is also
//! appended to a log (Bitcask style, see the `log` module for the format) before the call returns:
//!
//! - [`Durability::Os`]: the record is written (`pwrite`) before the call returns; it survives a killed
//!   process (the page cache has it) but not a power loss.
//! - [`Durability::Fsync`]: as `Os`, and group-commit threads `fdatasync` the active segment for everyone
//!   at once; callers reply after [`Store::wait_durable`] for [`Store::appended_seq`].
//! - [`Durability::Memory`]: no log; a cache that evicts (approximately LRU, CLOCK per shard) at `max_memory`.
//!   The persistent modes refuse a write over `max_memory` with [`StoreError::OutOfMemory`] instead.
//!
//! Memory accounting: an item is charged `ITEM_OVERHEAD + key + value` bytes ([`ITEM_OVERHEAD`] covers the
//! hash-table slot, the table's spare capacity and the allocator and buffer headers), plus `RING_OVERHEAD +
//! key` in memory mode for its entry in the eviction ring. The sum is `StoreStats::bytes`.
//!
//! Lock order: a shard, then the log writer (`persist::LogCtl::w`); `flush_all` takes all shards in index
//! order. Background threads (group commit, compaction) never hold the writer while taking a shard.
//!
//! Live upgrade: a second `Store` opened on a directory whose `LOCK` is held replays the log read-only and
//! refuses writes; after the old store's [`Store::prepare_handover`] it takes over with
//! [`Store::catch_up`], which replays only what was appended meanwhile (or everything again if the old
//! process compacted in between: the snapshot id is the log's generation).
mod commits;
mod entry;
mod index;
mod log;
mod persist;
#[cfg(test)]
mod tests;
mod waiters;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use entry::Entry;
use index::{Index, Key, KeyHasher};
use log::{Meta, Op};
use persist::LogCtl;

pub use log::MAX_KEY_LEN;

/// Number of index shards.
pub const SHARDS: usize = 64;
/// Fixed memory charged per item on top of its key and value: the 16-byte slot in the index plus the table's
/// spare capacity (it is 37% to 75% full: 21 to 43 bytes per item), the item's 48-byte head (reference count,
/// metadata, length) and the allocator's header. It errs high. With the 8-byte slots of a `hashbrown` table
/// (44% to 88% full) it was 96, and 1M items with 16-byte keys and 100-byte values took 196 bytes each of RSS
/// (memcached 1.6.18 takes 202); before the items had one allocation each (48-byte slots, key and value
/// apart) they took 248.
pub const ITEM_OVERHEAD: u64 = 112;
/// Extra charge per item in memory mode (the eviction ring keeps a copy of the key): added to the key length.
pub const RING_OVERHEAD: u64 = 40;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Os,
    Fsync,
    Memory,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub max_memory: u64,
    pub max_item_bytes: u64,
    /// Don't compact below this log size (default 64 MiB).
    pub compact_min_bytes: u64,
    /// Compact when garbage / total log bytes exceeds this (default 0.5).
    pub compact_garbage_ratio: f64,
    /// Fsync mode: a group commit (one fdatasync for every record appended so far) starts as soon as a
    /// record is waiting and no commit is running; while one runs, another starts only once the newest
    /// running one has run for this long (see the `commits` module). Records appended during one fdatasync
    /// go in the next. Default 0 (the service sets its own): commits overlap whenever a thread is free.
    pub group_commit_interval: Duration,
    /// Fsync mode: commit threads, so at most this many fdatasyncs in flight at once (1 to
    /// [`MAX_COMMIT_THREADS`]; see the `commits` module). Default 3.
    pub group_commit_threads: usize,
}

/// Bound on [`StoreConfig::group_commit_threads`].
pub const MAX_COMMIT_THREADS: usize = 16;

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            dir: PathBuf::from("kv"),
            durability: Durability::Os,
            max_memory: 64 << 20,
            max_item_bytes: 1 << 20,
            compact_min_bytes: 64 << 20,
            compact_garbage_ratio: 0.5,
            group_commit_interval: Duration::ZERO,
            group_commit_threads: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub flags: u32,
    /// Absolute unix seconds, 0 = never.
    pub exptime: u64,
    pub cas: u64,
    pub value: Bytes,
    /// An `mg` already handed out the recache token for this item (`W`); later hits answer `Z`. Kept in
    /// memory only, like memcached's flag: a restart forgets it.
    pub token_sent: bool,
}

/// A live item seen in place by [`Store::get_with`], under its shard's lock.
pub struct ItemView<'a> {
    entry: &'a Entry,
}

impl ItemView<'_> {
    pub fn flags(&self) -> u32 {
        self.entry.flags
    }

    pub fn cas(&self) -> u64 {
        self.entry.cas
    }

    pub fn value(&self) -> &[u8] {
        self.entry.value()
    }

    /// The value as a `Bytes` that shares the item's memory (to copy a large value outside the lock).
    pub fn share_value(&self) -> Bytes {
        self.entry.share_value()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas(u64),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Arith {
    Value(u64),
    NotFound,
    NonNumeric,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("out of memory storing object")]
    OutOfMemory,
    #[error("object too large for cache")]
    TooLarge,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Corrupt(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStats {
    pub curr_items: u64,
    pub total_items: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub expired_unfetched: u64,
    pub reclaimed: u64,
    pub log_bytes: u64,
    pub live_log_bytes: u64,
    pub compactions: u64,
    pub durable_seq: u64,
    pub appended_seq: u64,
}

const TOUCHED: u8 = 1; // a live Touch record follows the item's Set record in the log
const FETCHED: u8 = 2;
const REFERENCED: u8 = 4; // CLOCK bit (memory mode)
const TOKEN_SENT: u8 = 8; // an mg won this item's recache token (memcached's ITEM_TOKEN_SENT)

#[derive(Default)]
struct Shard {
    set: Index,
    /// CLOCK ring (memory mode): (key, cas); an element whose cas no longer matches is stale and skipped.
    ring: VecDeque<(Box<[u8]>, u64)>,
    /// Memory charged and live log bytes of this shard's items (also summed in `Inner`).
    mem: u64,
    live: u64,
    /// Unix second of the last sweep for dead items (persistent modes, when memory runs out).
    last_sweep: u64,
}

#[derive(Default)]
struct Counters {
    curr_items: AtomicU64,
    total_items: AtomicU64,
    evictions: AtomicU64,
    expired_unfetched: AtomicU64,
    reclaimed: AtomicU64,
    compactions: AtomicU64,
}

struct Inner {
    cfg: StoreConfig,
    /// Hashes every key once per request; the hash picks the shard and finds the entry in it.
    hasher: KeyHasher,
    shards: Box<[Mutex<Shard>]>,
    /// Last cas handed out.
    cas: AtomicU64,
    mem_used: AtomicU64,
    live_log: AtomicU64,
    /// Delayed flush_all deadline (0 = none): items stored before it are invalid once it has passed.
    flush_at: AtomicU64,
    counters: Counters,
    /// `None` in memory mode.
    log: Option<LogCtl>,
}

/// The store. `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// memcached's `safe_strtoull` applied to an item's data: optional leading whitespace and sign, decimal
/// digits (no overflow), then the end or whitespace; a negative number is refused.
fn parse_counter(v: &[u8]) -> Option<u64> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = v.iter().take_while(|&&b| space(b)).count();
    let mut neg = false;
    if let Some(&s @ (b'+' | b'-')) = v.get(i) {
        neg = s == b'-';
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while let Some(d) = v.get(i).filter(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    // memcached reads the value as a C string: a NUL ends the number.
    if i == start || v.get(i).is_some_and(|&b| !space(b) && b != 0) {
        return None;
    }
    let n = if neg { n.wrapping_neg() } else { n };
    if neg && (n as i64) < 0 { None } else { Some(n) }
}

impl Inner {
    fn persistent(&self) -> bool {
        self.log.is_some()
    }

    fn key<'k>(&self, bytes: &'k [u8]) -> Key<'k> {
        Key::new(&self.hasher, bytes)
    }

    fn shard(&self, k: Key<'_>) -> MutexGuard<'_, Shard> {
        lock(&self.shards[k.shard()])
    }

    fn charge(&self, key_len: usize, val_len: usize) -> u64 {
        let ring = if self.persistent() { 0 } else { RING_OVERHEAD + key_len as u64 };
        ITEM_OVERHEAD + (key_len + val_len) as u64 + ring
    }

    fn charge_of(&self, e: &Entry) -> u64 {
        self.charge(usize::from(e.key_len), e.value().len())
    }

    /// Log bytes that `e` keeps live (its Set record and its latest Touch record).
    fn log_bytes_of(&self, e: &Entry) -> u64 {
        if !self.persistent() {
            return 0;
        }
        let k = usize::from(e.key_len);
        log::record_len(k, e.value().len()) + if e.has(TOUCHED) { log::record_len(k, 0) } else { 0 }
    }

    fn is_live(&self, e: &Entry, now: u64) -> bool {
        let exp = e.exptime.get();
        if exp != 0 && exp <= now {
            return false;
        }
        let f = self.flush_at.load(Relaxed);
        !(f != 0 && f <= now && u64::from(e.time) < f)
    }

    fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Relaxed) + 1
    }

    /// Accounting for an entry that left the index.
    fn unlink(&self, shard: &mut Shard, e: &Entry) {
        let (c, l) = (self.charge_of(e), self.log_bytes_of(e));
        shard.mem -= c;
        shard.live -= l;
        self.mem_used.fetch_sub(c, Relaxed);
        self.live_log.fetch_sub(l, Relaxed);
        self.counters.curr_items.fetch_sub(1, Relaxed);
    }

    /// Removes a dead (expired or flushed) entry.
    fn reclaim(&self, shard: &mut Shard, k: Key<'_>) {
        if let Some(e) = shard.set.take(k) {
            self.unlink(shard, &e);
            self.counters.reclaimed.fetch_add(1, Relaxed);
            if !e.has(FETCHED) {
                self.counters.expired_unfetched.fetch_add(1, Relaxed);
            }
        }
    }

    /// Makes room for `new_charge` bytes replacing whatever `key` holds now; on success the memory is
    /// counted in `mem_used` (not yet in the shard) and the returned delta must be applied with `install` or
    /// given back with `unreserve`.
    fn reserve(&self, shard: &mut Shard, k: Key<'_>, new_charge: u64, now: u64) -> Result<u64, StoreError> {
        let max = self.cfg.max_memory;
        loop {
            let old = shard.set.get(k).map_or(0, |e| self.charge_of(e));
            let delta = new_charge.wrapping_sub(old);
            let fits = self.mem_used.fetch_update(Relaxed, Relaxed, |u| {
                (new_charge <= old || u.wrapping_add(delta) <= max).then(|| u.wrapping_add(delta))
            });
            if fits.is_ok() {
                return Ok(delta);
            }
            if !self.free_some(shard, k, now) {
                return Err(StoreError::OutOfMemory);
            }
        }
    }

    fn unreserve(&self, delta: u64) {
        self.mem_used.fetch_add(delta.wrapping_neg(), Relaxed);
    }

    /// Frees memory: memory mode evicts (own shard first, then any shard not busy); persistent modes only
    /// drop expired and flushed items. Returns whether anything was freed.
    /// CLOCK: a first pass over every shard evicts only items not referenced since the hand last passed;
    /// a second pass takes whatever comes first.
    fn free_some(&self, shard: &mut Shard, k: Key<'_>, now: u64) -> bool {
        let si = k.shard();
        for second_pass in [false, true] {
            if self.free_in(shard, Some(k.bytes), now, second_pass) {
                return true;
            }
            for i in 1..SHARDS {
                if let Ok(mut other) = self.shards[(si + i) % SHARDS].try_lock() {
                    if self.free_in(&mut other, None, now, second_pass) {
                        return true;
                    }
                }
            }
            if self.persistent() {
                break;
            }
        }
        false
    }

    fn free_in(&self, shard: &mut Shard, skip: Option<&[u8]>, now: u64, second_pass: bool) -> bool {
        if self.persistent() {
            if shard.last_sweep == now {
                return false;
            }
            shard.last_sweep = now;
            let before = shard.set.len();
            self.sweep(shard, now);
            return shard.set.len() < before;
        }
        let mut budget = if second_pass { shard.ring.len() * 2 } else { shard.ring.len() };
        while budget > 0 {
            budget -= 1;
            let Some((k, cas)) = shard.ring.pop_front() else { return false };
            let hk = self.key(&k);
            let Some(e) = shard.set.get(hk).filter(|e| e.cas == cas) else { continue };
            let live = self.is_live(e, now);
            if skip == Some(&*k) || (live && e.has(REFERENCED)) {
                e.set_bit(REFERENCED, false);
                shard.ring.push_back((k, cas));
                continue;
            }
            if live {
                if let Some(e) = shard.set.take(hk) {
                    self.unlink(shard, &e);
                    self.counters.evictions.fetch_add(1, Relaxed);
                }
            } else {
                self.reclaim(shard, hk);
            }
            return true;
        }
        false
    }

    /// Drops every dead item of a shard.
    fn sweep(&self, shard: &mut Shard, now: u64) {
        let mut dead = Vec::new();
        for e in shard.set.iter() {
            if !self.is_live(e, now) {
                dead.push(Box::<[u8]>::from(e.key()));
            }
        }
        for k in dead {
            self.reclaim(shard, self.key(&k));
        }
    }

    /// Puts `e` into the index, replacing any entry under the same key; `delta` comes from `reserve`.
    fn install(&self, shard: &mut Shard, e: Entry, delta: u64) {
        shard.mem = shard.mem.wrapping_add(delta);
        let l = self.log_bytes_of(&e);
        shard.live += l;
        self.live_log.fetch_add(l, Relaxed);
        if !self.persistent() {
            shard.ring.push_back((e.key().into(), e.cas));
        }
        match shard.set.replace(e) {
            Some(old) => {
                let l = self.log_bytes_of(&old);
                shard.live -= l;
                self.live_log.fetch_sub(l, Relaxed);
            }
            None => {
                self.counters.curr_items.fetch_add(1, Relaxed);
            }
        }
        if shard.ring.len() > 2 * shard.set.len() + 64 {
            let Shard { set, ring, .. } = shard;
            ring.retain(|(k, c)| set.get(self.key(k)).is_some_and(|e| e.cas == *c));
        }
    }

    /// Stores a new version of `key` (value given in parts): memory, log, index. Returns the new cas.
    #[allow(clippy::too_many_arguments)]
    fn write_item(
        &self,
        shard: &mut Shard,
        key: Key<'_>,
        value: &[&[u8]],
        flags: u32,
        exptime: u64,
        now: u64,
    ) -> Result<u64, StoreError> {
        let val_len: usize = value.iter().map(|p| p.len()).sum();
        if val_len as u64 > self.cfg.max_item_bytes {
            return Err(StoreError::TooLarge);
        }
        let delta = self.reserve(shard, key, self.charge(key.bytes.len(), val_len), now)?;
        let cas = self.next_cas();
        let e = Entry::new(key, value, flags, exptime, cas, now);
        if self.persistent() {
            let meta = Meta { op: Op::Set, flags, exptime, cas, time: now };
            if let Err(err) = self.append(meta, key.bytes, e.value()) {
                self.unreserve(delta);
                return Err(err);
            }
        }
        self.install(shard, e, delta);
        self.counters.total_items.fetch_add(1, Relaxed);
        Ok(cas)
    }

    /// Looks `key` up, reclaiming it if dead.
    fn live_entry<'s>(&self, shard: &'s mut Shard, k: Key<'_>, now: u64) -> Option<&'s Entry> {
        match shard.set.get(k) {
            Some(e) if self.is_live(e, now) => {}
            Some(_) => {
                self.reclaim(shard, k);
                return None;
            }
            None => return None,
        }
        shard.set.get(k)
    }

    fn touch(&self, key: &[u8], exptime: u64, now: u64) -> Result<Option<Item>, StoreError> {
        check_key(key)?;
        let k = self.key(key);
        let mut shard = self.shard(k);
        let Some(e) = self.live_entry(&mut shard, k, now) else { return Ok(None) };
        let mut added = 0;
        if self.persistent() {
            let meta = Meta { op: Op::Touch, flags: 0, exptime, cas: e.cas, time: now };
            self.append(meta, key, &[])?;
            if !e.has(TOUCHED) {
                added = log::record_len(key.len(), 0);
            }
        }
        e.exptime.set(exptime);
        e.set_bit(TOUCHED, self.persistent());
        e.set_bit(FETCHED | REFERENCED, true);
        let item = e.item();
        shard.live += added;
        self.live_log.fetch_add(added, Relaxed);
        Ok(Some(item))
    }
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StoreError::TooLarge);
    }
    Ok(())
}

impl Store {
    /// Opens (creating `cfg.dir` if needed) and replays the log; see the module documentation.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let log = if cfg.durability == Durability::Memory { None } else { Some(LogCtl::new(&cfg)?) };
        let inner = Inner {
            hasher: KeyHasher::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            cas: AtomicU64::new(0),
            mem_used: AtomicU64::new(0),
            live_log: AtomicU64::new(0),
            flush_at: AtomicU64::new(0),
            counters: Counters::default(),
            log,
            cfg,
        };
        let store = Store { inner: Arc::new(inner), threads: Mutex::new(Vec::new()) };
        store.open_log()?;
        Ok(store)
    }

    pub fn get(&self, key: &[u8], now: u64) -> Option<Item> {
        self.get_with(key, now, |view| view.entry.item())
    }

    /// A get that hands `f` a view of the live item under `key`, with the shard locked, instead of a copy:
    /// no allocation and no reference count traffic per hit, for callers that copy the value out anyway
    /// (`get` replies). `f` should be short: it holds up every key of the shard.
    pub fn get_with<R>(&self, key: &[u8], now: u64, f: impl FnOnce(ItemView<'_>) -> R) -> Option<R> {
        let inner = &*self.inner;
        let k = inner.key(key);
        let mut shard = inner.shard(k);
        // One lookup on the hot path: a live item is seen at once; only a dead one (rare) pays a second
        // lookup to be reclaimed.
        match shard.set.get(k) {
            Some(e) if inner.is_live(e, now) => {
                e.set_bit(FETCHED | REFERENCED, true);
                return Some(f(ItemView { entry: e }));
            }
            Some(_) => {}
            None => return None,
        }
        inner.reclaim(&mut shard, k);
        None
    }

    /// Marks the live item under `key` as having handed out its recache token (`mg` with `N` created it);
    /// returns the item, or `None` if it is gone.
    pub fn mark_token_sent(&self, key: &[u8], now: u64) -> Option<Item> {
        let inner = &*self.inner;
        let k = inner.key(key);
        let mut shard = inner.shard(k);
        let e = inner.live_entry(&mut shard, k, now)?;
        e.set_bit(TOKEN_SENT, true);
        Some(e.item())
    }

    /// `gat`: returns the item after setting (and logging) its new expiry.
    pub fn get_and_touch(&self, key: &[u8], exptime: u64, now: u64) -> Result<Option<Item>, StoreError> {
        self.inner.touch(key, exptime, now)
    }

    pub fn touch(&self, key: &[u8], exptime: u64, now: u64) -> Result<bool, StoreError> {
        Ok(self.inner.touch(key, exptime, now)?.is_some())
    }

    /// memcached storage commands; returns the outcome and the new item's cas (0 when not stored).
    pub fn store(
        &self,
        mode: Mode,
        key: &[u8],
        flags: u32,
        exptime: u64,
        value: Bytes,
        now: u64,
    ) -> Result<(Outcome, u64), StoreError> {
        check_key(key)?;
        if value.len() as u64 > self.inner.cfg.max_item_bytes {
            return Err(StoreError::TooLarge);
        }
        let inner = &*self.inner;
        let k = inner.key(key);
        let mut guard = inner.shard(k);
        let shard = &mut *guard;
        let cur = inner.live_entry(shard, k, now);
        let not = |o| Ok((o, 0));
        let cas = match (mode, cur) {
            (Mode::Add, Some(e)) => {
                e.set_bit(REFERENCED, true);
                return not(Outcome::NotStored);
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None) => return not(Outcome::NotStored),
            (Mode::Cas(_), None) => return not(Outcome::NotFound),
            (Mode::Cas(c), Some(e)) if e.cas != c => return not(Outcome::Exists),
            (Mode::Append, Some(e)) => {
                let (old, f, x) = (e.data.clone(), e.flags, e.exptime.get());
                inner.write_item(shard, k, &[&old[key.len()..], &value], f, x, now)?
            }
            (Mode::Prepend, Some(e)) => {
                let (old, f, x) = (e.data.clone(), e.flags, e.exptime.get());
                inner.write_item(shard, k, &[&value, &old[key.len()..]], f, x, now)?
            }
            _ => inner.write_item(shard, k, &[&value], flags, exptime, now)?,
        };
        Ok((Outcome::Stored, cas))
    }

    pub fn delete(&self, key: &[u8], now: u64) -> Result<bool, StoreError> {
        check_key(key)?;
        let inner = &*self.inner;
        let k = inner.key(key);
        let mut shard = inner.shard(k);
        if inner.live_entry(&mut shard, k, now).is_none() {
            return Ok(false);
        }
        if inner.persistent() {
            let meta = Meta { op: Op::Delete, flags: 0, exptime: 0, cas: inner.cas.load(Relaxed), time: now };
            inner.append(meta, key, &[])?;
        }
        if let Some(e) = shard.set.take(k) {
            inner.unlink(&mut shard, &e);
        }
        Ok(true)
    }

    /// incr/decr (incr wraps at 2^64, decr floors at 0), on memcached's terms: the value is parsed like
    /// memcached's `strtoull`, and a result no longer than the old value is padded with spaces to its length
    /// (memcached 1.6 rewrites the number in place), a longer one is stored as is. `autoviv`: on a miss,
    /// store `initial` with that exptime (meta `ma` N flag).
    pub fn arith(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        now: u64,
        autoviv: Option<(u64, u64)>,
    ) -> Result<(Arith, u64), StoreError> {
        check_key(key)?;
        let inner = &*self.inner;
        let k = inner.key(key);
        let mut guard = inner.shard(k);
        let shard = &mut *guard;
        let Some(e) = inner.live_entry(shard, k, now) else {
            let Some((initial, exptime)) = autoviv else { return Ok((Arith::NotFound, 0)) };
            let text = initial.to_string();
            let cas = inner.write_item(shard, k, &[text.as_bytes()], 0, exptime, now)?;
            return Ok((Arith::Value(initial), cas));
        };
        let Some(n) = parse_counter(e.value()) else { return Ok((Arith::NonNumeric, 0)) };
        let n = if incr { n.wrapping_add(delta) } else { n.saturating_sub(delta) };
        let mut text = n.to_string().into_bytes();
        if text.len() < e.value().len() {
            text.resize(e.value().len(), b' ');
        }
        let (flags, exptime) = (e.flags, e.exptime.get());
        let cas = inner.write_item(shard, k, &[&text], flags, exptime, now)?;
        Ok((Arith::Value(n), cas))
    }

    /// `flush_all [delay]`: `at` is the absolute deadline (0 or <= now: immediately). Items stored before the
    /// deadline become invalid once it has passed; an immediate flush empties the store (and cancels a
    /// pending delayed one). Logged.
    pub fn flush_all(&self, at: u64, now: u64) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let at = if at <= now { now } else { at };
        let mut guards: Vec<_> = inner.shards.iter().map(lock).collect();
        if inner.persistent() {
            let meta = Meta { op: Op::FlushAll, flags: 0, exptime: at, cas: inner.cas.load(Relaxed), time: now };
            inner.append(meta, &[], &[])?;
        }
        if at > now {
            inner.flush_at.store(at, Relaxed);
            return Ok(());
        }
        let dropped: Vec<Index> = guards.iter_mut().map(|g| inner.clear_shard(g)).collect();
        inner.flush_at.store(0, Relaxed);
        drop(guards);
        drop(dropped);
        Ok(())
    }

    /// A fresh cas unique, not attached to any item.
    pub fn next_cas(&self) -> u64 {
        self.inner.next_cas()
    }

    pub fn stats(&self) -> StoreStats {
        let i = &*self.inner;
        let c = &i.counters;
        let (log_bytes, appended, durable) = self.log_positions();
        StoreStats {
            curr_items: c.curr_items.load(Relaxed),
            total_items: c.total_items.load(Relaxed),
            bytes: i.mem_used.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            expired_unfetched: c.expired_unfetched.load(Relaxed),
            reclaimed: c.reclaimed.load(Relaxed),
            log_bytes,
            live_log_bytes: i.live_log.load(Relaxed),
            compactions: c.compactions.load(Relaxed),
            durable_seq: durable,
            appended_seq: appended,
        }
    }
}

impl Inner {
    /// Empties a shard (under its lock); returns the old set, to be dropped after unlocking.
    fn clear_shard(&self, shard: &mut Shard) -> Index {
        let set = std::mem::take(&mut shard.set);
        shard.ring = VecDeque::new();
        self.mem_used.fetch_sub(shard.mem, Relaxed);
        self.live_log.fetch_sub(shard.live, Relaxed);
        self.counters.curr_items.fetch_sub(set.len() as u64, Relaxed);
        shard.mem = 0;
        shard.live = 0;
        set
    }
}
