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
//!
//! Sessions ask at every safe point (once per request), so the answer is a
//! plain atomic load of a value the trigger writes before it signals the
//! watch; the watch is only for waking. (Borrowing a watch takes its read
//! lock, an atomic read-modify-write on a line every session on every
//! thread writes: a cross-core cache-line transfer per request.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

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

/// The pause in force, as one byte any thread reads without a lock.
#[derive(Debug, Default)]
struct Current(AtomicU8);

impl Current {
    const NONE: u8 = 0;
    const UPGRADE: u8 = 1;
    const SHUTDOWN: u8 = 2;

    fn set(&self, reason: Option<PauseReason>) {
        let v = match reason {
            None => Current::NONE,
            Some(PauseReason::Upgrade) => Current::UPGRADE,
            Some(PauseReason::Shutdown) => Current::SHUTDOWN,
        };
        self.0.store(v, Ordering::Release);
    }

    fn get(&self) -> Option<PauseReason> {
        match self.0.load(Ordering::Acquire) {
            Current::UPGRADE => Some(PauseReason::Upgrade),
            Current::SHUTDOWN => Some(PauseReason::Shutdown),
            _ => None,
        }
    }
}

/// The runtime's side: raises and lowers the pause.
#[derive(Debug)]
pub struct PauseTrigger {
    tx: watch::Sender<Option<PauseReason>>,
    /// Written before `tx` is sent to, so that a session woken by `tx` reads the new value here.
    current: Arc<Current>,
}

/// A session's side: asks whether to pause, or waits until it should.
#[derive(Clone, Debug)]
pub struct PauseSignal {
    rx: watch::Receiver<Option<PauseReason>>,
    current: Arc<Current>,
    /// This session's (or accept loop's) own trigger, if it has one.
    own: Option<(watch::Receiver<Option<PauseReason>>, Arc<Current>)>,
}

impl PauseTrigger {
    pub fn new() -> PauseTrigger {
        let (tx, _rx) = watch::channel(None);
        PauseTrigger { tx, current: Arc::default() }
    }

    pub fn signal(&self) -> PauseSignal {
        PauseSignal { rx: self.tx.subscribe(), current: Arc::clone(&self.current), own: None }
    }

    pub fn pause(&self, reason: PauseReason) {
        self.set(Some(reason));
    }

    /// Lifts the pause; sessions that have not parked yet carry on.
    pub fn resume(&self) {
        self.set(None);
    }

    pub fn current(&self) -> Option<PauseReason> {
        self.current.get()
    }

    fn set(&self, reason: Option<PauseReason>) {
        // Under the watch's write lock: callers racing to pause and resume leave the byte and the watch
        // with the same value, and the byte is written before any waiter is woken.
        self.tx.send_modify(|v| {
            self.current.set(reason);
            *v = reason;
        });
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
        PauseSignal { rx, current: Arc::default(), own: None }
    }

    /// This signal, also firing when `own` is pulled: the server-wide pause
    /// or a pause of this one holder, whichever comes first.
    pub fn with_own(&self, own: &PauseTrigger) -> PauseSignal {
        PauseSignal {
            rx: self.rx.clone(),
            current: Arc::clone(&self.current),
            own: Some((own.tx.subscribe(), Arc::clone(&own.current))),
        }
    }

    /// The pause in force, if any. Two atomic loads at most, no lock: cheap enough for every request.
    pub fn requested(&self) -> Option<PauseReason> {
        self.current.get().or_else(|| self.own.as_ref().and_then(|(_, own)| own.get()))
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

    /// Every reason reads back as sent, and a signal made after the pause
    /// sees it too.
    #[test]
    fn requested_reads_what_was_sent_last() {
        let trigger = PauseTrigger::new();
        let own = PauseTrigger::new();
        let before = trigger.signal().with_own(&own);
        for reason in [PauseReason::Shutdown, PauseReason::Upgrade] {
            trigger.pause(reason);
            assert_eq!(before.requested(), Some(reason));
            assert_eq!(trigger.signal().requested(), Some(reason));
            assert_eq!(trigger.current(), Some(reason));
        }
        trigger.resume();
        assert_eq!(before.requested(), None);
        own.pause(PauseReason::Shutdown);
        assert_eq!(before.requested(), Some(PauseReason::Shutdown));
        trigger.pause(PauseReason::Upgrade);
        assert_eq!(before.requested(), Some(PauseReason::Upgrade), "the server-wide pause first");
    }

    #[tokio::test]
    async fn a_signal_without_trigger_never_fires() {
        let mut never = PauseSignal::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.wait()).await;
        assert!(waited.is_err());
    }
}
