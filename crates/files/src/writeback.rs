//! Starting a file's writeback early, so that the fsync of a commit finds little left to write.
//!
//! A large upload is fsynced before anyone is told it is stored. Left to the kernel, most of its pages would
//! still be dirty then (background writeback starts only at a tenth of memory dirty), and the client would
//! wait for all of them at the end while the CPUs idle. Starting each range's writeback as it is written
//! overlaps the disk with the rest of the upload.

use std::fs::File;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

/// Starts writeback of `len` bytes of `file` from `offset`, without waiting for it.
///
/// `POSIX_FADV_DONTNEED` starts writeback of the range's dirty pages (and drops only pages already clean,
/// none of a range just written), which is what `sync_file_range(SYNC_FILE_RANGE_WRITE)` does, with no
/// unsafe call. A hint: a failure changes nothing but the timing, so it is not reported.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    if let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) {
        let _ = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_bytes_written_stay_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        start_writeback(&file, 0, data.len() as u64);
        start_writeback(&file, u64::MAX, 1); // out of range for the call: ignored
        assert!(std::fs::read(&path).unwrap() == data);
    }
}
