//! The ordered key set every eviction policy is built from.
//!
//! Policies need a queue that can also drop or move an element from its
//! middle in O(1) (an invalidated file, an LRU hit). A `VecDeque` cannot, and
//! lazy deletion would let tombstones grow past any bound, so this is a doubly
//! linked list whose nodes live in one `Vec` (indices instead of pointers: no
//! unsafe code), with a map from key to node.

use std::collections::HashMap;

use super::policy::PolicyKey;

/// "No node": the end of the list in either direction.
const NIL: usize = usize::MAX;

#[derive(Clone, Debug)]
struct Node<V> {
    key: PolicyKey,
    value: V,
    /// Towards the front (newer).
    prev: usize,
    /// Towards the back (older, next out).
    next: usize,
}

/// Keys in insertion order, each with a small value: `push_front` adds the
/// newest, `pop_back` takes the oldest. Freed slots are reused, so the memory
/// held is bounded by the largest length the queue ever had.
#[derive(Clone, Debug)]
pub struct KeyQueue<V> {
    index: HashMap<PolicyKey, usize>,
    nodes: Vec<Node<V>>,
    free: Vec<usize>,
    front: usize,
    back: usize,
}

impl<V: Copy> Default for KeyQueue<V> {
    fn default() -> Self {
        KeyQueue { index: HashMap::new(), nodes: Vec::new(), free: Vec::new(), front: NIL, back: NIL }
    }
}

impl<V: Copy> KeyQueue<V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, key: PolicyKey) -> bool {
        self.index.contains_key(&key)
    }

    pub fn get(&self, key: PolicyKey) -> Option<&V> {
        self.index.get(&key).map(|&i| &self.nodes[i].value)
    }

    pub fn get_mut(&mut self, key: PolicyKey) -> Option<&mut V> {
        self.index.get(&key).map(|&i| &mut self.nodes[i].value)
    }

    /// Adds `key` as the newest element. The caller guarantees it is absent:
    /// a key twice in one queue would corrupt every policy's accounting.
    pub fn push_front(&mut self, key: PolicyKey, value: V) {
        let node = Node { key, value, prev: NIL, next: self.front };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        let previous = self.index.insert(key, i);
        assert!(previous.is_none(), "key {key:#x} pushed twice");
        self.link_front(i);
    }

    /// Removes and returns the oldest element.
    pub fn pop_back(&mut self) -> Option<(PolicyKey, V)> {
        if self.back == NIL {
            return None;
        }
        let key = self.nodes[self.back].key;
        self.remove(key).map(|v| (key, v))
    }

    /// The oldest element, left in place.
    pub fn back(&self) -> Option<(PolicyKey, &V)> {
        (self.back != NIL).then(|| (self.nodes[self.back].key, &self.nodes[self.back].value))
    }

    /// The newest element, left in place.
    pub fn front(&self) -> Option<(PolicyKey, &V)> {
        (self.front != NIL).then(|| (self.nodes[self.front].key, &self.nodes[self.front].value))
    }

    pub fn remove(&mut self, key: PolicyKey) -> Option<V> {
        let i = self.index.remove(&key)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.nodes[i].value)
    }

    /// Makes `key` the newest element; false if it is absent.
    pub fn move_to_front(&mut self, key: PolicyKey) -> bool {
        let Some(&i) = self.index.get(&key) else { return false };
        if self.front != i {
            self.unlink(i);
            self.link_front(i);
        }
        true
    }

    /// Keys from the oldest (next out) to the newest.
    pub fn iter_oldest_first(&self) -> impl Iterator<Item = (PolicyKey, &V)> + '_ {
        let mut i = self.back;
        std::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let node = &self.nodes[i];
            i = node.prev;
            Some((node.key, &node.value))
        })
    }

    fn link_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.front;
        if self.front != NIL {
            self.nodes[self.front].prev = i;
        }
        self.front = i;
        if self.back == NIL {
            self.back = i;
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.front = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.back = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[i].prev = NIL;
        self.nodes[i].next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn keys(q: &KeyQueue<u64>) -> Vec<PolicyKey> {
        q.iter_oldest_first().map(|(k, _)| k).collect()
    }

    #[test]
    fn fifo_order_and_moves() {
        let mut q = KeyQueue::default();
        for k in 1..=4 {
            q.push_front(k, k * 10);
        }
        assert_eq!(keys(&q), [1, 2, 3, 4]);
        assert!(q.move_to_front(2));
        assert!(!q.move_to_front(9));
        assert_eq!(keys(&q), [1, 3, 4, 2]);
        assert_eq!(q.remove(3), Some(30));
        assert_eq!(q.remove(3), None);
        assert_eq!(q.back(), Some((1, &10)));
        assert_eq!(q.front(), Some((2, &20)));
        assert_eq!(q.pop_back(), Some((1, 10)));
        assert_eq!(keys(&q), [4, 2]);
        *q.get_mut(4).unwrap() = 7;
        assert_eq!(q.get(4), Some(&7));
        q.push_front(5, 50);
        assert_eq!(q.nodes.len(), 4, "freed slots are reused");
        assert_eq!(keys(&q), [4, 2, 5]);
        while q.pop_back().is_some() {}
        assert!(q.is_empty());
        assert_eq!(keys(&q), Vec::<u64>::new());
    }

    #[test]
    #[should_panic(expected = "pushed twice")]
    fn duplicate_push_is_a_bug() {
        let mut q = KeyQueue::default();
        q.push_front(1, 0u64);
        q.push_front(1, 0u64);
    }

    proptest! {
        /// Any sequence of operations leaves the queue equal to a naive model.
        #[test]
        fn matches_a_vecdeque_model(ops in proptest::collection::vec((0u8..4, 0u64..16), 0..200)) {
            let mut q = KeyQueue::default();
            let mut model: VecDeque<u64> = VecDeque::new(); // front = newest
            for (op, k) in ops {
                match op {
                    0 if !model.contains(&k) => {
                        q.push_front(k, k);
                        model.push_front(k);
                    }
                    1 => prop_assert_eq!(q.pop_back().map(|(k, _)| k), model.pop_back()),
                    2 => {
                        let pos = model.iter().position(|&m| m == k);
                        prop_assert_eq!(q.remove(k), pos.map(|p| model.remove(p).unwrap_or(u64::MAX)));
                    }
                    3 => {
                        let pos = model.iter().position(|&m| m == k);
                        prop_assert_eq!(q.move_to_front(k), pos.is_some());
                        if let Some(p) = pos {
                            model.remove(p);
                            model.push_front(k);
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(keys(&q), model.iter().rev().copied().collect::<Vec<_>>());
                prop_assert_eq!(q.len(), model.len());
                prop_assert!(q.nodes.len() <= 16, "slots bounded by the largest length");
            }
        }
    }
}
