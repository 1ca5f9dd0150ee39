//! The seed's "list and count of all connected clients in a synchronized data structure": per client
//! id, its two connections and its queue of pending updates.
//!
//! A client is the pair of its connections: when the one registered for a role ends, the client is
//! gone (its other connection is ended too, and its locks released), and it comes back with a new
//! hello and a fresh META-DATA. A hello on the update connection starts a new client session (any
//! previous connections of that id are ended and its queue emptied: the new META-DATA covers it); a
//! hello on the push connection attaches to it. Each connection has an id, so a connection that was
//! replaced cannot end its successor's client when it finally closes.
//!
//! The table lives behind a mutex held only for these short operations; the server takes it after the
//! roster's mutex when it needs both, never before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_files::SafeName;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::relay::{RelaySource, RelayTap};
use crate::{ClientId, QueuedUpdate, Role, UpdateKind, UpdateQueue};

/// One live connection of a client, and how to end it.
#[derive(Debug, Clone)]
pub(crate) struct ConnSlot {
    pub id: u64,
    pub cancel: CancellationToken,
}

#[derive(Debug)]
struct ClientEntry {
    queue: UpdateQueue,
    update: Option<ConnSlot>,
    push: Option<ConnSlot>,
    /// The file the push connection is sending now (taken out of the queue).
    pushing: Option<SafeName>,
    /// The relayed upload the push connection is bound to, if any (see [`super::relay`]): `pushing`
    /// is its file meanwhile.
    relay: Option<RelayBinding>,
    /// Wakes the push connection when the queue gets an entry or a relay is offered.
    wake: Arc<Notify>,
    /// When the entry was made or last lost a connection: entries that nobody attaches to are reaped.
    since: Instant,
}

/// A client's push connection bound to a relayed upload.
#[derive(Debug)]
struct RelayBinding {
    id: u64,
    /// The tap, until the push connection takes it.
    offer: Option<RelayTap>,
}

/// The table is full: the hello is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sync clients (limit {0})")]
pub(crate) struct TableFull(pub usize);

/// A client's queue as it travels to a new process in a live upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedClient {
    pub client: ClientId,
    /// `(name, version, delete)`, oldest first.
    pub queue: Vec<(String, u64, bool)>,
}

/// Every known client, by id.
#[derive(Debug)]
pub(crate) struct ClientTable {
    entries: HashMap<ClientId, ClientEntry>,
    max_clients: usize,
    queue_capacity: usize,
}

impl ClientTable {
    pub fn new(max_clients: usize, queue_capacity: usize) -> ClientTable {
        ClientTable { entries: HashMap::new(), max_clients: max_clients.max(1), queue_capacity }
    }

    fn entry(&mut self, client: &ClientId) -> Result<&mut ClientEntry, TableFull> {
        if !self.entries.contains_key(client) && self.entries.len() >= self.max_clients {
            return Err(TableFull(self.max_clients));
        }
        let capacity = self.queue_capacity;
        Ok(self.entries.entry(client.clone()).or_insert_with(|| ClientEntry {
            queue: UpdateQueue::new(capacity),
            update: None,
            push: None,
            pushing: None,
            relay: None,
            wake: Arc::new(Notify::new()),
            since: Instant::now(),
        }))
    }

    /// A hello on the update connection: a new session of `client`. Returns the connections it
    /// replaces (the caller ends them and releases the client's locks before answering the hello).
    pub fn start_session(&mut self, client: &ClientId, slot: ConnSlot) -> Result<Vec<ConnSlot>, TableFull> {
        let entry = self.entry(client)?;
        let replaced: Vec<ConnSlot> = entry.update.take().into_iter().chain(entry.push.take()).collect();
        entry.queue = UpdateQueue::new(entry.queue.capacity());
        entry.pushing = None;
        entry.relay = None;
        entry.update = Some(slot);
        Ok(replaced)
    }

    /// Attaches a connection for `role` (a push hello, or a session resumed after a live upgrade),
    /// keeping the queue. Returns the push wake-up and the connection it replaces, if any.
    pub fn attach(
        &mut self,
        client: &ClientId,
        role: Role,
        slot: ConnSlot,
    ) -> Result<(Arc<Notify>, Option<ConnSlot>), TableFull> {
        let entry = self.entry(client)?;
        let id = slot.id;
        let replaced = match role {
            Role::Update => entry.update.replace(slot),
            Role::Push => entry.push.replace(slot),
        };
        Ok((entry.wake.clone(), replaced.filter(|old| old.id != id)))
    }

    fn slot_id(&self, client: &ClientId, role: Role) -> Option<u64> {
        let entry = self.entries.get(client)?;
        match role {
            Role::Update => entry.update.as_ref().map(|s| s.id),
            Role::Push => entry.push.as_ref().map(|s| s.id),
        }
    }

