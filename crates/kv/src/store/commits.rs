//! The group commits in flight (fsync mode), and the order in which they make records durable.
//!
//! Several commit threads may each have an `fdatasync` of the log in flight at once: a commit issued while
//! another one is still running does not wait for it, so a record appended during a commit waits for one
//! `fdatasync` of its own instead of the rest of the running one plus its own. An `fdatasync` covers every
//! write that completed before it was issued; each commit therefore covers the records up to the sequence
//! number it read when it was issued (under the writer lock, after those writes returned).
//!
//! The durable sequence number still advances in issue order only: a commit that returns first does not
//! count until every commit issued before it has returned too. Coverage alone would allow more (the later
//! `fdatasync` waits for the pages the earlier one is writing and flushes them too), but not failure: the
//! kernel reports a writeback error to one `fdatasync` call on the file, and the pages that failed are then
//! clean. If the earlier commit was the one told, the later one returns success without those records on
//! disk, and only the earlier one's failure says that they are lost. So a failure stops the advance for
//! good, and a success is believed only once every earlier commit succeeded.
//!
//! When to issue ([`CommitQueue::issue_wait`]): at once when records are pending and no `fdatasync` is
//! running (the classic group commit: on a fast disk, commits run back to back, one at a time, and a record
//! waits for the rest of the running one plus one of its own, about 1.5 `fdatasync`s); while one is
//! running, another only once the newest running one has run for longer than the interval. Overlap is for
//! a slow disk, where it cuts the wait; on a fast one it only multiplies `fdatasync`s, each costing CPU.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Group commits issued and not yet retired, oldest first.
#[derive(Debug)]
pub(super) struct CommitQueue {
    /// Bound on commits in flight.
    capacity: usize,
    /// Highest sequence number covered by an issued commit.
    issued: u64,
    /// Issued commits in issue order (their sequence numbers strictly increase).
    in_flight: VecDeque<InFlight>,
    /// Highest sequence number retired as durable.
    durable: u64,
    /// A commit failed: nothing is retired as durable any more.
    failed: bool,
}

/// One issued commit.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// The sequence number it covers.
    seq: u64,
    /// When it was issued.
    at: Instant,
    /// Its outcome, once its `fdatasync` returned.
    outcome: Option<bool>,
}

/// What retiring commits changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Retired {
    /// The durable sequence number advanced to this.
    pub durable: Option<u64>,
    /// A commit failed (reported once, by the call that retired it).
    pub failed: bool,
}

impl CommitQueue {
    /// A queue of at most `capacity` commits in flight, with every record up to `durable` durable already.
    pub(super) fn new(capacity: usize, durable: u64) -> CommitQueue {
        assert!(capacity > 0, "a commit queue needs room for one commit");
        CommitQueue { capacity, issued: durable, in_flight: VecDeque::with_capacity(capacity), durable, failed: false }
    }

    /// Whether another commit may be issued now: there is room, and no commit failed.
    pub(super) fn has_room(&self) -> bool {
        !self.failed && self.in_flight.len() < self.capacity
    }

    /// With records pending at `now`, how long to wait before issuing a commit for them: zero when no
    /// commit's `fdatasync` is running; else what is left of `interval` since the newest running one was
    /// issued. `None`: no commit may be issued (no room, or a commit failed) until one returns.
    pub(super) fn issue_wait(&self, now: Instant, interval: Duration) -> Option<Duration> {
        if !self.has_room() {
            return None;
        }
        let newest_running = self.in_flight.iter().rev().find(|c| c.outcome.is_none());
        Some(newest_running.map_or(Duration::ZERO, |c| interval.saturating_sub(now.saturating_duration_since(c.at))))
    }

    /// Records a commit covering the records up to `seq`, issued at `at`. `false` (nothing recorded): an
    /// issued commit covers `seq` already, or there is no room.
    pub(super) fn issue(&mut self, seq: u64, at: Instant) -> bool {
        if seq <= self.issued || !self.has_room() {
            return false;
        }
        self.issued = seq;
        self.in_flight.push_back(InFlight { seq, at, outcome: None });
        true
    }

    /// The commit issued for `seq` returned (`ok`: its `fdatasync` succeeded). Retires every commit at the
    /// front of the queue that has returned.
    pub(super) fn complete(&mut self, seq: u64, ok: bool) -> Retired {
        let slot = self.in_flight.iter_mut().find(|c| c.seq == seq && c.outcome.is_none());
        let Some(slot) = slot else {
            unreachable!("commit for seq {seq} completed but was not in flight");
        };
        slot.outcome = Some(ok);
        let mut retired = Retired::default();
        while let Some(&InFlight { seq: s, outcome: Some(ok), .. }) = self.in_flight.front() {
            self.in_flight.pop_front();
            if self.failed {
                continue;
            }
            if ok {
                assert!(s > self.durable, "commits retire in increasing sequence order");
                self.durable = s;
                retired.durable = Some(s);
            } else {
                self.failed = true;
                retired.failed = true;
            }
        }
        retired
    }

