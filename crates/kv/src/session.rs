//! One kv connection: parse every complete request in the read buffer
//! (pipelining), execute them in order, and reply.
//!
//! In `fsync` mode the replies of a batch go out only after one group
//! commit covers its writes, so a pipeline of 100 sets costs one fdatasync.
//! The safe point for a live upgrade is between requests: unparsed
//! pipelined bytes stay in the read buffer and unwritten replies in the
//! output queue, and both travel with the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ferry_core::{Conn, Parked, PauseSignal, SessionCtx, SessionEnd};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::commands::{Ctx, Next, execute};
use crate::polled_when_woken::PolledWhenWoken;
use crate::protocol::{Parse, parse};
use crate::service::KvService;
use crate::stats::KvStats;

/// Version of [`KvState`]'s layout.
pub const STATE_FORMAT: u32 = 1;

/// A parked kv connection. Everything else (unparsed requests, unwritten
/// replies) is in the connection's buffers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    pub format: u32,
    /// Bytes of a refused storage command's data block still to skip.
    #[serde(default)]
    pub swallow: usize,
}

/// Replies queued past this wait for the client to read before more
/// requests are executed (a client pipelining without reading must not
/// grow our memory without bound).
const MAX_PENDING_OUT: usize = 4 << 20;

/// Room made in the reply buffer before each batch of requests.
const OUT_ROOM: usize = 4096;
/// A batch's replies larger than this leave with their buffer: the session starts a fresh one rather than
/// keep a large allocation alive for the life of the connection.
const OUT_KEEP: usize = 64 << 10;

pub(crate) async fn run(
    svc: Arc<KvService>,
    mut conn: Conn,
    resume: Option<KvState>,
    mut ctx: SessionCtx,
) -> SessionEnd<KvState> {
    KvStats::add(&svc.stats.curr_connections, 1);
    KvStats::add(&svc.stats.total_connections, 1);
    let end = serve(&svc, &mut conn, resume, &mut ctx).await;
    svc.stats.curr_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match end {
        Some(state) => SessionEnd::Paused(Parked { conn: conn.into_parts(), state }),
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.shutdown()).await;
            SessionEnd::Closed
        }
    }
}

