//! The gateway state unit tests run against: a store under a temporary
//! directory and a small cache (1 MiB, entries up to 64 KiB).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ferry_files::{CacheConfig, CachePolicyKind, FileCache, FileStore};

use crate::state::HttpState;

/// A state whose files live in `dir/root`, with the default limits.
pub(crate) fn cached_state(dir: &tempfile::TempDir) -> HttpState {
    let store = FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap();
    let cache =
        FileCache::new(CacheConfig { max_bytes: 1 << 20, max_item_bytes: 64 << 10, policy: CachePolicyKind::S3Fifo });
    HttpState::with_cache(
        Arc::new(store),
        crate::HttpLimits::default(),
        Arc::new(|| serde_json::json!({})),
        Some(Arc::new(cache)),
    )
}
