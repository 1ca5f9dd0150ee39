//! `serve()` on a real 127.0.0.1:0 listener: a real HTTP client, the
//! connection limit, timeouts, upload cut-offs, and the drain of a live
//! upgrade.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Fixture, Server, eventually, pattern};
use ferry_http::{HttpLimits, TransferKind};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn start(limits: HttpLimits) -> Server {
    Server::start(Fixture::with(limits, Arc::new(|| json!({"version": "test"})))).await
}

async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(uri).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.unwrap();
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

/// Reads a response head off a raw socket: (status code, content-length, body bytes already read).
async fn read_head(stream: &mut TcpStream) -> (u16, Option<u64>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()));
    (status, length, buf[end..].to_vec())
}

/// Reads until EOF or error; returns what arrived.
async fn read_rest(stream: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("read stalled") {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn get_raw(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_round_trip_and_byte_counters() {
    let server = start(HttpLimits::default()).await;
    let mut c = client(server.addr).await;
    let data = pattern(5 << 20);
    let (status, headers, _) = call(&mut c, "PUT", "/files/up/load.bin", &[], data.clone()).await;
    assert_eq!(status, 201);
    let etag = headers["etag"].to_str().unwrap().to_owned();

    // Same keep-alive connection throughout.
    let (status, headers, body) = call(&mut c, "GET", "/files/up/load.bin", &[], vec![]).await;
    assert_eq!((status, body.len()), (200, data.len()));
    assert_eq!(body, data);
    assert_eq!(headers["etag"].to_str().unwrap(), etag);
    let (status, headers, body) = call(&mut c, "GET", "/files/up/load.bin", &[("range", "bytes=-100")], vec![]).await;
    assert_eq!((status, body.as_ref()), (206, &data[data.len() - 100..]));
    assert_eq!(headers["content-range"], format!("bytes {}-{}/{}", data.len() - 100, data.len() - 1, data.len()));
    let (status, _, body) = call(&mut c, "GET", "/files/up/load.bin", &[("if-none-match", &etag)], vec![]).await;
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, body) = call(&mut c, "HEAD", "/files/up/load.bin", &[], vec![]).await;
    assert_eq!((status, body.len()), (200, 0));
    let (status, _, _) = call(&mut c, "GET", "/files/%2e%2e/etc/passwd", &[], vec![]).await;
    assert_eq!(status, 400);

    let (_, _, metrics) = call(&mut c, "GET", "/metrics", &[], vec![]).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    assert!(value("ferry_http_received_bytes_total") > 5 << 20);
    assert!(value("ferry_http_sent_bytes_total") > 5 << 20);
    assert_eq!(value("ferry_http_connections"), 1);
    assert_eq!(value("ferry_http_connections_total"), 1, "one keep-alive connection for everything");
    // 201, 200, 206 and the HEAD's 200; the 304 is 3xx, the bad name 4xx.
    assert!(metrics.contains("ferry_http_requests_total{code=\"2xx\"} 4"), "{metrics}");
    assert!(metrics.contains("ferry_http_requests_total{code=\"3xx\"} 1"), "{metrics}");
    assert!(metrics.contains("ferry_http_requests_total{code=\"4xx\"} 1"), "{metrics}");
    drop(c);
    eventually("the connection is closed", WAIT, || server.f.state.metrics().connections_open() == 0).await;
}

/// A request: method, target, headers.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// `serve` sends file reads straight to the file handler, and everything
/// else through the router: the answers are the same either way.
#[tokio::test]
async fn serve_answers_as_the_router_does() {
    let server = start(HttpLimits::default()).await;
    server.f.put("dir/a.txt", b"hello, lane");
    let mut c = client(server.addr).await;
    let etag = call(&mut c, "GET", "/files/dir/a.txt", &[], vec![]).await.1["etag"].to_str().unwrap().to_owned();
    let cases: [Case; 11] = [
        ("GET", "/files/dir/a.txt", &[]),
        ("HEAD", "/files/dir/a.txt", &[]),
        ("GET", "/files/dir/a.txt", &[("range", "bytes=2-4")]),
        ("GET", "/files/dir/a.txt", &[("range", "bytes=99-")]),
        ("GET", "/files/dir/a.txt", &[("if-none-match", &etag)]),
        ("GET", "/files/dir/a.txt?q=1", &[]),
        ("GET", "/files/missing", &[]),
        ("GET", "/files/%2e%2e/x", &[]),
        ("GET", "/files/", &[]),
        ("DELETE", "/files/dir/a.txt", &[]),
        ("GET", "/nowhere", &[]),
    ];
    for (method, uri, headers) in cases {
        let (status, mut via_serve, body) = call(&mut c, method, uri, headers, vec![]).await;
        let mut req = common::request(method, uri, headers, axum::body::Body::empty());
        req.headers_mut().insert("host", "localhost".parse().unwrap());
        let direct = server.f.send(req).await;
        assert_eq!(status, direct.status.as_u16(), "{method} {uri}");
        assert_eq!(body, direct.body, "{method} {uri}");
        via_serve.remove("date");
        let mut want = direct.headers.clone();
        if status == 304 {
            // In process, the empty body of a 304 shows as `content-length:
            // 0`; on the wire hyper leaves it out, as RFC 9110 asks.
            want.remove("content-length");
        }
        assert_eq!(via_serve, want, "{method} {uri}");
    }
    // Counted once per answer, whichever way it went (the first GET included).
    let counted: u64 = server.f.state.metrics().snapshot().responses.iter().sum();
    assert_eq!(counted, 1 + 2 * cases.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_progress_is_listed_with_its_progress() {
    let server = start(HttpLimits::default()).await;
    let data = pattern(48 << 20);
    server.f.put("big.bin", &data);
    let mut s = get_raw(server.addr, "/files/big.bin").await;
    let (status, length, first) = read_head(&mut s).await;
    assert_eq!((status, length), (200, Some(data.len() as u64)));

    // The client is not reading: the transfer sits part-way.
    let metrics = server.f.state.metrics().clone();
    eventually("the download is listed with some progress", WAIT, || {
        metrics.snapshot().transfers.iter().any(|t| t.kind == TransferKind::Download && t.done > 0)
    })
    .await;
    let t = metrics.snapshot().transfers.pop().unwrap();
    assert_eq!((t.kind, t.name.as_str(), t.total), (TransferKind::Download, "big.bin", Some(data.len() as u64)));
    assert!(t.done > 0 && t.done < data.len() as u64, "progress part-way: {}", t.done);
    let status = common::Fixture::get(&server.f, "/api/status", &[]).await.json();
    assert_eq!(status["http"]["transfers"][0]["name"], "big.bin");
    assert_eq!(status["http"]["connections_open"], 1);

    let got = read_rest_exact(&mut s, first, data.len()).await;
    assert_eq!(got, data);
    eventually("the finished download is unlisted", WAIT, || metrics.active_transfers(TransferKind::Download) == 0)
        .await;
}

/// Reads exactly `len` body bytes (the connection stays open: keep-alive).
async fn read_rest_exact(stream: &mut TcpStream, mut got: Vec<u8>, len: usize) -> Vec<u8> {
    let mut chunk = vec![0u8; 1 << 20];
    while got.len() < len {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("read stalled").unwrap();
        assert!(n > 0, "closed after {} of {len} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_is_503() {
    let server = start(HttpLimits { max_connections: 1, ..HttpLimits::default() }).await;
    let mut first = client(server.addr).await;
    assert_eq!(call(&mut first, "GET", "/healthz", &[], vec![]).await.0, 200);

    let mut second = get_raw(server.addr, "/healthz").await;
    let (status, length, body) = read_head(&mut second).await;
    assert_eq!(status, 503);
    let body = read_rest(&mut second, body).await;
    assert_eq!(body.len() as u64, length.unwrap());
    assert_eq!(String::from_utf8(body).unwrap(), "too many open connections (limit 1)\n");
    assert_eq!(server.f.state.metrics().snapshot().connections_refused, 1);

    // The slot comes back when the first connection closes.
    drop(first);
    eventually("the slot is free", WAIT, || server.f.state.metrics().connections_open() == 0).await;
    let mut third = client(server.addr).await;
    assert_eq!(call(&mut third, "GET", "/healthz", &[], vec![]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_are_closed() {
    let timeout = Duration::from_millis(300);
    let server = start(HttpLimits { header_read_timeout: timeout, ..HttpLimits::default() }).await;

    // A head that never ends.
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let got = read_rest(&mut slow, Vec::new()).await;
    assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");

    // A keep-alive connection left idle after its response.
    let mut idle = get_raw(server.addr, "/healthz").await;
    let (status, length, body) = read_head(&mut idle).await;
    assert_eq!((status, length), (200, Some(2)));
    let started = Instant::now();
    let rest = read_rest(&mut idle, body).await;
    assert_eq!(rest, b"ok");
    assert!(started.elapsed() >= timeout - Duration::from_millis(50), "closed after {:?}", started.elapsed());
    eventually("both connections are gone", WAIT, || server.f.state.metrics().connections_open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_431() {
    let server = start(HttpLimits { max_header_bytes: 16 << 10, ..HttpLimits::default() }).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n", "a".repeat(32 << 10));
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut s).await.0, 431);

    // Within the bound it is served.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n", "a".repeat(8 << 10));
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut s).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_after_the_idle_timeout() {
    let server = start(HttpLimits { idle_timeout: Duration::from_millis(300), ..HttpLimits::default() }).await;
    let data = pattern(64 << 20);
    server.f.put("huge.bin", &data);
    let mut s = get_raw(server.addr, "/files/huge.bin").await;
    let (status, length, first) = read_head(&mut s).await;
    assert_eq!((status, length), (200, Some(data.len() as u64)));
    // Not reading: the server's writes stall, nothing moves, it gives up.
    eventually("the stalled connection is closed", WAIT, || server.f.state.metrics().connections_open() == 0).await;
    let got = read_rest(&mut s, first).await;
    assert!(got.len() < data.len(), "a cut response is short ({} bytes)", got.len());
    assert_eq!(got, &data[..got.len()], "what did arrive is the file's start");
    assert_eq!(server.f.state.metrics().active_transfers(TransferKind::Download), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_mid_way_leaves_no_file() {
    let server = start(HttpLimits::default()).await;
    server.f.put("kept.bin", b"previous version");
    for name in ["cut.bin", "kept.bin"] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = format!("PUT /files/{name} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 10 << 20);
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&pattern(3 << 20)).await.unwrap();
        let metrics = server.f.state.metrics().clone();
        eventually("the upload is under way", WAIT, || {
            metrics.snapshot().transfers.iter().any(|t| t.kind == TransferKind::Upload && t.done >= 1 << 20)
        })
        .await;
        let t = metrics.snapshot().transfers.pop().unwrap();
        assert_eq!((t.name.as_str(), t.total), (name, Some(10 << 20)));
        assert_eq!(server.f.uploads_left(), 1, "staged in the uploads dir");
        drop(s);
        eventually("the staging file is removed", WAIT, || server.f.uploads_left() == 0).await;
        eventually("the upload is unlisted", WAIT, || metrics.active_transfers(TransferKind::Upload) == 0).await;
    }
    assert!(!server.f.store.root().join("cut.bin").exists());
    assert_eq!(std::fs::read(server.f.store.root().join("kept.bin")).unwrap(), b"previous version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_a_download_and_accepts_nothing_new() {
    let mut server = start(HttpLimits::default()).await;
    let data = pattern(48 << 20);
    server.f.put("movie.bin", &data);
    let mut downloading = get_raw(server.addr, "/files/movie.bin").await;
    let (status, _, mut got) = read_head(&mut downloading).await;
    assert_eq!(status, 200);
    let mut chunk = vec![0u8; 1 << 20];
    while got.len() < 1 << 20 {
        let n = downloading.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    // An idle keep-alive connection, between requests when stop comes.
    let mut idle = client(server.addr).await;
    assert_eq!(call(&mut idle, "GET", "/healthz", &[], vec![]).await.0, 200);
    assert_eq!(server.f.state.metrics().connections_open(), 2);

    server.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(server.addr).await {
            // Refused once the listener is gone; reset if it was still in the
            // backlog when the listener closed. Either way never accepted.
            Err(e) => {
                assert!(
                    matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset),
                    "{e}"
                );
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "still accepting after stop"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.f.state.metrics().snapshot().connections_total, 2, "nothing accepted after stop");
    // The idle one is closed at once; the download carries on to its end.
    eventually("the idle connection is closed", WAIT, || idle.is_closed()).await;
    assert!(!server.task.is_finished(), "serve() waits for the download");
    let got = read_rest(&mut downloading, got).await;
    assert_eq!(got.len(), data.len());
    assert_eq!(got, data, "the download completes whole after stop");
    server.finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_what_is_left() {
    let limits = HttpLimits { drain_timeout: Duration::from_millis(200), ..HttpLimits::default() };
    let mut server = start(limits).await;
    server.f.put("stuck.bin", &pattern(48 << 20));
    let mut s = get_raw(server.addr, "/files/stuck.bin").await;
    assert_eq!(read_head(&mut s).await.0, 200);
    let started = Instant::now();
    server.stop();
    let metrics = server.f.state.metrics().clone();
    server.finished().await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(metrics.connections_open(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_serve_cuts_its_connections() {
    let server = start(HttpLimits::default()).await;
    server.f.put("long.bin", &pattern(48 << 20));
    let mut s = get_raw(server.addr, "/files/long.bin").await;
    assert_eq!(read_head(&mut s).await.0, 200);
    server.task.abort();
    let metrics = server.f.state.metrics().clone();
    eventually("the connection is cut", WAIT, || metrics.connections_open() == 0).await;
}
