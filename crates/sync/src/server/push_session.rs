//! The push connection (port 7072): the seed's "sending thread" for one client. It takes one entry at a
//! time out of the client's queue (the queue's lock is held only to pop it, never during the
//! transfer), sends the file as File Chunks (one unanswered chunk at a time, the next one read and
//! digested while the client checks the previous) and Finished with the whole file's md5, or a Delete
//! File, and follows the client's Status replies: resend on a bad checksum or size, give up on an
//! abort or File In Use.
//!
//! A large upload another client is making while this connection is idle is relayed as it arrives
//! ([`super::relay`]): its chunks go out as the server checks them, and once the server has committed
//! the file the push goes on as a normal one from where the relay got to (the rest read from the
//! committed file), ending with Finished. An upload that fails is followed by Abort File. A relay
//! does not park: a connection parking mid-relay sends Abort File, and the file is pushed the usual
//! way after its commit, in whichever process makes it.
//!
//! The whole file's md5 comes from the roster, which recorded it at commit, when the file opened is
//! the one the roster describes (same size and mtime); only a file replaced between the roster read
//! and the open is digested again. Every point between messages is a safe point: a parked push keeps
//! the file's name, size, mtime, md5 and how far the client has it, and reopens it by name.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_core::{Conn, Parked, SessionCtx, SessionEnd, TransferKind};
use ferry_files::SafeName;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client_table::ConnSlot;
use super::hub::{SyncHub, mtime_ns};
use super::relay::{RelayChunk, RelayOutcome, RelayTap, TapEvent};
use super::state::{Expect, PushItemState, PushState, STATE_FORMAT};
use super::{accept_hello, close_conn, queue_message, read_high_water};
use crate::chunk_digests::{ChunkDigests, DigestedVersion};
use crate::message_reader::{MessageReader, Next};
use crate::{ClientId, EntryState, Md5Sum, Message, Role, StatusCode};

enum End {
    Park,
    Close,
}

type ReadTask = JoinHandle<io::Result<(Bytes, Md5Sum)>>;

/// A file being pushed.
struct WriteItem {
    name: SafeName,
    file: Arc<File>,
    size: u64,
    mtime_ns: i64,
    md5: Md5Sum,
    /// Bytes the client accepted.
    sent: u64,
    /// The chunk sent after `sent`, kept for a resend until the client answers.
    unanswered: Option<(Bytes, Md5Sum)>,
    /// The chunk after it, read ahead.
    next: Option<(Bytes, Md5Sum)>,
    reading: Option<ReadTask>,
    finished_sent: bool,
    /// The chunk digests the upload of this version left, so its chunks go out without an MD5 pass.
    digests: Option<Arc<ChunkDigests>>,
}

impl WriteItem {
    /// A push of `file` (this version: `size`, `mtime_ns`, `md5`) from its first byte.
    fn starting(
        name: SafeName,
        file: File,
        size: u64,
        mtime_ns: i64,
        md5: Md5Sum,
        digests: Option<Arc<ChunkDigests>>,
    ) -> WriteItem {
        WriteItem {
            name,
            file: Arc::new(file),
            size,
            mtime_ns,
            md5,
            sent: 0,
            unanswered: None,
            next: None,
            reading: None,
            finished_sent: false,
            digests,
        }
    }
}

/// A file being relayed from another client's upload in progress.
struct RelayItem {
    tap: RelayTap,
    /// Bytes the client accepted.
    sent: u64,
    /// The chunk sent after `sent`, kept for a resend until the client answers.
    unanswered: Option<RelayChunk>,
    /// The next chunk from the relay.
    next: Option<RelayChunk>,
    /// Whether a chunk went out: the client then has a partial file to drop if the relay ends.
    started: bool,
}

enum Item {
    Write(WriteItem),
    Relay(RelayItem),
    Delete(SafeName),
}

impl Item {
    fn name(&self) -> &SafeName {
        match self {
            Item::Write(w) => &w.name,
            Item::Relay(r) => &r.tap.name,
            Item::Delete(name) => name,
        }
    }
}

/// What a popped queue entry turned out to be, once the roster and the disk were looked at.
enum Started {
    Write(WriteItem),
    Delete,
    Skip,
}

