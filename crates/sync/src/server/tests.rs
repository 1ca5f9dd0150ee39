//! The server over real sockets: two services on ephemeral ports, driven by hand-written protocol
//! clients. Covers the seed's rules (locks, checksums, chunk sizes, deletes, pushes), leases released on
//! disconnect, and sessions parked mid-upload and mid-push and resumed in a fresh service (the path a
//! live upgrade takes).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::config::SyncConfig;
use ferry_core::{Conn, PauseReason, PauseTrigger, Registry, Service, SessionCtx, SessionEnd};
use ferry_files::SafeName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::chunk_digests::{ChunkDigests, DigestedVersion};
use crate::message_reader::{MessageReader, Next};
use crate::{ClientId, Hello, Md5Sum, Metadata, Role, StatusCode};

const DEADLINE: Duration = Duration::from_secs(10);

fn n(s: &str) -> SafeName {
    SafeName::parse(s, 1024).unwrap()
}

/// A parked session, with the service it belongs to.
enum ParkedAny {
    Update(ferry_core::Parked<UpdateState>),
    Push(ferry_core::Parked<PushState>),
}

/// Both services on ephemeral ports, with a pause trigger of their own.
struct Harness {
    dir: tempfile::TempDir,
    hub: Arc<SyncHub>,
    update_addr: std::net::SocketAddr,
    push_addr: std::net::SocketAddr,
    trigger: Arc<PauseTrigger>,
    parked: mpsc::UnboundedReceiver<ParkedAny>,
}

fn config() -> SyncConfig {
    SyncConfig { max_chunk_size: 64, keepalive_secs: 1, idle_timeout_secs: 30, ..SyncConfig::default() }
}

impl Harness {
    async fn start(config: SyncConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let hub = SyncHub::open(dir.path(), HubConfig::from_config(&config), true).unwrap();
        Harness::serve(dir, hub).await
    }

    async fn serve(dir: tempfile::TempDir, hub: Arc<SyncHub>) -> Harness {
        let trigger = Arc::new(PauseTrigger::new());
        let (tx, parked) = mpsc::unbounded_channel();
        let update = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let push = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (update_addr, push_addr) = (update.local_addr().unwrap(), push.local_addr().unwrap());
        let registry = Registry::new();
        {
            let (svc, trigger, tx, registry) =
                (SyncUpdateService::new(hub.clone()), trigger.clone(), tx.clone(), registry.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = update.accept().await {
                    let (svc, tx) = (svc.clone(), tx.clone());
                    let ctx = SessionCtx {
                        handle: registry.register("sync", "t".into()),
                        pause: trigger.signal(),
                        registry: registry.clone(),
                    };
                    tokio::spawn(async move {
                        let conn = Conn::new(stream, svc.max_read_buffer());
                        if let SessionEnd::Paused(p) = svc.run(conn, None, ctx).await {
                            let _ = tx.send(ParkedAny::Update(p));
                        }
                    });
                }
            });
        }
        {
            let (svc, trigger, registry) = (SyncPushService::new(hub.clone()), trigger.clone(), registry.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = push.accept().await {
                    let (svc, tx) = (svc.clone(), tx.clone());
                    let ctx = SessionCtx {
                        handle: registry.register("sync_push", "t".into()),
                        pause: trigger.signal(),
                        registry: registry.clone(),
                    };
                    tokio::spawn(async move {
                        let conn = Conn::new(stream, svc.max_read_buffer());
                        if let SessionEnd::Paused(p) = svc.run(conn, None, ctx).await {
                            let _ = tx.send(ParkedAny::Push(p));
                        }
                    });
                }
            });
        }
        Harness { dir, hub, update_addr, push_addr, trigger, parked }
    }

    /// A client with both connections, past the handshake.
    async fn client(&self, id: &str) -> (Peer, Peer, Metadata) {
        let mut update = Peer::connect(self.update_addr).await;
        update.send(&Message::Hello(Hello::new(Role::Update, ClientId::parse(id).unwrap()))).await;
        let Message::MetaData(meta) = update.recv().await else { panic!("no META-DATA") };
        let mut push = Peer::connect(self.push_addr).await;
        push.send(&Message::Hello(Hello::new(Role::Push, ClientId::parse(id).unwrap()))).await;
        assert_eq!(push.recv().await, Message::Status(StatusCode::Ok));
        (update, push, meta)
    }

    fn file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join("files").join(name)).ok()
    }

    fn staged_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("uploads")).unwrap().count()
    }
}

