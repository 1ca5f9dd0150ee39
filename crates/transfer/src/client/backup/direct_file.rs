//! [`SequentialFile`]: a file the node writes once, front to back, with
//! `O_DIRECT` where the filesystem allows it.
//!
//! A buffered write copies every byte into the page cache, and on a node
//! that copy was most of the CPU the node spends per byte (far more than
//! BLAKE3 or the socket). A backup copy is written and not read back, so
//! the cache buys nothing: with `O_DIRECT` the disk takes the bytes straight
//! from our buffer. `O_DIRECT` wants the buffer address, the length and the
//! file offset aligned, so received frames are gathered into one aligned
//! block and written a block at a time; the tail that does not fill an
//! aligned length is written after `O_DIRECT` is cleared with `fcntl`.
//! Where the filesystem refuses `O_DIRECT` (tmpfs answers `EINVAL`, at open
//! or at the first write) the file falls back to buffered writes. Either
//! way the caller still fsyncs before it confirms: `O_DIRECT` bypasses the
//! cache, not the need to make the file's size and blocks durable.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use ferry_files::start_writeback;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::aligned_block::{ALIGN, AlignedBlock, BLOCK, PooledBlock};
use super::block_writes::{BlockWrites, Outstanding};

/// Files written with `O_DIRECT` at once: each holds a [`BLOCK`] buffer,
/// so this bounds that memory (16 MiB); further files are written buffered.
pub(super) const MAX_DIRECT_FILES: usize = 4;
/// Buffered bytes after which their writeback is started, so the fsync of
/// the commit finds little left to write.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A file written sequentially from offset 0.
pub(super) struct SequentialFile {
    /// Shared with the disk threads while they write blocks of it.
    file: Arc<File>,
    /// `Some` while writes go through `O_DIRECT`.
    direct: Option<AlignedBlock>,
    /// An `O_DIRECT` write of this file succeeded: further whole blocks may
    /// go to the disk threads (a refusal can no longer come as a fallback).
    proven: bool,
    /// Block writes on the disk threads; every other write, and the end,
    /// waits for them first.
    outstanding: Arc<Outstanding>,
    /// Bytes handed to [`SequentialFile::write`] so far.
    written: u64,
    /// Buffered mode: bytes whose writeback was started.
    flushed: u64,
}

