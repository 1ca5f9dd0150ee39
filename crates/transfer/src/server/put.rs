//! PUT: receive a file into `uploads/<id>`, acknowledge what is written,
//! verify size and BLAKE3 on `DONE`, then fsync and rename into place.
//!
//! Received DATA frames are written in batches on a blocking thread while
//! the socket keeps being read, so network and disk overlap. A batch in
//! flight is the only thing that delays a pause: the safe point is when
//! every received byte before it is on disk and hashed.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::config::BackupAck;
use ferry_core::registry::now_unix_ms;
use ferry_core::{Conn, SessionCtx, TransferKind};
use ferry_files::{DirectChunks, ResumableHash, SafeName, UploadId, hash_file_prefix};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::TransferService;
use super::get::{join, store_code};
use super::receive_blocks::PutReads;
use super::session::{Opened, Step, announce_resume, closed_by_peer, fail, frame_error, park_transfer};
use super::state::{ConfirmState, Phase, PutState};
use super::upload_leases::UploadLease;
use crate::backup::mirror::PutMirror;
use crate::command::{Reply, Request};
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::{queue_frame, take_frame};

/// Most bytes of DATA handed to one blocking write.
pub(super) const MAX_BATCH: usize = 4 << 20;

/// Buffered input at which a PUT stops reading while a batch is written:
/// one batch plus one whole frame, so a frame can always complete.
pub(super) fn read_high_water(max_frame: u32) -> usize {
    MAX_BATCH + max_frame as usize + crate::frame::HEADER_LEN
}

/// An upload file opened by `PUT`, with the hash of what it already holds.
pub(super) struct OpenUpload {
    file: Arc<File>,
    /// How the upload's data is written: see [`write_batch`].
    writes: Arc<UploadWrites>,
    hash: ResumableHash,
    /// Mirroring to backup nodes, for an upload that starts at byte 0 in
    /// this session (others reach the nodes through catch-up).
    mirror: Option<PutMirror>,
    _lease: UploadLease,
}

type WriteResult = std::io::Result<(ResumableHash, u64)>;

/// Handles `PUT name [size=N] [id=ID]`: opens or resumes the partial
/// upload and answers ACK with the offset to send from.
pub(super) async fn start(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    name: String,
    size: Option<u64>,
    id: Option<String>,
) -> Step {
    let name = match SafeName::parse(&name, svc.config.max_name_bytes) {
        Ok(name) => name,
        Err(e) => return fail(conn, ErrorCode::BadName, &e.to_string()),
    };
    match svc.store.resolve(&name) {
        Ok(path) => {
            if let Some(msg) = unwritable(svc.store.root(), &path, &name) {
                return fail(conn, ErrorCode::BadName, &msg);
            }
        }
        Err(e) => return fail(conn, store_code(&e), &e.to_string()),
    }
    let max = svc.config.max_file_bytes;
    if let Some(size) = size
        && size > max
    {
        return fail(conn, ErrorCode::TooLarge, &format!("{size} bytes is over the file size limit of {max}"));
    }
    let id = match id {
        Some(raw) => match UploadId::parse(&raw) {
            Some(id) => id,
            None => return fail(conn, ErrorCode::BadCommand, &format!("invalid upload id {raw:?} (32 hex digits)")),
        },
        None => UploadId::from_bytes(rand::random()),
    };
    let Some(lease) = svc.uploads.take(&id) else {
        return fail(conn, ErrorCode::Busy, &format!("upload {id} is in use by another connection"));
    };
    let (store, upload_id, upload_name) = (svc.store.clone(), id.clone(), name.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let upload = store.open_upload(&upload_id, &upload_name, size).map_err(|e| (store_code(&e), e.to_string()))?;
        let mut hash = ResumableHash::new();
        hash_file_prefix(&upload.file, upload.durable_len, &mut hash)
            .map_err(|e| (ErrorCode::Io, format!("cannot read partial upload: {e}")))?;
        Ok::<_, (ErrorCode, String)>((upload.file, upload.path, upload.durable_len, hash))
    })
    .await;
    let (file, path, durable, hash) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err((code, msg))) => return fail(conn, code, &msg),
        Err(e) => return fail(conn, ErrorCode::Internal, &format!("open task failed: {e}")),
    };
    tracing::info!(id = id.as_str(), "PUT {name}: receiving from offset {durable}");
    queue_frame(conn, &Frame::Ack(durable));
    ctx.handle.begin_transfer(TransferKind::Put, name.as_str(), size, durable);
    ctx.handle.progress(durable);
    let state = PutState {
        name: name.as_str().to_string(),
        upload_id: id.as_str().to_string(),
        size,
        start_offset: durable,
        written: durable,
        hash: hash.checkpoint(),
    };
    let mirror = if durable == 0 {
        PutMirror::begin(&svc.backups, name.as_str(), size, svc.config.chunk_bytes as usize)
    } else {
        None
    };
    let writes = Arc::new(UploadWrites { path, direct: DirectChunks::default() });
    let upload = OpenUpload { file: Arc::new(file), writes, hash, mirror, _lease: lease };
    Step::Next(Phase::Put(state), Some(Opened::Put(Box::new(upload))))
}

