//! The accept loop: the connection limit, and the drain that ends it.
//! `ferry serve` runs one per worker thread ([`crate::workers`]), all on
//! duplicates of one listening socket.
//!
//! HTTP connections do not migrate in a live upgrade. The listening socket
//! moves to the new process; the old one calls [`serve`]'s `stop`, stops
//! accepting, and lets every open connection finish the request it is
//! serving (a download in progress completes) before closing it.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::accept_balance::{LEAD_PAUSE, Seat};
use crate::connection::{self, Shutdown};
use crate::file_lane::FileLane;
use crate::state::HttpState;

/// How long a refusal may take to deliver its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Request bytes read and dropped after a refusal, so that closing does not
/// reset the connection before the client has read the answer.
const REFUSAL_DRAIN_BYTES: usize = 64 << 10;
/// Pause after an accept error such as running out of descriptors, instead
/// of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves connections accepted from `listener` until `stop` resolves, then
/// stops accepting and lets open connections finish (drain) — the old
/// process of a live upgrade calls this path. Returns when every connection
/// has closed, or when [`crate::HttpLimits::drain_timeout`] has passed and
/// the rest were cut. Fails only if the listener itself is unusable.
/// Dropping the returned future instead cuts every connection at once.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_as(listener, state, stop, None).await
}

/// [`serve`] as one of several workers on the same listening socket:
/// `seat`, when given, keeps this worker from taking more than its share
/// of the connections (see [`crate::accept_balance`]).
pub(crate) async fn serve_as(
    listener: TcpListener,
    state: HttpState,
    stop: impl Future<Output = ()>,
    seat: Option<Seat>,
) -> io::Result<()> {
    let limits = state.limits().clone();
    let app = FileLane::new(state.clone());
    let tracker = TaskTracker::new();
    let shutdown = Shutdown::default();
    // If this future is dropped instead of stopped, connections end with it.
    let _cut_on_drop = shutdown.cut.clone().drop_guard();
    tokio::pin!(stop);

    let result = loop {
        if seat.as_ref().is_some_and(Seat::is_ahead) {
            tokio::select! {
                biased;
                () = &mut stop => break Ok(()),
                () = tokio::time::sleep(LEAD_PAUSE) => {}
            }
        }
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_fatal(&e) => break Err(e),
            Err(e) => {
                tracing::warn!("http: accept failed: {e}");
                tokio::select! {
                    biased;
                    () = &mut stop => break Ok(()),
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        match state.slots().try_open() {
            Some(slot) => {
                let (app, limits, metrics) = (app.clone(), limits.clone(), state.metrics().clone());
                let held = seat.as_ref().map(Seat::opened);
                let conn = connection::run(stream, app, limits, metrics, shutdown.clone(), slot);
                tracker.spawn(async move {
                    conn.await;
                    drop(held);
                });
            }
            None => {
                state.metrics().connection_refused();
                if let Some(permit) = state.slots().try_refuse() {
                    state.metrics().record_response(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    tracker.spawn(refuse(stream, limits.max_connections, permit));
                }
            }
        }
    };

    // New connections now go to whoever else holds the listening socket,
    // or are refused by the kernel if nobody does.
    drop(listener);
    shutdown.drain.cancel();
    tracker.close();
    if tokio::time::timeout(limits.drain_timeout, tracker.wait()).await.is_err() {
        tracing::warn!(
            "http: cutting {} connections still open after {:?} of drain",
            tracker.len(),
            limits.drain_timeout
        );
        shutdown.cut.cancel();
        tracker.wait().await;
    }
    result
}

/// Errors that mean the listener itself is broken, not one failed accept.
fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP))
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream, limit: usize, _permit: OwnedSemaphorePermit) {
    let body = format!("too many open connections (limit {limit})\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut dropped = 0;
        while dropped < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => dropped += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}
