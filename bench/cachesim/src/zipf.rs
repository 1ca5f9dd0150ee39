//! Zipf-distributed ranks.
//!
//! Rank `r` (0-based) is drawn with probability proportional to
//! `1 / (r + 1)^alpha`. With a fixed, modest number of ranks the exact
//! inverse-CDF method is simplest and has no approximation to argue about: a
//! table of cumulative weights and a binary search per draw.

use rand::{Rng, RngExt};

#[derive(Clone, Debug)]
pub struct Zipf {
    /// cdf[r] = sum of the weights of ranks 0..=r, normalised to end at 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` ranks with exponent `alpha` (> 0).
    pub fn new(n: usize, alpha: f64) -> Zipf {
        assert!(n > 0 && alpha > 0.0 && alpha.is_finite(), "zipf over {n} ranks with alpha {alpha}");
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for r in 0..n {
            total += 1.0 / ((r + 1) as f64).powf(alpha);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        // The first rank whose cumulative weight exceeds u; u < 1 and the
        // last entry is 1 (up to rounding), so clamp for the rounding case.
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }

    /// The probability of rank `r`.
    #[cfg(test)]
    pub fn probability(&self, r: usize) -> f64 {
        if r == 0 { self.cdf[0] } else { self.cdf[r] - self.cdf[r - 1] }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    use super::*;

    #[test]
    fn frequencies_follow_the_law() {
        let z = Zipf::new(1000, 1.0);
        let h: f64 = (1..=1000).map(|k| 1.0 / k as f64).sum();
        assert!((z.probability(0) - 1.0 / h).abs() < 1e-12);
        assert!((z.probability(9) - 0.1 / h).abs() < 1e-12);

        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        let draws = 1_000_000;
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        for r in [0, 1, 9, 99] {
            let expected = z.probability(r) * draws as f64;
            let got = f64::from(counts[r]);
            // Well within 5 standard deviations of a binomial count.
            assert!((got - expected).abs() < 5.0 * expected.sqrt() + 1.0, "rank {r}: {got} vs {expected}");
        }
        // Rank 0 vs rank 1 is 2:1 for alpha 1.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((ratio - 2.0).abs() < 0.05, "{ratio}");
    }

    #[test]
    fn steeper_alpha_concentrates_more() {
        let flat = Zipf::new(10_000, 0.8);
        let steep = Zipf::new(10_000, 1.2);
        let top100 = |z: &Zipf| (0..100).map(|r| z.probability(r)).sum::<f64>();
        assert!(top100(&steep) > top100(&flat) + 0.2);
        assert_eq!(Zipf::new(1, 1.0).sample(&mut Xoshiro256PlusPlus::seed_from_u64(1)), 0);
    }
}