/// Receives the rest of a PUT, into read buffers from the process's pool
/// (see [`super::receive_blocks`]), which go back to the pool when it ends.
pub(super) async fn run(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    st: PutState,
    upload: Option<OpenUpload>,
    resumed: bool,
) -> Step {
    let mut reads = PutReads::new(svc.receive_blocks.clone());
    let step = receive(svc, conn, ctx, st, upload, resumed, &mut reads).await;
    reads.give_back(conn);
    tracing::debug!(stats = ?svc.receive_blocks.stats(), "PUT read blocks");
    step
}

async fn receive(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    mut st: PutState,
    upload: Option<OpenUpload>,
    resumed: bool,
    reads: &mut PutReads,
) -> Step {
    let Ok(name) = SafeName::parse(&st.name, svc.config.max_name_bytes) else {
        return fail(conn, ErrorCode::Internal, "parked PUT holds an invalid name");
    };
    let Some(id) = UploadId::parse(&st.upload_id) else {
        return fail(conn, ErrorCode::Internal, "parked PUT holds an invalid upload id");
    };
    let upload = match upload {
        Some(upload) => upload,
        None => match reopen(svc, &st, &id, &name).await {
            Ok(upload) => upload,
            Err(msg) => return fail(conn, ErrorCode::Io, &msg),
        },
    };
    let (file, writes) = (upload.file, upload.writes);
    let mut hash = Some(upload.hash);
    let mut mirror = upload.mirror;
    if resumed {
        ctx.handle.begin_transfer(TransferKind::Put, &st.name, st.size, st.start_offset);
        ctx.handle.progress(st.written);
        announce_resume(conn);
    }

    let max_frame = svc.config.max_frame_bytes;
    let limit = st.size.unwrap_or(svc.config.max_file_bytes);
    let idle_for = Duration::from_secs(svc.config.idle_timeout_secs);
    let mut deadline = Instant::now() + idle_for;
    let mut writing: Option<JoinHandle<WriteResult>> = None;
    // DATA taken off the connection and not yet handed to a write.
    let mut next = Gathered { batch: Vec::new(), bytes: 0, end: st.written };
    // A non-DATA frame that ended a batch; handled once the batch is written.
    let mut stash: Option<Frame> = None;

    loop {
        // Every complete frame is split off the read buffer at once, even
        // while a batch is being written or a node holds the next one back:
        // the buffer then holds at most one partial frame when it is
        // swapped for a pool block, and the swap copies only that (its
        // allocation cannot be reused in place while the write or a node's
        // queue still holds the frames split off it). What is gathered
        // beyond one batch waits in `next`, which the read high water bounds
        // together with the buffer.
        if stash.is_none()
            && let Err(refused) = next.gather(conn, max_frame, limit, &mut stash)
        {
            land(&mut writing).await;
            return match refused {
                Refused::Frame(e) => frame_error(conn, e),
                Refused::Data(code, msg) => fail(conn, code, &msg),
            };
        }
        // A backup node that has not taken the last batch holds back the
        // next one (for at most backup.timeout_ms in all).
        let stalled = mirror.as_ref().is_some_and(PutMirror::stalled);
        if writing.is_none()
            && let Some(reason) = ctx.pause.requested()
        {
            let Some(hash) = hash.as_ref() else {
                return fail(conn, ErrorCode::Internal, "hash state missing");
            };
            st.hash = hash.checkpoint();
            // What was taken off the read buffer and not written travels
            // with the session, unread, ahead of what follows it.
            let mut taken = Vec::with_capacity(next.batch.len() + 1);
            let mut offset = st.written;
            for data in std::mem::take(&mut next.batch) {
                let len = data.len() as u64;
                taken.push(Frame::Data { offset, data });
                offset += len;
            }
            taken.extend(stash.take());
            unread(conn, &taken);
            // Dropping the mirror aborts it; catch-up sends the file later.
            return park_transfer(conn, Phase::Put(st), reason);
        }
        if writing.is_none() && !stalled && !next.batch.is_empty() {
            let Some(hasher) = hash.take() else {
                return fail(conn, ErrorCode::Internal, "hash state missing");
            };
            let batch = next.take_batch();
            let at = st.written;
            let queued: u64 = next.batch.iter().map(|b| b.len() as u64).sum();
            let taken: u64 = batch.iter().map(|b| b.len() as u64).sum();
            assert_eq!(at + taken + queued, next.end, "batch not contiguous");
            if let Some(m) = mirror.as_mut() {
                m.offer(at, &batch);
            }
            let (file, writes) = (file.clone(), writes.clone());
            writing = Some(tokio::task::spawn_blocking(move || write_batch(&file, &writes, at, batch, hasher)));
            continue;
        }
        if writing.is_none() && !stalled && next.batch.is_empty() {
            match stash.take() {
                Some(Frame::Info(line)) => {
                    let Some(hasher) = hash.as_ref() else {
                        return fail(conn, ErrorCode::Internal, "hash state missing");
                    };
                    return match Request::parse(&line) {
                        Ok(Request::Done { size, blake3 }) => {
                            finish(svc, conn, ctx, &st, &name, &id, hasher, mirror.take(), size, &blake3).await
                        }
                        Ok(_) => fail(conn, ErrorCode::BadCommand, "a PUT in progress accepts only DATA and DONE"),
                        Err(e) => fail(conn, ErrorCode::BadCommand, &e.0),
                    };
                }
                Some(Frame::Error(msg)) => {
                    // The client gave up; the partial upload stays resumable.
                    ctx.handle.end_transfer(false, Some(format!("client error: {msg}")));
                    return Step::Close;
                }
                Some(other) => {
                    let msg = format!("a PUT in progress accepts only DATA and DONE, got {:?}", other.frame_type());
                    return fail(conn, ErrorCode::BadCommand, &msg);
                }
                None => {}
            }
        }
        // Read more while a batch is being written, up to about one batch.
        let want_read = conn.read_buf().len() + next.bytes < read_high_water(max_frame);
        if want_read {
            reads.make_room(conn);
        }
        let stalled = mirror.as_ref().is_some_and(PutMirror::stalled);
        let stall_deadline = mirror.as_ref().and_then(PutMirror::deadline);
        tokio::select! {
            biased;
            _ = ctx.pause.wait(), if writing.is_none() => {}
            _ = mirror_changed(&mut mirror), if stalled => {
                if let Some(m) = mirror.as_mut() {
                    m.retry();
                }
            }
            _ = sleep_until_some(stall_deadline), if stalled => {
                if let Some(m) = mirror.as_mut() {
                    m.retry();
                }
            }
            done = join(&mut writing), if writing.is_some() => {
                writing = None;
                match done {
                    Ok(Ok((hasher, n))) => {
                        st.written += n;
                        hash = Some(hasher);
                        ctx.registry.add_received(n);
                        ctx.handle.progress(st.written);
                        queue_frame(conn, &Frame::Ack(st.written));
                    }
                    Ok(Err(e)) => return fail(conn, ErrorCode::Io, &format!("cannot write upload: {e}")),
                    Err(e) => return fail(conn, ErrorCode::Internal, &format!("write task failed: {e}")),
                }
            }
            event = conn.pump(want_read), if want_read || conn.has_output() => match event {
                Ok(event) if event.peer_closed() => {
                    if let Some(task) = writing.take() {
                        // Let the last batch land so the upload resumes after it.
                        if let Ok(Ok((_, n))) = task.await {
                            st.written += n;
                            ctx.handle.progress(st.written);
                        }
                    }
                    ctx.handle.end_transfer(false, Some("client closed the connection".into()));
                    return closed_by_peer(conn);
                }
                Ok(event) => {
                    if event.got_input() {
                        deadline = Instant::now() + idle_for;
                    }
                }
                Err(e) => {
                    tracing::debug!("PUT {name}: connection failed: {e}");
                    return Step::Close;
                }
            },
            _ = tokio::time::sleep_until(deadline), if writing.is_none() && !stalled => {
                return fail(conn, ErrorCode::Timeout, &format!("no data for {}s", idle_for.as_secs()));
            }
        }
    }
}