struct PushSession {
    hub: Arc<SyncHub>,
    conn_id: u64,
    client: Option<ClientId>,
    cancel: CancellationToken,
    wake: Arc<Notify>,
    current: Option<Item>,
    expect: VecDeque<Expect>,
    reader: MessageReader,
    last_rx: Instant,
    last_tx: Instant,
}

pub(crate) async fn run(
    hub: Arc<SyncHub>,
    mut conn: Conn,
    resume: Option<PushState>,
    mut ctx: SessionCtx,
) -> SessionEnd<PushState> {
    let mut session = match resume {
        None => PushSession::new(hub, None),
        Some(state) => match PushSession::resume(hub, state, &mut conn, &ctx).await {
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
            session.close();
            close_conn(conn).await;
            SessionEnd::Closed
        }
    }
}

impl PushSession {
    fn new(hub: Arc<SyncHub>, conn_id: Option<u64>) -> PushSession {
        let now = Instant::now();
        PushSession {
            conn_id: conn_id.unwrap_or_else(|| hub.next_conn_id()),
            hub,
            client: None,
            cancel: CancellationToken::new(),
            wake: Arc::new(Notify::new()),
            current: None,
            expect: VecDeque::new(),
            reader: MessageReader::default(),
            last_rx: now,
            last_tx: now,
        }
    }

    async fn resume(hub: Arc<SyncHub>, state: PushState, conn: &mut Conn, ctx: &SessionCtx) -> Option<PushSession> {
        if state.format > STATE_FORMAT {
            tracing::error!("sync state format {} is newer than this build reads ({STATE_FORMAT})", state.format);
            return None;
        }
        let mut session = PushSession::new(hub.clone(), Some(state.conn_id));
        session.reader = MessageReader::resume(state.swallow);
        session.expect = state.expect.into_iter().collect();
        let Some(client) = state.client else { return Some(session) };
        let client = ClientId::parse(&client).ok()?;
        let slot = ConnSlot { id: session.conn_id, cancel: session.cancel.clone() };
        match hub.clients().attach(&client, Role::Push, slot) {
            Ok((wake, replaced)) => {
                session.wake = wake;
                if let Some(old) = replaced {
                    old.cancel.cancel();
                }
            }
            Err(e) => {
                tracing::warn!(client = %client, "sync: cannot resume a push connection: {e}");
                return None;
            }
        }
        session.client = Some(client.clone());
        let max_name = hub.limits().max_name_len();
        match state.current {
            None => {}
            Some(PushItemState::Delete { name }) => {
                let name = SafeName::parse(&name, max_name).ok()?;
                hub.clients().set_pushing(&client, Some(name.clone()));
                session.current = Some(Item::Delete(name));
            }
            Some(PushItemState::Write { name, size, mtime_ns, md5, sent, unanswered, finished_sent }) => {
                let name = SafeName::parse(&name, max_name).ok()?;
                hub.clients().set_pushing(&client, Some(name.clone()));
                let reopened = reopen(&hub, &name, size, mtime_ns, sent, unanswered).await;
                match reopened {
                    Ok((file, unanswered)) => {
                        ctx.handle.begin_transfer(TransferKind::Get, name.as_str(), Some(size), sent);
                        session.current = Some(Item::Write(WriteItem {
                            name,
                            file,
                            size,
                            mtime_ns,
                            md5,
                            sent,
                            unanswered,
                            next: None,
                            reading: None,
                            finished_sent,
                            digests: None,
                        }));
                    }
                    Err(e) => {
                        // Replaced meanwhile: the client drops what it has; the newer version is queued.
                        tracing::info!(client = %client, "sync: push of {name} cannot continue ({e}); aborting it");
                        queue_message(conn, &Message::AbortFile { md5, name });
                        session.expect.push_back(Expect::Abort);
                        hub.clients().set_pushing(&client, None);
                    }
                }
            }
        }
        Some(session)
    }

