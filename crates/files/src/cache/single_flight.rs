//! One disk read per file however many clients miss on it at once.
//!
//! The first caller to miss on a (name, etag) becomes its leader and loads;
//! later callers wait for the leader's outcome. A leader whose future is
//! dropped mid-load (its client went away) or that panics closes its channel
//! without an outcome, and the waiters go back to the cache, where one of them
//! becomes the next leader: nobody waits for a load that will never finish.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

/// A load's result, shareable with every waiter (an `io::Error` is not Clone,
/// so waiters get a new error of the same kind and message).
#[derive(Clone, Debug)]
enum Outcome {
    Loaded(Bytes),
    Failed(io::ErrorKind, Arc<str>),
}

type Slot = watch::Receiver<Option<Outcome>>;

/// The loads in progress. Holds one entry per (name, etag) being loaded, so
/// its size is bounded by the number of concurrent requests, which the
/// services' connection limits bound.
#[derive(Debug)]
pub struct SingleFlight<K> {
    flights: Mutex<HashMap<K, Slot>>,
}

/// What a caller that missed does next.
#[derive(Debug)]
pub enum Join<'a, K: Hash + Eq + Clone> {
    /// Nobody is loading this key: load it, then [`Leader::finish`].
    Lead(Leader<'a, K>),
    /// Somebody is: [`Waiter::wait`] for their outcome.
    Wait(Waiter),
}

/// The right and the duty to load one key. Dropping it without `finish`
/// (cancellation, panic) releases the waiters with no outcome.
#[derive(Debug)]
pub struct Leader<'a, K: Hash + Eq + Clone> {
    flights: &'a SingleFlight<K>,
    key: K,
    tx: watch::Sender<Option<Outcome>>,
}

#[derive(Debug)]
pub struct Waiter {
    rx: Slot,
}

impl<K: Hash + Eq + Clone> Default for SingleFlight<K> {
    fn default() -> Self {
        SingleFlight { flights: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone> SingleFlight<K> {
    // Every critical section is a single insert, lookup or remove, so a
    // panic cannot leave the map inconsistent; a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Slot>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Becomes the leader for `key`, or a waiter on the current leader.
    pub fn join(&self, key: K) -> Join<'_, K> {
        let mut flights = self.lock();
        if let Some(rx) = flights.get(&key) {
            return Join::Wait(Waiter { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), rx);
        Join::Lead(Leader { flights: self, key, tx })
    }

    /// Loads in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone> Leader<'_, K> {
    /// Hands the outcome to every waiter, present and late.
    pub fn finish(self, outcome: Result<&Bytes, &io::Error>) {
        let shared = match outcome {
            Ok(bytes) => Outcome::Loaded(bytes.clone()),
            Err(e) => Outcome::Failed(e.kind(), e.to_string().into()),
        };
        self.tx.send_replace(Some(shared));
        // Drop removes the map entry.
    }
}

impl<K: Hash + Eq + Clone> Drop for Leader<'_, K> {
    fn drop(&mut self) {
        // The entry is this leader's: no one else inserts a key while it is
        // present, and only its leader removes it.
        self.flights.lock().remove(&self.key);
    }
}

impl Waiter {
    /// The leader's outcome, or `None` if the leader gave up without one (the
    /// caller should then look again and possibly lead).
    pub async fn wait(mut self) -> Option<io::Result<Bytes>> {
        let outcome = self.rx.wait_for(Option::is_some).await.ok()?.clone()?;
        Some(match outcome {
            Outcome::Loaded(bytes) => Ok(bytes),
            Outcome::Failed(kind, message) => Err(io::Error::new(kind, message.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Bound on any wait in these tests: a hang fails instead of blocking.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn lead(sf: &SingleFlight<u32>, key: u32) -> Leader<'_, u32> {
        match sf.join(key) {
            Join::Lead(l) => l,
            Join::Wait(_) => panic!("expected to lead {key}"),
        }
    }

    fn wait(sf: &SingleFlight<u32>, key: u32) -> Waiter {
        match sf.join(key) {
            Join::Wait(w) => w,
            Join::Lead(_) => panic!("expected to wait on {key}"),
        }
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_bytes_even_late() {
        let sf = SingleFlight::default();
        let leader = lead(&sf, 1);
        let early = wait(&sf, 1);
        let _other = lead(&sf, 2);
        assert_eq!(sf.len(), 2);
        leader.finish(Ok(&Bytes::from_static(b"one")));
        assert_eq!(sf.len(), 1, "finishing removes the flight");
        let got = tokio::time::timeout(DEADLINE, early.wait()).await.unwrap();
        assert_eq!(got.unwrap().unwrap(), Bytes::from_static(b"one"));
        // Nobody is loading 1 any more: the next caller leads.
        drop(lead(&sf, 1));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters_empty_handed() {
        let sf = SingleFlight::default();
        let leader = lead(&sf, 7);
        let w = wait(&sf, 7);
        let task = tokio::spawn(w.wait());
        drop(leader);
        assert!(sf.is_empty());
        let got = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        assert!(got.is_none());
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let sf = SingleFlight::default();
        let leader = lead(&sf, 3);
        let (a, b) = (wait(&sf, 3), wait(&sf, 3));
        leader.finish(Err(&io::Error::new(io::ErrorKind::PermissionDenied, "no read access")));
        for w in [a, b] {
            let e = w.wait().await.unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert_eq!(e.to_string(), "no read access");
        }
    }
}