/// DATA taken off the connection for the next writes.
struct Gathered {
    batch: Vec<Bytes>,
    /// Bytes in `batch`: less than the read high water plus one read, since
    /// the PUT reads only while the read buffer and `batch` together hold
    /// less than the high water.
    bytes: usize,
    /// File offset after the last DATA accepted (written, being written or
    /// in `batch`): where the next DATA must start.
    end: u64,
}

/// Why [`Gathered::gather`] refused the input.
enum Refused {
    Frame(crate::frame::FrameError),
    Data(ErrorCode, String),
}

impl Gathered {
    /// Takes the frames for the next write off the front: whole frames up to
    /// [`MAX_BATCH`] bytes, at least one.
    fn take_batch(&mut self) -> Vec<Bytes> {
        let mut bytes = 0;
        let count = self
            .batch
            .iter()
            .position(|data| {
                bytes += data.len();
                bytes > MAX_BATCH
            })
            .unwrap_or(self.batch.len())
            .max(1);
        let rest = self.batch.split_off(count.min(self.batch.len()));
        let batch = std::mem::replace(&mut self.batch, rest);
        self.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
        batch
    }

    /// Takes every complete frame off the read buffer until the buffer holds
    /// no complete frame or a frame other than DATA arrives (left in
    /// `stash`).
    fn gather(
        &mut self,
        conn: &mut Conn,
        max_frame: u32,
        limit: u64,
        stash: &mut Option<Frame>,
    ) -> Result<(), Refused> {
        while stash.is_none() {
            match take_frame(conn, max_frame).map_err(Refused::Frame)? {
                Some(Frame::Data { offset, data }) => {
                    if offset != self.end {
                        let msg = format!("DATA at offset {offset}, expected {}", self.end);
                        return Err(Refused::Data(ErrorCode::BadOffset, msg));
                    }
                    let end = self.end + data.len() as u64;
                    if end > limit {
                        return Err(Refused::Data(ErrorCode::TooLarge, format!("upload exceeds {limit} bytes")));
                    }
                    self.end = end;
                    self.bytes += data.len();
                    self.batch.push(data);
                }
                Some(other) => *stash = Some(other),
                None => break,
            }
        }
        Ok(())
    }
}