    fn park_state(&self) -> PushState {
        let current = self.current.as_ref().and_then(|item| match item {
            // Let go of before parking (`let_go_of_relay`).
            Item::Relay(_) => None,
            Item::Delete(name) => Some(PushItemState::Delete { name: name.to_string() }),
            Item::Write(w) => Some(PushItemState::Write {
                name: w.name.to_string(),
                size: w.size,
                mtime_ns: w.mtime_ns,
                md5: w.md5,
                sent: w.sent,
                unanswered: w.unanswered.as_ref().map(|(data, _)| data.len() as u32),
                finished_sent: w.finished_sent,
            }),
        });
        PushState {
            format: STATE_FORMAT,
            conn_id: self.conn_id,
            client: self.client.as_ref().map(|c| c.to_string()),
            current,
            expect: self.expect.iter().copied().collect(),
            swallow: self.reader.swallow(),
        }
    }

    async fn serve(&mut self, conn: &mut Conn, ctx: &mut SessionCtx) -> End {
        let limits = *self.hub.limits();
        let config = self.hub.config.clone();
        let high_water = read_high_water(&limits);
        loop {
            loop {
                match self.reader.next(conn.read_buf(), &limits) {
                    Next::Incomplete => break,
                    Next::Fatal(error) => {
                        tracing::debug!("sync push connection: {error}");
                        return End::Close;
                    }
                    Next::Refused { error, .. } => {
                        if self.client.is_none() {
                            return End::Close;
                        }
                        tracing::debug!(client = ?self.client, "sync: refused a message on the push connection: {error}");
                    }
                    Next::Message(message) => {
                        if self.handle(message, conn, ctx).is_err() {
                            return End::Close;
                        }
                    }
                }
            }
            let pausing = ctx.pause.requested().is_some();
            if pausing {
                self.let_go_of_relay(conn, ctx);
                return End::Park;
            }
            self.advance(conn, ctx).await;
            let idle = self.current.is_none() && self.client.is_some();
            let reading = matches!(&self.current, Some(Item::Write(w)) if w.reading.is_some());
            let relay_pending =
                matches!(&self.current, Some(Item::Relay(r)) if r.tap.outcome() == RelayOutcome::Pending);
            let relay_chunk =
                relay_pending && matches!(&self.current, Some(Item::Relay(r)) if r.next.is_none() && r.tap.is_fed());
            let want_read = conn.read_buf().len() < high_water;
            let timer = (self.last_rx + config.idle_timeout).min(self.last_tx + config.keepalive);
            let wake = self.wake.clone();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    tracing::debug!(client = ?self.client, "sync: push connection ended by the server");
                    return End::Close;
                }
                _ = ctx.pause.wait() => {}
                event = current_event(&mut self.current, relay_chunk), if reading || relay_chunk || relay_pending => {
                    match event {
                        CurrentEvent::Read(read) => {
                            if self.read_landed(read, conn, ctx).is_err() {
                                return End::Close;
                            }
                        }
                        CurrentEvent::Relay(TapEvent::Chunk(chunk)) => {
                            if let (Some(Item::Relay(r)), Some(chunk)) = (self.current.as_mut(), chunk) {
                                r.next = Some(chunk);
                            }
                        }
                        CurrentEvent::Relay(TapEvent::Settled) => {}
                    }
                }
                _ = wake.notified(), if idle => {}
                event = conn.pump(want_read), if want_read || conn.has_output() => match event {
                    Ok(event) if event.peer_closed() => return End::Close,
                    Ok(event) => {
                        if event.got_input() {
                            self.last_rx = Instant::now();
                        }
                    }
                    Err(e) => {
                        tracing::debug!("sync push connection failed: {e}");
                        return End::Close;
                    }
                },
                _ = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if now >= self.last_rx + config.idle_timeout {
                        tracing::info!(client = ?self.client, "sync: push connection idle for {:?}; closing", config.idle_timeout);
                        return End::Close;
                    }
                    if self.client.is_some() && now >= self.last_tx + config.keepalive {
                        self.send(conn, &Message::Status(StatusCode::KeepAlive));
                    }
                }
            }
        }
    }

    /// The current write's read-ahead is done: its chunk goes next, or, if the file cannot be read,
    /// the push is aborted. `Err`: the read task failed (the connection is closed).
    fn read_landed(
        &mut self,
        read: Result<io::Result<(Bytes, Md5Sum)>, tokio::task::JoinError>,
        conn: &mut Conn,
        ctx: &SessionCtx,
    ) -> Result<(), ()> {
        let Some(Item::Write(w)) = self.current.as_mut() else { return Ok(()) };
        w.reading = None;
        match read {
            Ok(Ok(chunk)) => w.next = Some(chunk),
            Ok(Err(e)) => {
                tracing::warn!(client = ?self.client, "sync: cannot read {} to push it: {e}", w.name);
                let (md5, name) = (w.md5, w.name.clone());
                self.abort_current(conn, ctx, md5, name);
            }
            Err(e) => {
                tracing::error!("sync: read task failed: {e}");
                return Err(());
            }
        }
        Ok(())
    }

    fn send(&mut self, conn: &mut Conn, message: &Message) {
        queue_message(conn, message);
        self.last_tx = Instant::now();
    }

    /// Sends the unanswered chunk of `name` again (the client asked for a resend), if there is one.
    fn resend(&mut self, conn: &mut Conn, name: SafeName, chunk: Option<RelayChunk>) {
        if let Some((data, md5)) = chunk {
            self.send(conn, &Message::FileChunk { md5, name, data });
            self.expect.push_back(Expect::Chunk);
        }
    }

    fn handle(&mut self, message: Message, conn: &mut Conn, ctx: &SessionCtx) -> Result<(), ()> {
        let Some(client) = self.client.clone() else { return self.hello(message, conn) };
        let Message::Status(code) = message else {
            tracing::warn!(client = %client, "sync: {} on the push connection; closing", message.message_type().name());
            return Err(());
        };
        if code == StatusCode::KeepAlive {
            return Ok(());
        }
        let Some(expected) = self.expect.pop_front() else {
            tracing::debug!(client = %client, "sync: unexpected status {} on the push connection", code.description());
            return Ok(());
        };
        match (expected, self.current.as_mut()) {
            (Expect::Chunk, Some(Item::Write(w))) => match code {
                StatusCode::Ok => chunk_accepted(&mut w.unanswered, &mut w.sent, ctx),
                StatusCode::ResendChecksum | StatusCode::ResendChunkSize => {
                    if let Some((data, md5)) = w.unanswered.as_mut() {
                        // A kept digest may not be of the bytes read (the file was replaced by hand
                        // under the tree): the resend carries the digest of what is sent.
                        if code == StatusCode::ResendChecksum {
                            *md5 = Md5Sum::of(data);
                        }
                    }
                    let (name, chunk) = (w.name.clone(), w.unanswered.clone());
                    self.resend(conn, name, chunk);
                }
                refusal => {
                    tracing::info!(client = %client, "sync: client refused {}: {}", w.name, refusal.description());
                    self.end_current(ctx, false);
                }
            },
            (Expect::Chunk, Some(Item::Relay(r))) => match code {
                StatusCode::Ok => chunk_accepted(&mut r.unanswered, &mut r.sent, ctx),
                StatusCode::ResendChecksum | StatusCode::ResendChunkSize => {
                    let (name, chunk) = (r.tap.name.clone(), r.unanswered.clone());
                    self.resend(conn, name, chunk);
                }
                refusal => {
                    tracing::info!(client = %client, "sync: client refused {}: {}", r.tap.name, refusal.description());
                    self.hub.abandon_relay(&client, &r.tap, false);
                    self.end_current(ctx, false);
                }
            },
            (Expect::Finished, Some(Item::Write(w))) => {
                if code != StatusCode::Ok {
                    tracing::info!(client = %client, "sync: client refused {}: {}", w.name, code.description());
                }
                self.end_current(ctx, code == StatusCode::Ok);
            }
            (Expect::Delete, Some(Item::Delete(_))) => self.end_current(ctx, true),
            (Expect::Abort, _) => {}
            (expected, _) => {
                tracing::debug!(client = %client, "sync: status {} for a {expected:?} that is no longer current", code.description());
            }
        }
        Ok(())
    }

    /// The first message: a hello for the push role attaches this connection to its client.
    fn hello(&mut self, message: Message, conn: &mut Conn) -> Result<(), ()> {
        let client = accept_hello(message, Role::Push, conn)?;
        let slot = ConnSlot { id: self.conn_id, cancel: self.cancel.clone() };
        match self.hub.clients().attach(&client, Role::Push, slot) {
            Ok((wake, replaced)) => {
                self.wake = wake;
                if let Some(old) = replaced {
                    old.cancel.cancel();
                }
            }
            Err(e) => {
                tracing::warn!(client = %client, "sync: {e}; refusing the client");
                return Err(());
            }
        }
        self.send(conn, &Message::Status(StatusCode::Ok));
        self.client = Some(client);
        Ok(())
    }

    /// Moves the current push on (next chunk, or Finished), or starts the next queued one.
    async fn advance(&mut self, conn: &mut Conn, ctx: &SessionCtx) {
        let Some(client) = self.client.clone() else { return };
        let chunk_size = self.hub.limits().max_chunk_size as u64;
        loop {
            match self.current.as_mut() {
                Some(Item::Write(w)) => {
                    if w.unanswered.is_some() || w.finished_sent {
                        // Read ahead while the client checks the chunk in flight.
                        if w.next.is_none() && w.reading.is_none() && !w.finished_sent {
                            let at = w.sent + w.unanswered.as_ref().map_or(0, |(d, _)| d.len() as u64);
                            if at < w.size {
                                let len = chunk_size.min(w.size - at);
                                w.reading = Some(read_chunk(w.file.clone(), at, len, known_md5(w, at, len)));
                            }
                        }
                        return;
                    }
                    if w.sent >= w.size {
                        let message = Message::Finished { md5: w.md5, name: w.name.clone() };
                        w.finished_sent = true;
                        self.send(conn, &message);
                        self.expect.push_back(Expect::Finished);
                        return;
                    }
                    let Some((data, md5)) = w.next.take() else {
                        if w.reading.is_none() {
                            let len = chunk_size.min(w.size - w.sent);
                            w.reading = Some(read_chunk(w.file.clone(), w.sent, len, known_md5(w, w.sent, len)));
                        }
                        return;
                    };
                    let message = Message::FileChunk { md5, name: w.name.clone(), data: data.clone() };
                    w.unanswered = Some((data, md5));
                    ctx.registry.add_sent(message.encoded_len() as u64);
                    self.send(conn, &message);
                    self.expect.push_back(Expect::Chunk);
                }
                Some(Item::Relay(r)) => {
                    if r.unanswered.is_some() {
                        return;
                    }
                    match r.tap.outcome() {
                        RelayOutcome::Pending => {
                            let Some((data, md5)) = r.next.take() else { return };
                            let message = Message::FileChunk { md5, name: r.tap.name.clone(), data: data.clone() };
                            r.unanswered = Some((data, md5));
                            r.started = true;
                            ctx.registry.add_sent(message.encoded_len() as u64);
                            self.send(conn, &message);
                            self.expect.push_back(Expect::Chunk);
                            return;
                        }
                        RelayOutcome::Aborted => {
                            tracing::debug!(client = %client, "sync: the upload of {} relayed here failed", r.tap.name);
                            let (name, started) = (r.tap.name.clone(), r.started);
                            self.hub.abandon_relay(&client, &r.tap, false);
                            if started {
                                self.abort_current(conn, ctx, Md5Sum::ZERO, name);
                            } else {
                                self.end_current(ctx, false);
                            }
                        }
                        committed @ RelayOutcome::Committed { .. } => {
                            let Some(Item::Relay(r)) = self.current.take() else { return };
                            let (hub, name) = (self.hub.clone(), r.tap.name.clone());
                            let opened =
                                tokio::task::spawn_blocking(move || open_committed(&hub, &name, committed)).await;
                            match opened {
                                Ok(Some(mut item)) => {
                                    // The relay got this far; the rest comes from the committed file.
                                    tracing::debug!(
                                        client = %client,
                                        "sync: {} committed; {} of {} bytes relayed, the rest from the file",
                                        item.name,
                                        r.sent,
                                        item.size
                                    );
                                    self.hub.relay_to_push(&client, &r.tap);
                                    item.sent = r.sent;
                                    item.next = r.next;
                                    self.current = Some(Item::Write(item));
                                }
                                _ => {
                                    // Replaced already: the newer version is queued the usual way.
                                    self.hub.abandon_relay(&client, &r.tap, false);
                                    let name = r.tap.name.clone();
                                    self.current = Some(Item::Relay(r));
                                    self.abort_current(conn, ctx, Md5Sum::ZERO, name);
                                }
                            }
                        }
                    }
                }
                Some(Item::Delete(_)) => return,
                None => {
                    if let Some(tap) = self.hub.take_relay(&client) {
                        tracing::debug!(client = %client, "sync: relaying {} as it is uploaded", tap.name);
                        ctx.handle.begin_transfer(TransferKind::Get, tap.name.as_str(), None, 0);
                        let item = RelayItem { tap, sent: 0, unanswered: None, next: None, started: false };
                        self.current = Some(Item::Relay(item));
                        continue;
                    }
                    let Some(update) = self.hub.clients().pop(&client) else { return };
                    let hub = self.hub.clone();
                    let name = update.name.clone();
                    let started = tokio::task::spawn_blocking(move || start(&hub, &name)).await;
                    match started {
                        Ok(Started::Write(item)) => {
                            ctx.handle.begin_transfer(TransferKind::Get, item.name.as_str(), Some(item.size), 0);
                            self.current = Some(Item::Write(item));
                        }
                        Ok(Started::Delete) => {
                            let message = Message::DeleteFile { md5: Md5Sum::ZERO, name: update.name.clone() };
                            self.send(conn, &message);
                            self.expect.push_back(Expect::Delete);
                            self.current = Some(Item::Delete(update.name));
                        }
                        Ok(Started::Skip) | Err(_) => self.hub.clients().set_pushing(&client, None),
                    }
                }
            }
        }
    }

    /// Gives up the current push: the client is told to drop what it has of the file.
    fn abort_current(&mut self, conn: &mut Conn, ctx: &SessionCtx, md5: Md5Sum, name: SafeName) {
        self.send(conn, &Message::AbortFile { md5, name });
        self.expect.push_back(Expect::Abort);
        self.end_current(ctx, false);
    }

    fn end_current(&mut self, ctx: &SessionCtx, ok: bool) {
        if let Some(item) = self.current.take() {
            if let Some(client) = &self.client {
                self.hub.clients().set_pushing(client, None);
                if ok {
                    tracing::debug!(client = %client, "sync: pushed {}", item.name());
                }
            }
            if matches!(item, Item::Write(_) | Item::Relay(_)) {
                ctx.handle.end_transfer(ok, (!ok).then(|| "refused by the client".to_string()));
            }
        }
    }

    /// Lets go of a relay in progress (before parking): the client drops what it has of the file,
    /// and gets it the usual way once it is committed.
    fn let_go_of_relay(&mut self, conn: &mut Conn, ctx: &SessionCtx) {
        let (Some(client), Some(Item::Relay(r))) = (self.client.clone(), self.current.as_ref()) else { return };
        self.hub.abandon_relay(&client, &r.tap, true);
        let (name, started) = (r.tap.name.clone(), r.started);
        if started {
            self.abort_current(conn, ctx, Md5Sum::ZERO, name);
        } else {
            self.end_current(ctx, false);
        }
    }

    fn close(&mut self) {
        if let (Some(client), Some(Item::Relay(r))) = (&self.client, &self.current) {
            self.hub.abandon_relay(client, &r.tap, true);
        }
        if let Some(client) = &self.client {
            self.hub.connection_ended(client, Role::Push, self.conn_id);
            tracing::info!(client = %client, "sync: client's push connection closed");
        }
    }
}

