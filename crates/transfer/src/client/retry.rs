//! Exponential backoff between attempts.

use std::time::Duration;

use super::error::ClientError;
use super::observer::Observer;

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

/// Counts failed attempts in a row and decides whether to try again.
pub(crate) struct Retrier {
    retries: u32,
    backoff: Backoff,
    failures: u32,
}

impl Retrier {
    pub(crate) fn new(retries: u32, backoff: Backoff) -> Retrier {
        Retrier { retries, backoff, failures: 0 }
    }

    /// After a failed attempt: waits and returns `Ok` if another attempt
    /// should follow, or gives the error back. An attempt that moved bytes
    /// (`progressed`) resets the count, so a long transfer survives any
    /// number of separate interruptions.
    pub(crate) async fn after(
        &mut self,
        e: ClientError,
        progressed: bool,
        obs: &mut dyn Observer,
    ) -> Result<(), ClientError> {
        if !e.is_transient() {
            return Err(e);
        }
        if progressed {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > self.retries {
            return Err(e);
        }
        let delay = self.backoff.delay(self.failures);
        obs.notice(&format!("{e}; retrying in {:.1}s ({}/{})", delay.as_secs_f64(), self.failures, self.retries));
        tokio::time::sleep(delay).await;
        Ok(())
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
