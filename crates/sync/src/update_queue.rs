//! One client's queue of updates the server has yet to push to it.
//!
//! The seed: when a file is finished, the receiving thread adds it to every other client's queue, "if a
//! file is already in the update queue, it shall not be added again", and the client's sending thread
//! takes one entry at a time. Here a queued file whose newer version arrives is updated in place (it
//! keeps its turn, so a file that changes constantly cannot be starved by the files behind it), and an
//! older version than the one queued is dropped. With no duplicates, a queue never holds more entries
//! than the roster has files, so bounding it by the roster's size means it never overflows in practice;
//! a full queue is still refused rather than grown, and the server then resynchronises that client.

use std::collections::{HashMap, VecDeque};

use ferry_files::SafeName;

/// What the push does to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// Send the file's content (File Chunks, then Finished).
    Write,
    /// Send Delete File.
    Delete,
}

/// One pending push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpdate {
    pub name: SafeName,
    /// The roster version that the push brings the client to.
    pub version: u64,
    pub kind: UpdateKind,
}

/// What [`UpdateQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The file was not queued; it now is, at the back.
    Added,
    /// The file was queued at an older version; the entry now holds this one, in the same place.
    Replaced,
    /// The file is already queued at this version or a newer one; nothing changed.
    Stale,
}

/// The queue is at capacity and the file is not in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("update queue is full ({0} files)")]
pub struct QueueFull(pub usize);

/// A bounded FIFO of files to push, at most one entry per file.
#[derive(Debug, Clone)]
pub struct UpdateQueue {
    order: VecDeque<SafeName>,
    pending: HashMap<SafeName, (u64, UpdateKind)>,
    capacity: usize,
}

impl UpdateQueue {
    /// An empty queue of at most `capacity` files (at least 1).
    pub fn new(capacity: usize) -> UpdateQueue {
        let capacity = capacity.max(1);
        UpdateQueue { order: VecDeque::new(), pending: HashMap::new(), capacity }
    }

    /// Queues `name` at `version`, unless it is queued already (see [`Enqueued`]).
    pub fn push(&mut self, name: SafeName, version: u64, kind: UpdateKind) -> Result<Enqueued, QueueFull> {
        let outcome = match self.pending.get_mut(&name) {
            Some(queued) if queued.0 >= version => Enqueued::Stale,
            Some(queued) => {
                *queued = (version, kind);
                Enqueued::Replaced
            }
            None if self.order.len() >= self.capacity => return Err(QueueFull(self.capacity)),
            None => {
                self.pending.insert(name.clone(), (version, kind));
                self.order.push_back(name);
                Enqueued::Added
            }
        };
        self.assert_consistent();
        Ok(outcome)
    }

    /// Takes the oldest entry.
    pub fn pop(&mut self) -> Option<QueuedUpdate> {
        let name = self.order.pop_front()?;
        let entry = self.pending.remove(&name);
        self.assert_consistent();
        // Every queued name has its entry (the invariant just checked), so this is always `Some`.
        entry.map(|(version, kind)| QueuedUpdate { name, version, kind })
    }

    /// Drops `name`'s entry, if any (e.g. the client itself just sent a newer version of it).
    pub fn remove(&mut self, name: &SafeName) -> Option<QueuedUpdate> {
        let (version, kind) = self.pending.remove(name)?;
        self.order.retain(|n| n != name);
        self.assert_consistent();
        Some(QueuedUpdate { name: name.clone(), version, kind })
    }

