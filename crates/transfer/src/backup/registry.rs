//! The server's backup nodes: who is connected, what each holds, what each
//! still needs, and the signal that uploads waiting for a node watch.
//!
//! One record per node id, kept while the node is disconnected (so
//! `ferry status` can show it and its lag) up to `backup.max_backups`
//! records; the oldest disconnected one makes room for a new node. Records
//! live in the process: a live upgrade carries each connected node's part
//! of it in its feed session's state, and disconnected ones are forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ferry_core::config::BackupConfig;
use ferry_core::registry::now_unix_ms;
use serde::Serialize;
use tokio::sync::watch;

use super::held::{Awaiting, Held};
use super::node_id::NodeId;
use super::plan::{Check, Plan};
use super::queue::FeedQueue;

/// A node's record.
#[derive(Debug)]
pub struct Node {
    pub id: NodeId,
    inner: Mutex<NodeInner>,
}

/// A node's record, locked. The feed session of its connection updates
/// it; uploads read it.
#[derive(Debug)]
pub struct NodeInner {
    pub peer: String,
    /// The queue of the connection feeding the node; `None` while it is
    /// disconnected.
    queue: Option<Arc<FeedQueue>>,
    /// Counts connections, so a connection replaced by a newer one cannot
    /// disconnect its successor.
    session: u64,
    pub since_unix_ms: u64,
    pub disconnected_unix_ms: Option<u64>,
    /// What the node holds, confirmed.
    pub held: BTreeMap<String, Held>,
    /// Committed (or deleted) and not confirmed yet, by transfer id.
    pub awaiting: BTreeMap<u64, Awaiting>,
    /// Stored files to check and maybe send, with their size.
    pub work: BTreeMap<String, (Check, u64)>,
    /// Names to delete on the node.
    pub delete: BTreeSet<String>,
    /// Compare the whole store again (also set when `work` would pass its
    /// bound).
    pub rescan: bool,
    /// Known not to keep up: catching up after connecting, or dropped from
    /// an upload for being slow. Uploads do not wait for a node that is
    /// behind. Cleared by the feed once it has nothing left to do.
    pub behind: bool,
    pub files_mirrored: u64,
    pub bytes_mirrored: u64,
}

/// `ferry status` for one node.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    pub peer: String,
    /// `in-sync`, `behind` or `disconnected`.
    pub state: &'static str,
    pub lag_files: u64,
    pub lag_bytes: u64,
    pub connected_since_unix_ms: u64,
    pub disconnected_unix_ms: Option<u64>,
    pub files_held: u64,
    pub files_mirrored: u64,
    pub bytes_mirrored: u64,
    pub queued_bytes: u64,
}

impl NodeInner {
    pub fn connected(&self) -> bool {
        self.queue.is_some()
    }

    /// The connection's queue, while connected.
    pub fn queue(&self) -> Option<&Arc<FeedQueue>> {
        self.queue.as_ref()
    }

    /// Whether `name` should be checked and maybe sent; marks a full
    /// rescan instead once `max` names wait.
    pub fn want(&mut self, name: &str, size: u64, max: usize) {
        if self.work.contains_key(name) {
            return;
        }
        if self.work.len() >= max {
            self.rescan = true;
            return;
        }
        let check = match self.held.get(name) {
            Some(h) if h.size == size => Check::Compare,
            _ => Check::Send,
        };
        self.work.insert(name.to_string(), (check, size));
    }

    /// Adds a catch-up plan to the work (within the same bound).
    pub fn merge(&mut self, plan: Plan, max: usize) {
        for (name, (check, size)) in plan.files {
            if self.work.len() >= max {
                self.rescan = true;
                break;
            }
            self.work.insert(name, (check, size));
        }
        self.delete = plan.delete;
    }

    /// Nothing to catch up, nothing unconfirmed: the node holds what the
    /// server stores, as far as the server knows.
    pub fn idle(&self) -> bool {
        self.work.is_empty() && self.delete.is_empty() && self.awaiting.is_empty() && !self.rescan
    }