/// A protocol client on one connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    reader: MessageReader,
}

impl Peer {
    async fn connect(addr: std::net::SocketAddr) -> Peer {
        Peer { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new(), reader: MessageReader::default() }
    }

    async fn send(&mut self, m: &Message) {
        self.stream.write_all(&crate::message_reader::encode(m)).await.unwrap();
    }

    /// The next message, keep-alives skipped.
    async fn recv(&mut self) -> Message {
        loop {
            let m = self.recv_any().await;
            if m != Message::Status(StatusCode::KeepAlive) {
                return m;
            }
        }
    }

    async fn recv_any(&mut self) -> Message {
        let limits = crate::Limits::default();
        tokio::time::timeout(DEADLINE, async {
            loop {
                match self.reader.next(&mut self.buf, &limits) {
                    Next::Message(m) => return m,
                    Next::Incomplete => {}
                    other => panic!("unexpected {other:?}"),
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "connection closed");
            }
        })
        .await
        .expect("a message in time")
    }

    async fn status(&mut self) -> StatusCode {
        match self.recv().await {
            Message::Status(code) => code,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    /// Whether the server closed the connection (EOF within the deadline).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(DEADLINE, self.stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// Uploads `data` in chunks of `chunk`, answering nothing else; returns the last status.
    async fn upload(&mut self, name: &str, data: &[u8], chunk: usize) -> StatusCode {
        for part in data.chunks(chunk) {
            let m = Message::FileChunk { md5: Md5Sum::of(part), name: n(name), data: Bytes::copy_from_slice(part) };
            self.send(&m).await;
            let status = self.status().await;
            if status != StatusCode::Ok {
                return status;
            }
        }
        self.send(&Message::Finished { md5: Md5Sum::of(data), name: n(name) }).await;
        self.status().await
    }

    /// Receives one pushed file (answering OK to each chunk); returns its name and bytes.
    async fn receive(&mut self) -> (String, Vec<u8>) {
        self.receive_after(Vec::new()).await
    }

    /// Like [`Peer::receive`], for a file of which `data` arrived already.
    async fn receive_after(&mut self, mut data: Vec<u8>) -> (String, Vec<u8>) {
        loop {
            match self.recv().await {
                Message::FileChunk { md5, name: _, data: part } => {
                    assert_eq!(Md5Sum::of(&part), md5);
                    data.extend_from_slice(&part);
                    self.send(&Message::Status(StatusCode::Ok)).await;
                }
                Message::Finished { md5, name } => {
                    assert_eq!(Md5Sum::of(&data), md5, "Finished carries the whole file's md5");
                    self.send(&Message::Status(StatusCode::Ok)).await;
                    return (name.to_string(), data);
                }
                other => panic!("expected a pushed file, got {other:?}"),
            }
        }
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_upload_is_committed_and_pushed_to_the_others() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, meta) = h.client("a").await;
    assert!(meta.entries.is_empty());
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(200, 1);
    assert_eq!(a.upload("dir/f.bin", &data, 64).await, StatusCode::Ok);
    assert_eq!(h.file("dir/f.bin").unwrap(), data);
    assert_eq!(b_push.receive().await, ("dir/f.bin".to_string(), data.clone()));
    // The uploader is not sent its own file; a third client sees it in its META-DATA.
    let (_c, _c_push, meta) = h.client("c").await;
    let entry = meta.entries.get(&n("dir/f.bin")).unwrap();
    assert_eq!(entry.md5(), Some(Md5Sum::of(&data)));
    assert_eq!(h.staged_files(), 0);
}

#[tokio::test]
async fn interleaved_uploads_get_replies_in_order() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let files: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("f{i}"), bytes(150, i as u8))).collect();
    // Every file's first chunk, then every second chunk, ... as one burst: replies come in order.
    let mut sent = 0;
    for offset in (0..150).step_by(64) {
        for (name, data) in &files {
            let part = &data[offset..(offset + 64).min(150)];
            a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n(name), data: Bytes::copy_from_slice(part) })
                .await;
            sent += 1;
        }
    }
    for (name, data) in &files {
        a.send(&Message::Finished { md5: Md5Sum::of(data), name: n(name) }).await;
        sent += 1;
    }
    for _ in 0..sent {
        assert_eq!(a.status().await, StatusCode::Ok);
    }
    for (name, data) in &files {
        assert_eq!(h.file(name).as_ref(), Some(data));
    }
}

