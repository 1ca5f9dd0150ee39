//! The gateway's connection limit, one for the whole process.
//!
//! Every worker thread runs its own accept loop ([`crate::workers`]); the
//! limit is on the server's open connections, not each worker's, so the
//! loops take their places from this one shared set.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections over the limit being answered 503 at once; past this they
/// are closed without an answer, so a flood costs no more than this.
pub const MAX_REFUSALS: usize = 64;

#[derive(Debug)]
pub struct ConnectionSlots {
    open: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
}

impl ConnectionSlots {
    /// Room for `max` open connections (capped at what a semaphore holds).
    pub fn new(max: usize) -> ConnectionSlots {
        ConnectionSlots {
            open: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        }
    }

    /// A place for one more connection, held until the permit drops; `None`
    /// at the limit.
    pub fn try_open(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    /// A place to answer one connection over the limit with 503; `None`
    /// when [`MAX_REFUSALS`] are already being answered.
    pub fn try_refuse(&self) -> Option<OwnedSemaphorePermit> {
        self.refusals.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_come_back_when_dropped() {
        let slots = ConnectionSlots::new(2);
        let a = slots.try_open().unwrap();
        let _b = slots.try_open().unwrap();
        assert!(slots.try_open().is_none(), "at the limit");
        drop(a);
        assert!(slots.try_open().is_some());

        let refusals: Vec<_> = (0..MAX_REFUSALS).map(|_| slots.try_refuse().unwrap()).collect();
        assert!(slots.try_refuse().is_none(), "refusals are bounded too");
        drop(refusals);
        assert!(slots.try_refuse().is_some());
    }
}
