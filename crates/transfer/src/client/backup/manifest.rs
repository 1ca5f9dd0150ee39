//! What a backup directory holds, remembered between connections: each
//! file's size, BLAKE3 and the server etag of the version it came from.
//!
//! It is only a cache. An entry counts while the file still has the local
//! etag recorded with it; a file changed, added or lost behind the node's
//! back is hashed again (and then has no server etag, so the server
//! compares digests). Losing the manifest costs one hashing pass, never a
//! wrong answer.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use ferry_files::{FileStore, hash_file, write_atomic};
use serde::{Deserialize, Serialize};

use crate::backup::held::Held;

const FORMAT: u32 = 1;
/// A manifest larger than this is not read (the directory is hashed again).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    pub blake3: String,
    /// The etag the file had in this directory when recorded.
    pub local: String,
    /// The server's etag of the version received, if it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub files: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Reads the manifest; a missing, oversized, unreadable or newer one
    /// gives an empty manifest.
    pub fn load(path: &Path) -> Manifest {
        let mut buf = Vec::new();
        let read = std::fs::File::open(path).and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut buf));
        match read {
            Ok(n) if n as u64 > MAX_MANIFEST_BYTES => {
                tracing::warn!("{} is over {MAX_MANIFEST_BYTES} bytes; hashing the directory again", path.display())
            }
            Ok(_) => match serde_json::from_slice::<Manifest>(&buf) {
                Ok(m) if m.format <= FORMAT => return m,
                Ok(m) => tracing::warn!("{} has format {}, newer than {FORMAT}; ignored", path.display(), m.format),
                Err(e) => tracing::warn!("{} is unreadable ({e}); hashing the directory again", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}", path.display()),
        }
        Manifest { format: FORMAT, files: BTreeMap::new() }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }

    /// Brings the manifest in line with the directory: entries of files
    /// that are gone are dropped, files that are new or changed are hashed.
    pub fn refresh(&mut self, store: &FileStore, max_files: usize) -> Result<(), String> {
        let listed = store.list(max_files).map_err(|e| format!("cannot list {}: {e}", store.root().display()))?;
        let mut files = BTreeMap::new();
        for entry in listed {
            let local = entry.etag.to_string();
            match self.files.remove(&entry.name) {
                Some(known) if known.local == local && known.size == entry.size => {
                    files.insert(entry.name, known);
                }
                _ => {
                    let Ok(name) = ferry_files::SafeName::parse(&entry.name, 4096) else { continue };
                    let (file, meta) = match store.open_file(&name) {
                        Ok(opened) => opened,
                        Err(e) => {
                            tracing::warn!("cannot open {name} to hash it: {e}");
                            continue;
                        }
                    };
                    let digest = hash_file(&file).map_err(|e| format!("cannot hash {name}: {e}"))?;
                    let entry = Entry {
                        size: meta.size,
                        blake3: digest.to_hex().to_string(),
                        local: meta.etag.to_string(),
                        etag: None,
                    };
                    files.insert(name.as_str().to_string(), entry);
                }
            }
        }
        self.files = files;
        Ok(())
    }

    /// The inventory sent with `BACKUP`.
    pub fn inventory(&self) -> Vec<(String, Held)> {
        self.files
            .iter()
            .map(|(name, e)| (name.clone(), Held { size: e.size, blake3: e.blake3.clone(), etag: e.etag.clone() }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::open(dir, &dir.join(".ferry-backup/incoming")).unwrap()
    }

    #[test]
    fn refresh_hashes_only_what_changed_and_keeps_server_etags() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        std::fs::write(dir.path().join("a"), b"one").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"two").unwrap();
        let mut m = Manifest::load(&dir.path().join("none.json"));
        m.refresh(&s, 100).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files["a"].blake3, blake3::hash(b"one").to_hex().as_str());
        m.files.get_mut("a").unwrap().etag = Some("3-1-1".into());
        m.files.get_mut("d/b").unwrap().etag = Some("3-2-2".into());

        // Round trip through the file.
        let path = dir.path().join(".ferry-backup/manifest.json");
        m.save(&path).unwrap();
        let mut m = Manifest::load(&path);
        assert_eq!(m.files["a"].etag.as_deref(), Some("3-1-1"));

        // b replaced behind the node's back, a untouched, c new, nothing of
        // the reserved directory listed.
        std::fs::write(dir.path().join("d/b.tmp"), b"TWO!").unwrap();
        std::fs::rename(dir.path().join("d/b.tmp"), dir.path().join("d/b")).unwrap();
        std::fs::write(dir.path().join("c"), b"three").unwrap();
        m.refresh(&s, 100).unwrap();
        let inv = m.inventory();
        let names: Vec<_> = inv.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "c", "d/b"]);
        assert_eq!(inv[0].1.etag.as_deref(), Some("3-1-1"), "unchanged file keeps the server etag");
        assert_eq!(inv[2].1.etag, None, "changed file lost it");
        assert_eq!(inv[2].1.blake3, blake3::hash(b"TWO!").to_hex().as_str());

        std::fs::remove_file(dir.path().join("a")).unwrap();
        m.refresh(&s, 100).unwrap();
        assert!(!m.files.contains_key("a"));
        assert!(m.refresh(&s, 1).is_err(), "more files than allowed");
    }

    #[test]
    fn unreadable_manifests_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Manifest::load(&path).files.is_empty());
        std::fs::write(&path, br#"{"format": 99, "files": {}}"#).unwrap();
        assert_eq!(Manifest::load(&path).format, FORMAT);
    }
}
