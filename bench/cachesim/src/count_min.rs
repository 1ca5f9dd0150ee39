//! A count-min sketch of 4-bit counters with periodic halving: TinyLFU's
//! estimate of how often a key was requested recently.

use ferry_files::cache::PolicyKey;

const ROWS: usize = 4;
/// 4-bit counters, as in TinyLFU and Caffeine.
const MAX_COUNT: u8 = 15;
/// Halve every counter after this many increments per counter slot
/// (Caffeine's sample size of 10 x the table width).
const SAMPLE_FACTOR: u64 = 10;

#[derive(Clone, Debug)]
pub struct CountMin {
    rows: [Vec<u8>; ROWS],
    mask: u64,
    increments: u64,
    sample: u64,
}

/// splitmix64's finaliser: a good bijective mix of the key per row.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl CountMin {
    /// A sketch for about `keys` distinct keys in the cache.
    pub fn new(keys: usize) -> CountMin {
        let width = keys.clamp(16, 1 << 24).next_power_of_two();
        CountMin {
            rows: std::array::from_fn(|_| vec![0; width]),
            mask: width as u64 - 1,
            increments: 0,
            sample: SAMPLE_FACTOR * width as u64,
        }
    }

    fn slot(&self, row: usize, key: PolicyKey) -> usize {
        (mix(key ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) & self.mask) as usize
    }

    pub fn estimate(&self, key: PolicyKey) -> u8 {
        (0..ROWS).map(|r| self.rows[r][self.slot(r, key)]).min().unwrap_or(0)
    }

    /// Conservative update: only the counters at the current minimum grow,
    /// which keeps over-estimates from hash collisions down.
    pub fn increment(&mut self, key: PolicyKey) {
        let min = self.estimate(key);
        if min < MAX_COUNT {
            for r in 0..ROWS {
                let s = self.slot(r, key);
                if self.rows[r][s] == min {
                    self.rows[r][s] += 1;
                }
            }
        }
        self.increments += 1;
        if self.increments >= self.sample {
            self.halve();
        }
    }

    /// Ages the history so that keys popular long ago lose their weight.
    fn halve(&mut self) {
        for row in &mut self.rows {
            for c in row.iter_mut() {
                *c /= 2;
            }
        }
        self.increments /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_age() {
        let mut s = CountMin::new(64);
        for _ in 0..20 {
            s.increment(1);
        }
        for _ in 0..3 {
            s.increment(2);
        }
        assert_eq!(s.estimate(1), 15);
        assert_eq!(s.estimate(2), 3);
        assert_eq!(s.estimate(3), 0);
        // 10 x 64 increments in all trigger a halving.
        for k in 100..(100 + 640 - 23) {
            s.increment(k);
        }
        assert!(s.estimate(1) <= 8, "{}", s.estimate(1));
        assert!(s.estimate(2) <= 2);
    }
}
