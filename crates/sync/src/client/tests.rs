//! The client's two connections against a hand-driven fake server: the seed's resend and abort
//! replies on uploads, and checksum failures on pushed files.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::Conn;
use ferry_files::SafeName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::options::SyncOptions;
use super::shared::{Shared, test_shared};
use super::{push_conn, update_conn};
use crate::message_reader::{MessageReader, Next, encode};
use crate::{Limits, Md5Sum, Message, StatusCode};

const DEADLINE: Duration = Duration::from_secs(10);

fn n(s: &str) -> SafeName {
    SafeName::parse(s, 1024).unwrap()
}

/// The server's end of one connection.
struct FakeServer {
    stream: TcpStream,
    buf: BytesMut,
    reader: MessageReader,
}

impl FakeServer {
    async fn recv(&mut self) -> Message {
        tokio::time::timeout(DEADLINE, async {
            loop {
                match self.reader.next(&mut self.buf, &Limits::default()) {
                    Next::Message(Message::Status(StatusCode::KeepAlive)) => continue,
                    Next::Message(m) => return m,
                    Next::Incomplete => {}
                    other => panic!("unexpected {other:?}"),
                }
                assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0, "client closed");
            }
        })
        .await
        .expect("a message from the client in time")
    }

    async fn send(&mut self, m: &Message) {
        self.stream.write_all(&encode(m)).await.unwrap();
    }

    async fn status(&mut self, code: StatusCode) {
        self.send(&Message::Status(code)).await;
    }
}

/// A client connection (driven by `run`) and the fake server's end of it.
async fn connected<F, Fut>(shared: &Arc<Shared>, run: F) -> (FakeServer, CancellationToken)
where
    F: FnOnce(Arc<Shared>, Conn, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(run(shared.clone(), Conn::new(client, 1 << 20), stop.clone()));
    (FakeServer { stream: server, buf: BytesMut::new(), reader: MessageReader::default() }, stop)
}

fn options(dir: &std::path::Path) -> SyncOptions {
    SyncOptions { chunk_size: 4, ..SyncOptions::new("localhost", dir) }
}

#[tokio::test]
async fn uploads_resend_chunks_on_request_and_finish_with_the_whole_md5() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(test_shared(dir.path(), options(dir.path())));
    std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
    shared.refresh(&n("f"), true);
    let (mut server, stop) = connected(&shared, update_conn::run).await;

    let mut got = Vec::new();
    for (i, reply) in
        [StatusCode::ResendChecksum, StatusCode::Ok, StatusCode::ResendChunkSize, StatusCode::Ok, StatusCode::Ok]
            .into_iter()
            .enumerate()
    {
        let Message::FileChunk { md5, name, data } = server.recv().await else { panic!("chunk {i}") };
        assert_eq!((name, Md5Sum::of(&data)), (n("f"), md5));
        if reply == StatusCode::Ok {
            got.extend_from_slice(&data);
        }
        server.status(reply).await;
    }
    assert_eq!(got, b"0123456789", "each refused chunk came again, then the next one");
    assert_eq!(server.recv().await, Message::Finished { md5: Md5Sum::of(b"0123456789"), name: n("f") });
    server.status(StatusCode::Ok).await;
    let start = tokio::time::Instant::now();
    while shared.lock().metadata.get(&n("f")).and_then(|e| e.synced).is_none() {
        assert!(start.elapsed() < DEADLINE, "the upload was not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
}

#[tokio::test]
async fn a_locked_file_is_given_up_and_tried_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(test_shared(dir.path(), options(dir.path())));
    std::fs::write(dir.path().join("f"), b"abc").unwrap();
    shared.refresh(&n("f"), true);
    let (mut server, stop) = connected(&shared, update_conn::run).await;
    let Message::FileChunk { .. } = server.recv().await else { panic!() };
    server.status(StatusCode::FileLocked).await;
    // No Finished follows the refusal; the file comes again after the retry delay.
    let retried = tokio::time::Instant::now();
    let Message::FileChunk { data, .. } = server.recv().await else { panic!() };
    assert_eq!(data, Bytes::from_static(b"abc"));
    assert!(retried.elapsed() >= Duration::from_millis(400), "retried after a pause");
    stop.cancel();
}

#[tokio::test]
async fn pushed_files_are_checked_chunk_by_chunk_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(test_shared(dir.path(), options(dir.path())));
    let (mut server, stop) = connected(&shared, push_conn::run).await;
    let chunk = |data: &'static [u8], md5| Message::FileChunk { md5, name: n("d/p"), data: Bytes::from_static(data) };

    // A bad checksum: resend asked, the data dropped.
    server.send(&chunk(b"abc", Md5Sum::ZERO)).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::ResendChecksum));
    server.send(&chunk(b"abc", Md5Sum::of(b"abc"))).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::Ok));
    // A Finished whose md5 is not the chunks': the file is dropped, nothing appears.
    server.send(&Message::Finished { md5: Md5Sum::of(b"abd"), name: n("d/p") }).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::AbortChecksums));
    assert!(!dir.path().join("d/p").exists());
    // Three bad checksums in a row abort the file.
    for expected in [StatusCode::ResendChecksum, StatusCode::ResendChecksum, StatusCode::AbortChecksums] {
        server.send(&chunk(b"xyz", Md5Sum::ZERO)).await;
        assert_eq!(server.recv().await, Message::Status(expected));
    }
    // A good file lands, and a delete of an unknown file is answered as the seed says.
    server.send(&chunk(b"good", Md5Sum::of(b"good"))).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::Ok));
    server.send(&Message::Finished { md5: Md5Sum::of(b"good"), name: n("d/p") }).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::Ok));
    assert_eq!(std::fs::read(dir.path().join("d/p")).unwrap(), b"good");
    server.send(&Message::DeleteFile { md5: Md5Sum::ZERO, name: n("nothing") }).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::NoFileToDelete));
    server.send(&Message::AbortFile { md5: Md5Sum::ZERO, name: n("half") }).await;
    assert_eq!(server.recv().await, Message::Status(StatusCode::Ok));
    let leftovers = std::fs::read_dir(dir.path().join(".ferry-sync/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "dropped files leave no temporary file");
    stop.cancel();
}
