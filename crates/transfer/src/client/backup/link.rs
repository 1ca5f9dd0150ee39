//! One connection of a backup node: register with the inventory, then
//! apply the feed until the connection ends or the node is told to stop.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_core::IoEvent;

use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::BackupOptions;
use super::aligned_block::BlockPool;
use super::direct_receive::DirectReceive;
use super::observer::BackupObserver;
use super::writer::{Op, Reply, Writer};
use crate::backup::line::{FeedLine, NodeLine, parse_info_text};
use crate::backup::node_id::NodeId;
use crate::client::ClientError;
use crate::client::connection::{ClientConn, closed, timed_out};
use crate::command::{Reply as ServerReply, Request};
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::{queue_frame, take_frame};

/// Buffered input at which the node stops reading while its disk catches up.
const READ_HIGH_WATER: usize = 8 << 20;
/// Most ops waiting for room in the writer's channel: a block handed on
/// and the op of the frame that ended the direct path, or one frame's op.
const MAX_PENDING: usize = 2;
/// Inventory lines are written out whenever this much is queued.
const INVENTORY_FLUSH: usize = 1 << 20;
/// How often the manifest is offered for saving while the feed runs.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How a connection ended.
pub(super) enum LinkEnd {
    /// Told to stop.
    Shutdown,
    /// Lost; `registered` says whether it got as far as registering.
    Lost { registered: bool, error: ClientError },
}

