//! Every session task of a process, each with its own pause trigger: a
//! streamed live upgrade pauses sessions a batch at a time while the
//! others keep serving (docs/upgrade.md). A server-wide pause still
//! reaches every session through the shared [`PauseTrigger`].
//!
//! Bounded by the services' connection limits: one entry per running
//! session task, removed when the task ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pause::{PauseReason, PauseSignal, PauseTrigger};

/// Running sessions by registry id.
#[derive(Debug, Default)]
pub struct PausableSessions {
    inner: Mutex<BTreeMap<u64, Slot>>,
}

#[derive(Debug)]
struct Slot {
    service: &'static str,
    trigger: PauseTrigger,
}

/// Keeps a session listed while its task runs. Dropped by the task as its
/// very last act, after a parked session has been delivered: once an id is
/// gone from the table, whatever it delivered is already in the channel.
#[derive(Debug)]
pub struct SlotGuard {
    sessions: Arc<PausableSessions>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl PausableSessions {
    pub fn new() -> Arc<PausableSessions> {
        Arc::new(PausableSessions::default())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists session `id` of `service`; returns its pause signal (`server`
    /// plus a trigger of its own) and the guard that unlists it.
    pub fn insert(self: &Arc<Self>, id: u64, service: &'static str, server: &PauseSignal) -> (PauseSignal, SlotGuard) {
        let trigger = PauseTrigger::new();
        let signal = server.with_own(&trigger);
        let previous = self.lock().insert(id, Slot { service, trigger });
        debug_assert!(previous.is_none(), "session id {id} listed twice");
        (signal, SlotGuard { sessions: self.clone(), id })
    }

    /// Asks these sessions (those still running) to pause.
    pub fn pause(&self, ids: &[u64], reason: PauseReason) {
        let inner = self.lock();
        for id in ids {
            if let Some(slot) = inner.get(id) {
                slot.trigger.pause(reason);
            }
        }
    }

    /// Lifts every session's own pause (an upgrade rolled back).
    pub fn resume_all(&self) {
        for slot in self.lock().values() {
            slot.trigger.resume();
        }
    }

    /// Running sessions of the services `wanted` accepts, by id.
    pub fn ids_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<u64> {
        self.lock().iter().filter(|(_, slot)| wanted(slot.service)).map(|(id, _)| *id).collect()
    }

    /// The services with a running session.
    pub fn services(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.lock().values().map(|slot| slot.service).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pauses_only_the_sessions_asked() {
        let server = PauseTrigger::new();
        let sessions = PausableSessions::new();
        let (mut a, guard_a) = sessions.insert(1, "transfer", &server.signal());
        let (b, _guard_b) = sessions.insert(2, "kv", &server.signal());
        assert_eq!(sessions.ids_where(|s| s == "transfer"), vec![1]);
        assert_eq!(sessions.services(), vec!["kv", "transfer"]);
        sessions.pause(&[1, 99], PauseReason::Upgrade);
        assert_eq!(a.wait().await, PauseReason::Upgrade);
        assert_eq!(b.requested(), None);
        sessions.resume_all();
        assert_eq!(a.requested(), None);
        drop(guard_a);
        assert!(!sessions.contains(1));
        assert_eq!(sessions.len(), 1);
        server.pause(PauseReason::Shutdown);
        assert_eq!(b.requested(), Some(PauseReason::Shutdown));
    }
}