/// Lets a batch being written land before the session ends, so no write
/// runs on after it (and a resumed upload finds the file as acknowledged).
async fn land(writing: &mut Option<JoinHandle<WriteResult>>) {
    if let Some(task) = writing.take() {
        let _ = task.await;
    }
}

/// Puts frames taken off the read buffer back at its front, in order.
fn unread(conn: &mut Conn, frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    let rest = conn.read_buf().split();
    let buf = conn.read_buf();
    for frame in frames {
        buf.extend_from_slice(&frame.encode());
    }
    buf.extend_from_slice(&rest);
}

/// Waits for a stalled mirror's nodes to make room.
async fn mirror_changed(mirror: &mut Option<PutMirror>) {
    match mirror.as_mut() {
        Some(m) => m.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Why `name` cannot be stored at `path`, if it cannot: the path is a
/// directory, or one of its parents inside the root is a file. Caught at
/// PUT rather than after the whole upload.
fn unwritable(root: &std::path::Path, path: &std::path::Path, name: &SafeName) -> Option<String> {
    if path.is_dir() {
        return Some(format!("{name} is a directory"));
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        if d.exists() && !d.is_dir() {
            let parent = d.strip_prefix(root).unwrap_or(d).display().to_string();
            return Some(format!("cannot store {name}: {parent} is a file"));
        }
        dir = d.parent();
    }
    None
}

/// The staged file's path and the choice between direct and buffered writes, kept for the PUT.
struct UploadWrites {
    path: PathBuf,
    direct: DirectChunks,
}

/// Batches of at least this many bytes are hashed on a second thread while they are written: starting a
/// thread costs tens of microseconds, hashing 1 MiB about 250, and writing it about 1,000.
const HASH_BESIDE_FROM: u64 = 1 << 20;

/// Writes a batch of DATA payloads at `at` and feeds it to the hash, on a blocking thread.
///
/// The batch's aligned middle (nearly all of a 4 MiB batch) goes with `O_DIRECT` through a scratch block
/// ([`DirectChunks::write_span`]): the page-cache copy of a buffered write was most of the server's CPU
/// in a large PUT, and its cost swung with the machine's memory. The unaligned head and tail, and the
/// whole batch where the filesystem refuses `O_DIRECT` or every direct slot is taken, are written
/// buffered, with their writeback started so that `DONE`'s fsync finds little left to write. Every byte
/// is on the file when this returns, so a pause after it holds nothing back.
///
/// The hash runs on a second thread while this one writes: a direct write returns only once the device
/// has the bytes, and hashed after it the disk idled for the hash (docs/BENCHMARKS.md, backup section,
/// "4 MiB batches, the hash beside the write"). A batch under [`HASH_BESIDE_FROM`], or one for which no
/// thread can be started, is hashed here, after the write.
fn write_batch(file: &File, writes: &UploadWrites, at: u64, batch: Vec<Bytes>, hash: ResumableHash) -> WriteResult {
    let len = batch.iter().map(|d| d.len() as u64).sum();
    if len < HASH_BESIDE_FROM {
        writes.direct.write_span(file, &writes.path, &batch, at)?;
        return Ok((hashed(hash, &batch), len));
    }
    // Taken by whichever thread hashes: the second one, or this one when it could not be started.
    let state = std::sync::Mutex::new(Some(hash));
    let hash_batch = || Some(hashed(state.lock().ok()?.take()?, &batch));
    std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new().name("ferry-put-hash".into()).spawn_scoped(scope, hash_batch);
        let written = writes.direct.write_span(file, &writes.path, &batch, at);
        let hashed = match hashing {
            Ok(thread) => thread.join().map_err(|_| std::io::Error::other("the hash thread panicked"))?,
            Err(_) => hash_batch(),
        };
        written?;
        let hash = hashed.ok_or_else(|| std::io::Error::other("hash state missing"))?;
        Ok((hash, len))
    })
}

