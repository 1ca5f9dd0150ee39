//! [`DirectWrites`]: a received file's large aligned ranges written with `O_DIRECT`, and
//! [`DirectChunks`], which decides per write between that and a buffered write.
//!
//! A server must have an upload on disk (fsynced) before it commits it, and it never reads the staged
//! bytes back while the upload runs (the sync server's relay sends the chunks it received, a backup
//! node is fed from the received frames; a read after the commit reads the committed file); a sync
//! client receiving a pushed file does not read its temporary file back either. A buffered write
//! copies every byte into the page cache first, and on the benchmark machine that copy (with the page
//! allocation behind it) was the largest item of a receiving server's CPU: 68 % of the transfer
//! server's during a 1 GiB PUT, and its cost swings with the state of the machine's memory. With
//! `O_DIRECT` the disk takes the bytes from our buffer instead: one copy into an aligned scratch
//! block, which costs a fraction of the page-cache copy.
//!
//! `O_DIRECT` wants the buffer address, the length and the file offset aligned to [`ALIGN`]. A sync
//! chunk goes this way whole or not at all ([`DirectChunks::write_at`]); a PUT's batch of DATA frames
//! is split at the alignment boundaries ([`DirectChunks::write_span`]): its aligned middle goes direct,
//! the unaligned head and tail (under [`ALIGN`] bytes each) buffered. Every write where the
//! filesystem refuses `O_DIRECT` (tmpfs answers `EINVAL`) stays buffered. Each write completes before
//! it returns, so an upload paused for a live upgrade has nothing held back: the length it accounted
//! for is on the file, and whoever resumes it may start at any offset.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::writeback::start_writeback;

/// Alignment of buffer address, length and file offset (the largest logical block size of common
/// disks).
pub const ALIGN: usize = 4096;
/// Bytes copied and written per direct write; a larger range is written in pieces of this size.
const SCRATCH: usize = 4 << 20;
/// Ranges smaller than this are written buffered: a small file's one chunk is not worth a scratch
/// block, and its commit finds it in the page cache.
pub const DIRECT_FROM: usize = 256 * 1024;
/// Files written directly at once, process-wide (sync uploads and downloads, PUTs): each holds a
/// [`SCRATCH`] block, so this bounds that memory. Further files are written buffered.
const MAX_DIRECT_FILES: usize = 8;

/// The process's direct slots.
static SLOTS: DirectSlots = DirectSlots::new(MAX_DIRECT_FILES);

/// A count of files written directly, and its bound.
#[derive(Debug)]
pub struct DirectSlots {
    taken: AtomicUsize,
    max: usize,
}

impl DirectSlots {
    pub const fn new(max: usize) -> DirectSlots {
        DirectSlots { taken: AtomicUsize::new(0), max }
    }

    fn take(&'static self) -> Option<SlotGuard> {
        let before = self.taken.fetch_add(1, Ordering::AcqRel);
        let guard = SlotGuard(self);
        (before < self.max).then_some(guard)
    }
}

/// One slot of a [`DirectSlots`], given back when dropped.
struct SlotGuard(&'static DirectSlots);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A second descriptor of a staged file, opened with `O_DIRECT`, and its aligned scratch block.
pub struct DirectWrites {
    file: File,
    mem: Vec<u8>,
    /// Index in `mem` of the aligned start of the scratch block.
    start: usize,
    _slot: SlotGuard,
}

impl std::fmt::Debug for DirectWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWrites").finish_non_exhaustive()
    }
}

impl DirectWrites {
    /// Opens `path` for direct writes; `None` when all slots are taken, the filesystem refuses
    /// `O_DIRECT`, or no aligned block can be had (the file is then written buffered).
    pub fn open(path: &Path) -> Option<DirectWrites> {
        DirectWrites::open_in(path, &SLOTS)
    }

    fn open_in(path: &Path, slots: &'static DirectSlots) -> Option<DirectWrites> {
        let slot = slots.take()?;
        let file = match OpenOptions::new().write(true).custom_flags(OFlag::O_DIRECT.bits()).open(path) {
            Ok(file) => file,
            Err(e) => {
                if e.raw_os_error() != Some(Errno::EINVAL as i32) {
                    tracing::debug!("no direct writes for {}: {e}", path.display());
                }
                return None;
            }
        };
        let mem = vec![0u8; SCRATCH + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(DirectWrites { file, mem, start, _slot: slot })
    }

    /// Whether a write of `len` bytes at `offset` can go this way.
    pub fn fits(len: usize, offset: u64) -> bool {
        len >= DIRECT_FROM && len % ALIGN == 0 && offset % ALIGN as u64 == 0
    }

    /// Writes `data` at `offset` (both as [`DirectWrites::fits`] asks) through the scratch block.
    /// `EINVAL` means the filesystem refused the direct write: the caller writes buffered from then on.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_gathered([data], data.len(), offset)
    }