    fn state(&self) -> &'static str {
        if !self.connected() {
            "disconnected"
        } else if self.behind || !self.work.is_empty() || !self.delete.is_empty() || self.rescan {
            "behind"
        } else {
            "in-sync"
        }
    }

    fn status(&self, id: &NodeId) -> NodeStatus {
        let (queued, live) = self.queue.as_ref().map(|q| q.load()).unwrap_or((0, 0));
        let awaiting_bytes: u64 = self.awaiting.values().filter_map(|a| a.file.as_ref().map(|f| f.size)).sum();
        let work_bytes: u64 = self.work.values().map(|(_, size)| size).sum();
        NodeStatus {
            node: id.to_string(),
            peer: self.peer.clone(),
            state: self.state(),
            lag_files: (self.work.len() + self.delete.len() + self.awaiting.len() + live) as u64,
            lag_bytes: work_bytes + awaiting_bytes + queued,
            connected_since_unix_ms: self.since_unix_ms,
            disconnected_unix_ms: self.disconnected_unix_ms,
            files_held: self.held.len() as u64,
            files_mirrored: self.files_mirrored,
            bytes_mirrored: self.bytes_mirrored,
            queued_bytes: queued,
        }
    }
}

impl Node {
    pub fn lock(&self) -> MutexGuard<'_, NodeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's claim on a node record.
pub struct Connected {
    pub node: Arc<Node>,
    pub queue: Arc<FeedQueue>,
    pub session: u64,
}

/// Every backup node of this server process.
#[derive(Debug)]
pub struct Backups {
    config: BackupConfig,
    /// Bound on one node's inventory and on the names waiting for its
    /// catch-up.
    max_files: usize,
    next_transfer: AtomicU64,
    next_session: AtomicU64,
    nodes: Mutex<Vec<Arc<Node>>>,
    /// Bumped when an upload waiting for nodes should look again: a
    /// confirmation arrived, a queue has room, a node changed state.
    progress: watch::Sender<u64>,
}

impl Backups {
    pub fn new(config: BackupConfig, max_files: usize) -> Arc<Backups> {
        Arc::new(Backups {
            config,
            max_files,
            // Transfer ids of a new process (after a live upgrade) must not
            // meet those of the old one still being confirmed.
            next_transfer: AtomicU64::new(rand::random::<u64>() >> 2),
            next_session: AtomicU64::new(1),
            nodes: Mutex::new(Vec::new()),
            progress: watch::channel(0).0,
        })
    }

    pub fn config(&self) -> &BackupConfig {
        &self.config
    }

    pub fn max_files(&self) -> usize {
        self.max_files
    }

    fn nodes(&self) -> MutexGuard<'_, Vec<Arc<Node>>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transfer id no other transfer of this process has.
    pub fn next_transfer(&self) -> u64 {
        self.next_transfer.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes the record of node `id` for a new connection, replacing any
    /// connection it had (whose feed ends when it sees its queue closed).
    /// The record starts behind, with a full comparison pending.
    pub fn connect(
        &self,
        id: &NodeId,
        peer: String,
        held: BTreeMap<String, Held>,
        awaiting: BTreeMap<u64, Awaiting>,
        since_unix_ms: u64,
    ) -> Result<Connected, String> {
        let mut nodes = self.nodes();
        let node = match nodes.iter().find(|n| &n.id == id) {
            Some(node) => node.clone(),
            None => {
                if nodes.len() >= self.config.max_backups {
                    let oldest = nodes
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| n.lock().disconnected_unix_ms.map(|t| (t, i)))
                        .min()
                        .map(|(_, i)| i);
                    match oldest {
                        Some(i) => {
                            nodes.remove(i);
                        }
                        None => {
                            return Err(format!(
                                "{} backup nodes are connected (backup.max_backups = {})",
                                nodes.len(),
                                self.config.max_backups
                            ));
                        }
                    }
                }
                let node = Arc::new(Node { id: id.clone(), inner: Mutex::new(NodeInner::new()) });
                nodes.push(node.clone());
                node
            }
        };
        drop(nodes);
        let queue = Arc::new(FeedQueue::new(self.config.max_queue_bytes));
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        {
            let mut n = node.lock();
            if let Some(old) = n.queue.replace(queue.clone()) {
                old.close();
            }
            n.session = session;
            n.peer = peer;
            n.since_unix_ms = since_unix_ms;
            n.disconnected_unix_ms = None;
            n.held = held;
            n.awaiting = awaiting;
            n.work.clear();
            n.delete.clear();
            n.rescan = true;
            n.behind = true;
        }
        self.bump();
        Ok(Connected { node, queue, session })
    }

