//! Spreading connections evenly over the gateway's workers.
//!
//! Every worker's epoll watches the one listening socket, and a new
//! connection wakes each of them; whichever calls `accept` first wins. In a
//! burst of connects (a client opening its pool), the worker that woke first
//! could take nearly all of them, and a keep-alive connection stays on the
//! worker that accepted it for its whole life: one CPU busy, the other idle
//! (measured: 83 % of the CPU time on one of two workers). So a worker that
//! holds [`MAX_LEAD`] connections more than the least loaded worker pauses
//! for [`LEAD_PAUSE`] before its next accept, which lets the others take the
//! queued connections. If they do not (busy, or not scheduled), it accepts
//! after the pause anyway: nothing waits longer than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How far a worker may be ahead of the least loaded one and still accept
/// at once.
pub const MAX_LEAD: usize = 2;
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
    /// Whether this worker holds more than [`MAX_LEAD`] connections over the
    /// least loaded other worker.
    pub fn is_ahead(&self) -> bool {
        let open = &self.balance.open;
        let mine = open[self.index].load(Ordering::Relaxed);
        let least = (0..open.len()).filter(|&i| i != self.index).map(|i| open[i].load(Ordering::Relaxed)).min();
        least.is_some_and(|least| mine > least + MAX_LEAD)
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
        let mut held: Vec<Held> = (0..MAX_LEAD).map(|_| a.opened()).collect();
        assert!(!a.is_ahead(), "{} over the others is within the lead", MAX_LEAD);
        held.push(a.opened());
        assert!(a.is_ahead());
        assert!(!b.is_ahead() && !c.is_ahead());
        // The least loaded counts, not the average.
        held.extend((0..10).map(|_| b.opened()));
        assert!(a.is_ahead(), "c still has none");
        held.push(c.opened());
        assert!(!a.is_ahead());
        assert!(b.is_ahead());
        held.clear();
        assert!(!a.is_ahead() && !b.is_ahead() && !c.is_ahead(), "closing gives the places back");
    }

    #[test]
    fn one_worker_is_never_ahead() {
        let balance = AcceptBalance::new(1);
        let only = balance.seat(0);
        let _held: Vec<Held> = (0..100).map(|_| only.opened()).collect();
        assert!(!only.is_ahead());
    }
}
