//! Tests of [`FileCache`] as its users see it: versions, admission,
//! invalidation, listing order, single flight, and the byte bound under
//! random and concurrent load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const KIB: u64 = 1024;
/// Bound on any wait in these tests: a hang fails instead of blocking.
const DEADLINE: Duration = Duration::from_secs(20);

fn cache(max_bytes: u64, policy: CachePolicyKind) -> FileCache {
    FileCache::new(CacheConfig { max_bytes, max_item_bytes: max_bytes / 2, policy })
}

fn etag(size: u64, version: u64) -> Etag {
    Etag::parse(&format!("{size:x}-{version:x}-1")).unwrap()
}

fn contents(size: u64, seed: u8) -> Bytes {
    Bytes::from(vec![seed; size as usize])
}

/// A load that must not be called.
async fn no_load() -> io::Result<Bytes> {
    Err(io::Error::other("loaded although cached"))
}

fn sum_of_entries(s: &CacheSnapshot) -> u64 {
    s.entries.iter().map(|e| e.size).sum()
}

#[tokio::test]
async fn hits_need_the_same_version_and_share_memory() {
    let c = cache(100 * KIB, CachePolicyKind::S3Fifo);
    let (v1, v2) = (etag(10, 1), etag(10, 2));
    let first = c.get_or_load("a", &v1, 10, || async { Ok(contents(10, 1)) }).await.unwrap();
    assert!(!first.hit);
    let again = c.get_or_load("a", &v1, 10, no_load).await.unwrap();
    assert!(again.hit);
    assert_eq!(again.bytes.as_ptr(), first.bytes.as_ptr(), "a hit is a clone, not a copy");
    assert_eq!(c.get("a", &v1).unwrap().as_ptr(), first.bytes.as_ptr());

    // The file changed: the old version is dropped, not served.
    assert_eq!(c.get("a", &v2), None);
    assert!(c.is_empty());
    assert_eq!(c.get("a", &v1), None, "the stale entry is gone");
    let s = c.snapshot();
    assert_eq!((s.hits, s.misses, s.hit_bytes, s.miss_bytes), (2, 3, 20, 30));
    assert_eq!(s.evictions, 0, "a stale entry is not an eviction");
    assert!((s.object_hit_ratio - 0.4).abs() < 1e-9 && (s.byte_hit_ratio - 0.4).abs() < 1e-9);
}

/// A file of `size` bytes of `seed`, opened for reading: what a load keeps.
fn open_file(dir: &tempfile::TempDir, name: &str, size: u64, seed: u8) -> File {
    let path = dir.path().join(name);
    std::fs::write(&path, contents(size, seed)).unwrap();
    File::open(path).unwrap()
}

#[tokio::test]
async fn an_entry_keeps_its_loaded_file_open_until_it_is_dropped_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig { max_bytes: 100 * KIB, max_item_bytes: 50 * KIB, policy: CachePolicyKind::Fifo };
    let c = FileCache::with_open_files(config, 2);
    let load = |name: &'static str, seed: u8| {
        let file = open_file(&dir, name, 10, seed);
        move || async move { Ok(Loaded { bytes: contents(10, seed), file: Some(file) }) }
    };
    let a = c.get_or_load("a", &etag(10, 1), 10, load("a", 1)).await.unwrap();
    let kept = a.file.clone().expect("a cached entry keeps its file");
    let hit = c.get_or_load("a", &etag(10, 1), 10, no_load).await.unwrap();
    assert!(hit.hit);
    assert!(Arc::ptr_eq(&kept, hit.file.as_ref().unwrap()), "the same open file, not another");
    assert_eq!(kept.metadata().unwrap().len(), 10);
    drop((a, hit));
    assert_eq!(Arc::strong_count(&kept), 2, "the entry's and ours");

    // Over the bound: the third entry keeps its bytes only.
    let b = c.get_or_load("b", &etag(10, 1), 10, load("b", 2)).await.unwrap();
    assert!(b.file.is_some());
    let third = c.get_or_load("c", &etag(10, 1), 10, load("c", 3)).await.unwrap();
    assert!(third.file.is_none(), "past the bound of 2");
    assert_eq!(third.bytes, contents(10, 3));
    assert_eq!(c.open_files(), 2);
    assert!(c.get_or_load("c", &etag(10, 1), 10, no_load).await.unwrap().file.is_none());

    // Invalidated, replaced by a newer version, evicted: each closes its file.
    c.invalidate("a");
    assert_eq!(Arc::strong_count(&kept), 1, "only ours is left");
    assert_eq!(c.open_files(), 1);
    let newer = c.get_or_load("b", &etag(10, 2), 10, load("b2", 4)).await.unwrap();
    assert!(newer.file.is_some(), "room again");
    assert_eq!(c.open_files(), 1, "the old version's file went with it");
    let big = c.get_or_load("d", &etag(50 * KIB, 1), 50 * KIB, || async { Ok(contents(50 * KIB, 5)) }).await.unwrap();
    assert!(big.file.is_none(), "a load without a file");
    for i in 0..10u8 {
        let name = format!("e{i}");
        c.get_or_load(&name, &etag(10 * KIB, 1), 10 * KIB, || async move { Ok(contents(10 * KIB, i)) }).await.unwrap();
    }
    assert!(c.get("b", &etag(10, 2)).is_none(), "evicted (FIFO)");
    assert_eq!(c.open_files(), 0);
    assert_eq!(Arc::strong_count(newer.file.as_ref().unwrap()), 1, "closed with the eviction but for ours");

    // Not admitted: read, not kept.
    let huge = 60 * KIB;
    let file = open_file(&dir, "huge", 1, 0);
    let r = c
        .get_or_load("huge", &etag(huge, 1), huge, || async move {
            Ok(Loaded { bytes: contents(huge, 0), file: Some(file) })
        })
        .await
        .unwrap();
    assert!(r.file.is_none() && !r.hit);
    assert_eq!(c.open_files(), 0);
}

