//! `--limit-rate`: keeps a transfer at or under a byte rate.

use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimit {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> RateLimit {
        RateLimit { rate: rate.filter(|r| *r > 0), start: Instant::now(), bytes: 0 }
    }

    /// Accounts for `n` bytes and sleeps until the average rate is back
    /// under the limit.
    pub async fn take(&mut self, n: u64) {
        let Some(rate) = self.rate else { return };
        self.bytes += n;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}
