//! Hit, miss and eviction counters of the file cache.

/// Counted under the cache's lock, so plain integers suffice and a snapshot
/// sees all of them at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests served from memory.
    pub hits: u64,
    /// Requests that had to read the disk (or wait for another's read), and
    /// requests for files too large to cache.
    pub misses: u64,
    pub hit_bytes: u64,
    pub miss_bytes: u64,
    /// Entries removed to make room; invalidations are not counted.
    pub evictions: u64,
}

impl CacheStats {
    pub fn record_hit(&mut self, bytes: u64) {
        self.hits += 1;
        self.hit_bytes = self.hit_bytes.saturating_add(bytes);
    }

    pub fn record_miss(&mut self, bytes: u64) {
        self.misses += 1;
        self.miss_bytes = self.miss_bytes.saturating_add(bytes);
    }

    /// Share of requests served from memory; 0 before the first request.
    pub fn object_hit_ratio(&self) -> f64 {
        ratio(self.hits, self.misses)
    }

    /// Share of requested bytes served from memory; 0 before the first byte.
    pub fn byte_hit_ratio(&self) -> f64 {
        ratio(self.hit_bytes, self.miss_bytes)
    }
}

fn ratio(hit: u64, miss: u64) -> f64 {
    let total = hit as f64 + miss as f64;
    if total == 0.0 { 0.0 } else { hit as f64 / total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        let mut s = CacheStats::default();
        assert_eq!((s.object_hit_ratio(), s.byte_hit_ratio()), (0.0, 0.0));
        s.record_hit(300);
        s.record_miss(100);
        s.record_miss(0);
        assert_eq!((s.hits, s.misses, s.hit_bytes, s.miss_bytes), (1, 2, 300, 100));
        assert!((s.object_hit_ratio() - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.byte_hit_ratio() - 0.75).abs() < 1e-12);
        s.record_hit(u64::MAX);
        assert_eq!(s.hit_bytes, u64::MAX, "saturates");
    }
}