/// Looks a popped entry up: the roster's current state of the file decides what is sent (a queued
/// entry may be older than the roster by now), and the file opened is checked against the roster.
fn start(hub: &SyncHub, name: &SafeName) -> Started {
    let entry = hub.roster().get(name).copied();
    let Some(entry) = entry else { return Started::Skip };
    let EntryState::File { size, md5 } = entry.state else { return Started::Delete };
    let (file, _) = match hub.store.open_file(name) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::debug!("sync: {name} is not there to push: {e}");
            return Started::Skip;
        }
    };
    let Ok(meta) = file.metadata() else { return Started::Skip };
    let mtime = mtime_ns(&meta);
    let mut digests = None;
    let md5 = if meta.len() == size && mtime == entry.mtime_ns {
        let chunk_size = hub.limits().max_chunk_size;
        digests = hub.digests(name, DigestedVersion { size, md5, chunk_size });
        md5
    } else {
        // Replaced between the roster read and the open: digest what was opened.
        match md5_of(&file, meta.len()) {
            Ok(md5) => md5,
            Err(e) => {
                tracing::warn!("sync: cannot read {name}: {e}");
                return Started::Skip;
            }
        }
    };
    Started::Write(WriteItem::starting(name.clone(), file, meta.len(), mtime, md5, digests))
}