#[tokio::test]
async fn the_first_updater_locks_the_file() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (mut b, _b_push, _) = h.client("b").await;
    let part = b"first part";
    a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("f"), data: Bytes::from_static(part) }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    b.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("f"), data: Bytes::from_static(part) }).await;
    assert_eq!(b.status().await, StatusCode::FileLocked);
    b.send(&Message::DeleteFile { md5: Md5Sum::ZERO, name: n("f") }).await;
    assert_eq!(b.status().await, StatusCode::FileLocked);
    b.send(&Message::DeleteFile { md5: Md5Sum::ZERO, name: n("nothing") }).await;
    assert_eq!(b.status().await, StatusCode::NoFileToDelete);
    a.send(&Message::Finished { md5: Md5Sum::of(part), name: n("f") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
}

#[tokio::test]
async fn bad_checksums_and_sizes_ask_for_resends_then_abort() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let bad = |name: &str| Message::FileChunk { md5: Md5Sum::ZERO, name: n(name), data: Bytes::from_static(b"xx") };
    a.send(&bad("f")).await;
    assert_eq!(a.status().await, StatusCode::ResendChecksum);
    a.send(&bad("f")).await;
    assert_eq!(a.status().await, StatusCode::ResendChecksum);
    a.send(&bad("f")).await;
    assert_eq!(a.status().await, StatusCode::AbortChecksums);
    // Aborted: the lock is free again, nothing was stored.
    let (mut b, _b_push, _) = h.client("b").await;
    assert_eq!(b.upload("f", b"ok", 64).await, StatusCode::Ok);
    // Chunks over the limit (64 here): the body is skipped, the stream stays in step.
    let big = bytes(100, 3);
    let oversized = Message::FileChunk { md5: Md5Sum::of(&big), name: n("g"), data: Bytes::from(big) };
    for expected in [StatusCode::ResendChunkSize, StatusCode::ResendChunkSize, StatusCode::AbortChunkSizes] {
        a.send(&oversized).await;
        assert_eq!(a.status().await, expected);
    }
    assert_eq!(a.upload("g", b"fine", 64).await, StatusCode::Ok);
    // A Finished whose md5 is not the chunks' aborts the file.
    a.send(&Message::FileChunk { md5: Md5Sum::of(b"abc"), name: n("h"), data: Bytes::from_static(b"abc") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    a.send(&Message::Finished { md5: Md5Sum::of(b"abd"), name: n("h") }).await;
    assert_eq!(a.status().await, StatusCode::AbortChecksums);
    assert!(h.file("h").is_none());
    assert_eq!(h.staged_files(), 0);
}

#[tokio::test]
async fn bad_names_and_messages() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    // ".." in a name: the decoder refuses it, the server answers File In Use and goes on.
    let mut raw = crate::message_reader::encode(&Message::RequestUpdate { md5: Md5Sum::ZERO, name: n("ab") }).to_vec();
    let at = raw.len() - 2;
    raw[at..].copy_from_slice(b"..");
    a.stream.write_all(&raw).await.unwrap();
    assert_eq!(a.status().await, StatusCode::FileInUse);
    a.send(&Message::RequestUpdate { md5: Md5Sum::ZERO, name: n("missing") }).await;
    assert_eq!(a.status().await, StatusCode::FileInUse);
    // An unknown message type cannot be followed: the server closes.
    a.stream.write_all(&[0x99, 0x99, 0, 0]).await.unwrap();
    assert!(a.closed().await);
    // A connection must start with a hello.
    let mut raw = Peer::connect(h.update_addr).await;
    raw.send(&Message::Status(StatusCode::Ok)).await;
    assert!(raw.closed().await);
    // A hello of another version is answered with ours, then closed.
    let mut other = Peer::connect(h.update_addr).await;
    let hello = Hello { version: 9, role: Role::Update, client_id: ClientId::parse("x").unwrap() };
    other.send(&Message::Hello(hello)).await;
    match other.recv().await {
        Message::Hello(ours) => assert_eq!(ours.version, crate::PROTOCOL_VERSION),
        m => panic!("{m:?}"),
    }
    assert!(other.closed().await);
}

#[tokio::test]
async fn deletes_propagate_and_modify_beats_delete() {
    let h = Harness::start(config()).await;
    let (mut a, mut a_push, _) = h.client("a").await;
    let (mut b, mut b_push, _) = h.client("b").await;
    assert_eq!(a.upload("d/f", b"v1", 64).await, StatusCode::Ok);
    assert_eq!(b_push.receive().await.1, b"v1");
    // b deletes the version it has: the delete reaches a's push connection.
    b.send(&Message::DeleteFile { md5: Md5Sum::of(b"v1"), name: n("d/f") }).await;
    assert_eq!(b.status().await, StatusCode::Ok);
    assert!(h.file("d/f").is_none());
    assert_eq!(a_push.recv().await, Message::DeleteFile { md5: Md5Sum::ZERO, name: n("d/f") });
    a_push.send(&Message::Status(StatusCode::Ok)).await;
    // A delete of a version the server no longer has is refused: the newer version wins.
    assert_eq!(a.upload("g", b"new", 64).await, StatusCode::Ok);
    assert_eq!(b_push.receive().await.1, b"new");
    b.send(&Message::DeleteFile { md5: Md5Sum::of(b"older"), name: n("g") }).await;
    assert_eq!(b.status().await, StatusCode::NoFileToDelete);
    assert_eq!(h.file("g").unwrap(), b"new");
}

#[tokio::test]
async fn a_change_based_on_an_unreceived_version_is_refused() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    // b's push connection is not reading: the version a commits stays queued for b.
    let (mut b, mut b_push, _) = h.client("b").await;
    assert_eq!(a.upload("f", b"from a", 64).await, StatusCode::Ok);
    assert_eq!(b.upload("f", b"from b", 64).await, StatusCode::FileLocked);
    assert_eq!(b_push.receive().await.1, b"from a");
    eventually("the push to b to be settled", || !h.hub.clients().is_pending(&ClientId::parse("b").unwrap(), &n("f")))
        .await;
    assert_eq!(b.upload("f", b"from b", 64).await, StatusCode::Ok);
}

