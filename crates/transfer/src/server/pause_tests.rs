//! A GET and a PUT paused mid-transfer, their state serialized and decoded,
//! then continued by a fresh service instance on the same socket — what a
//! live upgrade does, minus moving the socket to another process.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::config::TransferConfig;
use ferry_core::{Conn, PauseReason, PauseTrigger, Registry, Service, SessionCtx, SessionEnd};
use ferry_files::FileStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Phase, SessionState, TransferService};
use crate::command::{Reply, Request};
use crate::frame::{Frame, HEADER_LEN};
use crate::wire::{recv_frame, send_frame};

const MIB: usize = 1 << 20;

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).to_le_bytes()[1]).collect()
}

fn service(dir: &std::path::Path) -> Arc<TransferService> {
    let store = FileStore::open(&dir.join("files"), &dir.join("uploads")).unwrap();
    // A small window so a paused GET has bytes in flight and queued.
    let config = TransferConfig { window_bytes: MIB as u64, chunk_bytes: 64 * 1024, ..TransferConfig::default() };
    TransferService::new(Arc::new(store), config)
}

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Runs a session (fresh or resumed) under its own pause trigger.
fn spawn_session(
    svc: Arc<TransferService>,
    conn: Conn,
    state: Option<SessionState>,
) -> (PauseTrigger, JoinHandle<SessionEnd<SessionState>>) {
    let trigger = PauseTrigger::new();
    let registry = Registry::new();
    let ctx = SessionCtx { handle: registry.register("transfer", "test".into()), pause: trigger.signal(), registry };
    let task = tokio::spawn(svc.run(conn, state, ctx));
    (trigger, task)
}

/// Pauses a session, serializes its state as the handover would, decodes
/// it, and continues it in a fresh service on the same socket.
async fn pause_and_resume(
    trigger: PauseTrigger,
    task: JoinHandle<SessionEnd<SessionState>>,
    dir: &std::path::Path,
    expect: fn(&Phase) -> bool,
) -> JoinHandle<SessionEnd<SessionState>> {
    trigger.pause(PauseReason::Upgrade);
    let SessionEnd::Paused(parked) = task.await.unwrap() else { panic!("session did not pause") };
    assert!(expect(&parked.state.phase), "unexpected phase {:?}", parked.state.phase);
    let blob = serde_json::to_vec(&parked.state).unwrap();
    let state: SessionState = serde_json::from_slice(&blob).unwrap();
    assert_eq!(state, parked.state);
    let svc = service(dir);
    let conn =
        Conn::from_parts(parked.conn.stream, &parked.conn.read_buf, &parked.conn.pending_out, svc.max_read_buffer());
    spawn_session(svc, conn, Some(state)).1
}

