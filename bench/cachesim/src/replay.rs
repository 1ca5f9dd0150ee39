//! Running a request stream through a policy.

use ferry_files::cache::policy::{EvictionPolicy, PolicyKey, assert_within_limits};

use crate::workload::Workload;

/// Hits and requests, by count and by bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ratios {
    pub object: f64,
    pub byte: f64,
}

/// Replays the warm-up uncounted, then the measured requests, as the file
/// cache would: a resident key is a hit, anything else a miss followed by an
/// insert. Checks the policy's bounds after every request.
pub fn replay(policy: &mut dyn EvictionPolicy, w: &Workload) -> Ratios {
    let mut evicted = Vec::new();
    let mut access = |policy: &mut dyn EvictionPolicy, file: u32| -> bool {
        let key = PolicyKey::from(file);
        let hit = policy.contains(key);
        if hit {
            policy.on_hit(key);
        } else {
            evicted.clear();
            policy.insert(key, w.sizes[file as usize], &mut evicted);
        }
        assert_within_limits(policy);
        hit
    };
    for &f in &w.warmup {
        access(policy, f);
    }
    let (mut hits, mut hit_bytes, mut bytes) = (0u64, 0u64, 0u64);
    for &f in &w.measured {
        let size = w.sizes[f as usize];
        bytes += size;
        if access(policy, f) {
            hits += 1;
            hit_bytes += size;
        }
    }
    let n = w.measured.len().max(1) as f64;
    Ratios { object: hits as f64 / n, byte: hit_bytes as f64 / bytes.max(1) as f64 }
}

#[cfg(test)]
mod tests {
    use ferry_files::cache::{CachePolicyKind, Limits, new_policy};

    use super::*;

    fn workload(sizes: Vec<u64>, measured: Vec<u32>) -> Workload {
        Workload { sizes, warmup: Vec::new(), measured }
    }

    #[test]
    fn counts_hits_by_object_and_byte() {
        // Two files, both fit: only the first request of each misses.
        let w = workload(vec![100, 300], vec![0, 1, 0, 1, 1]);
        let mut p = new_policy(CachePolicyKind::Lru, Limits { max_bytes: 400, max_entries: 10 });
        let r = replay(p.as_mut(), &w);
        assert!((r.object - 0.6).abs() < 1e-12);
        assert!((r.byte - 700.0 / 1100.0).abs() < 1e-12);
    }

    #[test]
    fn warmup_is_not_counted_and_a_too_small_cache_never_hits() {
        let mut w = workload(vec![100, 300], vec![0, 1]);
        w.warmup = vec![0, 1];
        let mut p = new_policy(CachePolicyKind::Fifo, Limits { max_bytes: 400, max_entries: 10 });
        assert_eq!(replay(p.as_mut(), &w), Ratios { object: 1.0, byte: 1.0 });
        let mut tiny = new_policy(CachePolicyKind::Fifo, Limits { max_bytes: 99, max_entries: 10 });
        assert_eq!(replay(tiny.as_mut(), &w), Ratios { object: 0.0, byte: 0.0 });
    }
}
