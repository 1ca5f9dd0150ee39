//! The threads kv sessions run on: memcached's thread model inside ferry.
//!
//! Each worker is an OS thread running its own current-thread tokio
//! runtime with its own I/O driver (one epoll), and connections are dealt
//! to the workers in turn, as memcached's dispatcher deals them to its
//! threads. A connection is served to completion on its worker: its
//! request is read, executed and answered without crossing a thread. On
//! tokio's multi-thread runtime the workers shared one I/O driver and woke
//! each other through futexes to pass sessions around, which cost about
//! 7 % more CPU per request and twice memcached's involuntary context
//! switches (docs/BENCHMARKS.md).
//!
//! Sessions still pause and migrate in a live upgrade as before: the pause
//! signal, the registry and the channel parked sessions travel through are
//! shared with the main runtime and work across runtimes. What the
//! sessions share (the store, its group commit) is behind `Arc`s and locks
//! held for a moment; nothing in a kv session blocks its thread for longer
//! than a log write.

use std::io;
use std::num::NonZero;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Bound on the worker count, whatever the machine says.
pub const MAX_WORKERS: usize = 64;

/// One worker per CPU (at most [`MAX_WORKERS`]).
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZero::get).clamp(1, MAX_WORKERS)
}

/// Running worker threads. Dropping this stops them: each runtime then
/// drops the sessions it still runs (by then the process is exiting, or a
/// test is done with its service).
#[derive(Debug)]
pub struct SessionWorkers {
    handles: Vec<Handle>,
    /// Dropped with `self`: each worker's `block_on` returns.
    _stops: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl SessionWorkers {
    /// Starts `count` worker threads (1 to [`MAX_WORKERS`]).
    pub fn start(count: usize) -> io::Result<SessionWorkers> {
        assert!((1..=MAX_WORKERS).contains(&count), "worker count {count} out of range");
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new().name(format!("ferry-kv-{i}")).spawn(move || {
                // Either way the sender is gone or has spoken: stop.
                let _ = runtime.block_on(stopped);
            })?;
        }
        Ok(SessionWorkers { handles, _stops: stops, next: AtomicUsize::new(0) })
    }

    /// The runtime of the worker whose turn it is to take a session.
    pub fn next(&self) -> Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// Sessions are dealt to the workers in turn, each runs on its own
    /// named thread, and sockets work there (their runtime has an I/O
    /// driver and timers).
    #[test]
    fn sessions_are_dealt_to_every_worker_in_turn_and_do_io_there() {
        let workers = SessionWorkers::start(3).unwrap();
        assert_eq!(workers.count(), 3);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut names = BTreeSet::new();
        for round in 0..6u8 {
            let (tx, rx) = std::sync::mpsc::channel();
            let client = std::net::TcpStream::connect(addr).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let server = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            server.set_nonblocking(true).unwrap();
            workers.next().spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::from_std(server).unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                s.write_all(&[round]).await.unwrap();
                tx.send(std::thread::current().name().unwrap_or("").to_string()).unwrap();
            });
            let mut got = [0u8; 1];
            std::io::Read::read_exact(&mut &client, &mut got).unwrap();
            assert_eq!(got[0], round);
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(name, format!("ferry-kv-{}", round % 3));
            names.insert(name);
        }
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn dropping_the_workers_stops_their_runtimes() {
        let workers = SessionWorkers::start(2).unwrap();
        let handle = workers.next();
        let (tx, rx) = oneshot::channel::<()>();
        // Never completes by itself: only the runtime's end drops it.
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        let dropped = rx.blocking_recv();
        assert!(dropped.is_err(), "the task's sender must be dropped with its runtime");
    }
}