impl SequentialFile {
    /// Creates (or truncates) `path`, with `O_DIRECT` if `direct` is asked
    /// for and the filesystem accepts it.
    pub fn create(path: &Path, direct: bool) -> io::Result<SequentialFile> {
        SequentialFile::create_with(direct, |flags| {
            OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags.bits()).open(path)
        })
    }

    /// [`SequentialFile::create`] with the open call given (tests make it
    /// refuse `O_DIRECT` as tmpfs did before Linux 6.6).
    fn create_with(direct: bool, open: impl Fn(OFlag) -> io::Result<File>) -> io::Result<SequentialFile> {
        let block = if direct { AlignedBlock::new() } else { None };
        let (file, direct) = match block {
            Some(block) => match open(OFlag::O_DIRECT) {
                Ok(file) => (file, Some(block)),
                Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => (open(OFlag::empty())?, None),
                Err(e) => return Err(e),
            },
            None => (open(OFlag::empty())?, None),
        };
        let outstanding = Arc::new(Outstanding::default());
        Ok(SequentialFile { file: Arc::new(file), direct, proven: false, outstanding, written: 0, flushed: 0 })
    }

    /// Whether writes go through `O_DIRECT` (false after a fallback).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.outstanding.wait()?;
        while !data.is_empty() {
            let Some(block) = self.direct.as_mut() else {
                return self.write_buffered(data);
            };
            let take = block.append(data);
            self.written += take as u64;
            data = &data[take..];
            if block.is_full() {
                self.write_block(BLOCK)?;
            }
        }
        Ok(())
    }

    /// Appends `data`, which starts at an [`ALIGN`]-aligned address (an
    /// [`AlignedBlock`]'s bytes). When nothing is gathered and the file
    /// offset is aligned, the aligned part is written straight from `data`
    /// with `O_DIRECT`, without the copy into the gathering block; only an
    /// unaligned tail is gathered. Otherwise the same as
    /// [`SequentialFile::write`].
    pub fn write_aligned(&mut self, data: &[u8]) -> io::Result<()> {
        self.outstanding.wait()?;
        let straight = self.direct.as_ref().is_some_and(|block| block.len() == 0)
            && self.written % ALIGN as u64 == 0
            && (data.as_ptr() as usize) % ALIGN == 0;
        let aligned = data.len() / ALIGN * ALIGN;
        if !straight || aligned == 0 {
            return self.write(data);
        }
        match self.file.write_all_at(&data[..aligned], self.written) {
            Ok(()) => {
                self.proven = true;
                self.written += aligned as u64;
                self.write(&data[aligned..])
            }
            Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                // Refused at the write (see `write_block`): this and all the
                // rest is written buffered. Nothing was gathered.
                self.direct = None;
                self.clear_direct()?;
                self.write_buffered(data)
            }
            Err(e) => Err(e),
        }
    }

    /// Appends a pooled block's bytes (the block goes back to the pool once
    /// written). A whole aligned block at an aligned offset of a file whose
    /// `O_DIRECT` writes have been seen to work goes to the disk threads and
    /// this returns at once; anything else is [`SequentialFile::write_aligned`].
    pub fn write_block_from(&mut self, block: PooledBlock, writes: &BlockWrites) -> io::Result<()> {
        let len = block.len();
        let handed = self.proven
            && self.direct.as_ref().is_some_and(|gathered| gathered.len() == 0)
            && self.written % ALIGN as u64 == 0
            && len > 0
            && len % ALIGN == 0
            && (block.filled().as_ptr() as usize) % ALIGN == 0;
        if !handed {
            return self.write_aligned(block.filled());
        }
        writes.submit(&self.file, self.written, block, &self.outstanding);
        self.written += len as u64;
        Ok(())
    }

    /// Writes what is gathered and returns the file, ready to be fsynced.
    pub fn finish(mut self) -> io::Result<Arc<File>> {
        self.outstanding.wait()?;
        let filled = self.direct.as_ref().map_or(0, AlignedBlock::len);
        let aligned = filled / ALIGN * ALIGN;
        if aligned > 0 {
            self.write_block(aligned)?;
        }
        if let Some(block) = self.direct.take() {
            let tail = block.filled();
            if !tail.is_empty() {
                self.clear_direct()?;
                self.file.write_all_at(tail, self.written - tail.len() as u64)?;
            }
        }
        Ok(self.file)
    }

    /// Writes the first `len` gathered bytes (a multiple of [`ALIGN`]) with
    /// `O_DIRECT` and keeps the rest for the next block. Falls back to
    /// buffered writes if the filesystem refuses the direct write.
    fn write_block(&mut self, len: usize) -> io::Result<()> {
        let Some(block) = self.direct.as_mut() else { return Ok(()) };
        assert!(len % ALIGN == 0 && len <= block.len(), "a direct write of {len} of {} bytes", block.len());
        let at = self.written - block.len() as u64;
        assert!(at % ALIGN as u64 == 0, "a direct write at offset {at}");
        match self.file.write_all_at(&block.filled()[..len], at) {
            Ok(()) => {
                self.proven = true;
                block.consume(len);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                // Some filesystems accept the flag at open and refuse the
                // write: write what is gathered, and all the rest, buffered.
                let Some(block) = self.direct.take() else { return Ok(()) };
                self.clear_direct()?;
                self.file.write_all_at(block.filled(), at)
            }
            Err(e) => Err(e),
        }
    }

    fn write_buffered(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.written)?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITEBACK_EVERY {
            // POSIX_FADV_DONTNEED starts writeback of the dirty range
            // without waiting for it (and lets the kernel drop the pages
            // once clean: a backup is written, not read). Only a hint.
            start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    fn clear_direct(&self) -> io::Result<()> {
        let flags = fcntl(&*self.file, FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) - OFlag::O_DIRECT;
        fcntl(&*self.file, FcntlArg::F_SETFL(flags))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Writes `data` in pieces of `piece` bytes and reads the file back.
    fn round_trip(dir: &Path, direct: bool, data: &[u8], piece: usize) -> (bool, Vec<u8>) {
        let path = dir.join("f");
        let mut f = SequentialFile::create(&path, direct).unwrap();
        let was_direct = f.is_direct();
        for chunk in data.chunks(piece.max(1)) {
            f.write(chunk).unwrap();
        }
        f.finish().unwrap().sync_all().unwrap();
        (was_direct, std::fs::read(&path).unwrap())
    }

    #[test]
    fn every_length_reads_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BLOCK - 1, BLOCK, BLOCK + 3, 3 * BLOCK + ALIGN + 17] {
            let data = pattern(len);
            for (direct, piece) in [(true, 65536 + 9), (true, BLOCK * 2), (false, 4093)] {
                let (_, got) = round_trip(tmp.path(), direct, &data, piece);
                assert!(got == data, "len {len}, direct {direct}, pieces of {piece}: contents differ");
            }
        }
    }

    #[test]
    fn aligned_pieces_read_back_exactly_whatever_comes_between() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data = pattern(3 * BLOCK + 2 * ALIGN + 77);
        let mut f = SequentialFile::create(&path, true).unwrap();
        let mut block = AlignedBlock::new().unwrap();
        let mut at = 0;
        // Whole blocks, an unaligned piece through `write`, then aligned
        // pieces at an unaligned offset (gathered), then the rest.
        for (len, aligned) in [(BLOCK, true), (BLOCK, true), (100, false), (BLOCK, true), (data.len(), true)] {
            let end = (at + len).min(data.len());
            if aligned {
                block.clear();
                assert_eq!(block.append(&data[at..end]), end - at);
                f.write_aligned(block.filled()).unwrap();
            } else {
                f.write(&data[at..end]).unwrap();
            }
            at = end;
        }
        assert_eq!(at, data.len());
        f.finish().unwrap().sync_all().unwrap();
        assert!(std::fs::read(&path).unwrap() == data, "contents differ");
    }

    #[test]
    fn a_disk_filesystem_takes_direct_writes() {
        // The temporary directory is on a disk filesystem (ext4, xfs) or on
        // tmpfs, which takes O_DIRECT since Linux 6.6.
        let tmp = tempfile::tempdir().unwrap();
        let (direct, got) = round_trip(tmp.path(), true, &pattern(BLOCK + 5), 1000);
        assert_eq!(got, pattern(BLOCK + 5));
        assert!(direct, "O_DIRECT refused");
    }

    #[test]
    fn a_refused_o_direct_falls_back_to_buffered_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let open = |flags: OFlag| {
            if flags.contains(OFlag::O_DIRECT) {
                return Err(io::Error::from_raw_os_error(Errno::EINVAL as i32));
            }
            OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags.bits()).open(&path)
        };
        let mut f = SequentialFile::create_with(true, open).unwrap();
        assert!(!f.is_direct());
        let data = pattern(2 * BLOCK + 123);
        for chunk in data.chunks(70_000) {
            f.write(chunk).unwrap();
        }
        f.finish().unwrap().sync_all().unwrap();
        assert!(std::fs::read(&path).unwrap() == data, "contents differ after the fallback");
        // Any other refusal is an error, not a fallback.
        let denied = |_: OFlag| Err::<File, _>(io::Error::from_raw_os_error(Errno::EACCES as i32));
        assert!(SequentialFile::create_with(true, denied).is_err());
    }

    #[test]
    fn the_file_is_left_without_o_direct_after_a_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = SequentialFile::create(&tmp.path().join("f"), true).unwrap();
        f.write(&pattern(ALIGN + 1)).unwrap();
        let file = f.finish().unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&*file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_DIRECT));
    }
}
