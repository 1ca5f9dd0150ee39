//! [`DirectWrites`]: a received file's large aligned chunks written with `O_DIRECT`, and
//! [`DirectChunks`], which decides per chunk between that and a buffered write.
//!
//! The server must have an upload on disk (fsynced) before it commits it, and it never reads the
//! staged bytes back while the upload runs (a relay sends the chunks it received; a push after the
//! commit reads the committed file); a client receiving a pushed file does not read its temporary
//! file back either. A buffered write copies every byte into the page cache first,
//! and on the benchmark machine that copy (with the page allocation behind it) was the largest item
//! of the server's CPU after MD5. With `O_DIRECT` the disk takes the bytes from our buffer instead:
//! one copy into an aligned scratch block, which costs a fraction of the page-cache copy.
//!
//! `O_DIRECT` wants the buffer address, the length and the file offset aligned, so only a chunk whose
//! offset and length are multiples of [`ALIGN`] goes this way (every chunk of an upload in 1 MiB
//! chunks but the last); any other write, and every write where the filesystem refuses `O_DIRECT`
//! (tmpfs answers `EINVAL`), stays buffered. Each write completes before it returns, so an upload
//! paused for a live upgrade has nothing held back: the length it accounted for is on the file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// Alignment of buffer address, length and file offset (the largest logical block size of common
/// disks).
pub(crate) const ALIGN: usize = 4096;
/// Bytes copied and written per direct write; a larger chunk is written in pieces of this size.
const SCRATCH: usize = 1 << 20;
/// Chunks smaller than this are written buffered: a small file's one chunk is not worth a scratch
/// block, and its commit finds it in the page cache.
pub(crate) const DIRECT_FROM: usize = 256 * 1024;
/// Uploads written directly at once, server-wide: each holds a [`SCRATCH`] block, so this bounds
/// that memory. Further uploads are written buffered.
const MAX_DIRECT_UPLOADS: usize = 8;

/// The server's direct slots.
static SLOTS: DirectSlots = DirectSlots::new(MAX_DIRECT_UPLOADS);

/// A count of uploads written directly, and its bound.
pub(crate) struct DirectSlots {
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
pub(crate) struct DirectWrites {
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
    /// `O_DIRECT`, or no aligned block can be had (the upload is then written buffered).
    pub fn open(path: &Path) -> Option<DirectWrites> {
        DirectWrites::open_in(path, &SLOTS)
    }

    fn open_in(path: &Path, slots: &'static DirectSlots) -> Option<DirectWrites> {
        let slot = slots.take()?;
        let file = match OpenOptions::new().write(true).custom_flags(OFlag::O_DIRECT.bits()).open(path) {
            Ok(file) => file,
            Err(e) => {
                if e.raw_os_error() != Some(Errno::EINVAL as i32) {
                    tracing::debug!("sync: no direct writes for {}: {e}", path.display());
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
        assert!(Self::fits(data.len(), offset), "a direct write of {} bytes at {offset}", data.len());
        let mut at = offset;
        for piece in data.chunks(SCRATCH) {
            let block = &mut self.mem[self.start..self.start + piece.len()];
            block.copy_from_slice(piece);
            self.file.write_all_at(block, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }
}

/// Whether a file's large aligned chunks go through `O_DIRECT`: decided at the first chunk that fits
/// ([`DirectWrites::fits`]), then kept (a file that cannot have a slot or is refused is written
/// buffered to its end).
#[derive(Debug, Default)]
pub(crate) struct DirectChunks(Mutex<Direct>);

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
    /// (a buffered write's caller may start its writeback). Writes of one file come one at a time,
    /// so the lock is never contended.
    pub fn write_at(&self, file: &File, path: &Path, data: &[u8], offset: u64) -> io::Result<bool> {
        if DirectWrites::fits(data.len(), offset) {
            let mut direct = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Direct::Untried = *direct {
                *direct = DirectWrites::open(path).map_or(Direct::Off, Direct::Open);
            }
            if let Direct::Open(writer) = &mut *direct {
                match writer.write_at(data, offset) {
                    Ok(()) => return Ok(true),
                    // Accepted at open, refused at the write: buffered from now on.
                    Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => *direct = Direct::Off,
                    Err(e) => return Err(e),
                }
            }
        }
        file.write_all_at(data, offset)?;
        Ok(false)
    }
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
}
