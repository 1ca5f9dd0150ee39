//! The update connection (port 7071): a client's uploads, deletes and update requests, and the
//! server's Status reply to each, in order (docs/sync-protocol.md §5).
//!
//! Chunks of several files arrive interleaved. Each message is decided at once (lock, name, limits),
//! and its disk work runs on a blocking thread while the next messages are read: a chunk's md5 check
//! and write, a commit's fsync and rename. Replies still go out in the order the messages came, each
//! as soon as it and every reply before it are known, so one client's commits overlap on disk (what
//! makes a thousand small files fast) while the reply rule holds. A message for a file whose previous
//! chunk is still being written waits for it.
//!
//! A chunk is answered once it is checked and the file's previous chunk has landed on disk; its own
//! write lands while the client sends the next chunk, which is checked meanwhile, so checking and
//! writing overlap on two threads. At most one write per upload is in flight; Finished's commit waits
//! for it, and a write that failed fails the upload at its next message (File In Use).
//!
//! A large upload is relayed to the other clients whose push connections are idle as it arrives
//! ([`super::relay`]): each chunk once it is checked, the commit's outcome once it is known.
//!
//! The safe point for a live upgrade is whenever no disk work is in flight: the session stops taking
//! messages, lets the work in flight land, and parks with each upload's name, staged file, length and
//! partial md5.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::{Conn, Parked, SessionCtx, SessionEnd, TransferKind};
use ferry_files::SafeName;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client_table::ConnSlot;
use super::hub::SyncHub;
use super::relay::{RELAY_FROM, RelaySource};
use super::staged_upload::StagedUpload;
use super::state::{STATE_FORMAT, UpdateState, UploadState};
use super::{accept_hello, close_conn, queue_message, read_high_water};
use crate::chunk_digests::{ChunkDigests, DigestedVersion};
use crate::message_reader::{MessageReader, Next};
use crate::{
    ChunkVerdict, ClientId, FinishVerdict, LeaseKind, Md5Sum, Message, Role, StatusCode, UploadTracker, WireError,
};

/// Messages whose disk work may be in flight at once on one connection.
const MAX_OPS: usize = 32;
/// Chunks at least this large are answered before they are written (their write overlaps with the
/// next chunk); smaller ones, a small file's whole content mostly, are written at once, with no extra
/// thread hand-over on a file's way to commit.
const WRITE_BEHIND_FROM: usize = 256 * 1024;
/// Files remembered as dropped by the lease timeout (their next chunk is refused).
const MAX_LOST: usize = 64;

/// How a session stops.
enum End {
    Park,
    Close,
}

/// One upload in progress.
struct Upload {
    staged: StagedUpload,
    /// `None` while a chunk's work is in flight (the tracker travels with it).
    tracker: Option<UploadTracker>,
    written: u64,
    touched: Instant,
    /// The md5 of every accepted chunk, kept for pushing the file without digesting it again
    /// ([`crate::chunk_digests`]); `None` once the file cannot be described that way, or for an upload
    /// resumed after a live upgrade (the digests before it are not handed over).
    digests: Option<ChunkDigests>,
    /// The last accepted chunk's write, if it may not have landed yet.
    writing: Option<Writing>,
    /// The other clients this upload is relayed to as it arrives, if any.
    relay: Option<RelaySource>,
}

type Writing = JoinHandle<io::Result<()>>;

struct ChunkDone {
    tracker: UploadTracker,
    verdict: ChunkVerdict,
    /// How the write the chunk waited for went: the previous chunk's, or its own when it was written
    /// at once.
    write: io::Result<()>,
    /// This chunk's write, if it was accepted.
    writing: Option<Writing>,
}

/// A reply owed, in message order: known already, or when the disk work is done.
enum Op {
    Ready(StatusCode),
    /// `data` is the chunk's, for a relay (the bytes are shared, not copied).
    Chunk {
        name: SafeName,
        data: Bytes,
        md5: Md5Sum,
        task: JoinHandle<ChunkDone>,
    },
    Commit {
        name: SafeName,
        task: JoinHandle<StatusCode>,
    },
}