#[tokio::test]
async fn large_files_are_loaded_but_never_cached() {
    let c =
        FileCache::new(CacheConfig { max_bytes: 100 * KIB, max_item_bytes: 10 * KIB, policy: CachePolicyKind::Lru });
    assert!(c.admits(10 * KIB) && !c.admits(10 * KIB + 1));
    let big = 10 * KIB + 1;
    for _ in 0..2 {
        let r = c.get_or_load("big", &etag(big, 1), big, || async move { Ok(contents(big, 9)) }).await.unwrap();
        assert!(!r.hit);
        assert_eq!(r.bytes.len() as u64, big);
    }
    assert!(c.is_empty());
    assert!(!c.insert("big", &etag(big, 1), contents(big, 9)));
    let s = c.snapshot();
    assert_eq!((s.hits, s.misses, s.miss_bytes), (0, 2, 2 * big));
    // max_item_bytes above max_bytes: max_bytes is the limit.
    let odd = FileCache::new(CacheConfig { max_bytes: 10, max_item_bytes: 100, policy: CachePolicyKind::Fifo });
    assert!(odd.admits(10) && !odd.admits(11));
}

#[tokio::test]
async fn invalidate_and_replace() {
    let c = cache(100 * KIB, CachePolicyKind::Fifo);
    assert!(c.insert("a", &etag(5, 1), contents(5, 1)));
    assert!(c.insert("b", &etag(6, 1), contents(6, 1)));
    c.invalidate("a");
    c.invalidate("never-cached");
    assert_eq!(c.get("a", &etag(5, 1)), None);
    // A new version replaces the old one in place.
    assert!(c.insert("b", &etag(7, 2), contents(7, 2)));
    let s = c.snapshot();
    assert_eq!(s.entries.len(), 1);
    assert_eq!((s.entries[0].name.as_str(), s.entries[0].size, s.bytes_held), ("b", 7, 7));
    assert_eq!(s.evictions, 0);
    assert_eq!(c.get("b", &etag(7, 2)), Some(contents(7, 2)));
}