    /// Writes the concatenation of `parts`, `len` bytes in all, at `offset` (both as
    /// [`DirectWrites::fits`] asks): the parts are gathered into the scratch block, which is written
    /// whenever it is full, so parts of any size make whole writes.
    pub fn write_gathered<'a>(
        &mut self,
        parts: impl IntoIterator<Item = &'a [u8]>,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        assert!(Self::fits(len, offset), "a direct write of {len} bytes at {offset}");
        let (mut at, mut filled, mut total) = (offset, 0, 0);
        for mut part in parts {
            total += part.len();
            assert!(total <= len, "direct write parts exceed {len} bytes");
            while !part.is_empty() {
                let n = part.len().min(SCRATCH - filled);
                let to = self.start + filled;
                self.mem[to..to + n].copy_from_slice(&part[..n]);
                (filled, part) = (filled + n, &part[n..]);
                if filled == SCRATCH {
                    self.file.write_all_at(&self.mem[self.start..self.start + SCRATCH], at)?;
                    (at, filled) = (at + SCRATCH as u64, 0);
                }
            }
        }
        assert_eq!(total, len, "direct write parts fall short of {len} bytes");
        if filled > 0 {
            self.file.write_all_at(&self.mem[self.start..self.start + filled], at)?;
        }
        Ok(())
    }
}

/// Whether a file's large aligned writes go through `O_DIRECT`: decided at the first write that fits
/// ([`DirectWrites::fits`]), then kept (a file that cannot have a slot or is refused is written
/// buffered to its end).
#[derive(Debug, Default)]
pub struct DirectChunks(Mutex<Direct>);

#[derive(Debug, Default)]
enum Direct {
    #[default]
    Untried,
    Open(DirectWrites),
    /// No slot was free, or the filesystem refused: written buffered.
    Off,
}

