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
}

/// A session's side: asks whether to pause, or waits until it should.
#[derive(Clone, Debug)]
pub struct PauseSignal {
    rx: watch::Receiver<Option<PauseReason>>,
    /// This session's (or accept loop's) own trigger, if it has one.
    own: Option<watch::Receiver<Option<PauseReason>>>,
}

impl PauseTrigger {
    pub fn new() -> PauseTrigger {
        let (tx, _rx) = watch::channel(None);
        PauseTrigger { tx }
    }

    pub fn signal(&self) -> PauseSignal {
        PauseSignal { rx: self.tx.subscribe(), own: None }
    }

    pub fn pause(&self, reason: PauseReason) {
        self.tx.send_replace(Some(reason));
    }

    /// Lifts the pause; sessions that have not parked yet carry on.
    pub fn resume(&self) {
        self.tx.send_replace(None);
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
        PauseSignal { rx, own: None }
    }

    /// This signal, also firing when `own` is pulled: the server-wide pause
    /// or a pause of this one holder, whichever comes first.
    pub fn with_own(&self, own: &PauseTrigger) -> PauseSignal {
        PauseSignal { rx: self.rx.clone(), own: Some(own.tx.subscribe()) }
    }

    /// The pause in force, if any.
    pub fn requested(&self) -> Option<PauseReason> {
        let own = self.own.as_ref().and_then(|own| *own.borrow());
        (*self.rx.borrow()).or(own)
    }

    /// Completes once a pause is requested. Cancel-safe. If the trigger is
    /// gone no pause can come any more, so this never completes (rather
    /// than completing at once and turning callers' loops into spins).
    pub async fn wait(&mut self) -> PauseReason {
        match &mut self.own {
            Some(own) => tokio::select! {
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
