//! One `stat` of a file shared by every request for it that had arrived
//! before the `stat` was taken, on the same worker thread.
//!
//! Every GET or HEAD looks at the file so that a changed file is never
//! answered from memory (docs/http.md). That look was one `statx` per
//! request, about a tenth of the CPU time of a cached small answer. What the
//! guarantee needs is weaker: the look must be taken *after the request
//! arrived*. A change that completed before the client sent its request
//! (the only order in which the client can know of it) is then seen, since
//! the request was read after the change and the look after the request.
//!
//! So a request that finds no look taken since it arrived yields once: the
//! worker then reads the other connections' requests that are ready, and
//! the first request for the name to run again takes the `stat`, which
//! serves all of them. Under load one `stat` answers a batch of requests;
//! a lone request pays one yield.
//!
//! "Since it arrived" is counted on the thread, in program order: a request
//! takes a number from the thread's counter when its handler starts (its
//! head has been read by then), and a `stat` takes the next number when it
//! is recorded (right after it returned, with no await in between). A look
//! serves a request only if it was taken on the same thread with a higher
//! number. A request that resumed on another thread (a multi-thread runtime)
//! stats for itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_files::{Etag, FileMeta, FileStore, SafeName};

/// Names remembered per thread. A look only serves requests that arrived
/// before it, so it is worth keeping for one batch of requests; past this
/// the thread forgets them all and starts over.
pub const MAX_NAMES: usize = 256;

/// Gives each thread its own id, so a number from one thread's counter is
/// never compared with another's.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LOOKS: RefCell<Looks> = RefCell::new(Looks::new());
}

/// When a request arrived: its thread and its place in that thread's order.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    thread: u64,
    seq: u64,
}

/// The looks one thread has taken.
#[derive(Debug)]
struct Looks {
    thread: u64,
    /// The next number in this thread's order.
    next: u64,
    names: HashMap<String, Look>,
    /// `stat` calls made, for tests.
    taken: u64,
}

#[derive(Debug)]
struct Look {
    meta: FileMeta,
    seq: u64,
}

impl Looks {
    fn new() -> Looks {
        Looks { thread: NEXT_THREAD.fetch_add(1, Ordering::Relaxed), next: 0, names: HashMap::new(), taken: 0 }
    }

    fn take_number(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        n
    }

    /// A look at `name` taken after `arrival` on this thread, if it found
    /// the `known` version.
    fn since(&self, arrival: Arrival, name: &SafeName, known: &Etag) -> Option<FileMeta> {
        if arrival.thread != self.thread {
            return None;
        }
        let look = self.names.get(name.as_str())?;
        (look.seq > arrival.seq && look.meta.etag == *known).then(|| look.meta.clone())
    }

    fn record(&mut self, name: &SafeName, meta: &FileMeta) {
        let seq = self.take_number();
        if let Some(look) = self.names.get_mut(name.as_str()) {
            *look = Look { meta: meta.clone(), seq };
            return;
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.insert(name.as_str().to_owned(), Look { meta: meta.clone(), seq });
        assert!(self.names.len() <= MAX_NAMES, "{} names remembered, over {MAX_NAMES}", self.names.len());
    }
}

/// Marks a request as arrived. Call it once the request's head has been
/// read, before anything about the file is decided.
pub fn arrive() -> Arrival {
    LOOKS.with_borrow_mut(|looks| Arrival { thread: looks.thread, seq: looks.take_number() })
}

/// The file's metadata from a `stat` taken after `arrival`, if the file is
/// still the `known` version; `None` if it is another version, or gone.
///
/// Must run on the task of the request that arrived (it may yield once).
pub async fn stat_since(arrival: Arrival, store: &FileStore, name: &SafeName, known: &Etag) -> Option<FileMeta> {
    if let Some(meta) = LOOKS.with_borrow(|looks| looks.since(arrival, name, known)) {
        return Some(meta);
    }
    // Let the requests that are ready on the other connections arrive, so
    // that the one stat below serves them too.
    tokio::task::yield_now().await;
    if let Some(meta) = LOOKS.with_borrow(|looks| looks.since(arrival, name, known)) {
        return Some(meta);
    }
    // No await from here to the record: the number it gets is the stat's.
    let meta = store.stat_known(name, known);
    LOOKS.with_borrow_mut(|looks| {
        looks.taken += 1;
        if let Some(meta) = &meta {
            looks.record(name, meta);
        }
    });
    meta
}

/// `stat` calls this thread has made through [`stat_since`].
#[cfg(test)]
fn taken() -> u64 {
    LOOKS.with_borrow(|looks| looks.taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::DEFAULT_MAX_NAME_BYTES;
    use std::rc::Rc;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn store(dir: &tempfile::TempDir) -> FileStore {
        FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap()
    }

    fn local() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    #[test]
    fn requests_that_arrived_together_share_one_stat() {
        let dir = tempfile::tempdir().unwrap();
        let store = Rc::new(store(&dir));
        std::fs::write(store.root().join("a"), b"one").unwrap();
        let etag = store.stat(&n("a")).unwrap().etag;
        local().block_on(async {
            let set = tokio::task::LocalSet::new();
            set.run_until(async {
                let before = taken();
                let mut tasks = Vec::new();
                for _ in 0..10 {
                    let (store, etag) = (store.clone(), etag.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let arrival = arrive();
                        stat_since(arrival, &store, &n("a"), &etag).await
                    }));
                }
                for t in tasks {
                    assert_eq!(t.await.unwrap().map(|m| m.etag), Some(etag.clone()));
                }
                assert_eq!(taken() - before, 1, "one stat for ten requests that arrived before it");
            })
            .await;
        });
    }

