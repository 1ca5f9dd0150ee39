//! The staging file of one `PUT`, removed unless it was committed.
//!
//! It lives in the store's uploads directory under a fresh random upload id,
//! so it is on the root's filesystem (commit is a rename), it is never listed
//! or served, and if the server dies mid-upload the store's upload expiry
//! removes it like any abandoned upload.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_files::UploadId;

#[derive(Debug)]
pub struct TempUpload {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl TempUpload {
    /// Creates a new, empty staging file in `dir`. Blocking.
    pub fn create(dir: &Path) -> io::Result<TempUpload> {
        let path = dir.join(UploadId::from_bytes(rand::random()).as_str());
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempUpload { path, file: Arc::new(file), committed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For positional writes from blocking tasks.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The file was renamed into place: nothing left to remove.
    pub fn committed(&mut self) {
        self.committed = true;
    }
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!("http: cannot remove abandoned upload {}: {e}", path.display());
            }
        };
        // Dropped from a handler future: unlink off the async threads when
        // there is a runtime to do it on.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempUpload::create(dir.path()).unwrap();
        t.file().write_all_at(b"x", 0).unwrap();
        let path = t.path().to_owned();
        assert!(UploadId::parse(path.file_name().unwrap().to_str().unwrap()).is_some());
        assert!(path.exists());
        drop(t);
        assert!(!path.exists());

        let mut t = TempUpload::create(dir.path()).unwrap();
        let path = t.path().to_owned();
        t.committed();
        drop(t);
        assert!(path.exists());
    }
}
