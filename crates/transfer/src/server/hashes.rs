//! BLAKE3 digests of stored files for `DONE` at the end of a GET.
//!
//! Files uploaded through ferry have their digest recorded at commit;
//! others (placed in the root by hand, or after a restart) are hashed once,
//! on a blocking thread, while the first GET already streams. Concurrent
//! GETs of the same file share one computation.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use ferry_files::{Etag, HashCache, SafeName, hash_file};
use tokio::sync::OnceCell;

type Key = (SafeName, Etag);
type Cell = Arc<OnceCell<Result<blake3::Hash, String>>>;

pub struct HashService {
    cache: HashCache,
    inflight: Mutex<HashMap<Key, Cell>>,
}

impl HashService {
    pub fn new(max_entries: usize) -> HashService {
        HashService { cache: HashCache::new(max_entries), inflight: Mutex::new(HashMap::new()) }
    }

    /// Records the digest of a file just stored.
    pub fn insert(&self, name: &SafeName, etag: Etag, hash: blake3::Hash) {
        self.cache.insert(name, etag, hash);
    }

    /// The digest of `name` at `etag`, if already known.
    pub fn known(&self, name: &SafeName, etag: &Etag) -> Option<blake3::Hash> {
        self.cache.get(name, etag)
    }

    /// The digest of `file`, known to be `name` at `etag`.
    pub async fn hash(&self, name: &SafeName, etag: &Etag, file: Arc<File>) -> Result<blake3::Hash, String> {
        if let Some(hash) = self.cache.get(name, etag) {
            return Ok(hash);
        }
        let key = (name.clone(), etag.clone());
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async move {
                match tokio::task::spawn_blocking(move || hash_file(&file)).await {
                    Ok(Ok(hash)) => Ok(hash),
                    Ok(Err(e)) => Err(format!("cannot hash file: {e}")),
                    Err(e) => Err(format!("hashing task failed: {e}")),
                }
            })
            .await
            .clone();
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        if let Ok(hash) = &result {
            self.cache.insert(name, etag.clone(), *hash);
        }
        result
    }
}
