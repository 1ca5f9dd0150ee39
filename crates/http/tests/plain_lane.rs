//! The plain lane (a connection's first phase, answering plain cached reads
//! without hyper) against hyper itself, over real sockets: the same request
//! gets the same bytes from both (but the date), whatever is not plain is
//! still hyper's, and the guarantees of the file handler hold. Bodies from
//! 48 KiB up leave by `sendfile` from the cache entry's open file; the bytes
//! are the same.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, Server, pattern};
use ferry_files::{CacheConfig, CachePolicyKind, FileCache};
use ferry_http::HttpLimits;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Server {
    let cache =
        FileCache::new(CacheConfig { max_bytes: 8 << 20, max_item_bytes: 4 << 20, policy: CachePolicyKind::S3Fifo });
    Server::start(Fixture::with_cache(HttpLimits::default(), Arc::new(|| json!({})), Some(Arc::new(cache)))).await
}

/// One answer read off a raw socket.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// The head as sent, with the `date` line's value blanked.
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> &str {
        &self.head[9..12]
    }
}

/// Reads one answer; `head` if it answers a HEAD (no body follows).
/// `pending` carries bytes read past the answer into the next read.
async fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>, head: bool) -> Answer {
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a whole head: {:?}", String::from_utf8_lossy(pending));
        pending.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8(pending[..end].to_vec()).unwrap();
    pending.drain(..end);
    let mut len = 0;
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length: ") {
                len = v.parse().unwrap();
            }
            if lower.starts_with("date: ") { "date: -".to_owned() } else { line.to_owned() }
        })
        .collect();
    let len = if head { 0 } else { len };
    while pending.len() < len {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed in the body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = pending.drain(..len).collect();
    Answer { head: lines.join("\r\n"), body }
}

/// A connection that hyper serves: its first request is not plain.
async fn hyper_connection(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut pending, false).await.status(), "200");
    (s, pending)
}

async fn ask(s: &mut TcpStream, pending: &mut Vec<u8>, req: &str) -> Answer {
    s.write_all(req.as_bytes()).await.unwrap();
    read_answer(s, pending, req.starts_with("HEAD")).await
}

/// The same request on a fresh connection (the plain lane) and on one that
/// hyper serves: the same answer.
async fn same_from_both(addr: SocketAddr, req: &str) -> Answer {
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let mut p = Vec::new();
    let from_lane = ask(&mut plain, &mut p, req).await;
    let (mut hyper, mut h) = hyper_connection(addr).await;
    let from_hyper = ask(&mut hyper, &mut h, req).await;
    assert_eq!(from_lane, from_hyper, "{req:?}");
    from_lane
}

