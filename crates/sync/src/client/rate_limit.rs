//! `--limit-rate`: keeps the upload rate at or under a number of bytes per second, averaged since the
//! connection started.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct RateLimit {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> RateLimit {
        RateLimit { rate: rate.filter(|r| *r > 0), start: Instant::now(), bytes: 0 }
    }

    /// Accounts for `n` bytes; returns when they may be sent.
    pub fn due(&mut self, n: u64) -> Option<Instant> {
        let rate = self.rate?;
        self.bytes += n;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        (due > Instant::now()).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_bytes_over_time() {
        let before = Instant::now();
        let mut r = RateLimit::new(Some(1000));
        let after = Instant::now();
        let due = r.due(500).unwrap();
        assert!(due >= before + Duration::from_millis(500) && due <= after + Duration::from_millis(500));
        let due = r.due(500).unwrap();
        assert!(due >= before + Duration::from_secs(1) && due <= after + Duration::from_secs(1));
        assert!(RateLimit::new(None).due(1 << 30).is_none());
    }
}
