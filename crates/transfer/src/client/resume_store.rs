//! Resume records in the user's cache directory: the etag of a partial
//! download (`PATH.part`) and the upload id of a partial upload, so that a
//! client killed and run again with the same command continues where it
//! stopped.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Clone, Debug)]
pub struct ResumeStore {
    dir: PathBuf,
}

impl ResumeStore {
    pub fn new(dir: PathBuf) -> ResumeStore {
        ResumeStore { dir }
    }

    /// `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`, else
    /// `$HOME/.cache/ferry`.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("FERRY_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ferry")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("ferry")))
    }

    fn path(&self, kind: &str, identity: &str) -> PathBuf {
        let key = blake3::hash(identity.as_bytes()).to_hex();
        self.dir.join(kind).join(format!("{}.json", &key[..32]))
    }

    pub fn load<T: DeserializeOwned>(&self, kind: &str, identity: &str) -> Option<T> {
        let bytes = std::fs::read(self.path(kind, identity)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves atomically (temp file + rename).
    pub fn save<T: Serialize>(&self, kind: &str, identity: &str, value: &T) -> io::Result<()> {
        let path = self.path(kind, identity);
        let dir = path.parent().ok_or_else(|| io::Error::other("record path has no parent"))?;
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(&self, kind: &str, identity: &str) {
        let _ = std::fs::remove_file(self.path(kind, identity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::new(dir.path().to_path_buf());
        store.save("get", "a", &("x".to_string(), 3u64)).unwrap();
        assert_eq!(store.load::<(String, u64)>("get", "a"), Some(("x".into(), 3)));
        assert_eq!(store.load::<(String, u64)>("get", "b"), None);
        store.remove("get", "a");
        assert_eq!(store.load::<(String, u64)>("get", "a"), None);
    }
}
