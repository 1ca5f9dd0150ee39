//! An upload's bytes while it is in progress: `<data>/sync/uploads/<id>.part`, outside the synced
//! tree, so no client is ever sent (and no listing ever shows) a partial file. Finished, it is renamed
//! into place by [`ferry_files::FileStore::commit`]; aborted or abandoned, it is deleted. A live
//! upgrade carries the id and the length written, and the new process reopens it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_files::start_writeback;

use ferry_files::DirectChunks;

/// A partial upload on disk.
#[derive(Debug, Clone)]
pub(crate) struct StagedUpload {
    pub id: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// How large aligned chunks are written (see [`StagedUpload::write_at`]).
    direct: Arc<DirectChunks>,
}

impl StagedUpload {
    fn path_of(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id:016x}.part"))
    }

    /// A new, empty staged file in `dir`.
    pub fn create(dir: &Path) -> io::Result<StagedUpload> {
        for _ in 0..8 {
            let id: u64 = rand::random();
            let path = Self::path_of(dir, id);
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(StagedUpload::with_file(id, path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free staged upload name after 8 tries"))
    }

    /// Reopens a staged file a parked session left, cut back to the `written` bytes it accounted for.
    pub fn reopen(dir: &Path, id: u64, written: u64) -> io::Result<StagedUpload> {
        let path = Self::path_of(dir, id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < written {
            return Err(io::Error::other(format!("staged upload holds {len} bytes, {written} expected")));
        }
        file.set_len(written)?;
        Ok(StagedUpload::with_file(id, path, file))
    }

    fn with_file(id: u64, path: PathBuf, file: File) -> StagedUpload {
        StagedUpload { id, path, file: Arc::new(file), direct: Arc::default() }
    }

    /// Writes an accepted chunk at `offset`, and starts writing it to disk.
    ///
    /// The commit fsyncs the whole file before anyone is told of it: starting each chunk's writeback as it
    /// lands ([`start_writeback`]) overlaps the disk with the rest of the upload, so the fsync finds little
    /// left to do.
    ///
    /// A large chunk at an aligned offset is written with `O_DIRECT` instead ([`ferry_files::DirectWrites`]): no
    /// page-cache copy, and its bytes are on the device when the call returns.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.direct.write_at(&self.file, &self.path, data, offset)? {
            return Ok(());
        }
        start_writeback(&self.file, offset, data.len() as u64);
        Ok(())
    }

    /// Deletes the staged file (an abort, a disconnect); already gone is fine.
    pub fn discard(&self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove staged upload {}: {e}", self.path.display());
        }
    }
}

/// Removes every staged file in `dir`: at a fresh start no session owns one (their clients are gone
/// and upload again when they reconnect). Returns how many were removed.
pub(crate) fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_reopen_discard() {
        let dir = tempfile::tempdir().unwrap();
        let staged = StagedUpload::create(dir.path()).unwrap();
        staged.write_at(b"hello world", 0).unwrap();
        let again = StagedUpload::reopen(dir.path(), staged.id, 5).unwrap();
        assert_eq!(std::fs::read(&again.path).unwrap(), b"hello");
        assert!(StagedUpload::reopen(dir.path(), staged.id, 6).is_err(), "shorter than accounted for");
        again.discard();
        again.discard();
        assert!(!again.path.exists());
        StagedUpload::create(dir.path()).unwrap();
        assert_eq!(clear_dir(dir.path()).unwrap(), 1);
    }

    #[test]
    fn large_aligned_chunks_and_a_tail_read_back_whole_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let staged = StagedUpload::create(dir.path()).unwrap();
        let data: Vec<u8> = (0..(5usize << 19) + 77).map(|i| (i * 13 + i / 4096) as u8).collect();
        let chunk = 1 << 20;
        // Two whole chunks (direct where the filesystem allows), then a reopen as after an upgrade.
        staged.write_at(&data[..chunk], 0).unwrap();
        staged.write_at(&data[chunk..2 * chunk], chunk as u64).unwrap();
        let again = StagedUpload::reopen(dir.path(), staged.id, 2 * chunk as u64).unwrap();
        again.write_at(&data[2 * chunk..], 2 * chunk as u64).unwrap();
        again.file.sync_all().unwrap();
        assert_eq!(std::fs::read(&again.path).unwrap(), data);
    }
}
