//! GET: stream a file from an offset with a window of unacknowledged
//! bytes, then `DONE` with the file's BLAKE3.
//!
//! The seed's protocol was stop-and-wait (one ACK per DATA). Here ACKs
//! still mean "consumed up to here", but the server keeps up to
//! `window_bytes` in flight, reads the next chunk from disk while the
//! previous one is being written to the socket, and so runs at line rate.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::{Conn, SessionCtx, TransferKind};
use ferry_files::{Etag, SafeName, StoreError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::TransferService;
use super::session::{Opened, Step, announce_resume, closed_by_peer, fail, frame_error, park_transfer};
use super::state::{GetState, Phase};
use crate::command::Reply;
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::{queue_frame, take_frame};

/// Handles `GET name [offset=N] [etag=E]`.
pub(super) async fn start(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    name: String,
    offset: u64,
    etag: Option<String>,
) -> Step {
    let name = match SafeName::parse(&name, svc.config.max_name_bytes) {
        Ok(name) => name,
        Err(e) => return fail(conn, ErrorCode::BadName, &e.to_string()),
    };
    let store = svc.store.clone();
    let lookup = name.clone();
    let opened = match tokio::task::spawn_blocking(move || store.open_file(&lookup)).await {
        Ok(result) => result,
        Err(e) => return fail(conn, ErrorCode::Internal, &format!("open task failed: {e}")),
    };
    let (file, meta) = match opened {
        Ok(opened) => opened,
        Err(e) => return fail(conn, store_code(&e), &e.to_string()),
    };
    if let Some(expected) = etag
        && expected != meta.etag.as_str()
    {
        let msg = format!("{name} changed since the partial download (etag {expected}, now {})", meta.etag);
        return fail(conn, ErrorCode::Changed, &msg);
    }
    if offset > meta.size {
        return fail(
            conn,
            ErrorCode::BadOffset,
            &format!("offset {offset} is past the end of {name} ({} bytes)", meta.size),
        );
    }
    queue_frame(conn, &Frame::Info(Reply::Ok { size: meta.size, etag: meta.etag.to_string() }.to_string()));
    ctx.handle.begin_transfer(TransferKind::Get, name.as_str(), Some(meta.size), offset);
    let state = GetState {
        name: name.as_str().to_string(),
        etag: meta.etag.to_string(),
        size: meta.size,
        start_offset: offset,
        sent: offset,
        acked: offset,
        done_sent: false,
        blake3: None,
    };
    Step::Next(Phase::Get(state), Some(Opened::Get(Arc::new(file))))
}

/// The error code a store failure maps to.
pub(super) fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::NotFound(_) | StoreError::NotAFile(_) => ErrorCode::NotFound,
        StoreError::Escapes(_) => ErrorCode::BadName,
        StoreError::TooMany(_) => ErrorCode::TooLarge,
        // A parent of the name is a file: the name cannot exist.
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotADirectory => ErrorCode::BadName,
        _ => ErrorCode::Io,
    }
}