/// Opens the file a relay carried, once committed as `outcome` says, to push the rest of it from
/// there. `None` if the file is not that version any more.
fn open_committed(hub: &SyncHub, name: &SafeName, outcome: RelayOutcome) -> Option<WriteItem> {
    let RelayOutcome::Committed { size, md5, mtime_ns: mtime, .. } = outcome else { return None };
    let (file, _) = hub.store.open_file(name).ok()?;
    let meta = file.metadata().ok()?;
    if meta.len() != size || mtime_ns(&meta) != mtime {
        return None;
    }
    let chunk_size = hub.limits().max_chunk_size;
    let digests = hub.digests(name, DigestedVersion { size, md5, chunk_size });
    Some(WriteItem::starting(name.clone(), file, size, mtime, md5, digests))
}

/// The client took the unanswered chunk: it counts as sent.
fn chunk_accepted(unanswered: &mut Option<RelayChunk>, sent: &mut u64, ctx: &SessionCtx) {
    if let Some((data, _)) = unanswered.take() {
        *sent += data.len() as u64;
        ctx.handle.progress(*sent);
    }
}

/// Reopens a parked push's file; it must be the same (size and mtime). Re-reads the unanswered chunk,
/// which a resend would need.
async fn reopen(
    hub: &Arc<SyncHub>,
    name: &SafeName,
    size: u64,
    mtime: i64,
    sent: u64,
    unanswered: Option<u32>,
) -> io::Result<(Arc<File>, Option<(Bytes, Md5Sum)>)> {
    let (hub, name) = (hub.clone(), name.clone());
    let task = tokio::task::spawn_blocking(move || {
        let (file, _) = hub.store.open_file(&name).map_err(io::Error::other)?;
        let meta = file.metadata()?;
        if meta.len() != size || mtime_ns(&meta) != mtime {
            return Err(io::Error::other("the file changed"));
        }
        let chunk = match unanswered {
            Some(len) => Some(read_at(&file, sent, u64::from(len), None)?),
            None => None,
        };
        Ok((Arc::new(file), chunk))
    });
    task.await.map_err(io::Error::other)?
}

