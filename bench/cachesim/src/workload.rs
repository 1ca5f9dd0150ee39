//! The files and request streams of the benchmark.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::zipf::Zipf;

/// What is replayed against every policy: file sizes and the requests.
#[derive(Clone, Debug)]
pub struct Workload {
    /// sizes[f] is the size of file f, which is also its popularity rank.
    pub sizes: Vec<u64>,
    /// Requests not counted, to start measuring from a warm cache.
    pub warmup: Vec<u32>,
    pub measured: Vec<u32>,
}

/// `n` file sizes drawn log-uniformly from `min..=max`, independently of
/// rank: sizes are assigned to popularity ranks at random, so popular files
/// are no smaller or larger than unpopular ones on average.
pub fn log_uniform_sizes(rng: &mut Xoshiro256PlusPlus, n: usize, min: u64, max: u64) -> Vec<u64> {
    assert!(0 < min && min <= max);
    let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            ((lo + u * (hi - lo)).exp().round() as u64).clamp(min, max)
        })
        .collect()
}

impl Workload {
    /// A stream over `files` files of 1 KiB..1 MiB with Zipf(`alpha`)
    /// popularity; the same `seed` gives the same sizes for every alpha.
    pub fn generate(files: usize, alpha: f64, warmup: usize, measured: usize, seed: u64) -> Workload {
        assert!(files <= u32::MAX as usize);
        let mut size_rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let sizes = log_uniform_sizes(&mut size_rng, files, 1024, 1024 * 1024);
        let zipf = Zipf::new(files, alpha);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ alpha.to_bits());
        let mut draw = |n: usize| (0..n).map(|_| zipf.sample(&mut rng) as u32).collect::<Vec<_>>();
        let warmup = draw(warmup);
        let measured = draw(measured);
        Workload { sizes, warmup, measured }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_log_uniform_within_bounds() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let sizes = log_uniform_sizes(&mut rng, 100_000, 1024, 1 << 20);
        assert!(sizes.iter().all(|&s| (1024..=1 << 20).contains(&s)));
        // Log-uniform: each factor-of-32 band holds about half of the files.
        let below_32k = sizes.iter().filter(|&&s| s < 32 * 1024).count() as f64 / sizes.len() as f64;
        assert!((below_32k - 0.5).abs() < 0.01, "{below_32k}");
        let mean = sizes.iter().sum::<u64>() as f64 / sizes.len() as f64;
        let expected = (1048576.0 - 1024.0) / (1024f64).ln();
        assert!((mean / expected - 1.0).abs() < 0.02, "{mean} vs {expected}");
    }

    #[test]
    fn fixed_seed_fixed_workload() {
        let a = Workload::generate(100, 1.0, 10, 1000, 42);
        let b = Workload::generate(100, 1.0, 10, 1000, 42);
        assert_eq!((a.sizes.clone(), a.measured.clone()), (b.sizes.clone(), b.measured.clone()));
        let c = Workload::generate(100, 0.8, 10, 1000, 42);
        assert_eq!(a.sizes, c.sizes, "same files for every alpha");
        assert_ne!(a.measured, c.measured);
        assert!(a.measured.iter().all(|&f| (f as usize) < 100));
    }
}