#[tokio::test]
async fn request_update_and_empty_files() {
    let h = Harness::start(config()).await;
    let (mut a, mut a_push, _) = h.client("a").await;
    a.send(&Message::Finished { md5: Md5Sum::EMPTY, name: n("empty") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(h.file("empty").unwrap(), b"");
    a.send(&Message::RequestUpdate { md5: Md5Sum::ZERO, name: n("empty") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(a_push.receive().await, ("empty".to_string(), vec![]));
}

#[tokio::test]
async fn a_client_that_vanishes_mid_upload_leaves_no_lock_and_no_partial_file() {
    let h = Harness::start(config()).await;
    let (mut a, a_push, _) = h.client("a").await;
    let part = b"half of it";
    a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("f"), data: Bytes::from_static(part) }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(h.staged_files(), 1);
    drop(a);
    drop(a_push);
    eventually("the partial upload to go", || h.staged_files() == 0).await;
    let (mut b, _b_push, _) = h.client("b").await;
    assert_eq!(b.upload("f", b"whole", 64).await, StatusCode::Ok);
    assert_eq!(h.file("f").unwrap(), b"whole");
}

#[tokio::test]
async fn the_server_sends_keep_alives() {
    let h = Harness::start(config()).await;
    let (mut a, mut a_push, _) = h.client("a").await;
    assert_eq!(a.recv_any().await, Message::Status(StatusCode::KeepAlive));
    assert_eq!(a_push.recv_any().await, Message::Status(StatusCode::KeepAlive));
}

/// Parks every session, checks their states survive JSON, and resumes them on the same sockets in a
/// fresh pair of services over a hub opened the way a new process opens it.
async fn upgrade(h: &mut Harness, sessions: usize) {
    h.trigger.pause(PauseReason::Upgrade);
    let mut parked = Vec::new();
    for _ in 0..sessions {
        parked.push(tokio::time::timeout(DEADLINE, h.parked.recv()).await.unwrap().unwrap());
    }
    let config = h.hub.config.clone();
    let new_hub = SyncHub::open(h.dir.path(), config, false).unwrap();
    h.hub.prepare_handover().unwrap();
    new_hub.catch_up().unwrap();
    let registry = Registry::new();
    let trigger = Arc::new(PauseTrigger::new());
    let (update, push) = (SyncUpdateService::new(new_hub.clone()), SyncPushService::new(new_hub.clone()));
    for p in parked {
        let ctx = SessionCtx {
            handle: registry.register("sync", "t".into()),
            pause: trigger.signal(),
            registry: registry.clone(),
        };
        match p {
            ParkedAny::Update(p) => {
                let json = serde_json::to_vec(&p.state).unwrap();
                let state: UpdateState = serde_json::from_slice(&json).unwrap();
                assert_eq!(state, p.state);
                update.check_state(&state).unwrap();
                let conn =
                    Conn::from_parts(p.conn.stream, &p.conn.read_buf, &p.conn.pending_out, update.max_read_buffer());
                let svc = update.clone();
                tokio::spawn(async move { svc.run(conn, Some(state), ctx).await });
            }
            ParkedAny::Push(p) => {
                let json = serde_json::to_vec(&p.state).unwrap();
                let state: PushState = serde_json::from_slice(&json).unwrap();
                assert_eq!(state, p.state);
                let conn =
                    Conn::from_parts(p.conn.stream, &p.conn.read_buf, &p.conn.pending_out, push.max_read_buffer());
                let svc = push.clone();
                tokio::spawn(async move { svc.run(conn, Some(state), ctx).await });
            }
        }
    }
    h.hub = new_hub;
    h.trigger = trigger;
}

#[tokio::test]
async fn an_upload_in_progress_continues_across_an_upgrade() {
    let mut h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(300, 9);
    for part in data[..128].chunks(64) {
        a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("big"), data: Bytes::copy_from_slice(part) }).await;
        assert_eq!(a.status().await, StatusCode::Ok);
    }
    // A chunk in flight as the pause arrives: it is answered, by one process or the other.
    let part = &data[128..192];
    a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("big"), data: Bytes::copy_from_slice(part) }).await;
    upgrade(&mut h, 4).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    for part in data[192..].chunks(64) {
        a.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n("big"), data: Bytes::copy_from_slice(part) }).await;
        assert_eq!(a.status().await, StatusCode::Ok);
    }
    a.send(&Message::Finished { md5: Md5Sum::of(&data), name: n("big") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(h.file("big").unwrap(), data);
    // The lock and the queue came across too: b gets the file on its (moved) push connection.
    assert_eq!(b_push.receive().await, ("big".to_string(), data));
}

#[tokio::test]
async fn a_push_in_progress_continues_across_an_upgrade() {
    let mut h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(400, 4);
    assert_eq!(a.upload("p", &data, 64).await, StatusCode::Ok);
    assert_eq!(a.upload("q", b"queued behind", 64).await, StatusCode::Ok);
    // b takes two chunks, then the server moves mid-file (one chunk unanswered).
    let mut got = Vec::new();
    for _ in 0..2 {
        let Message::FileChunk { data: part, .. } = b_push.recv().await else { panic!() };
        got.extend_from_slice(&part);
        b_push.send(&Message::Status(StatusCode::Ok)).await;
    }
    let Message::FileChunk { data: part, .. } = b_push.recv().await else { panic!() };
    upgrade(&mut h, 4).await;
    // Ask for that chunk again: the new process re-reads it from the file.
    b_push.send(&Message::Status(StatusCode::ResendChecksum)).await;
    let Message::FileChunk { data: again, .. } = b_push.recv().await else { panic!() };
    assert_eq!(again, part);
    got.extend_from_slice(&again);
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    let (name, got) = b_push.receive_after(got).await;
    assert_eq!((name.as_str(), got), ("p", data));
    assert_eq!(b_push.receive().await, ("q".to_string(), b"queued behind".to_vec()));
}

/// Chunks large enough to be written behind their reply, and a push that sends the upload's kept chunk
/// digests: the committed file and the pushed one are intact, and the digests were kept only for the
/// chunk size pushes use.
#[tokio::test]
async fn large_chunks_are_written_behind_and_their_digests_pushed_again() {
    let chunk = 512 * 1024;
    let h = Harness::start(SyncConfig { max_chunk_size: chunk as u32, ..config() }).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(2 * chunk + 12_345, 7);
    assert_eq!(a.upload("big.bin", &data, chunk).await, StatusCode::Ok);
    assert_eq!(h.file("big.bin").unwrap(), data);
    let version = DigestedVersion { size: data.len() as u64, md5: Md5Sum::of(&data), chunk_size: chunk as u32 };
    let kept = h.hub.digests(&n("big.bin"), version).expect("the upload's chunk digests are kept");
    assert_eq!(kept.len(), 3);
    assert_eq!(kept.at(chunk as u64, chunk as u64), Some(Md5Sum::of(&data[chunk..2 * chunk])));
    assert_eq!(b_push.receive().await, ("big.bin".to_string(), data.clone()));

    // Cut at another size, the upload's digests do not serve pushes (which digest what they send).
    let other = bytes(chunk + 1, 8);
    assert_eq!(a.upload("other.bin", &other, chunk / 2).await, StatusCode::Ok);
    let version = DigestedVersion { size: other.len() as u64, md5: Md5Sum::of(&other), chunk_size: chunk as u32 };
    assert!(h.hub.digests(&n("other.bin"), version).is_none());
    assert_eq!(b_push.receive().await, ("other.bin".to_string(), other));
}

/// A kept chunk digest that does not match the bytes read (the file replaced by hand under the tree with
/// the same size, mtime and md5 recorded — here: digests planted wrong) costs one resend, which carries
/// the digest of what is sent.
#[tokio::test]
async fn a_wrong_kept_digest_is_corrected_on_the_resend() {
    let h = Harness::start(config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let data = bytes(100, 3);
    assert_eq!(a.upload("f", &data, 64).await, StatusCode::Ok);
    let mut wrong = ChunkDigests::new();
    assert!(wrong.push(Md5Sum::ZERO, 64) && wrong.push(Md5Sum::of(&data[64..]), 36));
    h.hub.keep_digests(&n("f"), DigestedVersion { size: 100, md5: Md5Sum::of(&data), chunk_size: 64 }, wrong);
    let (mut b, mut b_push, _) = h.client("b").await;
    b.send(&Message::RequestUpdate { md5: Md5Sum::ZERO, name: n("f") }).await;
    assert_eq!(b.status().await, StatusCode::Ok);
    let Message::FileChunk { md5, data: part, .. } = b_push.recv().await else { panic!("no chunk") };
    assert_eq!(md5, Md5Sum::ZERO, "the planted digest went out");
    assert_eq!(&part[..], &data[..64]);
    b_push.send(&Message::Status(StatusCode::ResendChecksum)).await;
    assert_eq!(b_push.receive().await, ("f".to_string(), data));
}

/// Chunks large enough to be relayed.
fn relay_config() -> SyncConfig {
    SyncConfig { max_chunk_size: 1 << 20, ..config() }
}

/// Sends `data` as chunks of `chunk` bytes, each answered OK (no Finished).
async fn send_chunks(peer: &mut Peer, name: &str, data: &[u8], chunk: usize) {
    for part in data.chunks(chunk) {
        peer.send(&Message::FileChunk { md5: Md5Sum::of(part), name: n(name), data: Bytes::copy_from_slice(part) })
            .await;
        assert_eq!(peer.status().await, StatusCode::Ok);
    }
}

/// The next message on a push connection must be a chunk of `name`; answered OK, its bytes returned.
async fn relayed_chunk(push: &mut Peer, name: &str) -> Vec<u8> {
    match push.recv().await {
        Message::FileChunk { md5, name: got, data } => {
            assert_eq!(got, n(name));
            assert_eq!(Md5Sum::of(&data), md5);
            push.send(&Message::Status(StatusCode::Ok)).await;
            data.to_vec()
        }
        other => panic!("expected a chunk of {name}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_large_upload_is_relayed_as_it_arrives_and_finished_after_its_commit() {
    let chunk = 256 * 1024;
    let h = Harness::start(relay_config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let (_c, mut c_push, _) = h.client("c").await;
    let data = bytes(3 * chunk + 1000, 5);
    send_chunks(&mut a, "big.bin", &data[..2 * chunk], chunk).await;
    // Both other clients have the first two chunks before the upload is finished, let alone committed.
    let mut got_b = relayed_chunk(&mut b_push, "big.bin").await;
    got_b.extend(relayed_chunk(&mut b_push, "big.bin").await);
    let got_c = relayed_chunk(&mut c_push, "big.bin").await;
    assert_eq!(got_b, &data[..2 * chunk]);
    assert!(h.file("big.bin").is_none(), "not committed yet");
    send_chunks(&mut a, "big.bin", &data[2 * chunk..], chunk).await;
    a.send(&Message::Finished { md5: Md5Sum::of(&data), name: n("big.bin") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(b_push.receive_after(got_b).await, ("big.bin".to_string(), data.clone()));
    assert_eq!(c_push.receive_after(got_c).await, ("big.bin".to_string(), data.clone()));
    // Each got the file once: what comes next is the next file, not this one again.
    assert_eq!(a.upload("next", b"small", 64).await, StatusCode::Ok);
    assert_eq!(b_push.receive().await, ("next".to_string(), b"small".to_vec()));
    assert_eq!(c_push.receive().await, ("next".to_string(), b"small".to_vec()));
}

#[tokio::test]
async fn a_relayed_upload_that_fails_is_aborted_on_the_push_connections() {
    let chunk = 256 * 1024;
    let h = Harness::start(relay_config()).await;
    let (mut a, a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(2 * chunk, 6);
    send_chunks(&mut a, "big.bin", &data[..chunk], chunk).await;
    assert_eq!(relayed_chunk(&mut b_push, "big.bin").await, &data[..chunk]);
    // The uploader vanishes: b is told to drop what it has.
    drop(a);
    drop(a_push);
    assert_eq!(b_push.recv().await, Message::AbortFile { md5: Md5Sum::ZERO, name: n("big.bin") });
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    eventually("the partial upload to go", || h.staged_files() == 0).await;
    // b's push connection is free again, for the file of whoever uploads it next.
    let (mut c, _c_push, _) = h.client("c").await;
    assert_eq!(c.upload("big.bin", b"c's", 64).await, StatusCode::Ok);
    assert_eq!(b_push.receive().await, ("big.bin".to_string(), b"c's".to_vec()));
}

#[tokio::test]
async fn a_client_that_falls_behind_a_relay_gets_the_rest_from_the_committed_file() {
    let chunk = 256 * 1024;
    // b may fall 4 MiB behind; the upload is 20 MiB, so b is cut off.
    let h = Harness::start(SyncConfig { relay_per_client_bytes: 4 << 20, ..relay_config() }).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    // b answers nothing while the whole upload goes through and is committed.
    let data = bytes(80 * chunk + 7, 2);
    send_chunks(&mut a, "big.bin", &data[..chunk], chunk).await;
    let Message::FileChunk { data: first, .. } = b_push.recv().await else { panic!("no relayed chunk") };
    send_chunks(&mut a, "big.bin", &data[chunk..], chunk).await;
    a.send(&Message::Finished { md5: Md5Sum::of(&data), name: n("big.bin") }).await;
    assert_eq!(a.status().await, StatusCode::Ok, "the upload never waits for a slow receiver");
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    assert_eq!(b_push.receive_after(first.to_vec()).await, ("big.bin".to_string(), data));
}

#[tokio::test]
async fn a_relay_ends_at_an_upgrade_and_the_file_is_pushed_after_its_commit() {
    let chunk = 256 * 1024;
    let mut h = Harness::start(relay_config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(3 * chunk, 8);
    send_chunks(&mut a, "big.bin", &data[..chunk], chunk).await;
    assert_eq!(relayed_chunk(&mut b_push, "big.bin").await, &data[..chunk]);
    upgrade(&mut h, 4).await;
    assert_eq!(b_push.recv().await, Message::AbortFile { md5: Md5Sum::ZERO, name: n("big.bin") });
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    // The upload carries on in the new process; b gets the whole file after the commit.
    send_chunks(&mut a, "big.bin", &data[chunk..], chunk).await;
    a.send(&Message::Finished { md5: Md5Sum::of(&data), name: n("big.bin") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    assert_eq!(b_push.receive().await, ("big.bin".to_string(), data));
}

#[tokio::test]
async fn a_relay_committed_before_an_upgrade_is_pushed_by_the_new_process() {
    let chunk = 256 * 1024;
    let mut h = Harness::start(relay_config()).await;
    let (mut a, _a_push, _) = h.client("a").await;
    let (_b, mut b_push, _) = h.client("b").await;
    let data = bytes(2 * chunk, 9);
    send_chunks(&mut a, "big.bin", &data[..chunk], chunk).await;
    // b has the first chunk but does not answer it; meanwhile the upload is committed.
    let Message::FileChunk { .. } = b_push.recv().await else { panic!("no relayed chunk") };
    send_chunks(&mut a, "big.bin", &data[chunk..], chunk).await;
    a.send(&Message::Finished { md5: Md5Sum::of(&data), name: n("big.bin") }).await;
    assert_eq!(a.status().await, StatusCode::Ok);
    upgrade(&mut h, 4).await;
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    assert_eq!(b_push.recv().await, Message::AbortFile { md5: Md5Sum::ZERO, name: n("big.bin") });
    b_push.send(&Message::Status(StatusCode::Ok)).await;
    // The commit did not queue the file for b (the relay was carrying it); the handover did.
    assert_eq!(b_push.receive().await, ("big.bin".to_string(), data));
}