pub(super) async fn serve(
    opts: &BackupOptions,
    id: &NodeId,
    writer: &mut Writer,
    obs: &mut dyn BackupObserver,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> LinkEnd {
    let mut registered = false;
    let result = tokio::select! {
        biased;
        _ = &mut *shutdown => return LinkEnd::Shutdown,
        result = run(opts, id, writer, obs, &mut registered) => result,
    };
    // Whatever was half received on this connection will not be finished.
    let _ = writer.ops.send(Op::AbortAll).await;
    match result {
        Ok(()) => LinkEnd::Shutdown,
        Err(error) => LinkEnd::Lost { registered, error },
    }
}

async fn run(
    opts: &BackupOptions,
    id: &NodeId,
    writer: &mut Writer,
    obs: &mut dyn BackupObserver,
    registered: &mut bool,
) -> Result<(), ClientError> {
    let mut client = ClientConn::connect(&opts.server, opts.max_frame_bytes, opts.io_timeout).await?;
    writer.ops.send(Op::AbortAll).await.map_err(|_| stopped())?;
    writer.ops.send(Op::Inventory { max_files: opts.max_files }).await.map_err(|_| stopped())?;
    let inventory = loop {
        match writer.replies.recv().await {
            Some(Reply::Inventory(result)) => break result.map_err(ClientError::Local)?,
            Some(_) => continue,
            None => return Err(stopped()),
        }
    };

    // BACKUP and the inventory.
    let files = inventory.len() as u64;
    let timeout = client.timeout();
    let conn = &mut client.conn;
    queue_frame(conn, &Frame::Info(Request::Backup { node: id.to_string(), files }.to_string()));
    for (name, held) in inventory {
        queue_frame(conn, &Frame::Info(NodeLine::Have { name, held }.to_string()));
        if conn.pending_out() >= INVENTORY_FLUSH {
            flush(conn, timeout).await?;
        }
    }
    flush(conn, timeout).await?;
    let max_frame = client.max_frame();
    let conn = &mut client.conn;
    loop {
        let frame = recv(conn, max_frame, timeout).await?;
        match frame {
            Frame::Info(line) => match FeedLine::parse(&line) {
                Ok(FeedLine::Registered { held, .. }) => {
                    obs.registered(&opts.server, held);
                    break;
                }
                Ok(FeedLine::Ping) => queue_frame(conn, &Frame::Info(NodeLine::Pong.to_string())),
                Ok(FeedLine::Notice(_)) => {}
                _ => return Err(ClientError::Protocol(format!("unexpected reply to BACKUP: {line:?}"))),
            },
            Frame::Error(msg) => return Err(ClientError::server(&msg)),
            other => return Err(ClientError::Protocol(format!("unexpected {:?} reply to BACKUP", other.frame_type()))),
        }
    }
    *registered = true;

    let mut last_input = Instant::now();
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    let mut direct = DirectReceive::new(BlockPool::new());
    // Ops for the writer, in order, waiting for room in its channel (at
    // most a block and the op of one frame).
    let mut pending: VecDeque<Op> = VecDeque::new();
    loop {
        // Hand buffered frames to the writer while it takes them.
        let mut blocked = false;
        loop {
            assert!(pending.len() <= MAX_PENDING, "{} ops waiting for the writer", pending.len());
            while let Ok(reply) = writer.replies.try_recv() {
                on_reply(conn, reply, obs)?;
            }
            while let Some(op) = pending.pop_front() {
                match writer.ops.try_send(op) {
                    Ok(()) => {}
                    Err(TrySendError::Full(op)) => {
                        pending.push_front(op);
                        blocked = true;
                        break;
                    }
                    Err(TrySendError::Closed(_)) => return Err(stopped()),
                }
            }
            if blocked {
                break;
            }
            direct.fill(conn.read_buf(), &mut pending);
            if !pending.is_empty() {
                continue;
            }
            if direct.receiving() {
                // The rest of the payload comes straight from the socket,
                // or after a block comes back.
                break;
            }
            if direct.start_frame(conn.read_buf(), max_frame) {
                continue;
            }
            let frame = match take_frame(conn, max_frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(refuse(conn, ErrorCode::BadFrame, e.to_string(), timeout).await),
            };
            match frame {
                Frame::BackupInfo { transfer, info } => match parse_info_text(&info) {
                    Ok((name, size)) => {
                        pending.push_back(Op::Begin { transfer, name, size });
                        direct.begin(transfer, size);
                    }
                    Err(e) => return Err(refuse(conn, ErrorCode::BadFrame, e.0, timeout).await),
                },
                Frame::BackupData { transfer, offset, data } => {
                    if direct.holds(transfer) {
                        direct.finish(&mut pending);
                    }
                    pending.push_back(Op::Data { transfer, offset, data });
                }
                Frame::Info(line) => match FeedLine::parse(&line) {
                    Ok(FeedLine::Done { transfer, size, blake3, etag }) => {
                        if direct.holds(transfer) {
                            direct.finish(&mut pending);
                        }
                        pending.push_back(Op::Done { transfer, size, blake3, etag });
                    }
                    Ok(FeedLine::Abort { transfer }) => {
                        if direct.holds(transfer) {
                            direct.discard();
                        }
                        pending.push_back(Op::Abort { transfer });
                    }
                    Ok(FeedLine::Delete { transfer, name }) => pending.push_back(Op::Delete { transfer, name }),
                    Ok(FeedLine::Ping) => queue_frame(conn, &Frame::Info(NodeLine::Pong.to_string())),
                    Ok(FeedLine::Notice(ServerReply::Paused { reason })) => {
                        // What is unfinished now will not be finished: the
                        // server sends it again after resuming.
                        direct.discard();
                        pending.push_back(Op::AbortAll);
                        obs.notice(&format!("server paused the feed: {reason}"));
                    }
                    Ok(FeedLine::Notice(ServerReply::Resumed { version })) => {
                        obs.notice(&format!("feed resumed (server version {version})"));
                    }
                    Ok(other) => {
                        let msg = format!("unexpected {:?}", other.to_string());
                        return Err(refuse(conn, ErrorCode::BadCommand, msg, timeout).await);
                    }
                    Err(e) => return Err(refuse(conn, ErrorCode::BadCommand, e.0, timeout).await),
                },
                Frame::Error(msg) => return Err(ClientError::server(&msg)),
                other => {
                    let msg = format!("a backup feed carries no {:?} frames", other.frame_type());
                    return Err(refuse(conn, ErrorCode::BadCommand, msg, timeout).await);
                }
            }
        }
        let read = if direct.receiving() {
            // Straight into the block, once the buffer is drained into it.
            if conn.read_buf().is_empty() && direct.room().is_some() { Read::Into } else { Read::None }
        } else if direct.active() {
            DirectReceive::read_limit(conn.read_buf()).map_or(Read::None, Read::AtMost)
        } else if conn.read_buf().len() < READ_HIGH_WATER {
            Read::Any
        } else {
            Read::None
        };
        let pool = direct.pool().clone();
        let starved = direct.starved();
        tokio::select! {
            biased;
            reply = writer.replies.recv() => match reply {
                Some(reply) => on_reply(conn, reply, obs)?,
                None => return Err(stopped()),
            },
            permit = writer.ops.reserve(), if blocked => {
                if permit.is_err() {
                    return Err(stopped());
                }
            }
            _ = pool.returned(), if starved => {}
            event = pump(conn, &mut direct, read), if read != Read::None || conn.has_output() => match event {
                Ok(event) if event.peer_closed() => return Err(closed()),
                Ok(event) => {
                    if event.got_input() {
                        last_input = Instant::now();
                    }
                }
                Err(e) => return Err(ClientError::Connection(e)),
            },
            _ = flush_tick.tick() => {
                let _ = writer.ops.try_send(Op::Flush);
            }
            _ = tokio::time::sleep_until(last_input + timeout) => return Err(timed_out(timeout)),
        }
    }
}

/// How the feed reads next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Only writes (the writer or the block pool is behind).
    None,
    /// Into the read buffer, as much as the socket has.
    Any,
    /// Into the read buffer, at most this much (up to a frame's end).
    AtMost(usize),
    /// Straight into the direct transfer's block.
    Into,
}