#[tokio::test]
async fn plain_reads_get_the_bytes_hyper_would_send() {
    let s = start().await;
    let data = pattern(1024);
    s.f.put("a.html", &data);
    s.f.put("dir/b c.bin", &pattern(70_000));
    s.f.put("empty", b"");
    s.f.put("big", &pattern(2 << 20));
    // Around the sendfile threshold (48 KiB), and up to the largest body
    // the lane answers (under 1 MiB).
    for (name, len) in [("below", (48 << 10) - 1), ("at", 48 << 10), ("large", (1 << 20) - 1)] {
        s.f.put(name, &pattern(len));
        let req = format!("GET /files/{name} HTTP/1.1\r\nhost: x\r\n\r\n");
        let answer = same_from_both(s.addr, &req).await;
        assert_eq!(answer.body, pattern(len), "{name}");
        assert_eq!(same_from_both(s.addr, &req).await, answer, "{name}, a hit");
    }
    for req in [
        "GET /files/a.html HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /files/a.html HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\nuser-agent: t\r\n\r\n",
        "HEAD /files/a.html HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /files/dir/b%20c.bin HTTP/1.1\r\nhost: x\r\n\r\n",
        // hyper moves an empty body's length to the end: left to it.
        "GET /files/empty HTTP/1.1\r\nhost: x\r\n\r\n",
        "HEAD /files/empty HTTP/1.1\r\nhost: x\r\n\r\n",
        // Not answered by the lane (listed as a transfer), but the same.
        "GET /files/big HTTP/1.1\r\nhost: x\r\n\r\n",
        "HEAD /files/big HTTP/1.1\r\nhost: x\r\n\r\n",
        // Errors come from hyper's side either way.
        "GET /files/missing HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /files/%2e%2e/etc/passwd HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /files/ HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        same_from_both(s.addr, req).await;
    }
    let a = same_from_both(s.addr, "GET /files/a.html HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(a.status(), "200");
    assert_eq!(a.body, data);
    assert!(a.head.contains("\r\ncontent-type: text/html\r\n"), "{}", a.head);
    let escape = same_from_both(s.addr, "GET /files/%2e%2e/x HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(escape.status(), "400");
    assert!(escape.body.len() < 200);
    // The entries of 48 KiB up to the lane's largest body keep their files
    // open: "at", "large" and "dir/b c.bin" (70,000 bytes); not "big".
    assert_eq!(s.f.state.cache().unwrap().open_files(), 3);
}

/// Many answers sent by `sendfile` back to back on one connection, in one
/// write and one at a time, mixed with copied ones: every byte in its place.
#[tokio::test]
async fn pipelined_sendfile_answers_keep_their_order_and_bytes() {
    let s = start().await;
    s.f.put("m", &pattern(64 << 10));
    s.f.put("l", &pattern(900 << 10));
    s.f.put("small", &pattern(100));
    let (mut hyper, mut h) = hyper_connection(s.addr).await;
    let mut expected = Vec::new();
    for name in ["m", "l", "small"] {
        expected.push(ask(&mut hyper, &mut h, &format!("GET /files/{name} HTTP/1.1\r\nhost: x\r\n\r\n")).await);
    }
    let order = ["m", "l", "m", "small", "l", "l", "m", "small", "m"];
    let all: String = order.iter().map(|n| format!("GET /files/{n} HTTP/1.1\r\nhost: x\r\n\r\n")).collect();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut p = Vec::new();
    c.write_all(all.as_bytes()).await.unwrap();
    for name in order {
        let want = &expected[["m", "l", "small"].iter().position(|n| *n == name).unwrap()];
        assert_eq!(&read_answer(&mut c, &mut p, false).await, want, "{name}");
    }
    let before = s.f.state.metrics().snapshot().sent_bytes;
    for name in order {
        let got = ask(&mut c, &mut p, &format!("GET /files/{name} HTTP/1.1\r\nhost: x\r\n\r\n")).await;
        assert_eq!(
            got.body.len(),
            pattern(if name == "m" {
                64 << 10
            } else if name == "l" {
                900 << 10
            } else {
                100
            })
            .len()
        );
    }
    let sent = s.f.state.metrics().snapshot().sent_bytes - before;
    let bodies: u64 = 4 * (64 << 10) + 3 * (900 << 10) + 2 * 100;
    assert!(sent > bodies && sent < bodies + 9 * 400, "sendfile's bytes are counted: {sent}");
    assert_eq!(s.f.state.cache().unwrap().open_files(), 2);
}

/// A file the cache keeps open is sent only while it is the version a look
/// after the request's arrival sees: replaced by rename, rewritten in place,
/// removed.
#[tokio::test]
async fn a_file_sent_from_its_open_descriptor_is_the_current_version() {
    let s = start().await;
    let len = 100 << 10;
    let version = |seed: u8| -> Vec<u8> { pattern(len).iter().map(|b| b ^ seed).collect() };
    s.f.put("f", &version(1));
    let root = s.f.store.root().to_path_buf();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut p = Vec::new();
    let get = "GET /files/f HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_eq!(ask(&mut c, &mut p, get).await.body, version(1));
    assert_eq!(ask(&mut c, &mut p, get).await.body, version(1), "a hit");
    assert_eq!(s.f.state.cache().unwrap().open_files(), 1);
    std::fs::write(root.join("f.new"), version(2)).unwrap();
    std::fs::rename(root.join("f.new"), root.join("f")).unwrap();
    assert_eq!(ask(&mut c, &mut p, get).await.body, version(2), "replaced: the new inode");
    std::fs::write(root.join("f"), version(3)).unwrap();
    assert_eq!(ask(&mut c, &mut p, get).await.body, version(3), "rewritten in place, same size");
    assert_eq!(ask(&mut c, &mut p, get).await.body, version(3));
    assert_eq!(s.f.state.cache().unwrap().open_files(), 1, "one version held at a time");
    std::fs::remove_file(root.join("f")).unwrap();
    assert_eq!(ask(&mut c, &mut p, get).await.status(), "404");
}

#[tokio::test]
async fn a_connection_goes_on_with_hyper_after_a_request_that_is_not_plain() {
    let s = start().await;
    s.f.put("a", &pattern(5000));
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut p = Vec::new();
    let whole = ask(&mut c, &mut p, "GET /files/a HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(whole.status(), "200");
    // Two requests in one write: a plain one, then a range (hyper's).
    c.write_all(
        b"GET /files/a HTTP/1.1\r\nhost: x\r\n\r\nGET /files/a HTTP/1.1\r\nhost: x\r\nrange: bytes=10-19\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_answer(&mut c, &mut p, false).await, whole);
    let part = read_answer(&mut c, &mut p, false).await;
    assert_eq!(part.status(), "206");
    assert_eq!(part.body, &pattern(5000)[10..20]);
    // Still served (by hyper now), and still the same bytes.
    assert_eq!(ask(&mut c, &mut p, "GET /files/a HTTP/1.1\r\nhost: x\r\n\r\n").await, whole);
    let etag = whole.head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().to_owned();
    let not_modified =
        ask(&mut c, &mut p, &format!("GET /files/a HTTP/1.1\r\nhost: x\r\nif-none-match: {etag}\r\n\r\n")).await;
    assert_eq!(not_modified.status(), "304");
    // A request that arrives in pieces goes to hyper too.
    c.write_all(b"GET /files/a HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(b"TP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut c, &mut p, false).await, whole);
}

#[tokio::test]
async fn the_lane_never_serves_a_changed_file_and_counts_what_it_answers() {
    let s = start().await;
    s.f.put("f", b"one");
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut p = Vec::new();
    let before = s.f.state.metrics().snapshot();
    for _ in 0..3 {
        assert_eq!(ask(&mut c, &mut p, "GET /files/f HTTP/1.1\r\nhost: x\r\n\r\n").await.body, b"one");
    }
    // Replaced between two requests on the same connection: the next
    // answer is the new file.
    let root = s.f.store.root().to_path_buf();
    std::fs::write(root.join("f.new"), b"second").unwrap();
    std::fs::rename(root.join("f.new"), root.join("f")).unwrap();
    assert_eq!(ask(&mut c, &mut p, "GET /files/f HTTP/1.1\r\nhost: x\r\n\r\n").await.body, b"second");
    // Rewritten in place, same size.
    std::fs::write(root.join("f"), b"SECOND").unwrap();
    assert_eq!(ask(&mut c, &mut p, "GET /files/f HTTP/1.1\r\nhost: x\r\n\r\n").await.body, b"SECOND");
    let after = s.f.state.metrics().snapshot();
    assert_eq!(after.responses[1] - before.responses[1], 5, "five 2xx answers counted");
    assert!(after.sent_bytes - before.sent_bytes > 5 * 200, "the bytes sent are counted");
    assert!(after.received_bytes - before.received_bytes >= 5 * 34, "the bytes received are counted");
    let cache = s.f.state.cache().unwrap().snapshot();
    assert!(cache.hits >= 2, "answered from the cache: {cache:?}");
}

#[tokio::test]
async fn a_drain_closes_an_idle_plain_connection_and_ends_the_server() {
    let mut s = start().await;
    s.f.put("f", b"data");
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let mut p = Vec::new();
    assert_eq!(ask(&mut c, &mut p, "GET /files/f HTTP/1.1\r\nhost: x\r\n\r\n").await.body, b"data");
    s.stop();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without a byte");
    s.finished().await;
}
