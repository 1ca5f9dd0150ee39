//! A backup directory: a plain tree of the server's files (so
//! `ferry serve --root DIR` serves it as it is), plus the node's own state
//! under `DIR/.ferry-backup/`, a name the file store refuses to clients:
//!
//! ```text
//! DIR/.ferry-backup/node-id        this node's id (32 hex digits)
//! DIR/.ferry-backup/lock           held (flock) while a node runs here
//! DIR/.ferry-backup/manifest.json  sizes, digests, server etags
//! DIR/.ferry-backup/incoming/      files being received, by transfer id
//! ```
//!
//! Files are committed through [`FileStore::commit`] with `DIR` as the
//! root, so a name from the server is confined to `DIR` exactly as the
//! server confines a client's, symlinks included.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_files::{FileStore, write_atomic};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::backup::node_id::NodeId;

/// The node's own directory inside the backup directory.
pub const META_DIR: &str = ".ferry-backup";

pub struct BackupDir {
    pub store: FileStore,
    pub id: NodeId,
    meta: PathBuf,
    /// Held for the node's lifetime: two nodes in one directory would
    /// overwrite each other's files and manifest.
    _lock: Flock<File>,
}

impl BackupDir {
    /// Opens (creating if needed) a backup directory; fails if another
    /// node uses it. A directory that holds files but was never a backup
    /// directory is refused unless `adopt`: catch-up deletes every file the
    /// server does not have.
    pub fn open(dir: &Path, adopt: bool) -> Result<BackupDir, String> {
        let meta = dir.join(META_DIR);
        if !adopt && !meta.exists() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!(
                "{} is not empty and was never a backup directory; a backup node deletes every file the server \
                 does not have (--adopt to use it anyway)",
                dir.display()
            ));
        }
        let incoming = meta.join("incoming");
        std::fs::create_dir_all(&incoming).map_err(|e| format!("cannot create {}: {e}", incoming.display()))?;
        let lock_path = meta.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(format!("another ferry backup is running in {}", dir.display()));
            }
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", lock_path.display())),
        };
        let id = read_or_create_id(&meta.join("node-id"))?;
        let store = FileStore::open(dir, &incoming).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        let dir = BackupDir { store, id, meta, _lock: lock };
        dir.clear_incoming();
        Ok(dir)
    }

    /// Where transfer `transfer` is received.
    pub fn incoming(&self, transfer: u64) -> PathBuf {
        self.store.uploads_dir().join(format!("{transfer:016x}"))
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.meta.join("manifest.json")
    }

    /// Removes what a previous run left half received.
    pub fn clear_incoming(&self) {
        let Ok(entries) = std::fs::read_dir(self.store.uploads_dir()) else { return };
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn read_or_create_id(path: &Path) -> Result<NodeId, String> {
    let mut text = String::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(64).read_to_string(&mut text);
        if let Some(id) = NodeId::parse(text.trim()) {
            return Ok(id);
        }
        tracing::warn!("{} holds no node id; choosing a new one", path.display());
    }
    let id = NodeId::random();
    write_atomic(path, format!("{id}\n").as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_per_directory_and_a_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = BackupDir::open(dir.path(), false).unwrap();
        let id = first.id.clone();
        let err = BackupDir::open(dir.path(), false).err().unwrap();
        assert!(err.contains("another ferry backup"), "{err}");
        std::fs::write(first.incoming(7), b"half").unwrap();
        drop(first);
        let again = BackupDir::open(dir.path(), false).unwrap();
        assert_eq!(again.id, id);
        assert!(!again.incoming(7).exists(), "leftovers are cleared");
        assert!(again.store.list(10).unwrap().is_empty(), "the node's own files are not listed");
    }

    #[test]
    fn a_directory_with_other_files_needs_adopting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine"), b"x").unwrap();
        let err = BackupDir::open(dir.path(), false).err().unwrap();
        assert!(err.contains("--adopt"), "{err}");
        let adopted = BackupDir::open(dir.path(), true).unwrap();
        drop(adopted);
        BackupDir::open(dir.path(), false).unwrap();
    }
}