    /// The connection `session` of `node` ended. What it had not confirmed
    /// counts as lag until the node connects again.
    pub fn disconnect(&self, node: &Node, session: u64) {
        {
            let mut n = node.lock();
            if n.session != session {
                return;
            }
            if let Some(queue) = n.queue.take() {
                queue.close();
            }
            n.disconnected_unix_ms = Some(now_unix_ms());
            let max = self.max_files;
            let unconfirmed: Vec<Awaiting> = std::mem::take(&mut n.awaiting).into_values().collect();
            for a in unconfirmed {
                match a.file {
                    Some(file) => n.want(&a.name, file.size, max),
                    None => {
                        n.delete.insert(a.name);
                    }
                }
            }
        }
        self.bump();
    }

    /// Connected nodes and their queues: where a new upload is mirrored.
    pub fn connected(&self) -> Vec<(Arc<Node>, Arc<FeedQueue>)> {
        self.nodes().iter().filter_map(|n| n.lock().queue.clone().map(|q| (n.clone(), q))).collect()
    }

    /// `name` was stored (`size` bytes); every node not in `mirrored` (which
    /// got it live) should check it, connected or not.
    pub fn committed(&self, name: &str, size: u64, mirrored: &[NodeId]) {
        for node in self.nodes().iter() {
            if mirrored.contains(&node.id) {
                continue;
            }
            let mut n = node.lock();
            n.want(name, size, self.max_files);
            if let Some(queue) = &n.queue {
                queue.wake();
            }
        }
    }

