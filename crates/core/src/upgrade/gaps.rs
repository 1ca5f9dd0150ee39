//! Per-session pause gaps of a live upgrade: for each moved session, the
//! time from its pause in the old process (its last byte written there)
//! to the first run of its task in the new one (its first byte there
//! cannot come earlier), both on [`super::clock::monotonic_us`].

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::clock::monotonic_us;

/// Gaps kept per upgrade: more sessions than any connection limit allows.
pub const MAX_GAPS: usize = 1 << 20;

/// Gaps a report carries: READY must fit one upgrade-channel message.
pub const MAX_REPORTED_GAPS: usize = 4096;

/// The distribution of one upgrade's per-session gaps (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapSummary {
    /// Sessions measured.
    pub sessions: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl GapSummary {
    /// Nearest-rank percentiles of `gaps` (sorted in place).
    pub fn of(gaps: &mut [u64]) -> GapSummary {
        gaps.sort_unstable();
        let rank = |p: usize| -> u64 {
            if gaps.is_empty() {
                return 0;
            }
            let index = (gaps.len() * p).div_ceil(100).saturating_sub(1);
            gaps[index.min(gaps.len() - 1)]
        };
        GapSummary { sessions: gaps.len(), p50_us: rank(50), p99_us: rank(99), max_us: rank(100) }
    }
}

/// Gaps recorded by resumed session tasks in the new process.
#[derive(Debug, Default)]
pub struct GapLog {
    gaps: Mutex<Vec<u64>>,
}

impl GapLog {
    pub fn new() -> Arc<GapLog> {
        Arc::new(GapLog::default())
    }

    pub fn record(&self, gap_us: u64) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        if gaps.len() < MAX_GAPS {
            gaps.push(gap_us);
        }
    }

    pub fn count(&self) -> usize {
        self.gaps.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The summary, and the sorted gaps (evenly thinned to at most
    /// [`MAX_REPORTED_GAPS`]).
    pub fn summary(&self) -> (GapSummary, Vec<u64>) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let summary = GapSummary::of(&mut gaps);
        let step = gaps.len().div_ceil(MAX_REPORTED_GAPS).max(1);
        let reported = gaps.iter().copied().step_by(step).collect();
        (summary, reported)
    }
}

/// What a resumed session carries into its task: when it paused, and where
/// its gap goes.
#[derive(Clone, Debug)]
pub struct ResumeStamp {
    /// [`monotonic_us`] when it paused in the old process; 0 if the old
    /// process did not say (an older release), and then nothing is recorded.
    pub paused_mono_us: u64,
    pub log: Arc<GapLog>,
}

impl ResumeStamp {
    /// Called as the resumed session's task first runs.
    pub fn record(&self) {
        if self.paused_mono_us > 0 {
            self.log.record(monotonic_us().saturating_sub(self.paused_mono_us));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut gaps: Vec<u64> = (1..=200).rev().collect();
        let s = GapSummary::of(&mut gaps);
        assert_eq!(s, GapSummary { sessions: 200, p50_us: 100, p99_us: 198, max_us: 200 });
        assert_eq!(GapSummary::of(&mut []), GapSummary::default());
        assert_eq!(GapSummary::of(&mut [7]), GapSummary { sessions: 1, p50_us: 7, p99_us: 7, max_us: 7 });
    }

    #[test]
    fn a_report_carries_a_bounded_sorted_sample() {
        let log = GapLog::new();
        for gap in (0..10_000u64).rev() {
            log.record(gap);
        }
        let (s, reported) = log.summary();
        assert_eq!((s.sessions, s.max_us), (10_000, 9_999));
        assert!(reported.len() <= MAX_REPORTED_GAPS && reported.len() > MAX_REPORTED_GAPS / 2);
        assert!(reported.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_stamp_records_the_time_since_the_pause_and_skips_unknown_ones() {
        let log = GapLog::new();
        let paused = monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        ResumeStamp { paused_mono_us: paused, log: log.clone() }.record();
        ResumeStamp { paused_mono_us: 0, log: log.clone() }.record();
        let (s, reported) = log.summary();
        assert_eq!(s.sessions, 1);
        assert_eq!(reported, vec![s.max_us]);
        assert!(s.max_us >= 2_000 && s.max_us < 10_000_000, "{s:?}");
    }
}