    /// The entry for `name`, if queued: its version and kind.
    pub fn get(&self, name: &SafeName) -> Option<(u64, UpdateKind)> {
        self.pending.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn assert_consistent(&self) {
        assert_eq!(self.order.len(), self.pending.len(), "update queue order and entries disagree");
        debug_assert!(self.order.len() <= self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn names(q: &mut UpdateQueue) -> Vec<(String, u64, UpdateKind)> {
        std::iter::from_fn(|| q.pop()).map(|u| (u.name.to_string(), u.version, u.kind)).collect()
    }

    #[test]
    fn first_in_first_out() {
        let mut q = UpdateQueue::new(10);
        assert_eq!(q.push(n("a"), 1, UpdateKind::Write), Ok(Enqueued::Added));
        assert_eq!(q.push(n("b"), 2, UpdateKind::Delete), Ok(Enqueued::Added));
        assert_eq!(q.push(n("c"), 3, UpdateKind::Write), Ok(Enqueued::Added));
        assert_eq!(q.len(), 3);
        assert_eq!(
            names(&mut q),
            [
                ("a".into(), 1, UpdateKind::Write),
                ("b".into(), 2, UpdateKind::Delete),
                ("c".into(), 3, UpdateKind::Write)
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_queued_file_is_not_queued_twice() {
        let mut q = UpdateQueue::new(10);
        q.push(n("a"), 4, UpdateKind::Write).unwrap();
        assert_eq!(q.push(n("a"), 4, UpdateKind::Write), Ok(Enqueued::Stale));
        assert_eq!(q.push(n("a"), 3, UpdateKind::Delete), Ok(Enqueued::Stale));
        assert_eq!(q.len(), 1);
        assert_eq!(q.get(&n("a")), Some((4, UpdateKind::Write)));
    }

    #[test]
    fn a_newer_version_replaces_the_queued_one_in_place() {
        let mut q = UpdateQueue::new(10);
        q.push(n("a"), 1, UpdateKind::Write).unwrap();
        q.push(n("b"), 2, UpdateKind::Write).unwrap();
        assert_eq!(q.push(n("a"), 5, UpdateKind::Delete), Ok(Enqueued::Replaced));
        assert_eq!(names(&mut q), [("a".into(), 5, UpdateKind::Delete), ("b".into(), 2, UpdateKind::Write)]);
    }

    #[test]
    fn after_a_pop_the_file_can_be_queued_again() {
        let mut q = UpdateQueue::new(10);
        q.push(n("a"), 1, UpdateKind::Write).unwrap();
        assert_eq!(q.pop().unwrap().version, 1);
        assert_eq!(q.push(n("a"), 2, UpdateKind::Write), Ok(Enqueued::Added));
    }

    #[test]
    fn bounded() {
        let mut q = UpdateQueue::new(2);
        q.push(n("a"), 1, UpdateKind::Write).unwrap();
        q.push(n("b"), 1, UpdateKind::Write).unwrap();
        assert_eq!(q.push(n("c"), 1, UpdateKind::Write), Err(QueueFull(2)));
        // A file already queued can still be updated when full.
        assert_eq!(q.push(n("a"), 2, UpdateKind::Write), Ok(Enqueued::Replaced));
        assert_eq!(QueueFull(2).to_string(), "update queue is full (2 files)");
        assert_eq!(UpdateQueue::new(0).capacity(), 1);
    }

    #[test]
    fn remove_takes_a_file_out() {
        let mut q = UpdateQueue::new(10);
        q.push(n("a"), 1, UpdateKind::Write).unwrap();
        q.push(n("b"), 1, UpdateKind::Write).unwrap();
        assert_eq!(q.remove(&n("a")), Some(QueuedUpdate { name: n("a"), version: 1, kind: UpdateKind::Write }));
        assert_eq!(q.remove(&n("a")), None);
        assert_eq!(names(&mut q), [("b".into(), 1, UpdateKind::Write)]);
    }

    proptest! {
        /// Against a model: each file once, in first-queued order, at its highest version.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..6, 0u64..20, any::<bool>()), 0..64)) {
            let mut q = UpdateQueue::new(4);
            let mut model: Vec<(String, u64)> = Vec::new();
            for (file, version, pop) in ops {
                if pop {
                    let got = q.pop().map(|u| (u.name.to_string(), u.version));
                    let want = (!model.is_empty()).then(|| model.remove(0));
                    prop_assert_eq!(got, want);
                    continue;
                }
                let name = format!("f{file}");
                let result = q.push(n(&name), version, UpdateKind::Write);
                let full = model.len() >= 4;
                match model.iter_mut().find(|(m, _)| *m == name) {
                    Some((_, v)) if *v >= version => prop_assert_eq!(result, Ok(Enqueued::Stale)),
                    Some((_, v)) => { *v = version; prop_assert_eq!(result, Ok(Enqueued::Replaced)); }
                    None if full => prop_assert_eq!(result, Err(QueueFull(4))),
                    None => { model.push((name, version)); prop_assert_eq!(result, Ok(Enqueued::Added)); }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