/// Returns the state to park with, or `None` when the connection ends.
async fn serve(
    svc: &Arc<KvService>,
    conn: &mut Conn,
    resume: Option<KvState>,
    ctx: &mut SessionCtx,
) -> Option<KvState> {
    let limits = svc.limits;
    let idle = (svc.config.idle_timeout_secs > 0).then(|| Duration::from_secs(svc.config.idle_timeout_secs));
    let mut swallow = resume.map(|s| s.swallow).unwrap_or(0);
    let mut deadline = idle.map(|d| Instant::now() + d);
    // Replies are built here and split off to be queued. Once they are written (and dropped), `reserve`
    // finds the buffer unshared and reuses it: no allocation per request.
    let mut out = BytesMut::new();
    // One wait for the pause, kept across requests: a fresh one per
    // request would register with (and leave) the pause's watch channels
    // every time.
    // Polled only when the pause wakes the session, not on every request.
    let mut paused = PolledWhenWoken::new(wait_for_pause(ctx.pause.clone()));
    loop {
        // Execute every complete request buffered.
        debug_assert!(out.is_empty());
        out.reserve(OUT_ROOM);
        let mut wrote = false;
        let mut close = false;
        // Whether the loop stopped for want of input (rather than at a
        // write point with complete requests possibly still buffered).
        let mut need_input = false;
        // One clock read per batch: a pipeline's requests share a second.
        let now = now();
        loop {
            if swallow > 0 {
                let n = swallow.min(conn.read_buf().len());
                conn.read_buf().advance(n);
                swallow -= n;
                if swallow > 0 {
                    need_input = true;
                    break;
                }
            }
            if conn.pending_out() + out.len() > MAX_PENDING_OUT {
                break;
            }
            let input = conn.read_buf();
            match parse(input, &limits) {
                Parse::Incomplete => {
                    need_input = true;
                    break;
                }
                Parse::Request { req, consumed } => {
                    KvStats::add(&svc.stats.bytes_read, consumed as u64);
                    let flushes = req.flushes();
                    let mut cx = Ctx {
                        store: &svc.store,
                        stats: &svc.stats,
                        now,
                        out: &mut out,
                        server: &svc.info,
                        wrote: false,
                        max_item_bytes: limits.max_item_bytes,
                    };
                    // The request borrows its keys from the read buffer:
                    // its bytes are dropped once it has run.
                    let next = execute(req, &mut cx);
                    input.advance(consumed);
                    wrote |= cx.wrote;
                    if next == Next::Close {
                        close = true;
                        break;
                    }
                    if flushes {
                        // memcached writes after each get and `mn`: keep
                        // the same points so pipelines see the same bytes.
                        // With nothing more buffered (one request in
                        // flight), go on to write and read at once: the
                        // reply is then gone before the next batch, which
                        // finds the reply buffer free to reuse.
                        need_input = conn.read_buf().is_empty();
                        break;
                    }
                }
                Parse::Error { reply, consumed, swallow: skip, close: shut, drop_unsent, effect } => {
                    input.advance(consumed);
                    wrote |= crate::commands::apply_effect(&svc.store, effect, now);
                    swallow = skip;
                    if drop_unsent {
                        out.clear();
                    }
                    out.extend_from_slice(reply);
                    if shut {
                        close = true;
                        break;
                    }
                }
            }
        }
        if wrote {
            let seq = svc.store.appended_seq();
            if let Err(e) = svc.store.wait_durable(seq).await {
                tracing::error!("kv group commit failed: {e}");
                crate::commands::server_error(&mut out, &e);
            }
        }
        if !out.is_empty() {
            KvStats::add(&svc.stats.bytes_written, out.len() as u64);
            if need_input && !close && out.len() <= OUT_KEEP {
                // The client waits for this reply before it sends more (one
                // request in flight): send it now, straight from `out`, so
                // the wait below is for input alone and the session is
                // polled once per request. What the socket does not take is
                // queued (copied) and written by the pump.
                if let Err(e) = conn.write_or_queue(&out) {
                    tracing::debug!("kv connection failed: {e}");
                    return None;
                }
                out.clear();
            } else {
                let big = out.len() > OUT_KEEP;
                conn.queue(out.split().freeze());
                if big {
                    out = BytesMut::new();
                }
            }
        }
        if close {
            return None;
        }
        // Safe point: between requests.
        if ctx.pause.requested().is_some() {
            return Some(KvState { format: STATE_FORMAT, swallow });
        }
        if !need_input && conn.pending_out() < MAX_PENDING_OUT {
            continue;
        }
        let room = conn.pending_out() < MAX_PENDING_OUT;
        let want_read = need_input && room;
        tokio::select! {
            // The socket first: a request that is already there is served
            // without looking at the pause (the safe point above asks for it
            // every time round), which is only here to wake an idle session.
            biased;
            event = conn.pump(want_read), if want_read || conn.has_output() => match event {
                Ok(event) if event.peer_closed() => return None,
                Ok(event) => {
                    if event.got_input() {
                        deadline = idle.map(|d| Instant::now() + d);
                    }
                }
                Err(e) => {
                    tracing::debug!("kv connection failed: {e}");
                    return None;
                }
            },
            _ = &mut paused => {
                // Seen by the safe point next time round; if the pause is
                // lifted before that, wait for the next one.
                paused = PolledWhenWoken::new(wait_for_pause(ctx.pause.clone()));
            }
            _ = sleep_until(deadline) => return None,
        }
    }
}

async fn wait_for_pause(mut signal: PauseSignal) {
    signal.wait().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Unix seconds, from the kernel's coarse clock: expiry counts whole seconds, and the coarse clock (a few
/// milliseconds behind at most) is read without the precise clock's hardware counter read and conversion
/// (memcached reads a clock its timer updates once a second).
fn now() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => u64::try_from(t.tv_sec()).unwrap_or(0),
        Err(_) => crate::store::unix_now(),
    }
}