enum OpResult {
    Chunk(Result<ChunkDone, JoinError>),
    Commit(Result<StatusCode, JoinError>),
}

/// A message (or a refused chunk) for a file whose work is in flight, handled once it landed.
enum Held {
    Message(Message),
    InvalidChunk(SafeName),
}

struct UpdateSession {
    hub: Arc<SyncHub>,
    conn_id: u64,
    client: Option<ClientId>,
    cancel: CancellationToken,
    uploads: HashMap<SafeName, Upload>,
    lost: VecDeque<SafeName>,
    ops: VecDeque<Op>,
    held: Option<Held>,
    reader: MessageReader,
    /// The upload `ferry status` shows for this connection.
    reported: Option<SafeName>,
    last_rx: Instant,
    last_tx: Instant,
}

pub(crate) async fn run(
    hub: Arc<SyncHub>,
    mut conn: Conn,
    resume: Option<UpdateState>,
    mut ctx: SessionCtx,
) -> SessionEnd<UpdateState> {
    let mut session = match resume {
        None => UpdateSession::new(hub, None),
        Some(state) => match UpdateSession::resume(hub, state, &ctx).await {
            Some(session) => session,
            None => {
                close_conn(conn).await;
                return SessionEnd::Closed;
            }
        },
    };
    match session.serve(&mut conn, &mut ctx).await {
        End::Park => {
            let state = session.park_state();
            SessionEnd::Paused(Parked { conn: conn.into_parts(), state })
        }
        End::Close => {
            session.close().await;
            close_conn(conn).await;
            SessionEnd::Closed
        }
    }
}

impl UpdateSession {
    fn new(hub: Arc<SyncHub>, conn_id: Option<u64>) -> UpdateSession {
        let now = Instant::now();
        UpdateSession {
            conn_id: conn_id.unwrap_or_else(|| hub.next_conn_id()),
            hub,
            client: None,
            cancel: CancellationToken::new(),
            uploads: HashMap::new(),
            lost: VecDeque::new(),
            ops: VecDeque::new(),
            held: None,
            reader: MessageReader::default(),
            reported: None,
            last_rx: now,
            last_tx: now,
        }
    }

    /// Continues a parked session: attaches to its client again, reopens its staged uploads and takes
    /// their locks again. `None` if the state cannot be continued.
    async fn resume(hub: Arc<SyncHub>, state: UpdateState, ctx: &SessionCtx) -> Option<UpdateSession> {
        if state.format > STATE_FORMAT {
            tracing::error!("sync state format {} is newer than this build reads ({STATE_FORMAT})", state.format);
            return None;
        }
        let mut session = UpdateSession::new(hub.clone(), Some(state.conn_id));
        session.reader = MessageReader::resume(state.swallow);
        let Some(client) = state.client else { return Some(session) };
        let client = ClientId::parse(&client).ok()?;
        let slot = ConnSlot { id: session.conn_id, cancel: session.cancel.clone() };
        let replaced = match hub.clients().attach(&client, Role::Update, slot) {
            Ok((_, replaced)) => replaced,
            Err(e) => {
                tracing::warn!(client = %client, "sync: cannot resume: {e}");
                return None;
            }
        };
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        let max_name = hub.limits().max_name_len();
        session.lost = state.lost.iter().filter_map(|n| SafeName::parse(n, max_name).ok()).collect();
        for upload in state.uploads {
            let Ok(name) = SafeName::parse(&upload.name, max_name) else { continue };
            let dir = hub.uploads_dir().to_path_buf();
            let (id, written) = (upload.staged_id, upload.written);
            let reopened = tokio::task::spawn_blocking(move || StagedUpload::reopen(&dir, id, written)).await;
            let tracker = UploadTracker::from_state(&upload.tracker);
            let relocked = hub.roster().acquire(&name, &client, LeaseKind::Update);
            match (reopened, tracker, relocked) {
                (Ok(Ok(staged)), Some(tracker), Ok(())) => {
                    session.uploads.insert(
                        name.clone(),
                        Upload {
                            staged,
                            tracker: Some(tracker),
                            written,
                            touched: Instant::now(),
                            digests: None,
                            writing: None,
                            relay: None,
                        },
                    );
                    session.report_start(ctx, &name);
                }
                (reopened, _, relocked) => {
                    tracing::warn!(client = %client, "sync: cannot continue the upload of {name} after the upgrade");
                    if let Ok(Ok(staged)) = reopened {
                        staged.discard();
                    }
                    if relocked.is_ok() {
                        hub.release(&name, &client);
                    }
                    session.lose(name);
                }
            }
        }
        session.client = Some(client);
        Some(session)
    }