/// The kept digest of the chunk of `w` at `at`, `len` bytes long, if there is one.
fn known_md5(w: &WriteItem, at: u64, len: u64) -> Option<Md5Sum> {
    w.digests.as_ref().and_then(|d| d.at(at, len))
}

fn read_chunk(file: Arc<File>, at: u64, len: u64, known: Option<Md5Sum>) -> ReadTask {
    tokio::task::spawn_blocking(move || read_at(&file, at, len, known))
}

/// `len` bytes at `at`, and their md5: `known` if given (kept from the upload), else digested.
fn read_at(file: &File, at: u64, len: u64, known: Option<Md5Sum>) -> io::Result<(Bytes, Md5Sum)> {
    let mut buf = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buf, at)?;
    let md5 = known.unwrap_or_else(|| Md5Sum::of(&buf));
    Ok((buf.freeze(), md5))
}

fn md5_of(file: &File, len: u64) -> io::Result<Md5Sum> {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Md5Sum(hasher.finalize().into()))
}

/// What the current push waited for.
enum CurrentEvent {
    /// A write's read-ahead is done.
    Read(Result<io::Result<(Bytes, Md5Sum)>, tokio::task::JoinError>),
    /// A relay's next chunk or outcome.
    Relay(TapEvent),
}

/// Waits for the current push: a write's read-ahead; a relay's next chunk (if `want_chunk`) or its
/// upload's outcome.
async fn current_event(current: &mut Option<Item>, want_chunk: bool) -> CurrentEvent {
    match current {
        Some(Item::Write(WriteItem { reading: Some(task), .. })) => CurrentEvent::Read(task.await),
        Some(Item::Relay(r)) => CurrentEvent::Relay(r.tap.next_event(want_chunk).await),
        _ => std::future::pending().await,
    }
}