    /// Nodes an upload with `backup.ack = "all"` waits for: connected and
    /// not behind.
    pub fn ack_set(&self) -> Vec<NodeId> {
        self.nodes()
            .iter()
            .filter(|n| {
                let n = n.lock();
                n.connected() && !n.behind
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// Whether an upload still waits for `id` to hold `name` with digest
    /// `blake3`. A node unknown here counts as still coming: after a live
    /// upgrade the uploads and the feeds resume in no particular order.
    pub fn waits_for(&self, id: &NodeId, name: &str, blake3: &str) -> bool {
        let Some(node) = self.nodes().iter().find(|n| &n.id == id).cloned() else { return true };
        let n = node.lock();
        n.connected() && !n.behind && n.held.get(name).is_none_or(|h| h.blake3 != blake3)
    }

    /// Marks nodes behind: an upload gave up waiting for them.
    pub fn mark_behind(&self, ids: &[NodeId]) {
        for node in self.nodes().iter().filter(|n| ids.contains(&n.id)) {
            let mut n = node.lock();
            if n.connected() && !n.behind {
                tracing::warn!(node = %node.id, "backup node is behind: it did not keep up with an upload");
                n.behind = true;
            }
        }
        self.bump();
    }

    /// Waits for [`Backups::bump`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Tells waiting uploads to look again.
    pub fn bump(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn status(&self) -> Vec<NodeStatus> {
        self.nodes().iter().map(|n| n.lock().status(&n.id)).collect()
    }
}

impl NodeInner {
    fn new() -> NodeInner {
        NodeInner {
            peer: String::new(),
            queue: None,
            session: 0,
            since_unix_ms: 0,
            disconnected_unix_ms: None,
            held: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            work: BTreeMap::new(),
            delete: BTreeSet::new(),
            rescan: false,
            behind: false,
            files_mirrored: 0,
            bytes_mirrored: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups(max_backups: usize) -> Arc<Backups> {
        Backups::new(BackupConfig { max_backups, ..BackupConfig::default() }, 3)
    }

    fn held(size: u64, blake3: &str) -> Held {
        Held { size, blake3: blake3.into(), etag: None }
    }

    fn connect(b: &Backups, id: &NodeId) -> Connected {
        b.connect(id, "peer".into(), BTreeMap::new(), BTreeMap::new(), 1).unwrap()
    }

    #[test]
    fn a_reconnect_replaces_the_old_connection() {
        let b = backups(4);
        let id = NodeId::random();
        let first = connect(&b, &id);
        let second = connect(&b, &id);
        assert!(first.queue.is_closed(), "the old connection's queue is closed");
        assert!(!second.queue.is_closed());
        b.disconnect(&first.node, first.session);
        assert!(second.node.lock().connected(), "the old session cannot disconnect the new one");
        b.disconnect(&second.node, second.session);
        assert_eq!(b.status()[0].state, "disconnected");
    }

    #[test]
    fn records_are_bounded_and_disconnected_ones_make_room() {
        let b = backups(2);
        let (x, y, z) = (NodeId::random(), NodeId::random(), NodeId::random());
        let cx = connect(&b, &x);
        let _cy = connect(&b, &y);
        assert!(b.connect(&z, "p".into(), BTreeMap::new(), BTreeMap::new(), 1).is_err());
        b.disconnect(&cx.node, cx.session);
        connect(&b, &z);
        let ids: Vec<_> = b.status().into_iter().map(|s| s.node).collect();
        assert_eq!(ids, [y.to_string(), z.to_string()]);
        assert!(backups(0).connect(&x, "p".into(), BTreeMap::new(), BTreeMap::new(), 1).is_err());
    }

    #[test]
    fn states_and_ack_waits() {
        let b = backups(4);
        let id = NodeId::random();
        let c = connect(&b, &id);
        assert_eq!(b.status()[0].state, "behind", "a new node is behind until compared");
        assert!(b.ack_set().is_empty());
        {
            let mut n = c.node.lock();
            n.rescan = false;
            n.behind = false;
        }
        assert_eq!(b.status()[0].state, "in-sync");
        assert_eq!(b.ack_set(), std::slice::from_ref(&id));
        assert!(b.waits_for(&id, "a", "h1"));
        c.node.lock().held.insert("a".into(), held(1, "h1"));
        assert!(!b.waits_for(&id, "a", "h1"));
        assert!(b.waits_for(&id, "a", "h2"), "another version is not enough");
        assert!(b.waits_for(&NodeId::random(), "a", "h1"), "an unknown node may still resume");
        b.mark_behind(std::slice::from_ref(&id));
        assert!(!b.waits_for(&id, "a", "h2"), "nobody waits for a node that is behind");
    }

    #[test]
    fn commits_become_work_for_nodes_that_missed_them() {
        let b = backups(4);
        let (x, y) = (NodeId::random(), NodeId::random());
        let cx = connect(&b, &x);
        let cy = connect(&b, &y);
        cy.node.lock().held.insert("same-size".into(), held(5, "h"));
        b.committed("new", 10, std::slice::from_ref(&x));
        b.committed("same-size", 5, &[]);
        assert!(cx.node.lock().work.keys().eq(["same-size"]));
        let work: Vec<_> = cy.node.lock().work.iter().map(|(n, (c, s))| (n.clone(), *c, *s)).collect();
        assert_eq!(work, [("new".to_string(), Check::Send, 10), ("same-size".to_string(), Check::Compare, 5)]);
        // The bound (3 here) turns more names into a full rescan.
        cy.node.lock().rescan = false;
        b.committed("c", 1, &[]);
        b.committed("d", 1, &[]);
        assert_eq!(cy.node.lock().work.len(), 3);
        assert!(cy.node.lock().rescan);
    }

    #[test]
    fn unconfirmed_work_counts_as_lag_after_a_disconnect() {
        let b = backups(4);
        let id = NodeId::random();
        let c = connect(&b, &id);
        c.node.lock().awaiting.insert(7, Awaiting { transfer: 7, name: "f".into(), file: Some(held(100, "h")) });
        c.node.lock().awaiting.insert(8, Awaiting { transfer: 8, name: "g".into(), file: None });
        b.disconnect(&c.node, c.session);
        let s = &b.status()[0];
        assert_eq!((s.state, s.lag_files, s.lag_bytes), ("disconnected", 2, 100));
    }
}