    #[test]
    fn a_request_that_arrives_after_a_change_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let root = store.root().to_path_buf();
        std::fs::write(root.join("a"), b"one").unwrap();
        let etag = store.stat(&n("a")).unwrap().etag;
        local().block_on(async {
            let first = arrive();
            assert!(stat_since(first, &store, &n("a"), &etag).await.is_some());
            let before = taken();
            // Arrived after that stat, and the file is the same: a new stat all the same.
            assert!(stat_since(arrive(), &store, &n("a"), &etag).await.is_some());
            assert_eq!(taken() - before, 1);
            // A request that arrived before the last stat is served by it.
            assert!(stat_since(first, &store, &n("a"), &etag).await.is_some());
            assert_eq!(taken() - before, 1);

            // Replaced, then a request arrives: the look remembered from
            // before the change does not answer it.
            std::fs::write(root.join("a.new"), b"two").unwrap();
            std::fs::rename(root.join("a.new"), root.join("a")).unwrap();
            assert!(stat_since(arrive(), &store, &n("a"), &etag).await.is_none());
            let now = store.stat(&n("a")).unwrap().etag;
            assert!(stat_since(arrive(), &store, &n("a"), &now).await.is_some());
            std::fs::remove_file(root.join("a")).unwrap();
            assert!(stat_since(arrive(), &store, &n("a"), &now).await.is_none());
        });
    }

    #[test]
    fn an_arrival_on_another_thread_is_never_served_by_this_threads_looks() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        std::fs::write(store.root().join("a"), b"one").unwrap();
        let etag = store.stat(&n("a")).unwrap().etag;
        let elsewhere = std::thread::spawn(arrive).join().unwrap();
        local().block_on(async {
            assert!(stat_since(arrive(), &store, &n("a"), &etag).await.is_some());
            let before = taken();
            assert!(stat_since(elsewhere, &store, &n("a"), &etag).await.is_some());
            assert_eq!(taken() - before, 1, "stats for itself");
        });
    }

    #[test]
    fn bounded() {
        let mut looks = Looks::new();
        let meta = FileMeta { size: 1, etag: Etag::parse("1-1-1").unwrap(), modified_unix_ms: 0 };
        let first = Arrival { thread: looks.thread, seq: looks.take_number() };
        for i in 0..MAX_NAMES * 3 + 7 {
            looks.record(&n(&format!("f{i}")), &meta);
            assert!(looks.names.len() <= MAX_NAMES);
        }
        let last = n(&format!("f{}", MAX_NAMES * 3 + 6));
        assert!(looks.since(first, &last, &meta.etag).is_some(), "the newest is kept");
        let other = Etag::parse("2-2-2").unwrap();
        assert!(looks.since(first, &last, &other).is_none(), "another version never matches");
    }
}
