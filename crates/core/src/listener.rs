//! Listeners and accept loops: one per service, each spawning a session
//! task per connection under the service's connection limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::conn::{Conn, ConnParts};
use crate::pausable::PausableSessions;
use crate::pause::PauseSignal;
use crate::registry::Registry;
use crate::service::Service;
use crate::session::{SessionCtx, SessionEnd};
use crate::status::Status;
use crate::upgrade::clock::monotonic_us;
use crate::upgrade::gaps::ResumeStamp;

/// A paused session whose state is already serialized: what the runtime
/// keeps, and what a live upgrade hands to the next process.
#[derive(Debug)]
pub struct ParkedSession {
    /// Its id in the registry (and in [`PausableSessions`]).
    pub id: u64,
    pub service: &'static str,
    pub conn: ConnParts,
    /// The service's state, serialized (JSON, so later releases can add
    /// fields with defaults and still read it).
    pub state: Vec<u8>,
    /// When it paused, on the system-wide monotonic clock: the start of its
    /// pause gap.
    pub paused_mono_us: u64,
}

/// What an accept loop and its sessions share with the runtime.
#[derive(Clone)]
pub struct LoopCtx {
    pub registry: Arc<Registry>,
    pub pause: PauseSignal,
    /// What stops an accept loop: the server-wide pause, plus (for a
    /// loop a streamed upgrade stops on its own) the loop's own trigger.
    pub stop_accepting: PauseSignal,
    /// Every running session with its own pause trigger.
    pub sessions: Arc<PausableSessions>,
    /// Set only on the context a session is resumed with after a live
    /// upgrade: when it paused, so its task records its pause gap.
    pub handover: Option<ResumeStamp>,
    /// Where sessions that paused deliver themselves.
    pub parked: mpsc::UnboundedSender<ParkedSession>,
    /// Session tasks still running (a parked session counts until it has
    /// been delivered), so a pause knows when every session is accounted
    /// for.
    pub live: Arc<AtomicUsize>,
    /// The server's status as `ferry status --json` reports it, for
    /// services that show it themselves (the HTTP dashboard).
    pub status: StatusFn,
}

/// Builds the server's current [`Status`].
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// Decrements the live-task count when a session task ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `service`'s accept loop until a pause is requested; returns the
/// listener (still open, still queueing connections in the kernel).
pub fn spawn_accept_loop<S: Service>(
    service: Arc<S>,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    max_connections: usize,
    ctx: LoopCtx,
) -> JoinHandle<TcpListener> {
    tokio::spawn(async move {
        let mut pause = ctx.stop_accepting.clone();
        loop {
            if pause.requested().is_some() {
                return listener;
            }
            let accepted = tokio::select! {
                biased;
                _ = pause.wait() => continue,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => spawn_session(service.clone(), stream, None, Some(permit), ctx.clone()),
                    Err(_) => {
                        let service = service.clone();
                        let conn = Conn::new(stream, service.max_read_buffer());
                        tokio::spawn(async move {
                            let reason = format!("too many connections (limit {max_connections})");
                            service.refuse(conn, reason).await;
                        });
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(service = S::NAME, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Starts one session task, fresh (`state: None`) or resumed, on the
/// runtime the service names ([`Service::session_runtime`]) or else on the
/// current one.
pub fn spawn_session<S: Service>(
    service: Arc<S>,
    stream: TcpStream,
    resume: Option<(S::State, Vec<u8>, Vec<u8>)>,
    permit: Option<OwnedSemaphorePermit>,
    ctx: LoopCtx,
) {
    ctx.live.fetch_add(1, Ordering::SeqCst);
    let live = LiveGuard(ctx.live.clone());
    let Some(runtime) = service.session_runtime() else {
        tokio::spawn(run_session(service, stream, resume, permit, ctx, live));
        return;
    };
    // A tokio socket belongs to the I/O driver it was registered with:
    // leave this one and join the session's runtime there.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(service = S::NAME, "cannot move a connection to its session runtime: {e}");
            return;
        }
    };
    runtime.spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => run_session(service, stream, resume, permit, ctx, live).await,
            Err(e) => tracing::warn!(service = S::NAME, "cannot register a connection on its session runtime: {e}"),
        }
    });
}

/// One session task from start to end: registers it, runs the service,
/// and delivers it to the runtime if it parked.
async fn run_session<S: Service>(
    service: Arc<S>,
    stream: TcpStream,
    resume: Option<(S::State, Vec<u8>, Vec<u8>)>,
    permit: Option<OwnedSemaphorePermit>,
    ctx: LoopCtx,
    live: LiveGuard,
) {
    if let Some(stamp) = &ctx.handover {
        stamp.record();
    }
    let _live = live;
    let _permit = permit;
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let max = service.max_read_buffer();
    let (conn, state) = match resume {
        Some((state, read_buf, pending_out)) => (Conn::from_parts(stream, &read_buf, &pending_out, max), Some(state)),
        None => (Conn::new(stream, max), None),
    };
    let handle = ctx.registry.register(S::NAME, peer);
    let id = handle.id();
    // Dropped as the task ends: unlisted only after a parked session
    // has been delivered.
    let (pause, _listed) = ctx.sessions.insert(id, S::NAME, &ctx.pause);
    let session_ctx = SessionCtx { handle, pause, registry: ctx.registry.clone() };
    if let SessionEnd::Paused(parked) = service.run(conn, state, session_ctx).await {
        let paused_mono_us = monotonic_us();
        match serde_json::to_vec(&parked.state) {
            Ok(state) => {
                let parked = ParkedSession { id, service: S::NAME, conn: parked.conn, state, paused_mono_us };
                // Unbounded, but bounded in fact: one entry per session,
                // and sessions are bounded by the connection limits.
                if ctx.parked.send(parked).is_err() {
                    tracing::debug!("runtime gone; dropping a parked session");
                }
            }
            Err(e) => tracing::error!(service = S::NAME, "cannot serialize session state: {e}"),
        }
    }
}