/// Streams the rest of a GET. `file` is the descriptor the GET opened, or
/// `None` when continuing a parked session (then it is reopened and must
/// still have the same etag).
pub(super) async fn run(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    mut st: GetState,
    file: Option<Arc<File>>,
    resumed: bool,
) -> Step {
    let Ok(name) = SafeName::parse(&st.name, svc.config.max_name_bytes) else {
        return fail(conn, ErrorCode::Internal, "parked GET holds an invalid name");
    };
    let Some(etag) = Etag::parse(&st.etag) else {
        return fail(conn, ErrorCode::Internal, "parked GET holds an invalid etag");
    };
    let file = match file {
        Some(file) => file,
        None => match reopen(svc, &name, &etag).await {
            Ok(file) => file,
            Err(step) => return step(conn),
        },
    };
    let cached = cached_content(svc, &name, &etag, st.size, &file).await;
    if resumed {
        // The file is still at `etag` (reopened above): its digest from the
        // process that paused saves hashing it again.
        if let Some(hash) = st.blake3.as_deref().and_then(|h| blake3::Hash::from_hex(h).ok()) {
            svc.hashes.insert(&name, etag.clone(), hash);
        }
        ctx.handle.begin_transfer(TransferKind::Get, &st.name, Some(st.size), st.start_offset);
        ctx.handle.progress(st.acked);
        announce_resume(conn);
    }

    let max_frame = svc.config.max_frame_bytes;
    let chunk = svc.config.chunk_bytes as u64;
    let window = svc.config.window_bytes;
    let idle_for = Duration::from_secs(svc.config.idle_timeout_secs);
    let mut deadline = Instant::now() + idle_for;
    let mut reading: Option<JoinHandle<std::io::Result<Bytes>>> = None;
    // Payload lengths of the DATA frames queued, newest last: on a pause,
    // frames still wholly unwritten are taken back (and `sent` rewound), so
    // they are re-read by the new process instead of riding in the handover.
    let mut queued: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut hashing: Option<JoinHandle<Result<blake3::Hash, String>>> = if st.done_sent {
        None
    } else {
        let (hashes, name, etag, file) = (svc.hashes.clone(), name.clone(), etag.clone(), file.clone());
        Some(tokio::spawn(async move { hashes.hash(&name, &etag, file).await }))
    };

    loop {
        // Safe point: between frames, no read in flight that matters (a
        // chunk being read is simply read again after the resume).
        if let Some(reason) = ctx.pause.requested() {
            if let Some(task) = reading.take() {
                task.abort();
            }
            if let Some(task) = hashing.take() {
                task.abort();
            }
            if !st.done_sent {
                st.blake3 = svc.hashes.known(&name, &etag).map(|h| h.to_hex().to_string());
                while let Some(&len) = queued.back() {
                    let frame = crate::frame::HEADER_LEN as u64 + crate::frame::DATA_OVERHEAD as u64 + len;
                    if (conn.pending_out() as u64) < frame {
                        break;
                    }
                    conn.retract(frame as usize);
                    st.sent -= len;
                    queued.pop_back();
                }
            }
            return park_transfer(conn, Phase::Get(st), reason);
        }
        if st.done_sent && st.acked == st.size && !conn.has_output() {
            ctx.handle.end_transfer(true, None);
            return Step::Next(Phase::Idle, None);
        }
        let in_flight = st.sent - st.acked;
        if reading.is_none() && st.sent < st.size && in_flight < window && (conn.pending_out() as u64) < 2 * chunk {
            let len = chunk.min(st.size - st.sent).min(window - in_flight) as usize;
            let (file, offset) = (file.clone(), st.sent);
            reading = Some(match &cached {
                // From memory: a slice of the cached file, no copy.
                Some(bytes) => {
                    let chunk = usize::try_from(offset).ok().and_then(|o| bytes.get(o..o + len).map(|_| (o, len)));
                    let data = chunk.map(|(o, len)| bytes.slice(o..o + len)).unwrap_or_default();
                    tokio::spawn(async move { Ok(data) })
                }
                None => tokio::task::spawn_blocking(move || read_chunk(&file, offset, len)),
            });
        }
        let want_hash = st.sent == st.size && !st.done_sent && hashing.is_some();
        tokio::select! {
            biased;
            _ = ctx.pause.wait() => {}
            read = join(&mut reading), if reading.is_some() => {
                reading = None;
                match read {
                    Ok(Ok(data)) if !data.is_empty() => {
                        let n = data.len() as u64;
                        queue_frame(conn, &Frame::Data { offset: st.sent, data });
                        st.sent += n;
                        queued.push_back(n);
                        // Keep only what can still be unwritten.
                        while queued.len() > 1 && queued.iter().sum::<u64>() > conn.pending_out() as u64 + n {
                            queued.pop_front();
                        }
                        ctx.registry.add_sent(n);
                    }
                    Ok(Ok(_)) => return fail(conn, ErrorCode::Io, &format!("{name} shrank while being sent")),
                    Ok(Err(e)) => return fail(conn, ErrorCode::Io, &format!("cannot read {name}: {e}")),
                    Err(e) => return fail(conn, ErrorCode::Internal, &format!("read task failed: {e}")),
                }
            }
            hash = join(&mut hashing), if want_hash => {
                hashing = None;
                match hash {
                    Ok(Ok(hash)) => {
                        let done = Reply::Done { size: st.size, blake3: hash.to_hex().to_string() };
                        queue_frame(conn, &Frame::Info(done.to_string()));
                        st.done_sent = true;
                    }
                    Ok(Err(e)) => return fail(conn, ErrorCode::Io, &e),
                    Err(e) => return fail(conn, ErrorCode::Internal, &format!("hash task failed: {e}")),
                }
            }
            event = conn.pump(true) => match event {
                Ok(event) if !event.got_input() && !event.peer_closed() => {}
                Ok(event) => {
                    deadline = Instant::now() + idle_for;
                    // Once the final ACK is in, later frames belong to the
                    // next command: leave them for the idle loop.
                    while !(st.done_sent && st.acked == st.size) {
                        match take_frame(conn, max_frame) {
                            Ok(Some(Frame::Ack(offset))) => {
                                if offset > st.sent {
                                    let msg = format!("ACK {offset} is beyond the {} bytes sent", st.sent);
                                    return fail(conn, ErrorCode::BadOffset, &msg);
                                }
                                if offset > st.acked {
                                    st.acked = offset;
                                    ctx.handle.progress(offset);
                                }
                            }
                            Ok(Some(Frame::Error(msg))) => {
                                ctx.handle.end_transfer(false, Some(format!("client error: {msg}")));
                                return Step::Close;
                            }
                            Ok(Some(other)) => {
                                let msg = format!("only ACK is expected during a GET, got {:?}", other.frame_type());
                                return fail(conn, ErrorCode::BadCommand, &msg);
                            }
                            Ok(None) => break,
                            Err(e) => return frame_error(conn, e),
                        }
                    }
                    if event.peer_closed() && !(st.done_sent && st.acked == st.size) {
                        ctx.handle.end_transfer(false, Some("client closed the connection".into()));
                        return closed_by_peer(conn);
                    }
                }
                Err(e) => {
                    tracing::debug!("GET {name}: connection failed: {e}");
                    return Step::Close;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return fail(conn, ErrorCode::Timeout, &format!("no acknowledgement for {}s", idle_for.as_secs()));
            }
        }
    }
}

/// The whole file from the shared cache (loading it there on a miss), if
/// the server has a cache and it admits a file of this size. The bytes are
/// exactly the version `etag` names: the load reads from the descriptor
/// this GET opened and checks it is still that version. `None` means
/// "read from the file", also when the load fails (the GET then meets the
/// same failure on its own reads and reports it).
async fn cached_content(
    svc: &Arc<TransferService>,
    name: &SafeName,
    etag: &Etag,
    size: u64,
    file: &Arc<File>,
) -> Option<Bytes> {
    let cache = svc.cache()?;
    if !cache.admits(size) {
        return None;
    }
    let (file, expected) = (file.clone(), etag.clone());
    let load = move || async move {
        tokio::task::spawn_blocking(move || read_whole(&file, size, &expected)).await.map_err(std::io::Error::other)?
    };
    match cache.get_or_load(name.as_str(), etag, size, load).await {
        Ok(read) => Some(read.bytes),
        Err(e) => {
            tracing::debug!("GET {name}: not cached ({e}); reading from the file");
            None
        }
    }
}

/// Reads a whole file of `size` bytes that must still be version `etag`.
fn read_whole(file: &File, size: u64, etag: &Etag) -> std::io::Result<Bytes> {
    let len = usize::try_from(size).map_err(std::io::Error::other)?;
    let bytes = read_chunk(file, 0, len)?;
    if bytes.len() != len || Etag::from_metadata(&file.metadata()?) != *etag {
        return Err(std::io::Error::other("the file changed while it was read into the cache"));
    }
    Ok(bytes)
}

/// Reopens a parked GET's file; it must be the same version.
async fn reopen(
    svc: &Arc<TransferService>,
    name: &SafeName,
    etag: &Etag,
) -> Result<Arc<File>, Box<dyn FnOnce(&mut Conn) -> Step + Send>> {
    let store = svc.store.clone();
    let lookup = name.clone();
    match tokio::task::spawn_blocking(move || store.open_file(&lookup)).await {
        Ok(Ok((file, meta))) if &meta.etag == etag => Ok(Arc::new(file)),
        Ok(Ok((_, meta))) => {
            let msg = format!("{name} changed during the pause (etag {etag}, now {})", meta.etag);
            Err(Box::new(move |conn| fail(conn, ErrorCode::Changed, &msg)))
        }
        Ok(Err(e)) => Err(Box::new(move |conn| fail(conn, store_code(&e), &e.to_string()))),
        Err(e) => {
            let msg = format!("open task failed: {e}");
            Err(Box::new(move |conn| fail(conn, ErrorCode::Internal, &msg)))
        }
    }
}

/// Reads up to `len` bytes at `offset` (positional, so concurrent GETs of
/// one file share nothing but the page cache).
pub(super) fn read_chunk(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

/// Awaits an optional task; callers guard with `is_some()`.
pub(super) async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
