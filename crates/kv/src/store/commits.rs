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

use std::collections::VecDeque;

/// Group commits issued and not yet retired, oldest first.
#[derive(Debug)]
pub(super) struct CommitQueue {
    /// Bound on commits in flight.
    capacity: usize,
    /// Highest sequence number covered by an issued commit.
    issued: u64,
    /// Issued commits in issue order (their sequence numbers strictly increase): the sequence number each
    /// covers, and its outcome once its `fdatasync` returned.
    in_flight: VecDeque<(u64, Option<bool>)>,
    /// Highest sequence number retired as durable.
    durable: u64,
    /// A commit failed: nothing is retired as durable any more.
    failed: bool,
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

    /// Records a commit covering the records up to `seq`, about to be issued. `false` (nothing recorded):
    /// an issued commit covers `seq` already, or there is no room.
    pub(super) fn issue(&mut self, seq: u64) -> bool {
        if seq <= self.issued || !self.has_room() {
            return false;
        }
        self.issued = seq;
        self.in_flight.push_back((seq, None));
        true
    }

    /// The commit issued for `seq` returned (`ok`: its `fdatasync` succeeded). Retires every commit at the
    /// front of the queue that has returned.
    pub(super) fn complete(&mut self, seq: u64, ok: bool) -> Retired {
        let slot = self.in_flight.iter_mut().find(|(s, outcome)| *s == seq && outcome.is_none());
        let Some((_, outcome)) = slot else {
            unreachable!("commit for seq {seq} completed but was not in flight");
        };
        *outcome = Some(ok);
        let mut retired = Retired::default();
        while let Some(&(s, Some(ok))) = self.in_flight.front() {
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

    #[test]
    fn in_order_completion_advances_each_time() {
        let mut q = CommitQueue::new(3, 0);
        assert!(q.issue(5));
        assert!(q.issue(9));
        assert_eq!(q.complete(5, true), Retired { durable: Some(5), failed: false });
        assert_eq!(q.complete(9, true), Retired { durable: Some(9), failed: false });
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_later_commit_returning_first_acknowledges_nothing_until_the_earlier_returns() {
        let mut q = CommitQueue::new(3, 0);
        assert!(q.issue(5));
        assert!(q.issue(9));
        assert!(q.issue(12));
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
        assert!(q.issue(5));
        assert!(q.issue(9));
        assert_eq!(q.complete(9, true), Retired::default());
        assert_eq!(q.complete(5, false), Retired { durable: None, failed: true });
        assert!(!q.has_room());
        assert!(!q.issue(10));
    }

    #[test]
    fn a_success_after_a_failure_retires_nothing() {
        let mut q = CommitQueue::new(2, 0);
        assert!(q.issue(3));
        assert!(q.issue(4));
        assert_eq!(q.complete(3, false), Retired { durable: None, failed: true });
        assert_eq!(q.complete(4, true), Retired::default());
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn issue_is_bounded_and_skips_what_is_covered() {
        let mut q = CommitQueue::new(2, 7);
        assert!(!q.issue(7), "covered by what is durable already");
        assert!(q.issue(8));
        assert!(!q.issue(8), "covered by the commit in flight");
        assert!(q.issue(10));
        assert!(!q.has_room());
        assert!(!q.issue(11), "two in flight at most");
        assert_eq!(q.complete(8, true).durable, Some(8));
        assert!(q.issue(11));
    }
}
