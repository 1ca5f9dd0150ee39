//! Expiration times as clients send them, turned into absolute unix seconds.
//!
//! memcached's rule (`realtime(EXPTIME_TO_POSITIVE_TIME(t))`) covers every place a client gives a time: the
//! classic `exptime` of storage commands, `touch`, `gat`/`gats`, the `flush_all` delay, and the meta `T`,
//! `N` and `R` flags (which memcached runs through the same function, so they too are absolute beyond 30
//! days). 0 means never; a negative time has already passed; up to 30 days it counts from now; above that it
//! is a unix timestamp, already past if it is not after now.

/// Longest relative expiration (30 days); a larger value is a unix timestamp.
pub const MAX_RELATIVE: i64 = 60 * 60 * 24 * 30;

/// When an item stops being visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Never expires (exptime 0).
    Never,
    /// Expires at this unix time: visible while `now < t`.
    At(u64),
    /// Expired already: a store with it leaves nothing visible (memcached still answers `STORED`).
    Expired,
}

/// Applies memcached's exptime rule at unix time `now`.
pub fn absolute(exptime: i64, now: u64) -> Expiry {
    match exptime {
        0 => Expiry::Never,
        t if t < 0 => Expiry::Expired,
        t if t <= MAX_RELATIVE => Expiry::At(now.saturating_add(t as u64)),
        t if t as u64 <= now => Expiry::Expired,
        t => Expiry::At(t as u64),
    }
}

impl Expiry {
    /// Whether an item with this expiry is gone at `now`.
    pub fn is_expired(self, now: u64) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(t) => t <= now,
            Expiry::Expired => true,
        }
    }

    /// Seconds left, as the meta `t` flag reports it: `-1` for an item that never expires.
    pub fn ttl(self, now: u64) -> i64 {
        match self {
            Expiry::Never => -1,
            Expiry::At(t) => i64::try_from(t.saturating_sub(now)).unwrap_or(i64::MAX),
            Expiry::Expired => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn zero_is_never() {
        assert_eq!(absolute(0, NOW), Expiry::Never);
        assert!(!Expiry::Never.is_expired(u64::MAX));
        assert_eq!(Expiry::Never.ttl(NOW), -1);
    }

    #[test]
    fn negative_is_expired() {
        // Observed: `set k 0 -1 1` answers STORED and `get k` then answers END.
        assert_eq!(absolute(-1, NOW), Expiry::Expired);
        assert_eq!(absolute(i64::from(i32::MIN), NOW), Expiry::Expired);
        assert!(Expiry::Expired.is_expired(0));
    }

    #[test]
    fn up_to_thirty_days_is_relative() {
        assert_eq!(absolute(1, NOW), Expiry::At(NOW + 1));
        assert_eq!(absolute(MAX_RELATIVE, NOW), Expiry::At(NOW + 2_592_000));
        assert_eq!(absolute(100, NOW).ttl(NOW), 100);
        assert!(!absolute(100, NOW).is_expired(NOW + 99));
        assert!(absolute(100, NOW).is_expired(NOW + 100));
    }

    #[test]
    fn beyond_thirty_days_is_a_timestamp() {
        assert_eq!(absolute(MAX_RELATIVE + 1, NOW), Expiry::Expired);
        assert_eq!(absolute(NOW as i64, NOW), Expiry::Expired);
        assert_eq!(absolute(NOW as i64 + 5, NOW), Expiry::At(NOW + 5));
        // i32::MAX (year 2038) is what `-2147483649` truncates to: a live item.
        assert_eq!(absolute(i64::from(i32::MAX), NOW), Expiry::At(i32::MAX as u64));
        assert_eq!(absolute(NOW as i64 + 5, NOW).ttl(NOW), 5);
    }
}