    fn park_state(&self) -> UpdateState {
        let uploads = self
            .uploads
            .iter()
            .filter_map(|(name, u)| {
                // Parking waits for the work in flight, so every tracker is home.
                let tracker = u.tracker.as_ref()?;
                Some(UploadState {
                    name: name.to_string(),
                    staged_id: u.staged.id,
                    written: u.written,
                    tracker: tracker.to_state(),
                })
            })
            .collect();
        UpdateState {
            format: STATE_FORMAT,
            conn_id: self.conn_id,
            client: self.client.as_ref().map(|c| c.to_string()),
            uploads,
            lost: self.lost.iter().map(|n| n.to_string()).collect(),
            swallow: self.reader.swallow(),
        }
    }

    async fn serve(&mut self, conn: &mut Conn, ctx: &mut SessionCtx) -> End {
        let limits = *self.hub.limits();
        let config = self.hub.config.clone();
        let high_water = read_high_water(&limits);
        loop {
            self.settle_finished_ops(conn, ctx).await;
            if self.ops.is_empty()
                && let Some(held) = self.held.take()
                && self.handle_held(held, conn, ctx).is_err()
            {
                return End::Close;
            }
            let pausing = ctx.pause.requested().is_some();
            while !pausing && self.held.is_none() && self.ops.len() < MAX_OPS {
                let next = self.reader.next(conn.read_buf(), &limits);
                let handled = match next {
                    Next::Incomplete => break,
                    Next::Fatal(error) => {
                        tracing::debug!("sync update connection: {error}");
                        return End::Close;
                    }
                    Next::Refused { error, status } => self.refused(error, status, ctx),
                    Next::Message(message) => self.handle(message, conn, ctx),
                };
                if handled.is_err() {
                    return End::Close;
                }
            }
            self.settle_finished_ops(conn, ctx).await;
            if pausing && self.ops.is_empty() && self.held.is_none() {
                self.land_writes(ctx).await;
                return End::Park;
            }
            let want_read = !pausing && self.held.is_none() && conn.read_buf().len() < high_water;
            let timer = self.next_timer(&config);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    tracing::debug!(client = ?self.client, "sync: update connection replaced");
                    return End::Close;
                }
                _ = ctx.pause.wait(), if !pausing => {}
                result = wait_front(&mut self.ops), if self.front_pending() => {
                    if let Some(op) = self.ops.pop_front() {
                        self.complete(op, Some(result), conn, ctx);
                    }
                }
                event = conn.pump(want_read), if want_read || conn.has_output() => match event {
                    Ok(event) if event.peer_closed() => return End::Close,
                    Ok(event) => {
                        if event.got_input() {
                            self.last_rx = Instant::now();
                        }
                    }
                    Err(e) => {
                        tracing::debug!("sync update connection failed: {e}");
                        return End::Close;
                    }
                },
                _ = tokio::time::sleep_until(timer) => {
                    if self.on_timer(conn, ctx, &config).is_err() {
                        return End::Close;
                    }
                }
            }
        }
    }

    fn front_pending(&self) -> bool {
        matches!(self.ops.front(), Some(Op::Chunk { .. } | Op::Commit { .. }))
    }

    /// Replies whose work has landed, in order, up to the first still in flight.
    async fn settle_finished_ops(&mut self, conn: &mut Conn, ctx: &SessionCtx) {
        loop {
            let ready = match self.ops.front() {
                None => return,
                Some(Op::Ready(_)) => true,
                Some(Op::Chunk { task, .. }) => task.is_finished(),
                Some(Op::Commit { task, .. }) => task.is_finished(),
            };
            if !ready {
                return;
            }
            let result = match self.ops.front_mut() {
                Some(Op::Ready(_)) | None => None,
                Some(_) => Some(wait_front(&mut self.ops).await),
            };
            if let Some(op) = self.ops.pop_front() {
                self.complete(op, result, conn, ctx);
            }
        }
    }

    /// Applies a finished op to the session and queues its reply.
    fn complete(&mut self, op: Op, result: Option<OpResult>, conn: &mut Conn, ctx: &SessionCtx) {
        let status = match (op, result) {
            (Op::Ready(status), _) => status,
            (Op::Chunk { name, data, md5, .. }, Some(OpResult::Chunk(done))) => {
                self.chunk_done(name, data, md5, done, ctx)
            }
            (Op::Commit { name, .. }, Some(OpResult::Commit(done))) => {
                let status = done.unwrap_or_else(|e| {
                    tracing::error!("sync: commit task failed: {e}");
                    StatusCode::FileInUse
                });
                self.report_end(ctx, &name, status == StatusCode::Ok);
                status
            }
            (op, _) => {
                // A task's result always comes with its op; nothing else reaches here.
                debug_assert!(matches!(op, Op::Ready(_)), "an op completed without its result");
                StatusCode::FileInUse
            }
        };
        self.reply(conn, status);
    }

    fn chunk_done(
        &mut self,
        name: SafeName,
        data: Bytes,
        md5: Md5Sum,
        done: Result<ChunkDone, JoinError>,
        ctx: &SessionCtx,
    ) -> StatusCode {
        let len = data.len() as u64;
        let Ok(done) = done else {
            self.drop_upload(&name, ctx, "chunk task failed");
            return StatusCode::FileInUse;
        };
        let Some(upload) = self.uploads.get_mut(&name) else { return StatusCode::FileInUse };
        upload.tracker = Some(done.tracker);
        upload.writing = done.writing;
        match (done.verdict, done.write) {
            (_, Err(e)) => {
                self.drop_upload(&name, ctx, &format!("cannot write: {e}"));
                StatusCode::FileInUse
            }
            (ChunkVerdict::Accepted, Ok(())) => {
                upload.written += len;
                upload.touched = Instant::now();
                if let Some(digests) = upload.digests.as_mut()
                    && !u32::try_from(len).is_ok_and(|len| digests.push(md5, len))
                {
                    upload.digests = None;
                }
                if upload.written == len
                    && data.len() >= RELAY_FROM
                    && let Some(client) = &self.client
                {
                    upload.relay = self.hub.open_relay(client, &name);
                }
                if let Some(relay) = upload.relay.as_mut() {
                    relay.forward(&data, md5);
                }
                ctx.registry.add_received(len);
                if self.reported.as_ref() == Some(&name) {
                    ctx.handle.progress(upload.written);
                }
                StatusCode::Ok
            }
            (verdict, _) if verdict.is_abort() => {
                self.drop_upload(&name, ctx, verdict.status().description());
                verdict.status()
            }
            (verdict, _) => verdict.status(),
        }
    }

    fn reply(&mut self, conn: &mut Conn, status: StatusCode) {
        queue_message(conn, &Message::Status(status));
        self.last_tx = Instant::now();
    }

    fn handle(&mut self, message: Message, conn: &mut Conn, ctx: &SessionCtx) -> Result<(), ()> {
        let Some(client) = self.client.clone() else { return self.hello(message, conn) };
        match message {
            Message::FileChunk { md5, name, data } => self.chunk(&client, md5, name, data, ctx),
            Message::Finished { md5, name } => self.finished(&client, md5, name, ctx),
            Message::AbortFile { md5, name } => {
                if self.uploads.get(&name).is_some_and(|u| u.tracker.is_none()) {
                    self.held = Some(Held::Message(Message::AbortFile { md5, name }));
                } else {
                    if self.uploads.contains_key(&name) {
                        self.drop_upload(&name, ctx, "aborted by the client");
                    }
                    self.ops.push_back(Op::Ready(StatusCode::Ok));
                }
            }
            Message::DeleteFile { md5, name } => self.delete(&client, md5, name),
            Message::RequestUpdate { name, .. } => {
                let entry = self.hub.roster().get(&name).copied();
                let status = match entry {
                    Some(e) if !e.is_deleted() => {
                        if self.hub.clients().enqueue(&client, &name, e.version, crate::UpdateKind::Write) {
                            StatusCode::Ok
                        } else {
                            StatusCode::FileInUse
                        }
                    }
                    _ => StatusCode::FileInUse,
                };
                self.ops.push_back(Op::Ready(status));
            }
            Message::Status(code) => {
                if code != StatusCode::KeepAlive {
                    tracing::debug!(client = %client, "sync: unexpected status {} on the update connection", code.description());
                }
            }
            Message::Hello(_) | Message::MetaData(_) => {
                tracing::warn!(client = %client, "sync: {} after the hello; closing", message.message_type().name());
                return Err(());
            }
        }
        Ok(())
    }

    /// The first message: a hello for the update role starts the client's session and is answered
    /// with the META-DATA.
    fn hello(&mut self, message: Message, conn: &mut Conn) -> Result<(), ()> {
        let client = accept_hello(message, Role::Update, conn)?;
        let slot = ConnSlot { id: self.conn_id, cancel: self.cancel.clone() };
        let (replaced, snapshot) = {
            let roster = self.hub.roster();
            let replaced = self.hub.clients().start_session(&client, slot);
            (replaced, roster.snapshot())
        };
        match replaced {
            Ok(replaced) => self.hub.replace_session(&client, replaced),
            Err(e) => {
                tracing::warn!(client = %client, "sync: {e}; refusing the client");
                return Err(());
            }
        }
        tracing::info!(client = %client, files = snapshot.entries.len(), "sync: client connected");
        queue_message(conn, &Message::MetaData(snapshot));
        self.last_tx = Instant::now();
        self.client = Some(client);
        Ok(())
    }

    fn chunk(&mut self, client: &ClientId, md5: Md5Sum, name: SafeName, data: Bytes, ctx: &SessionCtx) {
        if let Some(i) = self.lost.iter().position(|n| *n == name) {
            self.lost.remove(i);
            self.ops.push_back(Op::Ready(StatusCode::FileInUse));
            return;
        }
        if !self.uploads.contains_key(&name)
            && let Err(status) = self.start_upload(client, &name, ctx)
        {
            self.ops.push_back(Op::Ready(status));
            return;
        }
        let Some(upload) = self.uploads.get_mut(&name) else { return };
        let Some(mut tracker) = upload.tracker.take() else {
            self.held = Some(Held::Message(Message::FileChunk { md5, name, data }));
            return;
        };
        let (staged, offset, kept) = (upload.staged.clone(), upload.written, data.clone());
        let previous = upload.writing.take();
        if previous.is_none() && data.len() < WRITE_BEHIND_FROM {
            // A small chunk: written at once, on the same thread, with no hand-over to wait for.
            let task = tokio::task::spawn_blocking(move || {
                let verdict = tracker.chunk(md5, &data);
                let write = if verdict == ChunkVerdict::Accepted { staged.write_at(&data, offset) } else { Ok(()) };
                ChunkDone { tracker, verdict, write, writing: None }
            });
            self.ops.push_back(Op::Chunk { name, data: kept, md5, task });
            return;
        }
        let task = tokio::spawn(async move {
            let checked = tokio::task::spawn_blocking(move || {
                let verdict = tracker.chunk(md5, &data);
                (tracker, verdict, data)
            });
            // The previous chunk's write lands while this one is checked.
            let write = landed(previous).await;
            let (tracker, verdict, data) = match checked.await {
                Ok(checked) => checked,
                Err(e) => std::panic::resume_unwind(e.try_into_panic().unwrap_or_else(|e| Box::new(e.to_string()))),
            };
            let writing = (verdict == ChunkVerdict::Accepted && write.is_ok())
                .then(|| tokio::task::spawn_blocking(move || staged.write_at(&data, offset)));
            ChunkDone { tracker, verdict, write, writing }
        });
        self.ops.push_back(Op::Chunk { name, data: kept, md5, task });
    }

    /// The first chunk (or a Finished alone: an empty file) of a file: lock it and stage it.
    fn start_upload(&mut self, client: &ClientId, name: &SafeName, ctx: &SessionCtx) -> Result<(), StatusCode> {
        if self.uploads.len() >= self.hub.config.max_uploads {
            return Err(StatusCode::FileInUse);
        }
        self.hub.acquire(name, client, LeaseKind::Update)?;
        let staged = match StagedUpload::create(self.hub.uploads_dir()) {
            Ok(staged) => staged,
            Err(e) => {
                tracing::error!("sync: cannot stage an upload: {e}");
                self.hub.release(name, client);
                return Err(StatusCode::FileInUse);
            }
        };
        let tracker = UploadTracker::new(self.hub.limits().max_file_size);
        self.uploads.insert(
            name.clone(),
            Upload {
                staged,
                tracker: Some(tracker),
                written: 0,
                touched: Instant::now(),
                digests: Some(ChunkDigests::new()),
                writing: None,
                relay: None,
            },
        );
        self.report_start(ctx, name);
        Ok(())
    }

    fn finished(&mut self, client: &ClientId, md5: Md5Sum, name: SafeName, ctx: &SessionCtx) {
        if let Some(i) = self.lost.iter().position(|n| *n == name) {
            self.lost.remove(i);
            self.ops.push_back(Op::Ready(StatusCode::FileInUse));
            return;
        }
        if self.uploads.get(&name).is_some_and(|u| u.tracker.is_none()) {
            self.held = Some(Held::Message(Message::Finished { md5, name }));
            return;
        }
        // Finished with no chunk before it: an empty file.
        if !self.uploads.contains_key(&name)
            && let Err(status) = self.start_upload(client, &name, ctx)
        {
            self.ops.push_back(Op::Ready(status));
            return;
        }
        let Some(upload) = self.uploads.remove(&name) else { return };
        let Some(tracker) = upload.tracker else { return };
        match tracker.finish(md5) {
            FinishVerdict::Complete { size, md5 } => {
                if let Some(digests) = upload.digests {
                    // Kept before the commit queues the file, so its pushes find them. They describe
                    // this content, whether or not the commit succeeds.
                    let version = DigestedVersion { size, md5, chunk_size: digests.chunk_size() };
                    self.hub.keep_digests(&name, version, digests);
                }
                let (hub, client, staged, file) = (self.hub.clone(), client.clone(), upload.staged, name.clone());
                let relay = upload.relay;
                let task = match upload.writing {
                    None => tokio::task::spawn_blocking(move || {
                        hub.commit_upload(&client, &file, &staged, size, md5, relay)
                    }),
                    Some(writing) => tokio::spawn(async move {
                        if let Err(e) = landed(Some(writing)).await {
                            tracing::warn!(client = %client, "sync: upload of {file} dropped: cannot write: {e}");
                            staged.discard();
                            hub.release(&file, &client);
                            return StatusCode::FileInUse;
                        }
                        let commit = move || hub.commit_upload(&client, &file, &staged, size, md5, relay);
                        tokio::task::spawn_blocking(commit).await.unwrap_or_else(|e| {
                            tracing::error!("sync: commit task failed: {e}");
                            StatusCode::FileInUse
                        })
                    }),
                };
                self.ops.push_back(Op::Commit { name, task });
            }
            verdict => {
                upload.staged.discard();
                self.hub.release(&name, client);
                if let FinishVerdict::Mismatch { claimed, actual } = verdict {
                    tracing::info!(client = %client, "sync: {name}: Finished says md5 {claimed}, the chunks make {actual}");
                }
                self.report_end(ctx, &name, false);
                self.ops.push_back(Op::Ready(verdict.status()));
            }
        }
    }

    fn delete(&mut self, client: &ClientId, md5: Md5Sum, name: SafeName) {
        if self.uploads.contains_key(&name) {
            // Deleting a file this connection is uploading: refuse the delete, the upload goes on.
            self.ops.push_back(Op::Ready(StatusCode::FileInUse));
            return;
        }
        if let Err(status) = self.hub.acquire(&name, client, LeaseKind::Delete) {
            self.ops.push_back(Op::Ready(status));
            return;
        }
        // The md5 names the version the client deleted. If the server's is another one, it changed
        // since the client last saw it: modify beats delete, and the client gets the new version.
        let current = self.hub.roster().get(&name).and_then(|e| e.md5());
        if md5 != Md5Sum::ZERO && current != Some(md5) {
            self.hub.release(&name, client);
            self.ops.push_back(Op::Ready(StatusCode::NoFileToDelete));
            return;
        }
        let (hub, client, file) = (self.hub.clone(), client.clone(), name.clone());
        let task = tokio::task::spawn_blocking(move || hub.commit_delete(&client, &file));
        self.ops.push_back(Op::Commit { name, task });
    }

    /// A message the decoder refused: answered with the seed's status where it has one.
    fn refused(&mut self, error: WireError, status: Option<StatusCode>, ctx: &SessionCtx) -> Result<(), ()> {
        let Some(client) = self.client.clone() else {
            tracing::debug!("sync: {error} before the hello; closing");
            return Err(());
        };
        tracing::debug!(client = %client, "sync: refused a message: {error}");
        if let WireError::ChunkSize { name, .. } = &error {
            match SafeName::parse(name, self.hub.limits().max_name_len()) {
                Ok(name) => self.invalid_chunk(&client, name, ctx),
                Err(_) => self.ops.push_back(Op::Ready(StatusCode::FileInUse)),
            }
            return Ok(());
        }
        if let Some(status) = status {
            self.ops.push_back(Op::Ready(status));
        }
        Ok(())
    }

    /// A chunk of an invalid size: counted towards the seed's "Abort after 3 invalid chunks".
    fn invalid_chunk(&mut self, client: &ClientId, name: SafeName, ctx: &SessionCtx) {
        if !self.uploads.contains_key(&name)
            && let Err(status) = self.start_upload(client, &name, ctx)
        {
            self.ops.push_back(Op::Ready(status));
            return;
        }
        let Some(upload) = self.uploads.get_mut(&name) else { return };
        let Some(tracker) = upload.tracker.as_mut() else {
            self.held = Some(Held::InvalidChunk(name));
            return;
        };
        let verdict = tracker.invalid_chunk_size();
        if verdict.is_abort() {
            self.drop_upload(&name, ctx, verdict.status().description());
        }
        self.ops.push_back(Op::Ready(verdict.status()));
    }

    fn handle_held(&mut self, held: Held, conn: &mut Conn, ctx: &SessionCtx) -> Result<(), ()> {
        match held {
            Held::Message(message) => self.handle(message, conn, ctx),
            Held::InvalidChunk(name) => {
                if let Some(client) = self.client.clone() {
                    self.invalid_chunk(&client, name, ctx);
                }
                Ok(())
            }
        }
    }

    /// Discards an upload: its staged file and its lock.
    fn drop_upload(&mut self, name: &SafeName, ctx: &SessionCtx, why: &str) {
        if let Some(upload) = self.uploads.remove(name) {
            upload.staged.discard();
            if let Some(client) = &self.client {
                self.hub.release(name, client);
                tracing::info!(client = %client, "sync: upload of {name} dropped: {why}");
            }
            self.report_end(ctx, name, false);
        }
    }

    /// Waits for every upload's write in flight (before parking: the parked length must be on disk);
    /// an upload whose write failed is dropped.
    async fn land_writes(&mut self, ctx: &SessionCtx) {
        let writing: Vec<(SafeName, Writing)> =
            self.uploads.iter_mut().filter_map(|(name, u)| Some((name.clone(), u.writing.take()?))).collect();
        for (name, task) in writing {
            if let Err(e) = landed(Some(task)).await {
                self.drop_upload(&name, ctx, &format!("cannot write: {e}"));
                self.lose(name);
            }
        }
    }

    /// Remembers that `name`'s upload was dropped, so its next chunk is refused rather than taken as
    /// the start of a new file.
    fn lose(&mut self, name: SafeName) {
        if self.lost.len() >= MAX_LOST {
            self.lost.pop_front();
        }
        self.lost.push_back(name);
    }

    fn next_timer(&self, config: &super::HubConfig) -> Instant {
        let mut at = (self.last_rx + config.idle_timeout).min(self.last_tx + config.keepalive);
        if let Some(oldest) = self.uploads.values().filter(|u| u.tracker.is_some()).map(|u| u.touched).min() {
            at = at.min(oldest + config.lease_timeout);
        }
        at
    }

    fn on_timer(&mut self, conn: &mut Conn, ctx: &SessionCtx, config: &super::HubConfig) -> Result<(), ()> {
        let now = Instant::now();
        if now >= self.last_rx + config.idle_timeout {
            tracing::info!(client = ?self.client, "sync: update connection idle for {:?}; closing", config.idle_timeout);
            return Err(());
        }
        if self.client.is_some() && now >= self.last_tx + config.keepalive {
            self.reply(conn, StatusCode::KeepAlive);
        }
        let expired: Vec<SafeName> = self
            .uploads
            .iter()
            .filter(|(_, u)| u.tracker.is_some() && now >= u.touched + config.lease_timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.drop_upload(&name, ctx, "no chunk within the lease timeout");
            self.lose(name);
        }
        Ok(())
    }

    fn report_start(&mut self, ctx: &SessionCtx, name: &SafeName) {
        if self.reported.is_none() {
            ctx.handle.begin_transfer(TransferKind::Put, name.as_str(), None, 0);
            self.reported = Some(name.clone());
        }
    }

    fn report_end(&mut self, ctx: &SessionCtx, name: &SafeName, ok: bool) {
        if self.reported.as_ref() == Some(name) {
            ctx.handle.end_transfer(ok, (!ok).then(|| "not committed".to_string()));
            self.reported = None;
        }
    }

    /// The connection is over: let disk work in flight land, drop partial uploads, and if this was the
    /// client's current connection, end the client (its push connection, its locks).
    async fn close(&mut self) {
        while let Some(op) = self.ops.pop_front() {
            match op {
                Op::Ready(_) => {}
                Op::Chunk { task, .. } => {
                    let _ = task.await;
                }
                Op::Commit { task, .. } => {
                    let _ = task.await;
                }
            }
        }
        for (_, upload) in self.uploads.drain() {
            upload.staged.discard();
        }
        if let Some(client) = &self.client {
            self.hub.connection_ended(client, Role::Update, self.conn_id);
            tracing::info!(client = %client, "sync: client's update connection closed");
        }
    }
}

/// Waits for a chunk's write, if one is in flight.
async fn landed(writing: Option<Writing>) -> io::Result<()> {
    match writing {
        None => Ok(()),
        Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(format!("write task failed: {e}")))),
    }
}

/// Waits for the disk work of the op at the front.
async fn wait_front(ops: &mut VecDeque<Op>) -> OpResult {
    match ops.front_mut() {
        Some(Op::Chunk { task, .. }) => OpResult::Chunk(task.await),
        Some(Op::Commit { task, .. }) => OpResult::Commit(task.await),
        Some(Op::Ready(_)) | None => std::future::pending().await,
    }
}
