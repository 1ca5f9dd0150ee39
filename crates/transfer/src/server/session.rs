//! One connection's life: idle between commands, a GET or PUT phase, and
//! the ways out (closed, or parked at a safe point).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Conn, Parked, PauseReason, SessionCtx, SessionEnd};
use tokio::time::Instant;

use super::state::{Phase, STATE_FORMAT, SessionState};
use super::{TransferService, backup_feed, backup_register, get, list, put, put_confirm};
use crate::command::{MAX_COMMAND_BYTES, Reply, Request};
use crate::error_code::ErrorCode;
use crate::frame::{Frame, FrameError};
use crate::wire::{queue_frame, take_frame};

/// How long a closing connection may take to flush its last frames.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long a closing connection drains unread input so the peer gets our
/// ERROR instead of a reset.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// What a phase hands back to the session loop.
pub(super) enum Step {
    /// Continue with this phase.
    Next(Phase, Option<Opened>),
    /// End the connection (after flushing what is queued).
    Close,
    /// Stop at this safe point.
    Park(Phase),
}

/// A file already opened by the command that started a phase.
pub(super) enum Opened {
    Get(Arc<std::fs::File>),
    Put(Box<put::OpenUpload>),
}

pub(super) async fn run(
    svc: Arc<TransferService>,
    mut conn: Conn,
    resume: Option<SessionState>,
    mut ctx: SessionCtx,
) -> SessionEnd<SessionState> {
    let (mut phase, mut resumed) = match resume {
        None => (Phase::Idle, false),
        Some(state) if state.format <= STATE_FORMAT => (state.phase, true),
        Some(state) => {
            let msg = format!("session state format {} is newer than this build reads ({STATE_FORMAT})", state.format);
            tracing::error!("{msg}");
            fail(&mut conn, ErrorCode::Internal, &msg);
            close(conn).await;
            return SessionEnd::Closed;
        }
    };
    let mut opened: Option<Opened> = None;
    loop {
        let step = match phase {
            Phase::Idle => idle(&svc, &mut conn, &mut ctx).await,
            Phase::Get(state) => {
                let file = match opened.take() {
                    Some(Opened::Get(file)) => Some(file),
                    _ => None,
                };
                get::run(&svc, &mut conn, &mut ctx, state, file, resumed).await
            }
            Phase::Put(state) => {
                let upload = match opened.take() {
                    Some(Opened::Put(upload)) => Some(*upload),
                    _ => None,
                };
                put::run(&svc, &mut conn, &mut ctx, state, upload, resumed).await
            }
            Phase::PutConfirm(state) => put_confirm::run(&svc, &mut conn, &mut ctx, state, resumed).await,
            Phase::BackupRegister(state) => backup_register::run(&svc, &mut conn, &mut ctx, state, resumed).await,
            Phase::Backup(state) => backup_feed::run(&svc, &mut conn, &mut ctx, state, resumed).await,
        };
        resumed = false;
        match step {
            Step::Next(next, file) => {
                phase = next;
                opened = file;
            }
            Step::Close => {
                close(conn).await;
                return SessionEnd::Closed;
            }
            Step::Park(phase) => {
                return SessionEnd::Paused(Parked { conn: conn.into_parts(), state: SessionState::new(phase) });
            }
        }
    }
}

/// Between commands: waits for an INFO command and starts it.
async fn idle(svc: &Arc<TransferService>, conn: &mut Conn, ctx: &mut SessionCtx) -> Step {
    let max = svc.config.max_frame_bytes;
    let idle_for = Duration::from_secs(svc.config.idle_timeout_secs);
    let mut deadline = Instant::now() + idle_for;
    loop {
        // Output still queued (a LIST reply) travels in the parked state.
        if ctx.pause.requested().is_some() {
            return Step::Park(Phase::Idle);
        }
        match take_frame(conn, max) {
            Ok(Some(Frame::Info(line))) => {
                if line.len() > MAX_COMMAND_BYTES {
                    return fail(
                        conn,
                        ErrorCode::BadCommand,
                        &format!("command longer than {MAX_COMMAND_BYTES} bytes"),
                    );
                }
                match Request::parse(&line) {
                    Ok(req) => return dispatch(svc, conn, ctx, req).await,
                    Err(e) => return fail(conn, ErrorCode::BadCommand, &e.0),
                }
            }
            Ok(Some(Frame::Error(msg))) => {
                tracing::debug!("client sent ERROR: {msg}");
                return Step::Close;
            }
            Ok(Some(other)) => {
                let msg = format!("expected a command (INFO), got {:?} frame", other.frame_type());
                return fail(conn, ErrorCode::BadCommand, &msg);
            }
            Ok(None) => {}
            Err(e) => return frame_error(conn, e),
        }
        if let Err(step) = wait_for_input(conn, ctx, &mut deadline, idle_for, "command").await {
            return step;
        }
    }
}

