//! Spreading connections evenly over the gateway's workers.
//!
//! Every worker's epoll watches the one listening socket, and a new
//! connection wakes each of them; whichever calls `accept` first wins. In a
//! burst of connects (a client opening its pool), the worker that woke first
//! could take nearly all of them, and a keep-alive connection stays on the
//! worker that accepted it for its whole life: one CPU busy, the other idle
//! (measured: 83 % of the CPU time on one of two workers). So a worker that
//! holds more than [`MAX_LEAD`] connections, and more than a quarter, over
//! the least loaded worker pauses for [`LEAD_PAUSE`] before its next accept,
//! which lets the others take the queued connections. If they do not (busy,
//! or not scheduled), it accepts after the pause anyway: nothing waits
//! longer than that. Short-lived connections (one request each) keep the
//! counts low and swinging by a few all the time; pausing at every swing
//! cost such a load most of its req/s. So a worker with fewer than
//! [`BALANCE_FROM`] connections never pauses, and past a few connections
//! the lead that counts is a quarter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How far a worker may be ahead of the least loaded one and still accept
/// at once.
pub const MAX_LEAD: usize = 2;
/// Below this many open connections a worker never pauses.
pub const BALANCE_FROM: usize = 8;
/// How long a worker that is ahead leaves the accept queue to the others.
pub const LEAD_PAUSE: Duration = Duration::from_millis(1);

/// Open connections per worker, shared by the workers of one start.
#[derive(Debug)]
pub struct AcceptBalance {
    open: Box<[AtomicUsize]>,
}

impl AcceptBalance {
    pub fn new(workers: usize) -> Arc<AcceptBalance> {
        assert!(workers > 0, "no workers to balance");
        Arc::new(AcceptBalance { open: (0..workers).map(|_| AtomicUsize::new(0)).collect() })
    }

    /// Worker `index`'s place in the balance.
    pub fn seat(self: &Arc<AcceptBalance>, index: usize) -> Seat {
        assert!(index < self.open.len(), "worker {index} of {}", self.open.len());
        Seat { balance: self.clone(), index }
    }
}

/// One worker's view of the balance.
#[derive(Clone, Debug)]
pub struct Seat {
    balance: Arc<AcceptBalance>,
    index: usize,
}

impl Seat {
    /// Whether this worker holds at least [`BALANCE_FROM`] connections and
    /// more than [`MAX_LEAD`], and more than a quarter, over the least
    /// loaded other worker.
    pub fn is_ahead(&self) -> bool {
        let open = &self.balance.open;
        let mine = open[self.index].load(Ordering::Relaxed);
        let least = (0..open.len()).filter(|&i| i != self.index).map(|i| open[i].load(Ordering::Relaxed)).min();
        mine >= BALANCE_FROM && least.is_some_and(|least| mine > least + MAX_LEAD.max(least / 4))
    }

    /// Counts one connection on this worker until the guard drops.
    pub fn opened(&self) -> Held {
        self.balance.open[self.index].fetch_add(1, Ordering::Relaxed);
        Held(self.clone())
    }
}

/// A connection counted on its worker.
#[derive(Debug)]
pub struct Held(Seat);

impl Drop for Held {
    fn drop(&mut self) {
        let before = self.0.balance.open[self.0.index].fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "more connections closed than opened on worker {}", self.0.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_ahead_only_past_the_lead_over_the_least_loaded() {
        let balance = AcceptBalance::new(3);
        let (a, b, c) = (balance.seat(0), balance.seat(1), balance.seat(2));
        let mut held: Vec<Held> = (0..BALANCE_FROM - 1).map(|_| a.opened()).collect();
        assert!(!a.is_ahead(), "too few connections to pause for");
        held.push(a.opened());
        assert!(a.is_ahead(), "{BALANCE_FROM} against none");
        assert!(!b.is_ahead() && !c.is_ahead());
        held.extend((0..BALANCE_FROM - MAX_LEAD - 1).map(|_| b.opened()));
        assert!(a.is_ahead(), "c still has none: the least loaded counts, not the average");
        held.push(b.opened());
        held.extend((0..BALANCE_FROM - MAX_LEAD).map(|_| c.opened()));
        assert!(!a.is_ahead(), "within the lead of the least loaded");
        held.clear();
        assert!(!a.is_ahead() && !b.is_ahead() && !c.is_ahead(), "closing gives the places back");
        // Past a few connections the lead that counts is a quarter.
        held.extend((0..40).map(|_| a.opened()));
        held.extend((0..32).map(|_| b.opened()));
        held.extend((0..32).map(|_| c.opened()));
        assert!(!a.is_ahead(), "40 against 32 is within a quarter");
        held.extend((0..9).map(|_| a.opened()));
        assert!(a.is_ahead(), "49 against 32 is not");
    }

    #[test]
    fn one_worker_is_never_ahead() {
        let balance = AcceptBalance::new(1);
        let only = balance.seat(0);
        let _held: Vec<Held> = (0..100).map(|_| only.opened()).collect();
        assert!(!only.is_ahead());
    }
}
