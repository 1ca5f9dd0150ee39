//! The gateway's worker threads: nginx's worker model inside one process.
//!
//! Each worker is an OS thread running its own current-thread tokio
//! runtime, with its own duplicate of the listening socket: it accepts
//! connections itself ([`crate::serve`]; [`crate::accept_balance`] spreads
//! them) and serves each one to completion
//! on that thread. On tokio's multi-thread runtime the gateway's workers
//! shared one I/O driver and woke each other through futexes to pass work
//! around; on a busy machine that cost showed as the gateway getting less
//! CPU than nginx's independent workers (docs/BENCHMARKS.md). Here a cached
//! answer crosses no thread: what the workers share (cache, metrics,
//! transfers, the connection limit) sits behind `Arc`s and locks held for
//! a moment, and only blocking disk work (loads on a cache miss, pieces of
//! large files) leaves the thread, for the worker's own bounded blocking
//! pool.
//!
//! Every worker's epoll watches the same listening socket, so a new
//! connection wakes each of them and one wins the accept; the others get
//! `EAGAIN`, which tokio takes as "not ready yet". The descriptor the
//! runtime owns stays with it and moves to the new process in a live
//! upgrade; the workers close their copies when they stop accepting.

use std::io;
use std::num::NonZero;
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::accept_balance::{AcceptBalance, Seat};
use crate::serve::serve_as;
use crate::state::HttpState;

/// Bound on the worker count, whatever the config says.
pub const MAX_WORKERS: usize = 256;
/// Blocking threads of all workers together (tokio's default for one
/// runtime), shared out evenly.
const BLOCKING_THREADS: usize = 512;
/// Each worker may keep at least this many, however many workers there are.
const MIN_BLOCKING_THREADS: usize = 8;
/// After its connections are done, how long a worker waits for blocking
/// work still running (an abandoned upload's unlink) before it reports
/// itself finished.
const BLOCKING_GRACE: Duration = Duration::from_secs(5);

/// The worker count for a configured `http.workers`: 0 means one per CPU.
pub fn worker_count(configured: usize) -> usize {
    let n = match configured {
        0 => std::thread::available_parallelism().map_or(1, NonZero::get),
        n => n,
    };
    n.clamp(1, MAX_WORKERS)
}

/// One running worker thread.
#[derive(Debug)]
pub struct Worker {
    thread: JoinHandle<()>,
    done: oneshot::Receiver<io::Result<()>>,
}

impl Worker {
    /// Whether the thread has ended (its drain is over).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the worker has stopped accepting and its last
    /// connection has closed; what [`crate::serve`] returned.
    pub async fn finished(self) -> io::Result<()> {
        match self.done.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the worker thread ended without finishing (it panicked)")),
        }
    }
}

/// Starts `count` workers, each serving its own duplicate of `listener`
/// until `stop` is cancelled, then draining (see [`crate::serve`]). Fails only if
/// not even one worker could start; a later worker that cannot start is
/// logged and left out.
pub fn start_workers(
    listener: &impl AsFd,
    state: &HttpState,
    count: usize,
    stop: &CancellationToken,
) -> io::Result<Vec<Worker>> {
    assert!((1..=MAX_WORKERS).contains(&count), "worker count {count} outside 1..={MAX_WORKERS}");
    let blocking = (BLOCKING_THREADS / count).max(MIN_BLOCKING_THREADS);
    let balance = AcceptBalance::new(count);
    let mut workers = Vec::with_capacity(count);
    for index in 0..count {
        match start_worker(index, listener, state, stop, blocking, balance.seat(index)) {
            Ok(worker) => workers.push(worker),
            Err(e) if workers.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!("http: worker {index} cannot start ({e}); serving with {}", workers.len());
                break;
            }
        }
    }
    Ok(workers)
}

fn start_worker(
    index: usize,
    listener: &impl AsFd,
    state: &HttpState,
    stop: &CancellationToken,
    blocking: usize,
    seat: Seat,
) -> io::Result<Worker> {
    let copy = duplicate(listener)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .thread_name(format!("ferry-http-{index}-io"))
        .build()?;
    let (state, stop) = (state.clone(), stop.clone());
    let (tx, done) = oneshot::channel();
    let thread = std::thread::Builder::new().name(format!("ferry-http-{index}")).spawn(move || {
        let result = runtime.block_on(async move {
            let listener = TcpListener::from_std(copy)?;
            // A task of its own, not the `block_on` future: waking that one
            // writes the runtime's eventfd, which would cost a syscall and a
            // loop turn per accepted connection.
            let accepting = tokio::spawn(serve_as(listener, state, stop.cancelled_owned(), Some(seat)));
            accepting.await.unwrap_or_else(|e| Err(io::Error::other(format!("the accept loop failed: {e}"))))
        });
        runtime.shutdown_timeout(BLOCKING_GRACE);
        // Nobody waiting (the server is not draining) is fine.
        let _ = tx.send(result);
    })?;
    Ok(Worker { thread, done })
}

/// A second descriptor for the same listening socket, for one worker.
fn duplicate(listener: &impl AsFd) -> io::Result<std::net::TcpListener> {
    let copy = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    copy.set_nonblocking(true)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Instant;

    use ferry_files::FileStore;

    #[test]
    fn zero_means_one_per_cpu_and_the_count_is_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZero::get).min(MAX_WORKERS);
        assert_eq!(worker_count(0), cpus);
        assert_eq!(worker_count(3), 3);
        assert_eq!(worker_count(100_000), MAX_WORKERS);
    }

    fn get(addr: std::net::SocketAddr) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /files/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    /// Every worker serves, on its own thread, until stopped; then the
    /// listener the caller kept still queues connections.
    #[tokio::test]
    async fn workers_serve_until_stopped_and_leave_the_listener_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("root"), &dir.path().join("up")).unwrap();
        std::fs::write(store.root().join("a"), b"hello").unwrap();
        let state = HttpState::new(Arc::new(store), crate::HttpLimits::default(), Arc::new(|| serde_json::json!({})));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let workers = start_workers(&listener, &state, 3, &stop).unwrap();
        assert_eq!(workers.len(), 3);

        let answers =
            tokio::task::spawn_blocking(move || (0..12).map(|_| get(addr)).collect::<Vec<_>>()).await.unwrap();
        for answer in &answers {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("hello"), "{answer}");
        }
        assert_eq!(state.metrics().snapshot().responses[1], 12);

        stop.cancel();
        let deadline = Instant::now() + Duration::from_secs(10);
        for worker in workers {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, worker.finished()).await.unwrap().unwrap();
        }
        // The workers' copies are closed; the original still accepts.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (_conn, _) = listener.accept().unwrap();
    }
}
