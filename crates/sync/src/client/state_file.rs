//! The client's own state, in `FOLDER/.ferry-sync/`: its id (kept across restarts, so the server
//! knows it as the same client), its metadata (what is on disk, and what it last had in common with
//! the server), and a lock so two clients never work on one folder.
//!
//! The metadata is written atomically (temp file, fsync, rename). Before each write the folder's
//! filesystem is synced (`syncfs`), so the metadata never claims a received file whose data could
//! still be lost in a power cut: after one, a file may be older than the metadata thinks, never
//! newer, and the next connect treats the difference as a local change (kept as a conflicted copy
//! if the server moved on), not as something to overwrite the server with silently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ferry_files::SafeName;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{ClientId, LocalEntry, LocalFile, LocalMetadata, Md5Sum, Synced};

/// Version of the metadata file's layout.
const FORMAT: u32 = 1;
/// Largest metadata file read.
const MAX_METADATA_BYTES: u64 = 512 << 20;

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    entries: Vec<SavedEntry>,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    name: String,
    #[serde(default)]
    current: Option<SavedFile>,
    #[serde(default)]
    synced: Option<SavedSynced>,
}

#[derive(Serialize, Deserialize)]
struct SavedFile {
    size: u64,
    mtime_ns: i64,
    md5: String,
}

#[derive(Serialize, Deserialize)]
struct SavedSynced {
    md5: String,
    version: Option<u64>,
}

/// The state directory, locked for this process.
pub(crate) struct StateFiles {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl StateFiles {
    /// Locks `dir` (the folder's `.ferry-sync`). Fails if another client holds it.
    pub fn lock(dir: &Path) -> io::Result<StateFiles> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("another ferry sync is running on this folder ({})", io::Error::from(errno)),
            )
        })?;
        Ok(StateFiles { dir: dir.to_path_buf(), _lock: lock })
    }

    /// The saved client id, or `chosen`, or a new one (saved for next time).
    pub fn client_id(&self, chosen: Option<&ClientId>) -> io::Result<ClientId> {
        let path = self.dir.join("client-id");
        if let Some(id) = chosen {
            ferry_files::write_atomic(&path, id.as_str().as_bytes())?;
            return Ok(id.clone());
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => ClientId::parse(text.trim()).map_err(|e| io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = new_client_id();
                ferry_files::write_atomic(&path, id.as_str().as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// The saved metadata (empty if none). Entries whose names are not valid are dropped.
    pub fn load(&self, max_name_len: usize) -> io::Result<LocalMetadata> {
        let path = self.dir.join("metadata.json");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LocalMetadata::new()),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_BYTES).read_to_end(&mut bytes)?;
        let saved: Saved = match serde_json::from_slice(&bytes) {
            Ok(saved) => saved,
            Err(e) => {
                // Start over: every file is then "new here", which conflicts rather than overwrites.
                tracing::warn!("{} is unreadable ({e}); starting from an empty metadata", path.display());
                return Ok(LocalMetadata::new());
            }
        };
        if saved.format > FORMAT {
            return Err(io::Error::other(format!(
                "{} has format {}, newer than this build",
                path.display(),
                saved.format
            )));
        }
        let mut metadata = BTreeMap::new();
        for e in saved.entries {
            let Ok(name) = SafeName::parse(&e.name, max_name_len) else { continue };
            let current =
                e.current.and_then(|f| Some(LocalFile { size: f.size, mtime_ns: f.mtime_ns, md5: parse_md5(&f.md5)? }));
            let synced = e.synced.and_then(|s| Some(Synced { md5: parse_md5(&s.md5)?, version: s.version }));
            metadata.insert(name, LocalEntry { current, synced });
        }
        Ok(metadata)
    }

    /// Syncs the folder's filesystem, then replaces the metadata file. Blocking.
    pub fn save(&self, folder: &Path, metadata: &LocalMetadata) -> io::Result<()> {
        let entries = metadata
            .iter()
            .map(|(name, e)| SavedEntry {
                name: name.to_string(),
                current: e.current.map(|f| SavedFile { size: f.size, mtime_ns: f.mtime_ns, md5: f.md5.to_string() }),
                synced: e.synced.map(|s| SavedSynced { md5: s.md5.to_string(), version: s.version }),
            })
            .collect();
        let json = serde_json::to_vec(&Saved { format: FORMAT, entries }).map_err(io::Error::other)?;
        let root = File::open(folder)?;
        nix::unistd::syncfs(&root).map_err(io::Error::from)?;
        ferry_files::write_atomic(&self.dir.join("metadata.json"), &json)
    }
}

/// `host-xxxxxxxx`: the host's name (as far as it makes a valid id) and 32 random bits.
fn new_client_id() -> ClientId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    let suffix = format!("{:08x}", rand::random::<u32>());
    ClientId::parse(&format!("{host}-{suffix}"))
        .or_else(|_| ClientId::parse(&format!("c-{suffix}")))
        .expect("\"c-\" and hex digits make a valid client id")
}

fn parse_md5(hex: &str) -> Option<Md5Sum> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Md5Sum(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFiles::lock(dir.path()).unwrap();
        let mut m = LocalMetadata::new();
        let file = LocalFile { size: 3, mtime_ns: -5, md5: Md5Sum::of(b"abc") };
        m.insert(SafeName::parse("a/b", 1024).unwrap(), LocalEntry::in_sync(file, Some(9)));
        m.insert(
            SafeName::parse("gone", 1024).unwrap(),
            LocalEntry { current: None, synced: Some(Synced { md5: Md5Sum::EMPTY, version: None }) },
        );
        m.insert(SafeName::parse("new", 1024).unwrap(), LocalEntry::new_local(file));
        state.save(dir.path(), &m).unwrap();
        assert_eq!(state.load(1024).unwrap(), m);
    }

    #[test]
    fn one_client_per_folder_and_a_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFiles::lock(dir.path()).unwrap();
        assert!(StateFiles::lock(dir.path()).is_err());
        let id = state.client_id(None).unwrap();
        assert_eq!(state.client_id(None).unwrap(), id);
        let chosen = ClientId::parse("mine").unwrap();
        assert_eq!(state.client_id(Some(&chosen)).unwrap(), chosen);
        assert_eq!(state.client_id(None).unwrap(), chosen);
        drop(state);
        assert!(StateFiles::lock(dir.path()).is_ok());
    }

    #[test]
    fn damaged_metadata_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFiles::lock(dir.path()).unwrap();
        std::fs::write(dir.path().join("metadata.json"), b"{not json").unwrap();
        assert!(state.load(1024).unwrap().is_empty());
        assert_eq!(parse_md5(&Md5Sum::of(b"x").to_string()), Some(Md5Sum::of(b"x")));
        assert_eq!(parse_md5("zz"), None);
    }
}
