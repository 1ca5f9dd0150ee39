//! A backup node's feed: after its inventory, the connection carries the
//! server's live uploads and catch-up to the node, and the node's
//! confirmations back.
//!
//! One loop, three sources of output, in this order of priority:
//!
//! 1. live items from the node's [`FeedQueue`] (uploads wait on them);
//! 2. catch-up, one file at a time: a full comparison of the store with
//!    what the node holds when asked (`rescan`), then each name to check,
//!    send or delete, read from the stored file in chunks;
//! 3. `PING` when the feed has been quiet for a while.
//!
//! Output stops being produced while more than [`OUTPUT_HIGH_WATER`] is
//! unwritten, so a slow node fills its queue, where uploads see it and stop
//! waiting for it after `backup.timeout_ms`. A pause (live upgrade) drops
//! whatever is queued and unfinished: the node discards its unfinished
//! transfers at `PAUSED`, and the resumed feed compares the whole store
//! again.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Conn, SessionCtx};
use ferry_files::{FileEntry, FileMeta, SafeName, StoreError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::TransferService;
use super::get::{join, read_chunk};
use super::session::{Step, announce_resume, closed_by_peer, fail, frame_error, park_transfer};
use super::state::{FeedState, Phase};
use crate::backup::held::{Awaiting, Held};
use crate::backup::line::{FeedLine, NodeLine, info_text};
use crate::backup::node_id::NodeId;
use crate::backup::plan::plan;
use crate::backup::queue::{FeedItem, FeedQueue};
use crate::backup::registry::Node;
use crate::command::MAX_COMMAND_BYTES;
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::{queue_frame, take_frame};

/// Unwritten output at which the feed stops producing more.
const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// A `PING` this often keeps an idle feed alive through the server's idle
/// timeout and lets the node notice a server that vanished.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Most file bytes the feed joins into one BACKUPDATA frame out of an
/// upload's queued pieces: a divisor of the node's write block, and far
/// below the frame limit a node accepts (16 MiB).
const JOINED_FRAME: usize = 1 << 20;
/// Most pieces joined into one frame (each is one iovec of the write).
const MAX_JOINED_PIECES: usize = 64;
/// Failed commits of one name before it waits for the next full comparison.
const MAX_FAILURES: u32 = 3;
/// Commits and deletes sent and not yet confirmed, at which the feed sends
/// nothing more until the node catches up with its confirmations (so a node
/// that reads but never confirms cannot grow the server's memory).
const MAX_AWAITING: usize = 1024;

/// A catch-up step that ran off the session task.
enum Job {
    Listed(Result<Vec<FileEntry>, String>),
    Opened { name: SafeName, result: Result<Option<(Arc<File>, FileMeta)>, String> },
    Compared { name: SafeName, file: Arc<File>, meta: FileMeta, hash: Result<blake3::Hash, String> },
    Absent { name: String, absent: Result<bool, String> },
    Read { transfer: u64, result: Result<Chunk, String> },
}

struct Chunk {
    data: Bytes,
    hasher: Box<blake3::Hasher>,
    /// After the last chunk: the etag the name has now (`None`: gone).
    now: Option<Option<String>>,
}

/// A stored file being sent to the node.
struct Sending {
    transfer: u64,
    name: SafeName,
    file: Arc<File>,
    size: u64,
    etag: String,
    sent: u64,
    /// With the read in flight while one is.
    hasher: Option<Box<blake3::Hasher>>,
}

struct Feed {
    svc: Arc<TransferService>,
    id: NodeId,
    node: Arc<Node>,
    queue: Arc<FeedQueue>,
    job: Option<JoinHandle<Job>>,
    sending: Option<Sending>,
    /// The name catch-up works on, and whether a live commit of it went to
    /// the node since (then catch-up's older view of it must not follow).
    current: Option<(String, bool)>,
    failures: HashMap<String, u32>,
}

pub(super) async fn run(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    mut st: FeedState,
    resumed: bool,
) -> Step {
    let Some(id) = NodeId::parse(&st.node) else {
        return fail(conn, ErrorCode::Internal, "parked backup feed holds an invalid node id");
    };
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    let awaiting = st.awaiting.drain(..).map(|a| (a.transfer, a)).collect();
    let held = std::mem::take(&mut st.held);
    let held_count = held.len() as u64;
    let connected = match svc.backups.connect(&id, peer.clone(), held, awaiting, st.since_unix_ms) {
        Ok(connected) => connected,
        Err(msg) => return fail(conn, ErrorCode::Busy, &msg),
    };
    {
        let mut n = connected.node.lock();
        n.files_mirrored = st.files_mirrored;
        n.bytes_mirrored = st.bytes_mirrored;
    }
    if resumed {
        announce_resume(conn);
        tracing::info!(node = %id, %peer, "backup feed resumed");
    } else {
        queue_frame(conn, &Frame::Info(FeedLine::Registered { node: id.to_string(), held: held_count }.to_string()));
        tracing::info!(node = %id, %peer, held = held_count, "backup node registered");
    }
    let mut feed = Feed {
        svc: svc.clone(),
        id,
        node: connected.node,
        queue: connected.queue,
        job: None,
        sending: None,
        current: None,
        failures: HashMap::new(),
    };
    let step = feed.run(conn, ctx, &mut st).await;
    if let Some(job) = feed.job.take() {
        job.abort();
    }
    svc.backups.disconnect(&feed.node, connected.session);
    if !matches!(step, Step::Park(_)) {
        tracing::info!(node = %feed.id, "backup node disconnected");
    }
    step
}

impl Feed {
    async fn run(&mut self, conn: &mut Conn, ctx: &mut SessionCtx, st: &mut FeedState) -> Step {
        let max_frame = self.svc.config.max_frame_bytes;
        let idle_for = Duration::from_secs(self.svc.config.idle_timeout_secs);
        let rescan_every = Duration::from_secs(self.svc.backups.config().rescan_secs);
        let mut deadline = Instant::now() + idle_for;
        let mut next_ping = Instant::now() + HEARTBEAT;
        let mut next_rescan = Instant::now() + rescan_every;
        loop {
            if let Some(reason) = ctx.pause.requested() {
                self.snapshot(st);
                return park_transfer(conn, Phase::Backup(st.clone()), reason);
            }
            if self.queue.is_closed() {
                return fail(conn, ErrorCode::Busy, "replaced by a newer connection of this backup node");
            }
            let saturated = self.node.lock().awaiting.len() >= MAX_AWAITING;
            if !saturated {
                self.send_live(conn);
                if self.job.is_none() && conn.pending_out() < OUTPUT_HIGH_WATER {
                    self.catch_up(conn);
                }
            }
            self.check_in_sync();
            tokio::select! {
                biased;
                _ = ctx.pause.wait() => {}
                _ = self.queue.ready() => {}
                done = join(&mut self.job), if self.job.is_some() => {
                    self.job = None;
                    match done {
                        Ok(done) => self.finish_job(conn, done),
                        Err(e) => return fail(conn, ErrorCode::Internal, &format!("backup task failed: {e}")),
                    }
                }
                event = conn.pump(true) => match event {
                    Ok(event) => {
                        if event.got_input() {
                            deadline = Instant::now() + idle_for;
                        }
                        if let Some(step) = self.read_lines(conn, max_frame) {
                            return step;
                        }
                        if event.peer_closed() {
                            return closed_by_peer(conn);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(node = %self.id, "backup node connection failed: {e}");
                        return Step::Close;
                    }
                },
                _ = tokio::time::sleep_until(next_ping) => {
                    queue_frame(conn, &Frame::Info(FeedLine::Ping.to_string()));
                    next_ping = Instant::now() + HEARTBEAT;
                }
                _ = tokio::time::sleep_until(next_rescan) => {
                    // Names that kept failing get another chance now.
                    self.failures.clear();
                    self.node.lock().rescan = true;
                    next_rescan = Instant::now() + rescan_every;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return fail(conn, ErrorCode::Timeout, &format!("nothing from the node for {}s", idle_for.as_secs()));
                }
            }
        }
    }

    /// What the resumed session needs: the node's confirmed files and
    /// what awaits confirmation.
    fn snapshot(&self, st: &mut FeedState) {
        let n = self.node.lock();
        st.held = n.held.clone();
        st.awaiting = n.awaiting.values().cloned().collect();
        st.files_mirrored = n.files_mirrored;
        st.bytes_mirrored = n.bytes_mirrored;
    }

    /// Writes live items while the socket keeps up.
    fn send_live(&mut self, conn: &mut Conn) {
        while conn.pending_out() < OUTPUT_HIGH_WATER {
            let Some(item) = self.queue.pop() else { break };
            match item {
                FeedItem::Begin { transfer, name, size } => {
                    queue_frame(conn, &Frame::BackupInfo { transfer, info: info_text(&name, size) });
                }
                FeedItem::Data { transfer, offset, data } => self.send_data(conn, transfer, offset, data),
                FeedItem::Done { transfer, name, size, blake3, etag } => {
                    if let Some((current, superseded)) = &mut self.current
                        && *current == name
                    {
                        *superseded = true;
                    }
                    let line = FeedLine::Done { transfer, size, blake3: blake3.clone(), etag: etag.clone() };
                    queue_frame(conn, &Frame::Info(line.to_string()));
                    let file = Held { size, blake3, etag: Some(etag) };
                    self.node.lock().awaiting.insert(transfer, Awaiting { transfer, name, file: Some(file) });
                }
                FeedItem::Abort { transfer, .. } => {
                    queue_frame(conn, &Frame::Info(FeedLine::Abort { transfer }.to_string()));
                }
            }
        }
        if self.queue.take_room_signal() {
            self.svc.backups.bump();
        }
    }

    /// Queues one BACKUPDATA frame of `data` and of the pieces queued
    /// right behind it that continue it, up to [`JOINED_FRAME`] bytes and
    /// not across a multiple of it in the file. An upload's pieces are the
    /// client's frames (256 KiB by default); joined, a node receiving
    /// directly reads one header per 1 MiB instead of four, and a payload
    /// never straddles two of its write blocks (multiples of 1 MiB).
    fn send_data(&mut self, conn: &mut Conn, transfer: u64, offset: u64, data: Bytes) {
        let boundary = (offset / JOINED_FRAME as u64 + 1) * JOINED_FRAME as u64;
        let mut len = data.len();
        let mut pieces = vec![data];
        while pieces.len() < MAX_JOINED_PIECES {
            let at = offset + len as u64;
            let room = boundary.saturating_sub(at) as usize;
            if room == 0 {
                break;
            }
            let Some(next) = self.queue.pop_following(transfer, at, room) else { break };
            len += next.len();
            pieces.push(next);
        }
        assert!(pieces.len() == 1 || len <= JOINED_FRAME, "joined a BACKUPDATA payload of {len} bytes");
        conn.queue(Frame::backup_data_header(transfer, offset, len));
        for piece in pieces {
            conn.queue(piece);
        }
    }

    /// Starts the next catch-up step, if there is one.
    fn catch_up(&mut self, conn: &mut Conn) {
        if let Some(s) = &mut self.sending {
            let Some(hasher) = s.hasher.take() else {
                tracing::error!(node = %self.id, "catch-up of {} lost its hash state", s.name);
                queue_frame(conn, &Frame::Info(FeedLine::Abort { transfer: s.transfer }.to_string()));
                self.sending = None;
                self.current = None;
                return;
            };
            let len = (self.svc.config.chunk_bytes as u64).min(s.size - s.sent) as usize;
            let last = s.sent + len as u64 >= s.size;
            let (file, offset, transfer) = (s.file.clone(), s.sent, s.transfer);
            let (store, name) = (self.svc.store.clone(), s.name.clone());
            self.job = Some(tokio::spawn(async move {
                let read = tokio::task::spawn_blocking(move || {
                    let data = read_chunk(&file, offset, len).map_err(|e| format!("cannot read {name}: {e}"))?;
                    let mut hasher = hasher;
                    hasher.update(&data);
                    let now = last.then(|| store.stat(&name).ok().map(|m| m.etag.to_string()));
                    Ok(Chunk { data, hasher, now })
                });
                let result = read.await.unwrap_or_else(|e| Err(format!("read task failed: {e}")));
                Job::Read { transfer, result }
            }));
            return;
        }
        let mut n = self.node.lock();
        if n.rescan {
            n.rescan = false;
            drop(n);
            let (store, max) = (self.svc.store.clone(), self.svc.backups.max_files());
            self.job = Some(tokio::spawn(async move {
                let listed = tokio::task::spawn_blocking(move || store.list(max).map_err(|e| e.to_string())).await;
                Job::Listed(listed.unwrap_or_else(|e| Err(format!("listing task failed: {e}"))))
            }));
            return;
        }
        if let Some(name) = n.delete.pop_first() {
            drop(n);
            self.current = Some((name.clone(), false));
            let max_name = self.svc.config.max_name_bytes;
            let store = self.svc.store.clone();
            self.job = Some(tokio::spawn(async move {
                let lookup = name.clone();
                let absent = tokio::task::spawn_blocking(move || match SafeName::parse(&lookup, max_name) {
                    // A name no client could store is not the server's.
                    Err(_) => Ok(true),
                    Ok(safe) => match store.stat(&safe) {
                        Ok(_) => Ok(false),
                        Err(StoreError::NotFound(_) | StoreError::NotAFile(_)) => Ok(true),
                        Err(e) => Err(e.to_string()),
                    },
                })
                .await;
                Job::Absent { name, absent: absent.unwrap_or_else(|e| Err(format!("stat task failed: {e}"))) }
            }));
            return;
        }
        while let Some((name, _)) = n.work.pop_first() {
            let Ok(safe) = SafeName::parse(&name, self.svc.config.max_name_bytes) else { continue };
            drop(n);
            self.current = Some((name, false));
            let store = self.svc.store.clone();
            self.job = Some(tokio::spawn(async move {
                let lookup = safe.clone();
                let opened = tokio::task::spawn_blocking(move || match store.open_file(&lookup) {
                    Ok((file, meta)) => Ok(Some((Arc::new(file), meta))),
                    Err(StoreError::NotFound(_) | StoreError::NotAFile(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                })
                .await;
                Job::Opened { name: safe, result: opened.unwrap_or_else(|e| Err(format!("open task failed: {e}"))) }
            }));
            return;
        }
    }

    /// The catch-up is done with its current name; whether a live commit
    /// of it went out meanwhile.
    fn take_current(&mut self) -> bool {
        self.current.take().is_some_and(|(_, superseded)| superseded)
    }

    fn finish_job(&mut self, conn: &mut Conn, job: Job) {
        match job {
            Job::Listed(Ok(entries)) => {
                let max = self.svc.backups.max_files();
                let mut n = self.node.lock();
                // Sent and unconfirmed counts as held: no second copy.
                let mut known = n.held.clone();
                for a in n.awaiting.values() {
                    match &a.file {
                        Some(file) => known.insert(a.name.clone(), file.clone()),
                        None => known.remove(&a.name),
                    };
                }
                let plan = plan(&entries, &known);
                let (files, bytes) = plan.lag();
                if files > 0 {
                    tracing::info!(node = %self.id, files, bytes, "backup node catching up");
                }
                n.merge(plan, max);
            }
            Job::Listed(Err(e)) => tracing::warn!(node = %self.id, "cannot list the store for a backup node: {e}"),
            Job::Absent { name, absent } => {
                let superseded = self.take_current();
                match absent {
                    Ok(true) if !superseded => {
                        let transfer = self.svc.backups.next_transfer();
                        let line = FeedLine::Delete { transfer, name: name.clone() };
                        queue_frame(conn, &Frame::Info(line.to_string()));
                        self.node.lock().awaiting.insert(transfer, Awaiting { transfer, name, file: None });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(node = %self.id, "cannot check {name} for a backup node: {e}"),
                }
            }
            Job::Opened { name, result } => match result {
                Ok(None) => {
                    self.take_current();
                    let mut n = self.node.lock();
                    if n.held.contains_key(name.as_str()) {
                        n.delete.insert(name.as_str().to_string());
                    }
                }
                Ok(Some((file, meta))) => {
                    let held = self.node.lock().held.get(name.as_str()).cloned();
                    match held {
                        Some(h) if h.etag.as_deref() == Some(meta.etag.as_str()) => {
                            self.take_current();
                        }
                        Some(h) if h.size == meta.size => {
                            let hashes = self.svc.hashes.clone();
                            self.job = Some(tokio::spawn(async move {
                                let hash = hashes.hash(&name, &meta.etag, file.clone()).await;
                                Job::Compared { name, file, meta, hash }
                            }));
                        }
                        _ => self.start_sending(conn, name, file, meta),
                    }
                }
                Err(e) => {
                    self.take_current();
                    tracing::warn!(node = %self.id, "cannot open {name} for a backup node: {e}");
                }
            },
            Job::Compared { name, file, meta, hash } => match hash {
                Ok(hash) => {
                    let same = {
                        let mut n = self.node.lock();
                        match n.held.get_mut(name.as_str()) {
                            Some(h) if h.blake3 == hash.to_hex().as_str() => {
                                h.etag = Some(meta.etag.to_string());
                                true
                            }
                            _ => false,
                        }
                    };
                    if same {
                        self.take_current();
                    } else {
                        self.start_sending(conn, name, file, meta);
                    }
                }
                Err(e) => {
                    self.take_current();
                    tracing::warn!(node = %self.id, "cannot hash {name} for a backup node: {e}");
                }
            },
            Job::Read { transfer, result } => self.sent_chunk(conn, transfer, result),
        }
    }

    fn start_sending(&mut self, conn: &mut Conn, name: SafeName, file: Arc<File>, meta: FileMeta) {
        let transfer = self.svc.backups.next_transfer();
        queue_frame(conn, &Frame::BackupInfo { transfer, info: info_text(name.as_str(), Some(meta.size)) });
        self.sending = Some(Sending {
            transfer,
            name,
            file,
            size: meta.size,
            etag: meta.etag.to_string(),
            sent: 0,
            hasher: Some(Box::new(blake3::Hasher::new())),
        });
    }

    fn sent_chunk(&mut self, conn: &mut Conn, transfer: u64, result: Result<Chunk, String>) {
        let Some(s) = self.sending.as_mut().filter(|s| s.transfer == transfer) else { return };
        let chunk = match result {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::warn!(node = %self.id, "catch-up of {} failed: {e}", s.name);
                queue_frame(conn, &Frame::Info(FeedLine::Abort { transfer }.to_string()));
                self.sending = None;
                self.take_current();
                return;
            }
        };
        let expected = (self.svc.config.chunk_bytes as u64).min(s.size - s.sent);
        if chunk.data.len() as u64 != expected {
            // Changed in place while being read: try again later.
            queue_frame(conn, &Frame::Info(FeedLine::Abort { transfer }.to_string()));
            let (name, size) = (s.name.as_str().to_string(), s.size);
            self.sending = None;
            self.take_current();
            self.node.lock().want(&name, size, self.svc.backups.max_files());
            return;
        }
        let n = chunk.data.len() as u64;
        if n > 0 {
            queue_frame(conn, &Frame::BackupData { transfer, offset: s.sent, data: chunk.data });
        }
        s.sent += n;
        s.hasher = Some(chunk.hasher);
        if s.sent < s.size {
            return;
        }
        let Some(s) = self.sending.take() else { return };
        let superseded = self.take_current();
        let unchanged = chunk.now.as_ref().is_some_and(|now| now.as_deref() == Some(s.etag.as_str()));
        match s.hasher {
            Some(hasher) if unchanged && !superseded => {
                let digest = hasher.finalize();
                if let Some(etag) = ferry_files::Etag::parse(&s.etag) {
                    self.svc.hashes.insert(&s.name, etag, digest);
                }
                let blake3 = digest.to_hex().to_string();
                let line = FeedLine::Done { transfer, size: s.size, blake3: blake3.clone(), etag: s.etag.clone() };
                queue_frame(conn, &Frame::Info(line.to_string()));
                let file = Held { size: s.size, blake3, etag: Some(s.etag) };
                let name = s.name.as_str().to_string();
                self.node.lock().awaiting.insert(transfer, Awaiting { transfer, name, file: Some(file) });
            }
            _ => {
                queue_frame(conn, &Frame::Info(FeedLine::Abort { transfer }.to_string()));
                if !superseded {
                    self.node.lock().want(s.name.as_str(), s.size, self.svc.backups.max_files());
                }
            }
        }
    }

    /// A node is in sync once catch-up has nothing left, everything it was
    /// sent is confirmed and no file keeps failing on it.
    fn check_in_sync(&mut self) {
        if self.job.is_some() || self.sending.is_some() || self.failures.values().any(|&c| c >= MAX_FAILURES) {
            return;
        }
        let mut n = self.node.lock();
        if n.behind && n.idle() {
            n.behind = false;
            drop(n);
            tracing::info!(node = %self.id, "backup node in sync");
            self.svc.backups.bump();
        }
    }

    /// Handles every complete line the node sent; `Some` ends the feed.
    fn read_lines(&mut self, conn: &mut Conn, max_frame: u32) -> Option<Step> {
        loop {
            match take_frame(conn, max_frame) {
                Ok(None) => return None,
                Ok(Some(Frame::Info(line))) => {
                    if line.len() > MAX_COMMAND_BYTES {
                        return Some(fail(conn, ErrorCode::BadCommand, "line longer than 16384 bytes"));
                    }
                    match NodeLine::parse(&line) {
                        Ok(line) => {
                            if let Err((code, msg)) = self.on_line(line) {
                                return Some(fail(conn, code, &msg));
                            }
                        }
                        Err(e) => return Some(fail(conn, ErrorCode::BadCommand, &e.0)),
                    }
                }
                Ok(Some(Frame::Error(msg))) => {
                    tracing::info!(node = %self.id, "backup node sent ERROR: {msg}");
                    return Some(Step::Close);
                }
                Ok(Some(other)) => {
                    let msg = format!("a backup node sends only INFO lines, got {:?} frame", other.frame_type());
                    return Some(fail(conn, ErrorCode::BadCommand, &msg));
                }
                Err(e) => return Some(frame_error(conn, e)),
            }
        }
    }

    fn on_line(&mut self, line: NodeLine) -> Result<(), (ErrorCode, String)> {
        match line {
            NodeLine::Confirm { transfer, blake3 } => {
                let mut n = self.node.lock();
                let Some(a) = n.awaiting.remove(&transfer) else {
                    let msg = format!("CONFIRM of transfer {transfer}, which awaits no confirmation");
                    return Err((ErrorCode::BadCommand, msg));
                };
                match (a.file, blake3) {
                    (Some(file), Some(digest)) if file.blake3 == digest => {
                        n.files_mirrored += 1;
                        n.bytes_mirrored += file.size;
                        n.held.insert(a.name, file);
                    }
                    (Some(file), Some(digest)) => {
                        let msg = format!("node confirmed {} with BLAKE3 {digest}, but it is {}", a.name, file.blake3);
                        return Err((ErrorCode::VerifyFailed, msg));
                    }
                    (Some(_), None) => return Err((ErrorCode::BadCommand, "CONFIRM of a file needs blake3=".into())),
                    (None, None) => {
                        n.held.remove(&a.name);
                    }
                    (None, Some(_)) => {
                        return Err((ErrorCode::BadCommand, "CONFIRM of a delete takes no blake3=".into()));
                    }
                }
                drop(n);
                self.svc.backups.bump();
                Ok(())
            }
            NodeLine::Failed { transfer, why } => {
                let max = self.svc.backups.max_files();
                let mut n = self.node.lock();
                let Some(a) = n.awaiting.remove(&transfer) else {
                    let msg = format!("FAILED of transfer {transfer}, which awaits no confirmation");
                    return Err((ErrorCode::BadCommand, msg));
                };
                tracing::warn!(node = %self.id, name = %a.name, "backup node could not store a file: {why}");
                if self.failures.len() >= max {
                    self.failures.clear();
                }
                let count = self.failures.entry(a.name.clone()).or_insert(0);
                *count += 1;
                if *count < MAX_FAILURES {
                    match a.file {
                        Some(file) => n.want(&a.name, file.size, max),
                        None => {
                            n.delete.insert(a.name);
                        }
                    }
                } else {
                    // Left for the next periodic comparison.
                    n.behind = true;
                }
                drop(n);
                self.svc.backups.bump();
                Ok(())
            }
            NodeLine::Pong => Ok(()),
            NodeLine::Have { .. } => Err((ErrorCode::BadCommand, "HAVE after the inventory".into())),
        }
    }
}
