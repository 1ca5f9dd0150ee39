//! What a listing of the cache shows (`LIST CACHE`, `ferry cache`,
//! `/api/cache`): serializable, so every front end prints the same thing.

use serde::{Deserialize, Serialize};

/// The cache at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheSnapshot {
    /// The policy's configuration name.
    pub policy: String,
    pub max_bytes: u64,
    /// Sum of `entries[..].size`.
    pub bytes_held: u64,
    /// Next victim first.
    pub entries: Vec<CacheEntryInfo>,
    pub hits: u64,
    pub misses: u64,
    pub hit_bytes: u64,
    pub miss_bytes: u64,
    pub evictions: u64,
    /// hits / (hits + misses); 0 before the first request.
    pub object_hit_ratio: f64,
    /// hit_bytes / (hit_bytes + miss_bytes); 0 before the first request.
    pub byte_hit_ratio: f64,
}

/// One cached file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntryInfo {
    pub name: String,
    pub size: u64,
    /// Hits since the file was cached.
    pub hits: u64,
    /// Time since the file was cached.
    pub age_ms: u64,
}