    /// Commits issued and not yet retired.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn in_order_completion_advances_each_time() {
        let mut q = CommitQueue::new(3, 0);
        assert!(q.issue(5, t0()));
        assert!(q.issue(9, t0()));
        assert_eq!(q.complete(5, true), Retired { durable: Some(5), failed: false });
        assert_eq!(q.complete(9, true), Retired { durable: Some(9), failed: false });
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_later_commit_returning_first_acknowledges_nothing_until_the_earlier_returns() {
        let mut q = CommitQueue::new(3, 0);
        assert!(q.issue(5, t0()));
        assert!(q.issue(9, t0()));
        assert!(q.issue(12, t0()));
        // The commit for 9 returns first: 6..=9 must not be acknowledged while 1..=5 are not.
        assert_eq!(q.complete(9, true), Retired::default());
        assert_eq!(q.in_flight(), 3);
        // Now the first returns: both retire, up to 9, not 12.
        assert_eq!(q.complete(5, true), Retired { durable: Some(9), failed: false });
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.complete(12, true), Retired { durable: Some(12), failed: false });
    }

    #[test]
    fn a_failure_stops_the_advance_even_if_a_later_commit_succeeded() {
        let mut q = CommitQueue::new(3, 2);
        assert!(q.issue(5, t0()));
        assert!(q.issue(9, t0()));
        assert_eq!(q.complete(9, true), Retired::default());
        assert_eq!(q.complete(5, false), Retired { durable: None, failed: true });
        assert!(!q.has_room());
        assert!(!q.issue(10, t0()));
    }

    #[test]
    fn a_success_after_a_failure_retires_nothing() {
        let mut q = CommitQueue::new(2, 0);
        assert!(q.issue(3, t0()));
        assert!(q.issue(4, t0()));
        assert_eq!(q.complete(3, false), Retired { durable: None, failed: true });
        assert_eq!(q.complete(4, true), Retired::default());
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn issue_is_bounded_and_skips_what_is_covered() {
        let mut q = CommitQueue::new(2, 7);
        assert!(!q.issue(7, t0()), "covered by what is durable already");
        assert!(q.issue(8, t0()));
        assert!(!q.issue(8, t0()), "covered by the commit in flight");
        assert!(q.issue(10, t0()));
        assert!(!q.has_room());
        assert!(!q.issue(11, t0()), "two in flight at most");
        assert_eq!(q.complete(8, true).durable, Some(8));
        assert!(q.issue(11, t0()));
    }

    #[test]
    fn with_none_running_a_commit_is_issued_at_once() {
        let ms = Duration::from_millis;
        let q = CommitQueue::new(3, 0);
        let now = Instant::now();
        assert_eq!(q.issue_wait(now, ms(1)), Some(Duration::ZERO));
        assert_eq!(q.issue_wait(now, Duration::ZERO), Some(Duration::ZERO));
        // A commit that just returned does not hold the next one back for the interval (it did when the
        // interval counted from the last issue).
        let mut q = CommitQueue::new(3, 0);
        assert!(q.issue(4, now));
        assert_eq!(q.complete(4, true).durable, Some(4));
        assert_eq!(q.issue_wait(now + ms(0), ms(1000)), Some(Duration::ZERO));
    }

    #[test]
    fn while_one_runs_the_next_waits_for_the_interval_since_the_newest_running_issue() {
        let ms = Duration::from_millis;
        let mut q = CommitQueue::new(3, 0);
        let t = Instant::now();
        assert!(q.issue(5, t));
        assert_eq!(q.issue_wait(t, ms(10)), Some(ms(10)));
        assert_eq!(q.issue_wait(t + ms(4), ms(10)), Some(ms(6)));
        assert_eq!(q.issue_wait(t + ms(10), ms(10)), Some(Duration::ZERO), "running longer than the interval");
        assert_eq!(q.issue_wait(t + ms(50), ms(10)), Some(Duration::ZERO));
        assert_eq!(q.issue_wait(t, Duration::ZERO), Some(Duration::ZERO), "interval 0: always overlap");
        // A second one, issued 12 ms in: the next counts from it, the newest running.
        assert!(q.issue(9, t + ms(12)));
        assert_eq!(q.issue_wait(t + ms(15), ms(10)), Some(ms(7)));
        // The newest returns first (the older is still running): the next counts from the older one.
        assert_eq!(q.complete(9, true), Retired::default());
        assert_eq!(q.issue_wait(t + ms(15), ms(10)), Some(Duration::ZERO));
        assert_eq!(q.issue_wait(t + ms(5), ms(10)), Some(ms(5)));
        // Both returned: at once.
        assert_eq!(q.complete(5, true).durable, Some(9));
        assert_eq!(q.issue_wait(t + ms(15), ms(10)), Some(Duration::ZERO));
    }

    #[test]
    fn no_issue_without_room_or_after_a_failure() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        let mut q = CommitQueue::new(1, 0);
        assert!(q.issue(1, t));
        assert_eq!(q.issue_wait(t + ms(100), ms(1)), None, "one in flight at most");
        assert!(q.complete(1, false).failed);
        assert_eq!(q.issue_wait(t + ms(100), ms(1)), None, "nothing is issued after a failure");
    }
}
