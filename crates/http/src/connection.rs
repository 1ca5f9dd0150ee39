//! One HTTP/1.1 connection: the plain lane, then hyper, drive the protocol;
//! this drives its lifetime — the idle watchdog, the drain, and the final cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::counting_io::CountingIo;
use crate::file_lane::FileLane;
use crate::metrics::HttpMetrics;
use crate::plain_lane::{LaneEnd, READ_BYTES, serve_plain};
use crate::rewind_io::RewindIo;
use crate::state::HttpLimits;

/// hyper refuses a read buffer smaller than this.
const MIN_HEAD_BYTES: usize = 8192;

/// How the server tells connections to end.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Finish the request in progress (if any), then close.
    pub drain: CancellationToken,
    /// Close now, mid-response if need be.
    pub cut: CancellationToken,
}

/// Serves one accepted connection until the client closes it, a limit
/// closes it, or the server's shutdown does. `_slot` is its place under the
/// connection limit, given back when this returns.
///
/// The connection starts in the plain lane ([`crate::plain_lane`]), which
/// answers plain cached reads itself; the first request it does not answer
/// hands the connection, with the bytes read and not answered, to hyper.
pub async fn run(
    stream: TcpStream,
    service: FileLane,
    limits: HttpLimits,
    metrics: Arc<HttpMetrics>,
    shutdown: Shutdown,
    _slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(metrics.clone());
    // Small responses go out as soon as they are written.
    let _ = stream.set_nodelay(true);
    let moved = Arc::new(AtomicU64::new(0));
    let mut io = CountingIo::new(stream, metrics, moved.clone());

    let mut idle = IdleWatch::new(limits.idle_timeout);
    let mut tick = tokio::time::interval(idle.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut buf = BytesMut::with_capacity(READ_BYTES);
    {
        let lane = serve_plain(&mut io, &mut buf, service.state(), limits.header_read_timeout, &shutdown.drain);
        tokio::pin!(lane);
        loop {
            tokio::select! {
                ended = lane.as_mut() => match ended {
                    Ok(LaneEnd::ToHyper) => break,
                    Ok(LaneEnd::Close) => return,
                    Err(e) => {
                        tracing::debug!("http connection ended: {e}");
                        return;
                    }
                },
                () = shutdown.cut.cancelled() => {
                    tracing::debug!("http connection cut at the end of the drain");
                    return;
                }
                _ = tick.tick() => {
                    if idle.is_idle(moved.load(Ordering::Relaxed), Instant::now()) {
                        tracing::debug!("closing an http connection idle for {:?}", limits.idle_timeout);
                        return;
                    }
                }
            }
        }
    }

    let io = TokioIo::new(RewindIo::new(buf.freeze(), io));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEAD_BYTES))
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);

    let mut draining = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!("http connection ended: {e}");
                }
                return;
            }
            () = shutdown.drain.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = shutdown.cut.cancelled() => {
                tracing::debug!("http connection cut at the end of the drain");
                return;
            }
            _ = tick.tick() => {
                if idle.is_idle(moved.load(Ordering::Relaxed), Instant::now()) {
                    tracing::debug!("closing an http connection idle for {:?}", limits.idle_timeout);
                    return;
                }
            }
        }
    }
}

/// Notices a connection on which no byte has moved for `timeout`.
struct IdleWatch {
    timeout: Option<Duration>,
    period: Duration,
    last_moved: u64,
    quiet_since: Instant,
}

impl IdleWatch {
    /// A zero timeout disables the watch.
    fn new(timeout: Duration) -> IdleWatch {
        let timeout = (!timeout.is_zero()).then_some(timeout);
        // Checking four times per timeout closes within 125% of it.
        let period = timeout
            .map_or(Duration::from_secs(3600), |t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(5)));
        IdleWatch { timeout, period, last_moved: 0, quiet_since: Instant::now() }
    }

    fn is_idle(&mut self, moved: u64, now: Instant) -> bool {
        if moved != self.last_moved {
            self.last_moved = moved;
            self.quiet_since = now;
            return false;
        }
        self.timeout.is_some_and(|t| now.duration_since(self.quiet_since) >= t)
    }
}

/// Keeps the open-connections gauge right however the task ends.
struct OpenConnection(Arc<HttpMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<HttpMetrics>) -> OpenConnection {
        metrics.connection_opened();
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_when_nothing_moves() {
        let start = Instant::now();
        let mut w = IdleWatch::new(Duration::from_secs(10));
        assert_eq!(w.period, Duration::from_millis(2500));
        w.quiet_since = start;
        assert!(!w.is_idle(0, start + Duration::from_secs(9)));
        assert!(!w.is_idle(5, start + Duration::from_secs(11)), "bytes moved: activity");
        assert!(!w.is_idle(5, start + Duration::from_secs(20)));
        assert!(w.is_idle(5, start + Duration::from_secs(21)));

        let mut off = IdleWatch::new(Duration::ZERO);
        assert!(!off.is_idle(0, start + Duration::from_secs(1_000_000)));
    }
}