async fn dispatch(svc: &Arc<TransferService>, conn: &mut Conn, ctx: &mut SessionCtx, req: Request) -> Step {
    match req {
        Request::Get { name, offset, etag } => get::start(svc, conn, ctx, name, offset, etag).await,
        Request::Put { name, size, id } => put::start(svc, conn, ctx, name, size, id).await,
        Request::List => list::run(svc, conn).await,
        Request::ListCache => list::run_cache(svc, conn),
        Request::Done { .. } => fail(conn, ErrorCode::BadCommand, "DONE outside a PUT"),
        Request::Backup { node, files } => backup_register::start(svc, conn, node, files),
    }
}

/// Queues an ERROR frame and ends the connection.
pub(super) fn fail(conn: &mut Conn, code: ErrorCode, msg: &str) -> Step {
    queue_frame(conn, &Frame::Error(code.message(msg)));
    Step::Close
}

/// Answers a framing error (unknown type, oversized, malformed).
pub(super) fn frame_error(conn: &mut Conn, e: FrameError) -> Step {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadFrame,
    };
    fail(conn, code, &e.to_string())
}

/// The peer closed its side: a truncated frame if bytes of one are left.
pub(super) fn closed_by_peer(conn: &mut Conn) -> Step {
    let have = conn.read_buf().len();
    if have > 0 {
        return fail(
            conn,
            ErrorCode::Truncated,
            &format!("connection closed after {have} bytes of an incomplete frame"),
        );
    }
    Step::Close
}

/// Announces a pause to the client (on upgrade) and parks.
pub(super) fn park_transfer(conn: &mut Conn, phase: Phase, reason: PauseReason) -> Step {
    if reason == PauseReason::Upgrade {
        queue_frame(conn, &Frame::Info(Reply::Paused { reason: "upgrading".into() }.to_string()));
        // Best effort now; what the socket does not take travels in the state.
        if let Err(e) = conn.try_flush() {
            tracing::debug!("cannot announce pause: {e}");
        }
    }
    Step::Park(phase)
}

/// Queues `RESUMED` after a session continues from a parked state.
pub(super) fn announce_resume(conn: &mut Conn) {
    let version = ferry_core::version::version().to_string();
    queue_frame(conn, &Frame::Info(Reply::Resumed { version }.to_string()));
}

/// Flushes what is queued, closes our side, and drains the peer's unread
/// input for a moment so that closing does not turn into a reset that
/// destroys the ERROR we just sent.
async fn close(mut conn: Conn) {
    if tokio::time::timeout(CLOSE_FLUSH, conn.shutdown()).await.is_err() {
        return;
    }
    let drain = async {
        let mut total = 0usize;
        loop {
            conn.read_buf().clear();
            match conn.read_more().await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    if total > 64 << 20 {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
}

/// Waits until more input arrives or a pause is requested, moving
/// `deadline` on when input comes. `Err` ends the phase: the peer closed,
/// the connection failed, or no `what` came within `idle_for` (answered
/// with a timeout error).
pub(super) async fn wait_for_input(
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    deadline: &mut Instant,
    idle_for: Duration,
    what: &str,
) -> Result<(), Step> {
    tokio::select! {
        biased;
        _ = ctx.pause.wait() => Ok(()),
        event = conn.pump(true) => match event {
            Ok(event) if event.peer_closed() => Err(closed_by_peer(conn)),
            Ok(event) => {
                if event.got_input() {
                    *deadline = Instant::now() + idle_for;
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!("connection failed while waiting for a {what}: {e}");
                Err(Step::Close)
            }
        },
        _ = tokio::time::sleep_until(*deadline) => {
            Err(fail(conn, ErrorCode::Timeout, &format!("no {what} for {}s", idle_for.as_secs())))
        }
    }
}