/// One step of the connection: writes queued output and reads as `read`
/// says. Cancel-safe: bytes read into a block are counted before it
/// returns.
async fn pump(conn: &mut ferry_core::Conn, direct: &mut DirectReceive, read: Read) -> std::io::Result<IoEvent> {
    match read {
        Read::None => conn.pump(false).await,
        Read::Any => conn.pump(true).await,
        Read::AtMost(most) => conn.pump_at_most(most).await,
        Read::Into => match direct.room() {
            Some(room) => {
                let event = conn.pump_into(room).await?;
                direct.received(event.read.unwrap_or(0));
                Ok(event)
            }
            None => conn.pump(false).await,
        },
    }
}

fn on_reply(conn: &mut ferry_core::Conn, reply: Reply, obs: &mut dyn BackupObserver) -> Result<(), ClientError> {
    match reply {
        Reply::Confirm { transfer, name, size, blake3 } => {
            match &blake3 {
                Some(_) => obs.stored(&name, size),
                None => obs.deleted(&name),
            }
            queue_frame(conn, &Frame::Info(NodeLine::Confirm { transfer, blake3 }.to_string()));
        }
        Reply::Failed { transfer, name, why } => {
            obs.notice(&format!("cannot store {name}: {why}"));
            queue_frame(conn, &Frame::Info(NodeLine::Failed { transfer, why }.to_string()));
        }
        Reply::Fatal(code, msg) => {
            queue_frame(conn, &Frame::Error(code.message(&msg)));
            let _ = conn.try_flush();
            return Err(ClientError::Protocol(format!("the server broke the backup protocol: {msg}")));
        }
        Reply::Inventory(_) => {}
    }
    Ok(())
}

/// Answers a server that broke the protocol with ERROR and gives up on the
/// connection.
async fn refuse(conn: &mut ferry_core::Conn, code: ErrorCode, msg: String, timeout: Duration) -> ClientError {
    queue_frame(conn, &Frame::Error(code.message(&msg)));
    let _ = tokio::time::timeout(timeout.min(Duration::from_secs(2)), conn.flush()).await;
    ClientError::Protocol(format!("the server broke the backup protocol: {msg}"))
}

async fn flush(conn: &mut ferry_core::Conn, timeout: Duration) -> Result<(), ClientError> {
    match tokio::time::timeout(timeout, conn.flush()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(timed_out(timeout)),
    }
}

async fn recv(conn: &mut ferry_core::Conn, max_frame: u32, timeout: Duration) -> Result<Frame, ClientError> {
    match tokio::time::timeout(timeout, crate::wire::recv_frame(conn, max_frame)).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(crate::wire::RecvError::Io(e))) => Err(ClientError::Connection(e)),
        Ok(Err(crate::wire::RecvError::Frame(e))) => Err(ClientError::Protocol(e.to_string())),
        Ok(Err(_)) => Err(closed()),
        Err(_) => Err(timed_out(timeout)),
    }
}

fn stopped() -> ClientError {
    ClientError::Local("the backup writer stopped".into())
}
