//! How big the file cache is and which policy it evicts by.

use std::fmt;
use std::str::FromStr;

const MIB: u64 = 1024 * 1024;

/// One entry slot per this many bytes of `max_bytes`: the entry-count bound
/// that keeps the bookkeeping of tiny (or empty) files from outgrowing the
/// cached bytes themselves. 64 MiB gives 16,384 slots, more than enough for
/// files averaging over 4 KiB.
pub const BYTES_PER_ENTRY_SLOT: u64 = 4096;
/// Fewest entry slots, so that tiny test caches still hold a few files.
pub const MIN_ENTRY_SLOTS: usize = 16;
/// Most entry slots, whatever `max_bytes` is.
pub const MAX_ENTRY_SLOTS: usize = 1 << 20;

/// The replacement policy, by its configuration name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicyKind {
    /// First in, first out: the seed's policy.
    Fifo,
    /// Least recently used.
    Lru,
    /// S3-FIFO: scan-resistant, the best hit ratio of the three on Zipf
    /// traffic (see docs/cache.md).
    #[default]
    S3Fifo,
}

impl CachePolicyKind {
    pub const ALL: [CachePolicyKind; 3] = [CachePolicyKind::Fifo, CachePolicyKind::Lru, CachePolicyKind::S3Fifo];

    /// The name used in the config file and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicyKind::Fifo => "fifo",
            CachePolicyKind::Lru => "lru",
            CachePolicyKind::S3Fifo => "s3fifo",
        }
    }
}

impl fmt::Display for CachePolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is none of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown cache policy {0:?} (expected fifo, lru or s3fifo)")]
pub struct UnknownPolicy(pub String);

impl FromStr for CachePolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CachePolicyKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            // Bounded quote: the name may come from a long config line.
            UnknownPolicy(s.chars().take(64).collect())
        })
    }
}

/// The `[cache]` settings the file cache is built from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Hard bound on the bytes of cached file contents.
    pub max_bytes: u64,
    /// Larger files are never cached (read from disk each time), so one big
    /// file cannot flush the cache.
    pub max_item_bytes: u64,
    pub policy: CachePolicyKind,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let max_bytes = 64 * MIB;
        CacheConfig { max_bytes, max_item_bytes: max_bytes / 8, policy: CachePolicyKind::default() }
    }
}

impl CacheConfig {
    /// The bound on cached entries that goes with `max_bytes`.
    pub fn max_entries(&self) -> usize {
        let slots = usize::try_from(self.max_bytes / BYTES_PER_ENTRY_SLOT).unwrap_or(MAX_ENTRY_SLOTS);
        slots.clamp(MIN_ENTRY_SLOTS, MAX_ENTRY_SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = CacheConfig::default();
        assert_eq!((c.max_bytes, c.max_item_bytes, c.policy), (64 * MIB, 8 * MIB, CachePolicyKind::S3Fifo));
        assert_eq!(c.max_entries(), 16_384);
        let tiny = CacheConfig { max_bytes: 10, ..c.clone() };
        assert_eq!(tiny.max_entries(), MIN_ENTRY_SLOTS);
        let huge = CacheConfig { max_bytes: u64::MAX, ..c };
        assert_eq!(huge.max_entries(), MAX_ENTRY_SLOTS);
    }

    #[test]
    fn names_round_trip() {
        for kind in CachePolicyKind::ALL {
            assert_eq!(kind.as_str().parse::<CachePolicyKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<CachePolicyKind>(&format!("\"{kind}\"")).unwrap(), kind);
        }
        let err = "LRU".parse::<CachePolicyKind>().unwrap_err();
        assert!(err.to_string().contains("\"LRU\""), "{err}");
        assert_eq!("x".repeat(1000).parse::<CachePolicyKind>().unwrap_err().0.len(), 64);
        assert!(serde_json::from_str::<CachePolicyKind>("\"arc\"").is_err());
    }

    #[test]
    fn config_rejects_unknown_keys_and_fills_defaults() {
        let c: CacheConfig = serde_json::from_str(r#"{"policy":"lru"}"#).unwrap();
        assert_eq!(c, CacheConfig { policy: CachePolicyKind::Lru, ..CacheConfig::default() });
        assert!(serde_json::from_str::<CacheConfig>(r#"{"max_byte":1}"#).is_err());
    }
}