#[tokio::test]
async fn get_paused_mid_transfer_completes_on_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(8 * MIB + 123);
    let svc = service(dir.path());
    std::fs::write(dir.path().join("files/big.bin"), &data).unwrap();
    let (client, server) = socket_pair().await;
    let (trigger, task) = spawn_session(svc.clone(), Conn::new(server, svc.max_read_buffer()), None);

    let mut c = Conn::new(client, 8 * MIB);
    let get = Request::Get { name: "big.bin".into(), offset: 0, etag: None };
    send_frame(&mut c, &Frame::Info(get.to_string())).await.unwrap();
    let Frame::Info(ok) = recv_frame(&mut c, 4 * MIB as u32).await.unwrap() else { panic!("no OK") };
    assert!(matches!(Reply::parse(&ok), Ok(Reply::Ok { .. })));

    // Take 3 MiB, acknowledging, then stop reading: the server fills its
    // window and waits with bytes queued.
    let mut got = Vec::new();
    while got.len() < 3 * MIB {
        match recv_frame(&mut c, 4 * MIB as u32).await.unwrap() {
            Frame::Data { offset, data } => {
                assert_eq!(offset as usize, got.len());
                got.extend_from_slice(&data);
                send_frame(&mut c, &Frame::Ack(got.len() as u64)).await.unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let task =
        pause_and_resume(trigger, task, dir.path(), |p| matches!(p, Phase::Get(g) if g.sent >= 3 * MIB as u64)).await;

    let mut notices = Vec::new();
    loop {
        match recv_frame(&mut c, 4 * MIB as u32).await.unwrap() {
            Frame::Data { offset, data } => {
                assert_eq!(offset as usize, got.len(), "no byte duplicated or skipped");
                got.extend_from_slice(&data);
                send_frame(&mut c, &Frame::Ack(got.len() as u64)).await.unwrap();
            }
            Frame::Info(line) => match Reply::parse(&line).unwrap() {
                Reply::Done { size, blake3 } => {
                    assert_eq!(size as usize, data.len());
                    assert_eq!(blake3, blake3::hash(&data).to_hex().to_string());
                    break;
                }
                other => notices.push(other),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, data);
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(matches!(&notices[0], Reply::Paused { reason } if reason == "upgrading"));
    assert!(matches!(&notices[1], Reply::Resumed { .. }));
    c.shutdown().await.unwrap();
    assert!(matches!(task.await.unwrap(), SessionEnd::Closed));
}

async fn read_frame(read: &mut OwnedReadHalf) -> Frame {
    let mut header = [0u8; HEADER_LEN];
    read.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut frame = header.to_vec();
    frame.resize(HEADER_LEN + len, 0);
    read.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
    Frame::parse(Bytes::from(frame)).unwrap()
}

#[tokio::test]
async fn put_paused_mid_transfer_completes_on_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(9 * MIB + 7);
    let svc = service(dir.path());
    let (client, server) = socket_pair().await;
    let (trigger, task) = spawn_session(svc.clone(), Conn::new(server, svc.max_read_buffer()), None);

    let (mut read, mut write) = client.into_split();
    let put = Request::Put { name: "up/big.bin".into(), size: Some(data.len() as u64), id: Some("ab".repeat(16)) };
    write.write_all(&Frame::Info(put.to_string()).encode()).await.unwrap();
    assert_eq!(read_frame(&mut read).await, Frame::Ack(0));

    // The writer sends the first 4 MiB, waits for the pause to be done,
    // then sends the rest and DONE.
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let body = data.clone();
    let writer = tokio::spawn(async move {
        let mut go = Some(go_rx);
        for (i, chunk) in body.chunks(256 * 1024).enumerate() {
            if i * 256 * 1024 >= 4 * MIB
                && let Some(go) = go.take()
            {
                go.await.unwrap();
            }
            let frame = Frame::Data { offset: (i * 256 * 1024) as u64, data: Bytes::copy_from_slice(chunk) };
            write.write_all(&frame.encode()).await.unwrap();
        }
        let done = Request::Done { size: body.len() as u64, blake3: blake3::hash(&body).to_hex().to_string() };
        write.write_all(&Frame::Info(done.to_string()).encode()).await.unwrap();
        write
    });
    // Wait until the server acknowledged some of it.
    loop {
        if let Frame::Ack(offset) = read_frame(&mut read).await
            && offset >= 2 * MIB as u64
        {
            break;
        }
    }
    let task =
        pause_and_resume(trigger, task, dir.path(), |p| matches!(p, Phase::Put(s) if s.written >= 2 * MIB as u64))
            .await;
    go_tx.send(()).unwrap();

    let mut notices = Vec::new();
    let mut last_ack = 0;
    loop {
        match read_frame(&mut read).await {
            Frame::Ack(offset) => {
                assert!(offset >= last_ack);
                last_ack = offset;
            }
            Frame::Info(line) => match Reply::parse(&line).unwrap() {
                Reply::Stored { size, blake3, .. } => {
                    assert_eq!(size as usize, data.len());
                    assert_eq!(blake3, blake3::hash(&data).to_hex().to_string());
                    break;
                }
                other => notices.push(other),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(last_ack as usize, data.len());
    assert!(matches!(&notices[..], [Reply::Paused { .. }, Reply::Resumed { .. }]), "{notices:?}");
    assert_eq!(std::fs::read(dir.path().join("files/up/big.bin")).unwrap(), data);
    let mut write = writer.await.unwrap();
    write.shutdown().await.unwrap();
    assert!(matches!(task.await.unwrap(), SessionEnd::Closed));
}

/// A client that never stops sending: the PUT must park within about one
/// batch of the request (frames it took off the socket and did not write go
/// back into the read buffer and travel with the session), not when the
/// client runs out of bytes.
#[tokio::test]
async fn put_paused_while_the_client_keeps_sending_parks_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(32 * MIB + 5);
    let svc = service(dir.path());
    let (client, server) = socket_pair().await;
    let (trigger, task) = spawn_session(svc.clone(), Conn::new(server, svc.max_read_buffer()), None);

    let (mut read, mut write) = client.into_split();
    let put = Request::Put { name: "stream.bin".into(), size: Some(data.len() as u64), id: None };
    write.write_all(&Frame::Info(put.to_string()).encode()).await.unwrap();
    assert_eq!(read_frame(&mut read).await, Frame::Ack(0));
    let body = data.clone();
    let writer = tokio::spawn(async move {
        for (i, chunk) in body.chunks(100_000).enumerate() {
            let frame = Frame::Data { offset: (i * 100_000) as u64, data: Bytes::copy_from_slice(chunk) };
            write.write_all(&frame.encode()).await.unwrap();
        }
        let done = Request::Done { size: body.len() as u64, blake3: blake3::hash(&body).to_hex().to_string() };
        write.write_all(&Frame::Info(done.to_string()).encode()).await.unwrap();
        write
    });
    while !matches!(read_frame(&mut read).await, Frame::Ack(n) if n > 0) {}
    let task =
        pause_and_resume(trigger, task, dir.path(), |p| matches!(p, Phase::Put(s) if s.written < 16 * MIB as u64))
            .await;
    loop {
        match read_frame(&mut read).await {
            Frame::Ack(_) => {}
            Frame::Info(line) => match Reply::parse(&line).unwrap() {
                Reply::Stored { size, .. } => {
                    assert_eq!(size as usize, data.len());
                    break;
                }
                Reply::Paused { .. } | Reply::Resumed { .. } => {}
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(std::fs::read(dir.path().join("files/stream.bin")).unwrap() == data, "stored bytes differ");
    let mut write = writer.await.unwrap();
    write.shutdown().await.unwrap();
    assert!(matches!(task.await.unwrap(), SessionEnd::Closed));
}

#[tokio::test]
async fn idle_session_parks_and_serves_the_next_command_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    std::fs::write(dir.path().join("files/a.txt"), b"abc").unwrap();
    let (client, server) = socket_pair().await;
    let (trigger, task) = spawn_session(svc.clone(), Conn::new(server, svc.max_read_buffer()), None);
    let mut c = Conn::new(client, MIB);
    let task = pause_and_resume(trigger, task, dir.path(), |p| matches!(p, Phase::Idle)).await;
    send_frame(&mut c, &Frame::Info("LIST".into())).await.unwrap();
    let Frame::Info(entry) = recv_frame(&mut c, MIB as u32).await.unwrap() else { panic!() };
    assert!(entry.starts_with("ENTRY name=a.txt size=3"), "{entry}");
    assert_eq!(recv_frame(&mut c, MIB as u32).await.unwrap(), Frame::Info("END count=1".into()));
    c.shutdown().await.unwrap();
    assert!(matches!(task.await.unwrap(), SessionEnd::Closed));
}

#[test]
fn newer_state_format_is_detected() {
    let state = SessionState { format: super::STATE_FORMAT + 1, phase: Phase::Idle };
    let json = serde_json::to_string(&state).unwrap();
    let back: SessionState = serde_json::from_str(&json).unwrap();
    assert!(back.format > super::STATE_FORMAT);
}

/// Reads frames until an INFO line, answering nothing; returns the BACKUP*
/// frames seen before it and the line.
async fn next_line(c: &mut Conn, seen: &mut Vec<Frame>) -> String {
    loop {
        match recv_frame(c, 4 * MIB as u32).await.unwrap() {
            Frame::Info(line) => return line,
            other => seen.push(other),
        }
    }
}

/// The transfer id and digest of a `BACKUPDONE` line.
fn done_of(line: &str) -> (u64, String) {
    match crate::backup::line::FeedLine::parse(line).unwrap() {
        crate::backup::line::FeedLine::Done { transfer, blake3, .. } => (transfer, blake3),
        other => panic!("expected BACKUPDONE, got {other:?}"),
    }
}

#[tokio::test]
async fn backup_feed_pauses_and_resumes_with_what_the_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    std::fs::write(dir.path().join("files/a.txt"), b"hello").unwrap();
    let (client, server) = socket_pair().await;
    let (trigger, task) = spawn_session(svc.clone(), Conn::new(server, svc.max_read_buffer()), None);
    let mut c = Conn::new(client, 8 * MIB);
    let node = "ab".repeat(16);
    send_frame(&mut c, &Frame::Info(format!("BACKUP node={node} files=0"))).await.unwrap();
    let registered = next_line(&mut c, &mut Vec::new()).await;
    assert_eq!(registered, format!("REGISTERED node={node} held=0"));

    // Catch-up sends a.txt; the node confirms it.
    let mut frames = Vec::new();
    let (transfer, digest) = done_of(&next_line(&mut c, &mut frames).await);
    assert_eq!(digest, blake3::hash(b"hello").to_hex().as_str());
    assert!(matches!(&frames[..], [Frame::BackupInfo { info, .. }, Frame::BackupData { offset: 0, data, .. }]
        if info == "a.txt 5" && &data[..] == b"hello"));
    let confirm = crate::backup::line::NodeLine::Confirm { transfer, blake3: Some(digest) };
    send_frame(&mut c, &Frame::Info(confirm.to_string())).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while svc.backups().status()[0].state != "in-sync" {
        assert!(tokio::time::Instant::now() < deadline, "never in sync: {:?}", svc.backups().status());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // A file appears while the node is paused over to a new process.
    std::fs::write(dir.path().join("files/b.txt"), b"world").unwrap();
    trigger.pause(PauseReason::Upgrade);
    let SessionEnd::Paused(parked) = task.await.unwrap() else { panic!("feed did not pause") };
    let Phase::Backup(feed) = &parked.state.phase else { panic!("not a feed: {:?}", parked.state.phase) };
    assert_eq!(feed.held.keys().collect::<Vec<_>>(), ["a.txt"]);
    assert!(feed.awaiting.is_empty());
    let state: SessionState = serde_json::from_slice(&serde_json::to_vec(&parked.state).unwrap()).unwrap();
    assert_eq!(state, parked.state);
    let fresh = service(dir.path());
    let conn =
        Conn::from_parts(parked.conn.stream, &parked.conn.read_buf, &parked.conn.pending_out, fresh.max_read_buffer());
    let task = spawn_session(fresh.clone(), conn, Some(state)).1;

    // PAUSED, RESUMED, then only b.txt: a.txt is known to be held.
    assert_eq!(next_line(&mut c, &mut Vec::new()).await, "PAUSED upgrading");
    assert!(next_line(&mut c, &mut Vec::new()).await.starts_with("RESUMED version="));
    let mut frames = Vec::new();
    let (transfer, digest) = done_of(&next_line(&mut c, &mut frames).await);
    assert!(matches!(&frames[..], [Frame::BackupInfo { info, .. }, Frame::BackupData { .. }] if info == "b.txt 5"));
    let confirm = crate::backup::line::NodeLine::Confirm { transfer, blake3: Some(digest) };
    send_frame(&mut c, &Frame::Info(confirm.to_string())).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = fresh.backups().status();
        if status[0].state == "in-sync" && status[0].files_held == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not caught up: {status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    c.shutdown().await.unwrap();
    assert!(matches!(task.await.unwrap(), SessionEnd::Closed));
    assert_eq!(fresh.backups().status()[0].state, "disconnected");
}
