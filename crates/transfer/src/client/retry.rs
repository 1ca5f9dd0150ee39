//! Exponential backoff between attempts.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_millis(200), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// Delay before attempt number `failures + 1` (failures ≥ 1): doubles
    /// from `first` up to `max`, with ±20% jitter so that many clients
    /// cut off together do not return together.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let base = self.first.saturating_mul(1 << exp).min(self.max);
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        base.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(1) };
        assert!(b.delay(1) <= Duration::from_millis(120));
        assert!(b.delay(3) >= Duration::from_millis(320));
        assert!(b.delay(30) <= Duration::from_millis(1200));
    }
}