    /// Connection `id` of `client` ended. If it was the client's connection for `role`, the client is
    /// gone: the entry is removed and its other connection returned, to be ended (`Some(None)` if it
    /// had none). `None`: the connection had been replaced; nothing changes.
    pub fn detach(&mut self, client: &ClientId, role: Role, id: u64) -> Option<Option<ConnSlot>> {
        if self.slot_id(client, role) != Some(id) {
            return None;
        }
        let entry = self.entries.remove(client)?;
        Some(match role {
            Role::Update => entry.push,
            Role::Push => entry.update,
        })
    }

    /// Queues `name` for every client but `except` (the one that committed it) and those bound to the
    /// relay `relayed` (they get the file through it). Returns the connections of clients whose queue
    /// was full: they are ended, and resynchronise on reconnect.
    pub fn enqueue_others(
        &mut self,
        except: &ClientId,
        name: &SafeName,
        version: u64,
        kind: UpdateKind,
        relayed: Option<u64>,
    ) -> Vec<ConnSlot> {
        let mut overflowed = Vec::new();
        let others = self.entries.iter_mut().filter(|(c, _)| *c != except);
        for (client, entry) in others.filter(|(_, e)| relayed.is_none() || e.relay.as_ref().map(|r| r.id) != relayed) {
            match entry.queue.push(name.clone(), version, kind) {
                Ok(_) => entry.wake.notify_one(),
                Err(full) => {
                    tracing::warn!(client = %client, "{full}: ending the client's connections to resynchronise it");
                    overflowed.extend(entry.update.clone());
                    overflowed.extend(entry.push.clone());
                }
            }
        }
        overflowed
    }

    /// Queues `name` for `client` itself (a Request File Update). `false` if the queue is full or the
    /// client unknown.
    pub fn enqueue(&mut self, client: &ClientId, name: &SafeName, version: u64, kind: UpdateKind) -> bool {
        let Some(entry) = self.entries.get_mut(client) else { return false };
        match entry.queue.push(name.clone(), version, kind) {
            Ok(_) => {
                entry.wake.notify_one();
                true
            }
            Err(_) => false,
        }
    }

    /// Whether a version of `name` is on its way to `client` (queued, or being pushed). While it is,
    /// the client's own update or delete of `name` was based on an older version, and is refused
    /// (Abort - File Locked): the client receives the newer version, and keeps its own as a conflicted
    /// copy, instead of overwriting a version it never saw.
    pub fn is_pending(&self, client: &ClientId, name: &SafeName) -> bool {
        self.entries.get(client).is_some_and(|e| e.queue.get(name).is_some() || e.pushing.as_ref() == Some(name))
    }

    /// Takes the oldest queued update of `client` and marks it as being pushed.
    pub fn pop(&mut self, client: &ClientId) -> Option<QueuedUpdate> {
        let entry = self.entries.get_mut(client)?;
        let update = entry.queue.pop()?;
        entry.pushing = Some(update.name.clone());
        Some(update)
    }

    /// Offers `source`'s upload of `name` to the push connection of every client but `except` that is
    /// attached and idle (nothing being pushed, nothing queued, no relay): each gets a tap, and its
    /// file counts as being pushed. Returns how many were offered it.
    pub fn offer_relay(&mut self, except: &ClientId, name: &SafeName, source: &mut RelaySource) -> usize {
        let mut offered = 0;
        for (_, entry) in self.entries.iter_mut().filter(|(c, _)| *c != except) {
            if entry.push.is_none() || entry.pushing.is_some() || !entry.queue.is_empty() || entry.relay.is_some() {
                continue;
            }
            entry.relay = Some(RelayBinding { id: source.id(), offer: Some(source.tap()) });
            entry.pushing = Some(name.clone());
            entry.wake.notify_one();
            offered += 1;
        }
        offered
    }

    /// The relay tap offered to `client`'s push connection, if there is one it has not taken.
    pub fn take_relay(&mut self, client: &ClientId) -> Option<RelayTap> {
        self.entries.get_mut(client)?.relay.as_mut()?.offer.take()
    }

    /// `client`'s push connection lets go of relay `id`; the file stays marked as being pushed if
    /// `still_pushing` (the push goes on from the committed file). `false` if the client was not bound
    /// to that relay (any more).
    pub fn end_relay(&mut self, client: &ClientId, id: u64, still_pushing: bool) -> bool {
        let Some(entry) = self.entries.get_mut(client) else { return false };
        if entry.relay.as_ref().is_none_or(|r| r.id != id) {
            return false;
        }
        entry.relay = None;
        if !still_pushing {
            entry.pushing = None;
        }
        true
    }