#[tokio::test]
async fn load_errors_are_returned_and_not_cached() {
    let c = cache(100 * KIB, CachePolicyKind::S3Fifo);
    let e = c
        .get_or_load("gone", &etag(3, 1), 3, || async {
            Err::<Bytes, _>(io::Error::new(io::ErrorKind::NotFound, "vanished"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(c.is_empty());
    let r = c.get_or_load("gone", &etag(3, 1), 3, || async { Ok(contents(3, 0)) }).await.unwrap();
    assert!(!r.hit && c.len() == 1);
}

/// The listing is in eviction order: whatever is listed first is what the
/// next insert that needs room evicts, for every policy.
#[tokio::test]
async fn listing_order_is_eviction_order() {
    for policy in CachePolicyKind::ALL {
        let c = cache(64 * KIB, policy);
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for i in 0..400u64 {
            // Requests skewed to low numbers, all files 4 KiB.
            let n = next() % 64;
            let name = format!("f{}", n * n / 64);
            let before = c.snapshot();
            let tag = etag(4 * KIB, 1);
            let r = c.get_or_load(&name, &tag, 4 * KIB, || async { Ok(contents(4 * KIB, 0)) }).await.unwrap();
            let after = c.snapshot();
            assert_eq!(after.bytes_held, sum_of_entries(&after));
            if !r.hit && after.evictions > before.evictions {
                assert_eq!(after.evictions, before.evictions + 1, "{policy} step {i}: equal sizes, one victim");
                let victim = &before.entries[0].name;
                assert!(after.entries.iter().all(|e| &e.name != victim), "{policy} step {i}: {victim} stayed");
                assert!(
                    before.entries[1..]
                        .iter()
                        .all(|e| e.name == name || after.entries.iter().any(|a| a.name == e.name)),
                    "{policy} step {i}: something other than the listed next victim went"
                );
            }
        }
        assert!(c.snapshot().evictions > 50, "{policy}: the test evicted");
    }
}

#[tokio::test]
async fn snapshot_reports_hits_age_and_policy() {
    let c = cache(100 * KIB, CachePolicyKind::Lru);
    c.insert("x", &etag(1, 1), contents(1, 0));
    c.insert("y", &etag(2, 1), contents(2, 0));
    c.get("x", &etag(1, 1));
    c.get("x", &etag(1, 1));
    let s = c.snapshot();
    assert_eq!(s.policy, "lru");
    assert_eq!(s.max_bytes, 100 * KIB);
    let names: Vec<_> = s.entries.iter().map(|e| (e.name.as_str(), e.hits)).collect();
    assert_eq!(names, [("y", 0), ("x", 2)]);
    assert!(s.entries.iter().all(|e| e.age_ms < DEADLINE.as_millis() as u64));
    let json = serde_json::to_string(&s).unwrap();
    let back: CacheSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_load_once() {
    let c = Arc::new(cache(100 * KIB, CachePolicyKind::S3Fifo));
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let tag = etag(100, 1);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, loads, gate, tag) = (c.clone(), loads.clone(), gate.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_load("hot", &tag, 100, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(contents(100, 7))
            })
            .await
        }));
    }
    // Let the loader start, then let it finish.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while loads.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no load started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.notify_one();
    for t in tasks {
        let r = tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap().unwrap();
        assert_eq!(r.bytes, contents(100, 7));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for fifty concurrent misses");
    assert!(c.flights.is_empty());
    let s = c.snapshot();
    assert_eq!(s.hits + s.misses, 50);
}

/// The loading caller's future is dropped mid-load: a waiter loads instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_loader_hands_over_to_a_waiter() {
    let c = Arc::new(cache(100 * KIB, CachePolicyKind::S3Fifo));
    let tag = etag(8, 1);
    let started = Arc::new(tokio::sync::Notify::new());
    let leader = {
        let (c, tag, started) = (c.clone(), tag.clone(), started.clone());
        tokio::spawn(async move {
            c.get_or_load("f", &tag, 8, || async move {
                started.notify_one();
                std::future::pending::<io::Result<Bytes>>().await
            })
            .await
        })
    };
    tokio::time::timeout(DEADLINE, started.notified()).await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (c, tag, loads) = (c.clone(), tag.clone(), loads.clone());
            tokio::spawn(async move {
                c.get_or_load("f", &tag, 8, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(contents(8, 3))
                })
                .await
            })
        })
        .collect();
    // Wait until every waiter has joined the flight, then cancel the leader.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while c.stats().misses < 6 {
        assert!(tokio::time::Instant::now() < deadline, "waiters never arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for w in waiters {
        let r = tokio::time::timeout(DEADLINE, w).await.expect("a waiter hung").unwrap().unwrap();
        assert_eq!(r.bytes, contents(8, 3));
    }
    assert!((1..=5).contains(&loads.load(Ordering::SeqCst)));
    assert_eq!(c.get("f", &tag), Some(contents(8, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_fails_its_waiters_too() {
    let c = Arc::new(cache(100 * KIB, CachePolicyKind::Fifo));
    let tag = etag(8, 1);
    let gate = Arc::new(tokio::sync::Notify::new());
    let leader = {
        let (c, tag, gate) = (c.clone(), tag.clone(), gate.clone());
        tokio::spawn(async move {
            c.get_or_load("f", &tag, 8, || async move {
                gate.notified().await;
                Err::<Bytes, _>(io::Error::new(io::ErrorKind::PermissionDenied, "denied"))
            })
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while c.flights.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the leader never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waiter = {
        let (c, tag) = (c.clone(), tag.clone());
        tokio::spawn(async move { c.get_or_load("f", &tag, 8, || async { Ok(contents(8, 0)) }).await })
    };
    while c.stats().misses < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the waiter never arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.notify_one();
    let e = tokio::time::timeout(DEADLINE, leader).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    let e = tokio::time::timeout(DEADLINE, waiter).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert!(c.is_empty());
}

/// Many tasks and threads at once, random names and sizes: after every
/// operation the bound holds, and at the end the counters add up.
#[test]
fn the_bound_holds_under_concurrent_load() {
    const MAX: u64 = 256 * KIB;
    for policy in CachePolicyKind::ALL {
        let c = Arc::new(FileCache::new(CacheConfig { max_bytes: MAX, max_item_bytes: 64 * KIB, policy }));
        let requests = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let (c, requests) = (c.clone(), requests.clone());
                rt.spawn(async move {
                    let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for _ in 0..300 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let n = x % 200;
                        let size = (n * 997) % (80 * KIB); // some over max_item_bytes
                        let version = (x >> 40) % 3;
                        let tag = etag(size, version);
                        let name = format!("d/{n}");
                        let r = c.get_or_load(&name, &tag, size, || async move {
                            tokio::task::yield_now().await;
                            Ok(contents(size, n as u8))
                        });
                        let r = r.await.unwrap();
                        assert_eq!(r.bytes.len() as u64, size);
                        requests.fetch_add(1, Ordering::Relaxed);
                        assert!(c.bytes_held() <= MAX);
                        if x % 17 == 0 {
                            c.invalidate(&name);
                        }
                    }
                })
            })
            .collect();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (c, requests) = (c.clone(), requests.clone());
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let n = (i * 7 + t * 13) % 200;
                        let size = (n * 997) % (80 * KIB);
                        let name = format!("d/{n}");
                        if c.get(&name, &etag(size, 0)).is_none() && c.admits(size) {
                            c.insert(&name, &etag(size, 0), contents(size, 0));
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                        assert!(c.bytes_held() <= MAX);
                        if i % 50 == 0 {
                            let s = c.snapshot();
                            assert_eq!(s.bytes_held, sum_of_entries(&s));
                            assert!(s.bytes_held <= MAX);
                        }
                    }
                })
            })
            .collect();
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
            }
        });
        for t in threads {
            t.join().unwrap();
        }
        let s = c.snapshot();
        assert_eq!(s.bytes_held, sum_of_entries(&s));
        assert!(s.bytes_held <= MAX);
        assert_eq!(s.hits + s.misses, requests.load(Ordering::Relaxed) as u64, "{policy}");
        assert!(s.evictions > 0, "{policy}: the test filled the cache");
        assert!(c.flights.is_empty());
    }
}

