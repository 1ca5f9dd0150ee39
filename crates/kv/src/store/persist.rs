//! The disk side of the store: replay, appends, group commit, compaction, handover.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::commits::CommitQueue;
use super::log::{self, Listing, MAGIC, MAGIC_LEN, Meta, Next, Op, Reader, Record};
use super::waiters::Waiters;
use super::{Durability, Entry, Inner, MAX_COMMIT_THREADS, Store, StoreConfig, StoreError, TOUCHED, lock, unix_now};

/// Fsync mode: the group-commit thread keeps this many bytes of zeros written (and, by its next commit,
/// synced) ahead of the append position (`os` mode keeps at least the next record's, see
/// [`Writer::zero_ahead`]). Appending into space the file already has changes neither its size
/// nor its block map, so the `fdatasync` that commits it flushes the data blocks only; appending past the
/// end makes every `fdatasync` also write the inode (measured here: 3 device writes per commit instead of 2,
/// 0.20 ms instead of 0.145 ms). `fallocate` would not do: its unwritten extents need a metadata update on
/// their first write.
const PREALLOC_AHEAD: u64 = 1 << 20;
/// Zeros written per step, with the writer lock held (a copy into the page cache, tens of µs); the commit
/// that follows flushes them.
const PREALLOC_STEP: usize = 256 << 10;
static ZEROS: [u8; PREALLOC_STEP] = [0; PREALLOC_STEP];

/// Durability progress published by the group-commit thread.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Durable {
    pub seq: u64,
    pub failed: bool,
}

/// What the background threads wait for.
struct Bg {
    stop: bool,
    /// Records were appended since the last commit was issued.
    commit_pending: bool,
    compact_pending: bool,
    /// The group commits in flight; also decides when the next may be issued.
    commits: CommitQueue,
    /// Commit threads waiting for work.
    idle: usize,
    /// An idle commit thread was woken and has not run yet: appends do not wake another.
    kicked: bool,
}

impl Bg {
    fn new(commit_threads: usize, durable: u64) -> Bg {
        Bg {
            stop: false,
            commit_pending: false,
            compact_pending: false,
            commits: CommitQueue::new(commit_threads, durable),
            idle: 0,
            kicked: false,
        }
    }
}

/// The appending side of the log, and this process's position in it.
pub(crate) struct Writer {
    /// The exclusive `flock` on `DIR/LOCK`: held by the one process allowed to append.
    lock: Option<Flock<File>>,
    /// The active segment; `Some` exactly when this store may append.
    file: Option<Arc<File>>,
    /// Current snapshot (generation), 0 without one.
    snap: u64,
    /// Last segment read or appended to (0 = none yet), and the end of its valid records.
    seg: u64,
    off: u64,
    next_id: u64,
    /// Records appended by this process.
    seq: u64,
    /// Bytes in the live files (snapshot and the segments after it).
    bytes: u64,
    /// A failed append left bytes after `off` that could not be truncated yet.
    dirty: bool,
    /// End of the zeros written ahead of `off` in the active segment (see [`Writer::zero_ahead`]);
    /// at most `off` when there are none. Replay reads a zero header as the end of the records.
    zeroed: u64,
    #[cfg(test)]
    pub fail_writes: u32,
}

pub(crate) struct LogCtl {
    dir: PathBuf,
    fsync: bool,
    /// See `StoreConfig::group_commit_interval`.
    commit_interval: Duration,
    pub(crate) w: Mutex<Writer>,
    /// Mirrors of `w.seq` and `w.bytes`, readable without the writer lock.
    appended: AtomicU64,
    log_bytes: AtomicU64,
    /// Serialises handover and take-over.
    transition: Mutex<()>,
    /// Held while a compaction runs.
    compacting: Mutex<()>,
    /// Stop background threads / abort a compaction.
    stop: AtomicBool,
    bg: Mutex<Bg>,
    commit_cv: Condvar,
    compact_cv: Condvar,
    durable: Mutex<Durable>,
    durable_cv: Condvar,
    /// Threads blocked on `durable_cv` ([`Store::wait_durable_blocking`]), counted under the `durable` lock.
    /// Sessions wait through `waiters` instead, so on a serving process this is 0 and a commit's advance
    /// skips the `futex` wake a `notify_all` always makes.
    blocked_on_durable: AtomicU64,
    /// Sessions waiting for a sequence number to become durable. Lock order: `waiters`, then `durable`.
    waiters: Mutex<Waiters>,
    /// The delayed-flush deadline whose dead items were swept already.
    swept_flush: AtomicU64,
    /// The compaction thread was woken because the thresholds were crossed.
    compact_kicked: AtomicBool,
    /// Tests: the next commit issued waits for this before its `fdatasync`.
    #[cfg(test)]
    hold_next_commit: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Tests: commits whose `fdatasync` returned.
    #[cfg(test)]
    commits_done: AtomicU64,
    /// Tests: when each commit was issued (the first 65,536).
    #[cfg(test)]
    issued_at: Mutex<Vec<Instant>>,
}