    /// Marks what `client`'s push connection is sending (`None`: nothing).
    pub fn set_pushing(&mut self, client: &ClientId, name: Option<SafeName>) {
        if let Some(entry) = self.entries.get_mut(client) {
            entry.pushing = name;
        }
    }

    /// Removes the entries that have had no connection for `grace` (clients whose sessions did not
    /// come back after a live upgrade); returns their ids, whose locks the caller releases.
    pub fn reap(&mut self, grace: Duration) -> Vec<ClientId> {
        let now = Instant::now();
        let gone: Vec<ClientId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.update.is_none() && e.push.is_none() && now.duration_since(e.since) >= grace)
            .map(|(c, _)| c.clone())
            .collect();
        for client in &gone {
            self.entries.remove(client);
        }
        gone
    }

    /// Every client's queue, for the next process of a live upgrade.
    pub fn export(&self) -> Vec<SavedClient> {
        let mut saved: Vec<SavedClient> = self
            .entries
            .iter()
            .map(|(client, entry)| {
                let mut queue = entry.queue.clone();
                let queue = std::iter::from_fn(|| queue.pop())
                    .map(|u| (u.name.to_string(), u.version, u.kind == UpdateKind::Delete))
                    .collect();
                SavedClient { client: client.clone(), queue }
            })
            .collect();
        saved.sort_by(|a, b| a.client.cmp(&b.client));
        saved
    }

    /// Restores exported queues (entries without connections: the resumed sessions attach to them).
    pub fn import(&mut self, saved: Vec<SavedClient>, max_name_len: usize) {
        for client in saved {
            let Ok(entry) = self.entry(&client.client) else { break };
            for (name, version, delete) in client.queue {
                let Ok(name) = SafeName::parse(&name, max_name_len) else { continue };
                let kind = if delete { UpdateKind::Delete } else { UpdateKind::Write };
                let _ = entry.queue.push(name, version, kind);
            }
            entry.since = Instant::now();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::relay::RelayBudget;

    fn c(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn slot(id: u64) -> ConnSlot {
        ConnSlot { id, cancel: CancellationToken::new() }
    }

    #[test]
    fn a_client_is_the_pair_of_its_connections() {
        let mut t = ClientTable::new(10, 100);
        assert!(t.start_session(&c("a"), slot(1)).unwrap().is_empty());
        let (_, replaced) = t.attach(&c("a"), Role::Push, slot(2)).unwrap();
        assert!(replaced.is_none());
        // The push connection ends: the client is gone, and its update connection is handed back.
        let other = t.detach(&c("a"), Role::Push, 2).unwrap().unwrap();
        assert_eq!(other.id, 1);
        assert_eq!(t.len(), 0);
        // The update connection, ended in turn, finds nothing to do.
        assert!(t.detach(&c("a"), Role::Update, 1).is_none());
    }

    #[test]
    fn a_new_session_replaces_the_old_connections() {
        let mut t = ClientTable::new(10, 100);
        t.start_session(&c("a"), slot(1)).unwrap();
        t.attach(&c("a"), Role::Push, slot(2)).unwrap();
        t.enqueue(&c("a"), &n("f"), 1, UpdateKind::Write);
        let replaced = t.start_session(&c("a"), slot(3)).unwrap();
        assert_eq!(replaced.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
        assert!(!t.is_pending(&c("a"), &n("f")), "a new session starts with an empty queue");
        // The replaced connections ending later do not end the new session.
        assert!(t.detach(&c("a"), Role::Update, 1).is_none());
        assert!(t.detach(&c("a"), Role::Push, 2).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn commits_are_queued_for_everyone_else() {
        let mut t = ClientTable::new(10, 100);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            t.start_session(&c(id), slot(i as u64)).unwrap();
        }
        assert!(t.enqueue_others(&c("a"), &n("f"), 4, UpdateKind::Write, None).is_empty());
        assert!(!t.is_pending(&c("a"), &n("f")));
        assert!(t.is_pending(&c("b"), &n("f")) && t.is_pending(&c("c"), &n("f")));
        let popped = t.pop(&c("b")).unwrap();
        assert_eq!((popped.name, popped.version), (n("f"), 4));
        assert!(t.is_pending(&c("b"), &n("f")), "being pushed still counts");
        t.set_pushing(&c("b"), None);
        assert!(!t.is_pending(&c("b"), &n("f")));
    }

    #[test]
    fn a_relay_goes_to_idle_push_connections_and_its_commit_skips_them() {
        let mut t = ClientTable::new(10, 100);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            t.start_session(&c(id), slot(2 * i as u64)).unwrap();
        }
        // b and c have their push connections, c is busy; d has none.
        t.attach(&c("b"), Role::Push, slot(11)).unwrap();
        t.attach(&c("c"), Role::Push, slot(12)).unwrap();
        t.enqueue(&c("c"), &n("other"), 1, UpdateKind::Write);
        let mut source = RelaySource::new(9, n("big"), 1 << 20, RelayBudget::new(1 << 20));
        assert_eq!(t.offer_relay(&c("a"), &n("big"), &mut source), 1);
        assert!(t.is_pending(&c("b"), &n("big")), "a relayed file counts as being pushed");
        let tap = t.take_relay(&c("b")).unwrap();
        assert_eq!((tap.id, tap.name.clone()), (9, n("big")));
        assert!(t.take_relay(&c("b")).is_none(), "taken once");
        assert!(t.take_relay(&c("c")).is_none() && t.take_relay(&c("d")).is_none());
        // Busy now: a second relay is not offered to b.
        let mut second = RelaySource::new(10, n("big2"), 1 << 20, RelayBudget::new(1 << 20));
        assert_eq!(t.offer_relay(&c("a"), &n("big2"), &mut second), 0);

        // The commit queues the file for c and d only.
        t.enqueue_others(&c("a"), &n("big"), 5, UpdateKind::Write, Some(9));
        assert_eq!(t.pop(&c("b")).map(|u| u.name), None);
        assert!(t.is_pending(&c("c"), &n("big")) && t.is_pending(&c("d"), &n("big")));
        // b's push goes on from the committed file, then ends.
        assert!(!t.end_relay(&c("b"), 10, true), "not bound to that relay");
        assert!(t.end_relay(&c("b"), 9, true));
        assert!(t.is_pending(&c("b"), &n("big")));
        t.set_pushing(&c("b"), None);
        // Unbound, b is queued by the next commit of the same relay id like everyone.
        t.enqueue_others(&c("a"), &n("big"), 6, UpdateKind::Write, Some(9));
        assert!(t.is_pending(&c("b"), &n("big")));
    }

    #[test]
    fn a_new_session_drops_its_relay() {
        let mut t = ClientTable::new(10, 100);
        t.start_session(&c("a"), slot(1)).unwrap();
        t.start_session(&c("b"), slot(2)).unwrap();
        t.attach(&c("b"), Role::Push, slot(3)).unwrap();
        let mut source = RelaySource::new(9, n("big"), 1 << 20, RelayBudget::new(1 << 20));
        assert_eq!(t.offer_relay(&c("a"), &n("big"), &mut source), 1);
        t.start_session(&c("b"), slot(4)).unwrap();
        assert!(t.take_relay(&c("b")).is_none());
        assert!(!t.end_relay(&c("b"), 9, false), "the old push connection's release changes nothing");
        t.enqueue_others(&c("a"), &n("big"), 5, UpdateKind::Write, Some(9));
        assert!(t.is_pending(&c("b"), &n("big")), "the new session gets the file the usual way");
    }

    #[test]
    fn the_table_and_its_queues_are_bounded() {
        let mut t = ClientTable::new(2, 1);
        t.start_session(&c("a"), slot(1)).unwrap();
        t.start_session(&c("b"), slot(2)).unwrap();
        assert_eq!(t.start_session(&c("c"), slot(3)).unwrap_err(), TableFull(2));
        t.enqueue_others(&c("a"), &n("f"), 1, UpdateKind::Write, None);
        let overflowed = t.enqueue_others(&c("a"), &n("g"), 2, UpdateKind::Write, None);
        assert_eq!(overflowed.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn queues_survive_export_and_import() {
        let mut t = ClientTable::new(10, 100);
        t.start_session(&c("a"), slot(1)).unwrap();
        t.enqueue(&c("a"), &n("x"), 3, UpdateKind::Write);
        t.enqueue(&c("a"), &n("d/y"), 5, UpdateKind::Delete);
        let saved = t.export();
        let json = serde_json::to_string(&saved).unwrap();
        let mut fresh = ClientTable::new(10, 100);
        fresh.import(serde_json::from_str(&json).unwrap(), 1024);
        assert_eq!(fresh.export(), saved);
        assert_eq!(fresh.pop(&c("a")).unwrap().name, n("x"));
        // Nobody attached: reaped once the grace period is over.
        assert!(fresh.reap(Duration::from_secs(60)).is_empty());
        assert_eq!(fresh.reap(Duration::ZERO), [c("a")]);
    }

    #[test]
    fn resumed_connections_attach_without_losing_the_queue() {
        let mut t = ClientTable::new(10, 100);
        t.start_session(&c("a"), slot(1)).unwrap();
        t.enqueue(&c("a"), &n("x"), 3, UpdateKind::Write);
        let (_, replaced) = t.attach(&c("a"), Role::Update, slot(1)).unwrap();
        assert!(replaced.is_none(), "re-attaching the same connection replaces nothing");
        assert!(t.is_pending(&c("a"), &n("x")));
    }
}
