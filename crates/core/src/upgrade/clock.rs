//! The clock a per-session pause gap is measured on.
//!
//! A session pauses in one process and first runs again in another, so
//! the two moments must come from a clock both processes read the same
//! way. `CLOCK_MONOTONIC` is system-wide on Linux (unlike
//! `std::time::Instant`, whose value cannot be carried across processes)
//! and, unlike the wall clock, does not jump when the time is set.

/// Microseconds on `CLOCK_MONOTONIC`; 0 if the clock cannot be read (a
/// gap stamped 0 is not counted).
pub fn monotonic_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let micros = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000;
            secs.saturating_mul(1_000_000).saturating_add(micros)
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_and_matches_the_elapsed_time() {
        let a = monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_us();
        assert!(a > 0);
        assert!(b - a >= 5_000, "{a} {b}");
    }
}