/// Fsync mode: commit threads, and so `fdatasync`s of the log in flight at once (see the `commits` module).
fn commit_threads(cfg: &StoreConfig) -> usize {
    cfg.group_commit_threads.clamp(1, MAX_COMMIT_THREADS)
}

fn not_writable() -> io::Error {
    io::Error::other("kv store is not writable: another process owns the log (live upgrade in progress)")
}

fn corrupt(path: &Path, off: u64, why: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: {why} at offset {off}", path.display()))
}

impl LogCtl {
    pub(crate) fn new(cfg: &StoreConfig) -> Result<LogCtl, StoreError> {
        fs::create_dir_all(&cfg.dir)?;
        Ok(LogCtl {
            dir: cfg.dir.clone(),
            fsync: cfg.durability == Durability::Fsync,
            commit_interval: cfg.group_commit_interval,
            w: Mutex::new(Writer {
                lock: None,
                file: None,
                snap: 0,
                seg: 0,
                off: 0,
                next_id: 1,
                seq: 0,
                bytes: 0,
                dirty: false,
                zeroed: 0,
                #[cfg(test)]
                fail_writes: 0,
            }),
            appended: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            transition: Mutex::new(()),
            compacting: Mutex::new(()),
            stop: AtomicBool::new(false),
            bg: Mutex::new(Bg::new(commit_threads(cfg), 0)),
            commit_cv: Condvar::new(),
            compact_cv: Condvar::new(),
            durable: Mutex::new(Durable::default()),
            durable_cv: Condvar::new(),
            blocked_on_durable: AtomicU64::new(0),
            waiters: Mutex::new(Waiters::default()),
            swept_flush: AtomicU64::new(0),
            compact_kicked: AtomicBool::new(false),
            #[cfg(test)]
            hold_next_commit: Mutex::new(None),
            #[cfg(test)]
            commits_done: AtomicU64::new(0),
            #[cfg(test)]
            issued_at: Mutex::new(Vec::new()),
        })
    }

    /// Tries to become the (only) appending process. `Ok(false)`: another process holds the lock.
    fn acquire_lock(&self) -> Result<bool, StoreError> {
        let mut w = lock(&self.w);
        if w.lock.is_some() {
            return Ok(true);
        }
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(self.dir.join("LOCK"))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => {
                w.lock = Some(l);
                Ok(true)
            }
            Err((_, Errno::EWOULDBLOCK)) => Ok(false),
            Err((_, e)) => Err(StoreError::Io(e.into())),
        }
    }

    /// Deletes leftovers: unfinished snapshots and files older than the current snapshot (writer only).
    fn cleanup(&self) -> Result<(), StoreError> {
        let l = Listing::read(&self.dir)?;
        let snap = l.snap();
        for t in &l.tmps {
            let _ = fs::remove_file(t);
        }
        for &id in l.logs.iter().filter(|&&id| id < snap) {
            let _ = fs::remove_file(log::log_path(&self.dir, id));
        }
        for &id in l.snaps.iter().filter(|&&id| id < snap) {
            let _ = fs::remove_file(log::snap_path(&self.dir, id));
        }
        Ok(())
    }

    fn append(&self, rec: &[u8]) -> Result<(), StoreError> {
        let mut w = lock(&self.w);
        if self.fsync && lock(&self.durable).failed {
            return Err(StoreError::Io(io::Error::other("kv log fdatasync failed earlier; refusing writes")));
        }
        if !self.fsync {
            // `os` mode has no commit thread: the appending session keeps the zeros ahead itself.
            w.zero_ahead(rec.len() as u64);
        }
        w.append(rec)?;
        self.appended.store(w.seq, Relaxed);
        self.log_bytes.store(w.bytes, Relaxed);
        drop(w);
        if self.fsync {
            let mut bg = lock(&self.bg);
            bg.commit_pending = true;
            self.kick_commit(&mut bg);
        }
        Ok(())
    }

    /// Fsync mode, after an append: wakes an idle commit thread if a commit is due now (none running, or the
    /// newest running one has run for the interval). A commit that is not due yet is issued by the thread
    /// of the running one when it returns, or on an append after the interval: no thread sleeps on a timer,
    /// so a fast disk (commits returning within the interval) costs no wake-up beyond the commit's own.
    fn kick_commit(&self, bg: &mut Bg) {
        if bg.kicked
            || bg.idle == 0
            || bg.commits.issue_wait(Instant::now(), self.commit_interval) != Some(Duration::ZERO)
        {
            return;
        }
        bg.kicked = true;
        self.commit_cv.notify_one();
    }

    /// Fsync mode, on the group-commit thread after a commit: writes one [`PREALLOC_STEP`] of zeros after
    /// the records (or after the zeros already there) when fewer than [`PREALLOC_AHEAD`] bytes are ahead of
    /// the append position. The next commit makes them durable. A failure (a full disk) only means appends
    /// go on past the end, as without preallocation.
    fn preallocate(&self) {
        lock(&self.w).zero_ahead(PREALLOC_AHEAD);
    }

    /// Group commit: every record up to `seq` is durable. Commit threads retire in order but publish
    /// concurrently, so the published number only grows.
    fn advance(&self, seq: u64) {
        let mut d = lock(&self.durable);
        if d.failed || d.seq >= seq {
            return;
        }
        d.seq = seq;
        // Read under the lock: a thread that blocks after this sees the new `seq` and does not wait.
        let blocked = self.blocked_on_durable.load(Relaxed) > 0;
        drop(d);
        if blocked {
            self.durable_cv.notify_all();
        }
        self.wake_waiters();
    }

    /// Wakes the sessions whose wait the durable position now answers: those it covers, or all after a
    /// failure. Reads the position under the waiters' lock, so a session that registers after this either
    /// sees it or is woken by a later call.
    fn wake_waiters(&self) {
        let wakers = {
            let mut w = lock(&self.waiters);
            let d = self.durable();
            if d.failed { w.take_all() } else { w.take_covered(d.seq) }
        };
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// Group commit: an `fdatasync` failed. What it covered may be lost; no later record counts as durable.
    fn fail(&self) {
        lock(&self.durable).failed = true;
        self.durable_cv.notify_all();
        self.wake_waiters();
    }

    fn publish(&self, d: Durable) {
        *lock(&self.durable) = d;
        self.durable_cv.notify_all();
        self.wake_waiters();
    }

    fn durable(&self) -> Durable {
        *lock(&self.durable)
    }

    fn durable_seq(&self) -> u64 {
        if self.fsync { self.durable().seq } else { self.appended.load(Relaxed) }
    }
}