impl DirectChunks {
    /// Writes `data` at `offset` of the file at `path`, open as `file`: with `O_DIRECT` when it fits
    /// and a direct descriptor can be had, otherwise through `file`. Returns whether it went direct
    /// (a buffered write's caller may start its writeback).
    pub fn write_at(&self, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<bool> {
        if DirectWrites::fits(data.len(), offset) && self.direct(path, |w| w.write_at(data, offset))? {
            return Ok(true);
        }
        file.write_all_at(data, offset)?;
        Ok(false)
    }

    /// Writes the concatenation of `pieces` at `offset` of the file at `path`, open as `file`, at any
    /// offset and length: the aligned middle with `O_DIRECT` when it is at least [`DIRECT_FROM`] long
    /// and a direct descriptor can be had, the head up to the first [`ALIGN`] boundary and the tail
    /// after the last one through `file`. What went buffered (the whole span when the middle could
    /// not go direct) has its writeback started. Returns the bytes written direct.
    pub fn write_span<B: AsRef<[u8]>>(&self, file: &File, path: &Path, pieces: &[B], offset: u64) -> io::Result<usize> {
        let len: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
        let end = offset + len as u64;
        let align = ALIGN as u64;
        let middle_start = offset.next_multiple_of(align).min(end);
        let middle_end = (end - end % align).max(middle_start);
        let (lo, hi) = ((middle_start - offset) as usize, (middle_end - offset) as usize);
        let middle = hi - lo;
        if middle >= DIRECT_FROM
            && self.direct(path, |w| w.write_gathered(slices(pieces, lo, hi), middle, middle_start))?
        {
            write_buffered(file, slices(pieces, 0, lo), offset)?;
            write_buffered(file, slices(pieces, hi, len), middle_end)?;
            return Ok(middle);
        }
        write_buffered(file, slices(pieces, 0, len), offset)?;
        start_writeback(file, offset, len as u64);
        Ok(0)
    }

    /// Runs `write` on the file's direct descriptor, opening it at the first call. Returns whether
    /// it ran and succeeded; `false` when the file is written buffered (the caller then writes the
    /// whole range through its buffered descriptor, over whatever part of it went direct). Writes
    /// of one file come one at a time, so the lock is never contended.
    fn direct(&self, path: &Path, write: impl FnOnce(&mut DirectWrites) -> io::Result<()>) -> io::Result<bool> {
        let mut direct = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Direct::Untried = *direct {
            *direct = DirectWrites::open(path).map_or(Direct::Off, Direct::Open);
        }
        let Direct::Open(writer) = &mut *direct else { return Ok(false) };
        match write(writer) {
            Ok(()) => Ok(true),
            // Accepted at open, refused at the write: buffered from now on.
            Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                *direct = Direct::Off;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The parts of the concatenation of `pieces` that fall in its byte range `lo..hi`, in order.
fn slices<B: AsRef<[u8]>>(pieces: &[B], lo: usize, hi: usize) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    pieces.iter().filter_map(move |piece| {
        let piece = piece.as_ref();
        let (from, to) = (start, start + piece.len());
        start = to;
        let (a, b) = (lo.max(from), hi.min(to));
        (a < b).then(|| &piece[a - from..b - from])
    })
}

/// Writes `parts` one after the other from `offset` through the buffered descriptor.
fn write_buffered<'a>(file: &File, parts: impl Iterator<Item = &'a [u8]>, offset: u64) -> io::Result<()> {
    let mut at = offset;
    for part in parts {
        file.write_all_at(part, at)?;
        at += part.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn only_large_aligned_writes_fit() {
        assert!(DirectWrites::fits(1 << 20, 0));
        assert!(DirectWrites::fits(1 << 20, 3 << 20));
        assert!(!DirectWrites::fits(1 << 20, 100), "unaligned offset");
        assert!(!DirectWrites::fits((1 << 20) + 1, 0), "unaligned length");
        assert!(!DirectWrites::fits(4096, 0), "small");
    }

    #[test]
    fn direct_and_buffered_writes_make_one_file() {
        // The data directory's filesystem decides whether O_DIRECT is taken; either way the bytes
        // must come back whole (a chunk larger than the scratch block is written in pieces).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let buffered = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let data = pattern(3 * SCRATCH + SCRATCH / 2 + 123);
        let first = 2 * SCRATCH + SCRATCH / 2;
        match DirectWrites::open(&path) {
            Some(mut direct) => direct.write_at(&data[..first], 0).unwrap(),
            None => buffered.write_all_at(&data[..first], 0).unwrap(),
        }
        buffered.write_all_at(&data[first..], first as u64).unwrap();
        buffered.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        static TWO: DirectSlots = DirectSlots::new(2);
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..3).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            std::fs::write(p, b"").unwrap();
        }
        let Some(first) = DirectWrites::open_in(&paths[0], &TWO) else { return }; // no O_DIRECT here
        let second = DirectWrites::open_in(&paths[1], &TWO).unwrap();
        assert!(DirectWrites::open_in(&paths[2], &TWO).is_none(), "every slot is taken");
        drop(first);
        assert!(DirectWrites::open_in(&paths[2], &TWO).is_some(), "a dropped writer gives its slot back");
        drop(second);
        assert_eq!(TWO.taken.load(Ordering::Acquire), 0);
    }

    #[test]
    fn chunks_choose_direct_or_buffered_and_the_file_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let chunks = DirectChunks::default();
        let data = pattern(2 * SCRATCH + 999);
        let aligned = chunks.write_at(&file, &path, &data[..SCRATCH], 0).unwrap();
        let again = chunks.write_at(&file, &path, &data[SCRATCH..2 * SCRATCH], SCRATCH as u64).unwrap();
        assert_eq!(aligned, again, "the choice is kept for the whole file");
        let tail = chunks.write_at(&file, &path, &data[2 * SCRATCH..], 2 * SCRATCH as u64).unwrap();
        assert!(!tail, "an unaligned tail is written buffered");
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn slices_cut_the_concatenation() {
        let pieces = [b"abc".as_slice(), b"", b"defg", b"h"];
        let cut = |lo, hi| slices(&pieces, lo, hi).collect::<Vec<_>>().concat();
        assert_eq!(cut(0, 8), b"abcdefgh");
        assert_eq!(cut(2, 5), b"cde");
        assert_eq!(cut(3, 7), b"defg");
        assert_eq!(cut(7, 8), b"h");
        assert!(cut(4, 4).is_empty());
        assert_eq!(slices(&pieces, 1, 6).count(), 2, "no empty parts");
    }

    #[test]
    fn gathered_parts_make_whole_scratch_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let Some(mut direct) = DirectWrites::open(&path) else { return }; // no O_DIRECT here
        // Parts of odd sizes that straddle the scratch block's end, 2.5 scratch blocks in all.
        let data = pattern(2 * SCRATCH + SCRATCH / 2);
        let parts: Vec<&[u8]> = data.chunks(SCRATCH / 3 + 7).collect();
        direct.write_gathered(parts, data.len(), 0).unwrap();
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn spans_at_any_offset_come_back_whole() {
        // A resumed upload starts anywhere; frames have any length. Each span's aligned middle goes
        // direct (where the filesystem allows), its head and tail buffered, and the file holds every
        // byte in place.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let data = pattern(3 * SCRATCH + 5000);
        let first = 12_345; // a prefix written before, as by an earlier session
        file.write_all_at(&data[..first], 0).unwrap();
        let chunks = DirectChunks::default();
        let mut at = first;
        let mut direct = 0;
        for span in [SCRATCH + 100, 1000, SCRATCH - 1, data.len() - first - 2 * SCRATCH - 1099] {
            let pieces: Vec<&[u8]> = data[at..at + span].chunks(256 * 1024 - 3).collect();
            let went = chunks.write_span(&file, &path, &pieces, at as u64).unwrap();
            assert!(went <= span && went % ALIGN == 0);
            assert!(went == 0 || span >= DIRECT_FROM, "a small span went direct");
            direct += went;
            at += span;
        }
        assert_eq!(at, data.len());
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        if DirectWrites::open(&path).is_some() {
            assert!(direct >= 2 * SCRATCH, "the large spans' middles went direct ({direct} bytes)");
        }
    }
}