/// `hash` fed with the batch's payloads, in order.
fn hashed(mut hash: ResumableHash, batch: &[Bytes]) -> ResumableHash {
    for data in batch {
        hash.update(data);
    }
    hash
}

/// `DONE size=N blake3=H`: verify, make durable, rename into place.
#[allow(clippy::too_many_arguments)]
async fn finish(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    st: &PutState,
    name: &SafeName,
    id: &UploadId,
    hash: &ResumableHash,
    mirror: Option<PutMirror>,
    size: u64,
    blake3: &str,
) -> Step {
    let mismatch = if st.size.is_some_and(|declared| declared != size) {
        Some(format!("DONE says {size} bytes but PUT declared {}", st.size.unwrap_or(0)))
    } else if st.written != size {
        Some(format!("received {} bytes, DONE says {size}", st.written))
    } else {
        let actual = hash.finalize().to_hex();
        (actual.as_str() != blake3.to_ascii_lowercase())
            .then(|| format!("BLAKE3 mismatch: received {actual}, DONE says {blake3}"))
    };
    if let Some(msg) = mismatch {
        let (store, id) = (svc.store.clone(), id.clone());
        let _ = tokio::task::spawn_blocking(move || store.discard_upload(&id)).await;
        ctx.handle.end_transfer(false, Some(msg.clone()));
        return fail(conn, ErrorCode::VerifyFailed, &format!("{msg}; nothing was stored"));
    }
    let (store, upload, target) = (svc.store.clone(), id.clone(), name.clone());
    let meta = match tokio::task::spawn_blocking(move || store.finish_upload(&upload, &target)).await {
        Ok(Ok(meta)) => meta,
        Ok(Err(e)) => return fail(conn, ErrorCode::Io, &format!("cannot store {name}: {e}")),
        Err(e) => return fail(conn, ErrorCode::Internal, &format!("commit task failed: {e}")),
    };
    let digest = hash.finalize();
    svc.hashes.insert(name, meta.etag.clone(), digest);
    if let Some(cache) = svc.cache() {
        // The old version's entry would be dropped at its next lookup (its
        // etag no longer matches); free its memory now.
        cache.invalidate(name.as_str());
    }
    let (digest, etag) = (digest.to_hex().to_string(), meta.etag.to_string());
    let (mirrored, held_back) = mirror.map(|m| m.finish(size, &digest, &etag)).unwrap_or_default();
    let backup = svc.backups.config();
    let waiting = if backup.ack == BackupAck::All { svc.backups.ack_set() } else { Vec::new() };
    svc.backups.committed(name.as_str(), size, &mirrored);
    let stored = Reply::Stored { size, etag, blake3: digest.clone() }.to_string();
    ctx.handle.set_size(size);
    ctx.handle.end_transfer(true, None);
    if waiting.is_empty() {
        queue_frame(conn, &Frame::Info(stored));
        return Step::Next(Phase::Idle, None);
    }
    let confirm = ConfirmState {
        name: name.as_str().to_string(),
        blake3: digest,
        stored,
        nodes: waiting.iter().map(|id| id.to_string()).collect(),
        // A node may hold one upload back for timeout_ms in all: what it
        // already did while the data streamed counts.
        deadline_unix_ms: now_unix_ms() + backup.timeout_ms.saturating_sub(held_back.as_millis() as u64),
    };
    Step::Next(Phase::PutConfirm(confirm), None)
}