impl Writer {
    /// Writes one [`PREALLOC_STEP`] of zeros after the records (or after the zeros already there) when fewer
    /// than `ahead` bytes of zeros are ahead of the append position. An append into zeros the file already
    /// has changes neither its size nor its block map: in fsync mode its `fdatasync` flushes data only (see
    /// [`PREALLOC_AHEAD`]); in `os` mode its `pwrite` is a copy into the page cache that journals no inode
    /// size. A failure (a full disk) only means appends go on past the end, as without preallocation.
    fn zero_ahead(&mut self, ahead: u64) {
        if self.dirty || self.zeroed >= self.off + ahead {
            return;
        }
        let Some(file) = &self.file else { return };
        // The caller holds the writer lock: no record can land in the range while it is zeroed.
        let start = self.zeroed.max(self.off);
        match file.write_all_at(&ZEROS, start) {
            Ok(()) => self.zeroed = start + PREALLOC_STEP as u64,
            Err(e) => tracing::debug!(error = %e, "kv log: cannot preallocate; appending past the end"),
        }
    }

    fn append(&mut self, rec: &[u8]) -> io::Result<()> {
        let Some(file) = &self.file else { return Err(not_writable()) };
        if self.dirty {
            file.set_len(self.off)?;
            self.dirty = false;
            self.zeroed = self.off;
        }
        #[cfg(test)]
        let res = if self.fail_writes > 0 {
            self.fail_writes -= 1;
            file.write_all_at(&rec[..rec.len() / 2], self.off)
                .and_then(|()| Err(io::Error::from_raw_os_error(libc::ENOSPC)))
        } else {
            file.write_all_at(rec, self.off)
        };
        #[cfg(not(test))]
        let res = file.write_all_at(rec, self.off);
        if let Err(e) = res {
            // Whatever part of the record reached the file must not count: cut it off again.
            if file.set_len(self.off).is_err() {
                self.dirty = true;
            }
            self.zeroed = self.zeroed.min(self.off);
            return Err(e);
        }
        self.off += rec.len() as u64;
        self.bytes += rec.len() as u64;
        self.seq += 1;
        Ok(())
    }
}

/// Replay bookkeeping.
struct Replay {
    now: u64,
    records: u64,
    max_cas: u64,
    /// Keys installed already expired (see `sweep_replayed`).
    maybe_dead: Vec<Box<[u8]>>,
}

type OpenFiles = Vec<(u64, bool, File)>;