fn _get_or_load_is_send(c: Arc<FileCache>) {
    fn send<T: Send>(_: T) {}
    send(async move { c.get_or_load("x", &etag(1, 1), 1, || async { Ok(Bytes::new()) }).await });
}

#[derive(Clone, Debug)]
enum Op {
    Get { file: u8, version: u8 },
    Load { file: u8, version: u8 },
    Invalidate(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, 0u8..2).prop_map(|(file, version)| Op::Get { file, version }),
        8 => (0u8..24, 0u8..2).prop_map(|(file, version)| Op::Load { file, version }),
        1 => (0u8..24).prop_map(Op::Invalidate),
    ]
}

/// File `file` at `version` always has the same size and contents.
fn file(file: u8, version: u8) -> (String, Etag, u64) {
    let size = (u64::from(file) * 3 + u64::from(version) * 5) * 700 % (40 * KIB);
    (format!("f{file}"), etag(size, u64::from(version)), size)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random operation sequences on every policy: the bound, the sum, the
    /// counters, and that a hit always returns the version asked for.
    #[test]
    fn random_operations_keep_the_invariants(
        max_kib in 0u64..200,
        policy in proptest::sample::select(CachePolicyKind::ALL.to_vec()),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let max_bytes = max_kib * KIB;
        let c = FileCache::new(CacheConfig { max_bytes, max_item_bytes: 32 * KIB, policy });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut requests = 0u64;
        for op in ops {
            match op {
                Op::Get { file: f, version } => {
                    let (name, tag, size) = file(f, version);
                    if let Some(b) = c.get(&name, &tag) {
                        prop_assert_eq!(b, contents(size, f ^ version));
                    }
                    requests += 1;
                }
                Op::Load { file: f, version } => {
                    let (name, tag, size) = file(f, version);
                    let r = rt.block_on(c.get_or_load(&name, &tag, size, || async move { Ok(contents(size, f ^ version)) }));
                    prop_assert_eq!(r.unwrap().bytes, contents(size, f ^ version));
                    requests += 1;
                }
                Op::Invalidate(f) => c.invalidate(&format!("f{f}")),
            }
            let s = c.snapshot();
            prop_assert_eq!(s.bytes_held, sum_of_entries(&s));
            prop_assert!(s.bytes_held <= max_bytes);
            prop_assert!(s.entries.iter().all(|e| c.admits(e.size)));
            prop_assert_eq!(s.hits + s.misses, requests);
        }
    }
}