/// Reopens a parked PUT's partial upload and rebuilds its hash from the
/// checkpoint plus the bytes after it.
async fn reopen(
    svc: &Arc<TransferService>,
    st: &PutState,
    id: &UploadId,
    name: &SafeName,
) -> Result<OpenUpload, String> {
    let lease = svc.uploads.take(id).ok_or_else(|| format!("upload {id} is in use by another connection"))?;
    let (store, id, name, size, written, checkpoint) =
        (svc.store.clone(), id.clone(), name.clone(), st.size, st.written, st.hash.clone());
    let task = tokio::task::spawn_blocking(move || {
        let upload = store.open_upload(&id, &name, size).map_err(|e| e.to_string())?;
        if upload.durable_len < written {
            return Err(format!("partial upload holds {} bytes, expected {written}", upload.durable_len));
        }
        upload.file.set_len(written).map_err(|e| format!("cannot trim partial upload: {e}"))?;
        let mut hash = ResumableHash::from_checkpoint(&checkpoint).map_err(|e| e.to_string())?;
        hash_file_prefix(&upload.file, written, &mut hash).map_err(|e| format!("cannot read partial upload: {e}"))?;
        Ok((Arc::new(upload.file), upload.path, hash))
    });
    let (file, path, hash) = task.await.map_err(|e| format!("reopen task failed: {e}"))??;
    let writes = Arc::new(UploadWrites { path, direct: DirectChunks::default() });
    Ok(OpenUpload { file, writes, hash, mirror: None, _lease: lease })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(sizes: &[usize]) -> Gathered {
        let batch: Vec<Bytes> = sizes.iter().map(|&n| Bytes::from(vec![0u8; n])).collect();
        let bytes = sizes.iter().sum();
        Gathered { batch, bytes, end: bytes as u64 }
    }

    /// Small batches (hashed after the write) and large ones (hashed beside it) make the file and the hash
    /// of their concatenation, at aligned and unaligned offsets alike.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn batches_of_any_size_are_written_and_hashed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let writes = UploadWrites { path: path.clone(), direct: DirectChunks::default() };
        let pieces = [1000, 300_000, MAX_BATCH, 5, MAX_BATCH + 7, 2 * HASH_BESIDE_FROM as usize];
        let data: Vec<u8> = (0..pieces.iter().sum()).map(|i: usize| (i * 7 + i / 4093) as u8).collect();
        let (mut hash, mut at) = (ResumableHash::new(), 0usize);
        for want in pieces {
            let end = at + want;
            let batch: Vec<Bytes> = data[at..end].chunks(256 * 1024 + 3).map(Bytes::copy_from_slice).collect();
            let (next, n) = write_batch(&file, &writes, at as u64, batch, hash).unwrap();
            assert_eq!(n as usize, end - at);
            (hash, at) = (next, end);
        }
        assert_eq!(hash.finalize(), blake3::hash(&data));
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_batch_takes_whole_frames_up_to_its_limit() {
        let frame = 256 * 1024;
        let frames = MAX_BATCH / frame + 3;
        let mut next = gathered(&vec![frame; frames]);
        let first = next.take_batch();
        assert_eq!(first.len(), MAX_BATCH / frame);
        assert_eq!(next.batch.len(), 3);
        assert_eq!(next.bytes, next.batch.iter().map(Bytes::len).sum::<usize>());
        // One frame larger than a batch still goes, alone.
        let mut next = gathered(&[MAX_BATCH + 1, 5]);
        assert_eq!(next.take_batch().len(), 1);
        assert_eq!(next.bytes, 5);
        assert_eq!(next.take_batch().len(), 1);
        assert!(next.batch.is_empty() && next.bytes == 0);
    }
}