/// Opens the snapshot and the segments after it (`(id, is_snapshot, file)` in replay order), retrying
/// when a concurrent compaction removes a file between listing and opening.
fn open_live_files(dir: &Path) -> Result<(Listing, OpenFiles), StoreError> {
    'retry: for _ in 0..20 {
        let l = Listing::read(dir)?;
        let snap = l.snap();
        let mut files = Vec::new();
        let paths = (snap != 0).then_some((snap, true)).into_iter().chain(l.live_logs().map(|id| (id, false)));
        for (id, is_snap) in paths {
            let p = if is_snap { log::snap_path(dir, id) } else { log::log_path(dir, id) };
            match File::open(&p) {
                Ok(f) => files.push((id, is_snap, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'retry,
                Err(e) => return Err(e.into()),
            }
        }
        return Ok((l, files));
    }
    Err(StoreError::Corrupt(format!("{}: log files keep disappearing", dir.display())))
}

impl Inner {
    fn log(&self) -> &LogCtl {
        // Only called in persistent modes.
        self.log.as_ref().unwrap_or_else(|| unreachable!("log in memory mode"))
    }

    /// Appends one record (persistent modes).
    pub(super) fn append(&self, meta: Meta, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let log = self.log();
        log.append(&log::encode(meta, key, value))?;
        if self.should_compact() && !log.compact_kicked.swap(true, Relaxed) {
            lock(&log.bg).compact_pending = true;
            log.compact_cv.notify_all();
        }
        Ok(())
    }

    /// Empties the index (not the cas counter).
    fn reset_index(&self) {
        for s in self.shards.iter() {
            let dropped = self.clear_shard(&mut lock(s));
            drop(dropped);
        }
        self.flush_at.store(0, Relaxed);
    }

    fn apply(&self, rec: Record, seg_ctx: &mut Replay) {
        let m = rec.meta;
        seg_ctx.records += 1;
        seg_ctx.max_cas = seg_ctx.max_cas.max(m.cas);
        match m.op {
            Op::Set => {
                let key = rec.key();
                let k = self.key(key);
                let mut guard = self.shard(k);
                let shard = &mut *guard;
                if let Some(old) = shard.set.take(k) {
                    self.unlink(shard, &old);
                }
                let (key_len, tag) = (rec.key_len, k.tag());
                // Installed even if already expired: a later Touch record may
                // extend it. What is still dead after the replay is swept then.
                let now = seg_ctx.now;
                let flush = self.flush_at.load(Relaxed);
                let expired = m.exptime != 0 && m.exptime <= now;
                let flushed = flush != 0 && flush <= now && m.time < flush;
                if expired || flushed {
                    seg_ctx.maybe_dead.push(Box::from(key));
                }
                let e = Entry::from_data(rec.data.into(), key_len, tag, m.flags, m.exptime, m.cas, m.time);
                let c = self.charge_of(&e);
                self.mem_used.fetch_add(c, Relaxed);
                self.install(shard, e, c);
            }
            Op::Delete => {
                let k = self.key(rec.key());
                let mut shard = self.shard(k);
                if let Some(old) = shard.set.take(k) {
                    self.unlink(&mut shard, &old);
                }
            }
            Op::Touch => {
                let key = rec.key();
                let k = self.key(key);
                let mut shard = self.shard(k);
                if let Some(e) = shard.set.get(k) {
                    e.exptime.set(m.exptime);
                    if !e.has(TOUCHED) {
                        e.set_bit(TOUCHED, true);
                        let l = log::record_len(key.len(), 0);
                        shard.live += l;
                        self.live_log.fetch_add(l, Relaxed);
                    }
                }
            }
            Op::FlushAll if m.exptime <= m.time => self.reset_index(),
            Op::FlushAll => self.flush_at.store(m.exptime, Relaxed),
            Op::CasHighWater => {}
        }
    }

    /// Replays one file from `start`; returns the end of its valid records. A bad record is a torn tail
    /// when `tail` (the last segment), corruption otherwise.
    fn replay_file(
        &self,
        path: &Path,
        file: &File,
        start: u64,
        tail: bool,
        ctx: &mut Replay,
    ) -> Result<u64, StoreError> {
        let mut r = match Reader::new(file, start) {
            Ok(Some(r)) => r,
            Ok(None) if tail => return Ok(0),
            Ok(None) => return Err(corrupt(path, 0, "file shorter than its header")),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(corrupt(path, 0, &e.to_string())),
            Err(e) => return Err(e.into()),
        };
        loop {
            match r.next()? {
                Next::End => return Ok(r.off),
                Next::Bad(why) if tail => {
                    tracing::debug!(path = %path.display(), offset = r.off, why, "kv log: end of valid records");
                    return Ok(r.off);
                }
                Next::Bad(why) => return Err(corrupt(path, r.off, why)),
                Next::Record(rec) => self.apply(rec, ctx),
            }
        }
    }

    /// Drops the items a replay installed already expired that no later
    /// record revived (only those: the cost follows the replayed tail, not
    /// the data size).
    fn sweep_replayed(&self, ctx: &Replay) {
        for key in &ctx.maybe_dead {
            let k = self.key(key);
            let mut shard = self.shard(k);
            let dead = shard.set.get(k).is_some_and(|e| !self.is_live(e, ctx.now));
            if dead {
                if let Some(e) = shard.set.take(k) {
                    self.unlink(&mut shard, &e);
                }
            }
        }
    }

    /// Rebuilds the index from the whole log. Returns the number of records replayed.
    fn replay_full(&self) -> Result<u64, StoreError> {
        let log = self.log();
        let (listing, files) = open_live_files(&log.dir)?;
        self.reset_index();
        let mut ctx = Replay { now: unix_now(), records: 0, max_cas: 0, maybe_dead: Vec::new() };
        let (mut seg, mut off, mut bytes) = (0, 0, 0);
        for (i, (id, is_snap, f)) in files.iter().enumerate() {
            let path = if *is_snap { log::snap_path(&log.dir, *id) } else { log::log_path(&log.dir, *id) };
            let tail = !is_snap && i + 1 == files.len();
            let end = self.replay_file(&path, f, 0, tail, &mut ctx)?;
            bytes += if tail { end } else { f.metadata()?.len() };
            if !is_snap {
                (seg, off) = (*id, end);
            }
        }
        self.cas.fetch_max(ctx.max_cas, Relaxed);
        self.sweep_replayed(&ctx);
        let mut w = lock(&log.w);
        (w.snap, w.seg, w.off, w.bytes) = (listing.snap(), seg, off, bytes);
        w.next_id = w.next_id.max(listing.max_id + 1);
        log.log_bytes.store(bytes, Relaxed);
        Ok(ctx.records)
    }

    /// Replays what was appended after this process's position; falls back to a full replay when the log
    /// was compacted meanwhile (new generation) or the position is gone.
    fn replay_tail(&self) -> Result<u64, StoreError> {
        let log = self.log();
        let (snap, seg, off) = {
            let w = lock(&log.w);
            (w.snap, w.seg, w.off)
        };
        let listing = Listing::read(&log.dir)?;
        if listing.snap() != snap {
            tracing::info!("kv log was compacted since it was read: replaying it all");
            return self.replay_full();
        }
        let ids: Vec<u64> = listing.live_logs().filter(|&id| id >= seg).collect();
        if seg != 0 && ids.first() != Some(&seg) {
            return self.replay_full();
        }
        let mut files = Vec::new();
        for &id in &ids {
            match File::open(log::log_path(&log.dir, id)) {
                Ok(f) => files.push((id, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return self.replay_full(),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some((_, f)) = files.first().filter(|_| seg != 0) {
            if f.metadata()?.len() < off {
                return self.replay_full();
            }
        }
        let mut ctx = Replay { now: unix_now(), records: 0, max_cas: 0, maybe_dead: Vec::new() };
        let (mut new_seg, mut new_off, mut added) = (seg, off, 0);
        for (i, (id, f)) in files.iter().enumerate() {
            let start = if *id == seg { off } else { 0 };
            let end = self.replay_file(&log::log_path(&log.dir, *id), f, start, i + 1 == files.len(), &mut ctx)?;
            added += end - start;
            (new_seg, new_off) = (*id, end);
        }
        self.cas.fetch_max(ctx.max_cas, Relaxed);
        self.sweep_replayed(&ctx);
        let mut w = lock(&log.w);
        (w.seg, w.off) = (new_seg, new_off);
        w.bytes += added;
        w.next_id = w.next_id.max(listing.max_id + 1);
        log.log_bytes.store(w.bytes, Relaxed);
        Ok(ctx.records)
    }

    /// After a replay, with the lock held: cut the torn tail off the last segment (or create one) and open
    /// it for appending.
    fn become_writer(&self) -> Result<(), StoreError> {
        let log = self.log();
        let mut w = lock(&log.w);
        let listing = Listing::read(&log.dir)?;
        w.next_id = w.next_id.max(listing.max_id + 1);
        let last = listing.live_logs().last();
        let file = if let Some(id) = last.filter(|&id| id == w.seg) {
            let path = log::log_path(&log.dir, id);
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = f.metadata()?.len();
            w.zeroed = w.off;
            if w.off < MAGIC_LEN {
                log::init_segment(&f)?;
                w.bytes = w.bytes - w.off + MAGIC_LEN;
                (w.off, w.zeroed) = (MAGIC_LEN, MAGIC_LEN);
            } else if len > w.off && log::all_zero(&f, w.off, len)? {
                // Space preallocated by the writer before: kept for appending (synced, in case the process
                // that wrote it died before its next commit).
                w.zeroed = len;
                f.sync_data()?;
            } else if len > w.off {
                tracing::warn!(path = %path.display(), offset = w.off, bytes = len - w.off, "kv log: truncating torn tail");
                f.set_len(w.off)?;
                f.sync_data()?;
            }
            f
        } else if last.is_some() {
            return Err(StoreError::Corrupt(format!("{}: segment list changed under the writer", log.dir.display())));
        } else {
            let id = w.next_id;
            let f = log::create_segment(&log.dir, id)?;
            (w.seg, w.off, w.zeroed, w.next_id) = (id, MAGIC_LEN, MAGIC_LEN, id + 1);
            w.bytes += MAGIC_LEN;
            f
        };
        w.file = Some(Arc::new(file));
        w.dirty = false;
        log.log_bytes.store(w.bytes, Relaxed);
        log.appended.store(w.seq, Relaxed);
        log.publish(Durable { seq: w.seq, failed: false });
        Ok(())
    }

    fn should_compact(&self) -> bool {
        let total = self.log().log_bytes.load(Relaxed);
        let live = self.live_log.load(Relaxed);
        total >= self.cfg.compact_min_bytes
            && total.saturating_sub(live) as f64 > self.cfg.compact_garbage_ratio * total as f64
    }

    /// Rewrites the live items into a snapshot that replaces every older file. Appends go on meanwhile
    /// (into a fresh segment); each shard is locked only to copy out references to its items.
    fn compact(&self) -> Result<bool, StoreError> {
        let log = self.log();
        let _running = lock(&log.compacting);
        if log.stop.load(Relaxed) {
            return Ok(false);
        }
        let now = unix_now();
        // 1. Roll: the snapshot gets id N and covers every older file, appends continue in N+1. Every
        //    record in the older files carries a cas <= `cas_high` (cas values are taken before appending).
        let (snap_id, seg_id, cas_high, flush_at) = {
            let mut w = lock(&log.w);
            let Some(old) = w.file.clone() else { return Ok(false) };
            let (snap_id, seg_id) = (w.next_id, w.next_id + 1);
            // Cuts off the preallocated zeros too: only the last segment may end in anything but records.
            old.set_len(w.off)?;
            old.sync_data()?;
            let f = log::create_segment(&log.dir, seg_id)?;
            w.next_id = seg_id + 1;
            (w.file, w.seg, w.off, w.zeroed, w.dirty) = (Some(Arc::new(f)), seg_id, MAGIC_LEN, MAGIC_LEN, false);
            w.bytes += MAGIC_LEN;
            log.log_bytes.store(w.bytes, Relaxed);
            (snap_id, seg_id, self.cas.load(Relaxed), self.flush_at.load(Relaxed))
        };
        // 2. Write the snapshot.
        let tmp = log::snap_tmp_path(&log.dir, snap_id);
        let size = match self.write_snapshot(&tmp, cas_high, flush_at, now) {
            Ok(Some(size)) => size,
            Ok(None) => {
                let _ = fs::remove_file(&tmp);
                return Ok(false);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // 3. Commit: rename, then forget the older files.
        fs::rename(&tmp, log::snap_path(&log.dir, snap_id))?;
        log::sync_dir(&log.dir)?;
        {
            let mut w = lock(&log.w);
            w.snap = snap_id;
            if w.seg == seg_id {
                w.bytes = size + w.off;
            }
            log.log_bytes.store(w.bytes, Relaxed);
        }
        log.cleanup()?;
        self.counters.compactions.fetch_add(1, Relaxed);
        Ok(true)
    }

    /// `Ok(None)`: aborted (handover or shutdown).
    fn write_snapshot(&self, tmp: &Path, cas_high: u64, flush_at: u64, now: u64) -> Result<Option<u64>, StoreError> {
        let log = self.log();
        let f = File::create(tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &f);
        let mut size = MAGIC_LEN;
        let mut buf = Vec::new();
        out.write_all(MAGIC)?;
        let mut header = vec![Meta { op: Op::CasHighWater, flags: 0, exptime: 0, cas: cas_high, time: now }];
        if flush_at != 0 {
            header.push(Meta { op: Op::FlushAll, flags: 0, exptime: flush_at, cas: cas_high, time: 0 });
        }
        for meta in header {
            log::encode_into(&mut buf, meta, &[], &[]);
            out.write_all(&buf)?;
            size += buf.len() as u64;
        }
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            if log.stop.load(Relaxed) {
                return Ok(None);
            }
            {
                let mut guard = lock(shard);
                let shard = &mut *guard;
                self.sweep(shard, now);
                let mut untouched = 0;
                for e in shard.set.iter().filter(|e| e.cas <= cas_high) {
                    batch.push((e.data.clone(), e.key_len as usize, e.flags, e.exptime.get(), e.cas, e.time));
                    if e.has(TOUCHED) {
                        // Its Touch record is folded into the snapshot's Set.
                        e.set_bit(TOUCHED, false);
                        untouched += log::record_len(e.key_len as usize, 0);
                    }
                }
                shard.live -= untouched;
                self.live_log.fetch_sub(untouched, Relaxed);
            }
            for (data, key_len, flags, exptime, cas, time) in batch.drain(..) {
                let meta = Meta { op: Op::Set, flags, exptime, cas, time: u64::from(time) };
                log::encode_into(&mut buf, meta, &data[..key_len], &data[key_len..]);
                out.write_all(&buf)?;
                size += buf.len() as u64;
            }
        }
        out.flush()?;
        drop(out);
        f.sync_data()?;
        Ok(Some(size))
    }

    /// Once a delayed flush_all's deadline has passed, drop the items it invalidated (background thread).
    fn sweep_flushed(&self, now: u64) {
        let at = self.flush_at.load(Relaxed);
        let log = self.log();
        if at == 0 || at > now || log.swept_flush.load(Relaxed) == at {
            return;
        }
        for s in self.shards.iter() {
            self.sweep(&mut lock(s), now);
        }
        log.swept_flush.store(at, Relaxed);
    }
}

/// One of the `group_commit_threads` group-commit threads: issues an `fdatasync` once records were appended
/// since the last one was issued, at once if no other is running, else once the newest running one has run
/// for `group_commit_interval` (see the `commits` module and `LogCtl::kick_commit`), and retires commits in
/// issue order.
fn commit_loop(inner: Arc<Inner>) {
    let log = inner.log();
    let interval = log.commit_interval;
    loop {
        let (seq, file) = {
            let mut bg = lock(&log.bg);
            loop {
                if bg.stop {
                    return; // the stopper makes the final sync
                }
                if bg.commit_pending && bg.commits.issue_wait(Instant::now(), interval) == Some(Duration::ZERO) {
                    break;
                }
                bg.idle += 1;
                bg = log.commit_cv.wait(bg).unwrap_or_else(std::sync::PoisonError::into_inner);
                bg.idle -= 1;
                bg.kicked = false;
            }
            bg.commit_pending = false;
            // Read under the queue's lock, so that commits are issued in the order of what they cover. Every
            // record up to `seq` was written to `file` or to a segment that was synced when it was rolled.
            let (seq, file) = {
                let w = lock(&log.w);
                (w.seq, w.file.clone())
            };
            let Some(file) = file else { continue };
            let now = Instant::now();
            if !bg.commits.issue(seq, now) {
                continue;
            }
            #[cfg(test)]
            {
                let mut at = lock(&log.issued_at);
                if at.len() < 1 << 16 {
                    at.push(now);
                }
            }
            (seq, file)
        };
        #[cfg(test)]
        {
            let gate = lock(&log.hold_next_commit).take();
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
        }
        let res = file.sync_data();
        if let Err(e) = &res {
            tracing::error!(error = %e, "kv log: fdatasync failed; refusing further writes");
        }
        // Records appended while this commit ran are this thread's to commit next: it looks again first, and
        // with no other commit running issues at once.
        let retired = lock(&log.bg).commits.complete(seq, res.is_ok());
        #[cfg(test)]
        log.commits_done.fetch_add(1, Relaxed);
        if let Some(seq) = retired.durable {
            log.advance(seq);
            log.preallocate();
        }
        if retired.failed {
            log.fail();
        }
    }
}

fn compact_loop(inner: Arc<Inner>) {
    let log = inner.log();
    let mut retry_at: Option<Instant> = None;
    loop {
        {
            let mut bg = lock(&log.bg);
            if !bg.stop && !bg.compact_pending {
                bg = log
                    .compact_cv
                    .wait_timeout(bg, Duration::from_millis(50))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            if bg.stop {
                return;
            }
            bg.compact_pending = false;
        }
        // Appends crossing the thresholds from now on wake this thread again.
        log.compact_kicked.store(false, Relaxed);
        inner.sweep_flushed(unix_now());
        if retry_at.is_some_and(|t| Instant::now() < t) || !inner.should_compact() {
            continue;
        }
        match inner.compact() {
            Ok(_) => retry_at = None,
            Err(e) => {
                tracing::warn!(error = %e, "kv log: compaction failed; retrying in 10 s");
                retry_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }
}

impl Store {
    /// Opening: take the lock if free (else follow read-only), replay, become the writer.
    pub(super) fn open_log(&self) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else { return Ok(()) };
        let writer = log.acquire_lock()?;
        if writer {
            log.cleanup()?;
        }
        let n = self.inner.replay_full()?;
        tracing::debug!(records = n, writer, "kv log replayed");
        if writer {
            self.inner.become_writer()?;
            self.start_threads();
        }
        Ok(())
    }

    fn start_threads(&self) {
        let Some(log) = &self.inner.log else { return };
        let mut threads = lock(&self.threads);
        if !threads.is_empty() {
            return;
        }
        log.stop.store(false, Relaxed);
        *lock(&log.bg) = Bg::new(commit_threads(&self.inner.cfg), log.durable().seq);
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let inner = Arc::clone(&self.inner);
            std::thread::Builder::new().name(name.into()).spawn(move || f(inner))
        };
        let mut handles = vec![spawn("kv-compact", compact_loop)];
        if log.fsync {
            for _ in 0..commit_threads(&self.inner.cfg) {
                handles.push(spawn("kv-commit", commit_loop));
            }
        }
        for h in handles {
            match h {
                Ok(h) => threads.push(h),
                Err(e) => tracing::error!(error = %e, "kv: cannot start a background thread"),
            }
        }
    }

    fn stop_threads(&self) {
        let Some(log) = &self.inner.log else { return };
        log.stop.store(true, Relaxed);
        {
            let mut bg = lock(&log.bg);
            bg.stop = true;
            log.commit_cv.notify_all();
            log.compact_cv.notify_all();
        }
        for h in lock(&self.threads).drain(..) {
            let _ = h.join();
        }
    }

    /// (log_bytes, appended_seq, durable_seq)
    pub(super) fn log_positions(&self) -> (u64, u64, u64) {
        match &self.inner.log {
            Some(log) => (log.log_bytes.load(Relaxed), log.appended.load(Relaxed), log.durable_seq()),
            None => (0, 0, 0),
        }
    }

    /// Sequence number of the last record this process appended.
    pub fn appended_seq(&self) -> u64 {
        self.inner.log.as_ref().map_or(0, |l| l.appended.load(Relaxed))
    }

    /// Resolves once `seq` is on stable storage (fsync mode); immediately in the other modes.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let Some(log) = self.inner.log.as_ref().filter(|l| l.fsync) else { return Ok(()) };
        let d = DurableWait { log, seq, id: None }.await;
        durable_result(d, seq)
    }

    /// Blocking form of [`Store::wait_durable`] (for threads outside the runtime).
    pub fn wait_durable_blocking(&self, seq: u64) -> Result<(), StoreError> {
        let Some(log) = self.inner.log.as_ref().filter(|l| l.fsync) else { return Ok(()) };
        let mut d = lock(&log.durable);
        while d.seq < seq && !d.failed {
            log.blocked_on_durable.fetch_add(1, Relaxed);
            d = log.durable_cv.wait(d).unwrap_or_else(std::sync::PoisonError::into_inner);
            log.blocked_on_durable.fetch_sub(1, Relaxed);
        }
        durable_result(*d, seq)
    }

    /// Runs a compaction now, whatever the thresholds (also runs in the background when they are met).
    /// `Ok(false)`: nothing done (memory mode, not the writer, or a handover is in progress).
    pub fn compact(&self) -> Result<bool, StoreError> {
        if self.inner.log.is_none() {
            return Ok(false);
        }
        self.inner.compact()
    }

    /// Old process, before a live upgrade hands over: stop compaction and the group commit, make every
    /// appended record durable, stop appending (writes fail from now on) and release the log lock.
    pub fn prepare_handover(&self) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else { return Ok(()) };
        let _t = lock(&log.transition);
        self.stop_threads();
        let _c = lock(&log.compacting);
        let mut w = lock(&log.w);
        let Some(file) = w.file.take() else {
            w.lock = None;
            return Ok(());
        };
        let res = (|| {
            if w.dirty {
                file.set_len(w.off)?;
            }
            file.sync_data()
        })();
        if let Err(e) = res {
            w.file = Some(file);
            drop(w);
            self.start_threads();
            return Err(e.into());
        }
        log.publish(Durable { seq: w.seq, failed: false });
        w.lock = None;
        Ok(())
    }

    /// Old process, when the upgrade failed: take the log back, replay whatever the new process appended,
    /// and resume appending.
    pub fn resume_after_rollback(&self) -> Result<(), StoreError> {
        self.take_over().map(|_| ())
    }

    /// New process, after the old one's `prepare_handover`: replay what was appended since this store was
    /// opened (everything, if the log was compacted meanwhile), then become the writer. Returns the number
    /// of records replayed; `Ok(0)` when this store is the writer already.
    pub fn catch_up(&self) -> Result<u64, StoreError> {
        self.take_over()
    }

    fn take_over(&self) -> Result<u64, StoreError> {
        let Some(log) = &self.inner.log else { return Ok(0) };
        let _t = lock(&log.transition);
        if lock(&log.w).file.is_some() {
            self.start_threads();
            return Ok(0);
        }
        if !log.acquire_lock()? {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "kv log is still locked by another process (call prepare_handover there first)",
            )));
        }
        let res = log.cleanup().and_then(|()| self.inner.replay_tail()).and_then(|n| {
            self.inner.become_writer()?;
            Ok(n)
        });
        match res {
            Ok(n) => {
                self.start_threads();
                Ok(n)
            }
            Err(e) => {
                lock(&log.w).lock = None;
                Err(e)
            }
        }
    }

    /// Tests: the next group commit issued holds off its `fdatasync` until the returned sender sends or is
    /// dropped.
    #[cfg(test)]
    pub(super) fn hold_next_commit(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(&self.inner.log().hold_next_commit) = Some(rx);
        tx
    }

    /// Tests: a commit took the hold of [`Store::hold_next_commit`].
    #[cfg(test)]
    pub(super) fn commit_held(&self) -> bool {
        lock(&self.inner.log().hold_next_commit).is_none()
    }

    /// Tests: group commits whose `fdatasync` returned.
    #[cfg(test)]
    pub(super) fn commits_done(&self) -> u64 {
        self.inner.log().commits_done.load(Relaxed)
    }

    /// Tests: when each group commit was issued, in issue order.
    #[cfg(test)]
    pub(super) fn commit_issue_times(&self) -> Vec<Instant> {
        lock(&self.inner.log().issued_at).clone()
    }

    #[cfg(test)]
    pub(super) fn fail_next_writes(&self, n: u32) {
        lock(&self.inner.log().w).fail_writes = n;
    }
}

/// [`Store::wait_durable`]'s wait: registered with the log's waiters while `seq` is not durable, woken once
/// by the commit that makes it so (or by a failure).
struct DurableWait<'a> {
    log: &'a LogCtl,
    seq: u64,
    /// The registration with `log.waiters`, once pending.
    id: Option<u64>,
}

impl std::future::Future for DurableWait<'_> {
    type Output = Durable;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Durable> {
        let this = &mut *self;
        let mut w = lock(&this.log.waiters);
        let d = this.log.durable();
        if d.seq >= this.seq || d.failed {
            if let Some(id) = this.id.take() {
                w.remove(this.seq, id);
            }
            return std::task::Poll::Ready(d);
        }
        this.id = Some(w.register(this.seq, this.id, cx.waker()));
        std::task::Poll::Pending
    }
}

impl Drop for DurableWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.log.waiters).remove(self.seq, id);
        }
    }
}

fn durable_result(d: Durable, seq: u64) -> Result<(), StoreError> {
    if d.seq >= seq { Ok(()) } else { Err(StoreError::Io(io::Error::other("kv log fdatasync failed"))) }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_threads();
        if let Some(log) = &self.inner.log {
            let w = lock(&log.w);
            if let Some(f) = &w.file {
                if log.fsync && f.sync_data().is_ok() {
                    log.publish(Durable { seq: w.seq, failed: false });
                }
            }
        }
    }
}
