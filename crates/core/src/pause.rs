//! The pause signal: how the runtime asks every session to stop at its next
//! safe point.
//!
//! One [`PauseTrigger`] per server; every session holds a [`PauseSignal`]
//! clone and checks it between frames or commands. A pause can be lifted
//! again (an upgrade that rolled back), so this is a watched value rather
//! than a one-shot cancellation token.
//!
//! A signal can also listen to a second, private trigger of its own
//! ([`PauseSignal::with_own`]): a streamed live upgrade pauses sessions a
//! batch at a time, and one accept loop at a time, while the others keep
//! serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Why sessions are asked to pause; decides what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// The session will continue in a new executable; the client is told
    /// `PAUSED upgrading`.
    Upgrade,
    /// The server is stopping; partial transfers stay resumable.
    Shutdown,
}

/// The runtime's side: raises and lowers the pause.
#[derive(Debug)]
pub struct PauseTrigger {
    tx: watch::Sender<Option<PauseReason>>,
    /// Whether the value may be a pause: set and cleared together with the
    /// value, under the channel's write lock. Sessions ask "paused?" after
    /// every request; reading the value takes the channel's read lock, two
    /// atomic writes to a line every session of every thread shares, where
    /// this is one plain load of a line nobody writes while no pause comes.
    raised: Arc<AtomicBool>,
}

/// A session's side: asks whether to pause, or waits until it should.
#[derive(Clone, Debug)]
pub struct PauseSignal {
    rx: watch::Receiver<Option<PauseReason>>,
    /// The server-wide trigger's [`PauseTrigger::raised`].
    raised: Arc<AtomicBool>,
    /// This session's (or accept loop's) own trigger, if it has one, with
    /// its `raised`.
    own: Option<(watch::Receiver<Option<PauseReason>>, Arc<AtomicBool>)>,
}

impl PauseTrigger {
    pub fn new() -> PauseTrigger {
        let (tx, _rx) = watch::channel(None);
        PauseTrigger { tx, raised: Arc::new(AtomicBool::new(false)) }
    }

    pub fn signal(&self) -> PauseSignal {
        PauseSignal { rx: self.tx.subscribe(), raised: self.raised.clone(), own: None }
    }

    pub fn pause(&self, reason: PauseReason) {
        self.set(Some(reason));
    }

    /// Lifts the pause; sessions that have not parked yet carry on.
    pub fn resume(&self) {
        self.set(None);
    }

    /// The value and `raised` change under one write lock, so concurrent
    /// pauses and resumes leave them agreeing.
    fn set(&self, value: Option<PauseReason>) {
        self.tx.send_modify(|v| {
            *v = value;
            self.raised.store(value.is_some(), Ordering::SeqCst);
        });
    }

    pub fn current(&self) -> Option<PauseReason> {
        *self.tx.borrow()
    }
}

impl Default for PauseTrigger {
    fn default() -> Self {
        PauseTrigger::new()
    }
}

impl PauseSignal {
    /// A signal that never fires, for sessions driven outside a server.
    pub fn never() -> PauseSignal {
        let (_tx, rx) = watch::channel(None);
        PauseSignal { rx, raised: Arc::new(AtomicBool::new(false)), own: None }
    }

    /// This signal, also firing when `own` is pulled: the server-wide pause
    /// or a pause of this one holder, whichever comes first.
    pub fn with_own(&self, own: &PauseTrigger) -> PauseSignal {
        PauseSignal {
            rx: self.rx.clone(),
            raised: self.raised.clone(),
            own: Some((own.tx.subscribe(), own.raised.clone())),
        }
    }

    /// The pause in force, if any. Without a pause this reads two flags
    /// and takes no lock (see [`PauseTrigger::raised`]).
    pub fn requested(&self) -> Option<PauseReason> {
        let own = match &self.own {
            Some((rx, raised)) if raised.load(Ordering::SeqCst) => *rx.borrow(),
            _ => None,
        };
        if !self.raised.load(Ordering::SeqCst) {
            return own;
        }
        (*self.rx.borrow()).or(own)
    }

    /// Completes once a pause is requested. Cancel-safe. If the trigger is
    /// gone no pause can come any more, so this never completes (rather
    /// than completing at once and turning callers' loops into spins).
    pub async fn wait(&mut self) -> PauseReason {
        match &mut self.own {
            Some((own, _)) => tokio::select! {
                reason = wait_on(&mut self.rx) => reason,
                reason = wait_on(own) => reason,
            },
            None => wait_on(&mut self.rx).await,
        }
    }
}

/// Completes once `rx` holds a reason; never if its trigger is gone.
async fn wait_on(rx: &mut watch::Receiver<Option<PauseReason>>) -> PauseReason {
    let reason = match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => *v,
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_reaches_every_signal_and_can_be_lifted() {
        let trigger = PauseTrigger::new();
        let mut a = trigger.signal();
        let b = trigger.signal();
        assert_eq!(a.requested(), None);
        trigger.pause(PauseReason::Upgrade);
        assert_eq!(a.wait().await, PauseReason::Upgrade);
        assert_eq!(b.requested(), Some(PauseReason::Upgrade));
        trigger.resume();
        assert_eq!(b.requested(), None);
    }

    #[tokio::test]
    async fn an_own_trigger_pauses_only_its_holder() {
        let server = PauseTrigger::new();
        let own = PauseTrigger::new();
        let mut mine = server.signal().with_own(&own);
        let other = server.signal();
        own.pause(PauseReason::Upgrade);
        assert_eq!(mine.wait().await, PauseReason::Upgrade);
        assert_eq!(other.requested(), None);
        own.resume();
        assert_eq!(mine.requested(), None);
        server.pause(PauseReason::Shutdown);
        assert_eq!(mine.wait().await, PauseReason::Shutdown);
    }

    #[tokio::test]
    async fn a_signal_without_trigger_never_fires() {
        let mut never = PauseSignal::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.wait()).await;
        assert!(waited.is_err());
    }
}
