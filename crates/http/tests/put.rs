//! PUT /files/<path> through `router()`: atomic create and replace, limits,
//! conflicts, and no trace left by a failed upload.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::os::unix::fs::symlink;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use common::{Fixture, eventually, pattern, request};
use ferry_http::HttpLimits;
use serde_json::json;

fn put(uri: &str, body: impl Into<Body>) -> axum::http::Request<Body> {
    request("PUT", uri, &[], body.into())
}

/// A body delivered in pieces, with no Content-Length, that may fail at
/// the end the way a body does when its client goes away.
fn chunked(pieces: Vec<Vec<u8>>, fail_at_end: bool) -> Body {
    Body::new(Pieces { pieces: pieces.into_iter().map(Bytes::from).collect(), fail_at_end })
}

struct Pieces {
    pieces: VecDeque<Bytes>,
    fail_at_end: bool,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(piece) = self.pieces.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        if std::mem::take(&mut self.fail_at_end) {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ))));
        }
        Poll::Ready(None)
    }
}

#[tokio::test]
async fn create_then_replace() {
    let f = Fixture::new();
    let data = pattern(3 << 20);
    let r = f.send(put("/files/new/dir/file.bin", data.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let tag = r.header("etag").unwrap().to_owned();
    let got = f.get("/files/new/dir/file.bin", &[]).await;
    assert_eq!(got.body, data);
    assert_eq!(got.header("etag").unwrap(), tag, "PUT returns the etag GET then sends");

    let r = f.send(put("/files/new/dir/file.bin", "replacement")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let tag2 = r.header("etag").unwrap().to_owned();
    assert_ne!(tag, tag2);
    let got = f.get("/files/new/dir/file.bin", &[]).await;
    assert_eq!((got.body.as_ref(), got.header("etag").unwrap()), (b"replacement".as_ref(), tag2.as_str()));
    assert_eq!(f.uploads_left(), 0, "no staging file left behind");

    let r = f.send(put("/files/empty", Body::empty())).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(std::fs::read(f.store.root().join("empty")).unwrap(), b"");
}

#[tokio::test]
async fn chunked_body_without_length() {
    let f = Fixture::new();
    let pieces: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 64 << 10]).collect();
    let want: Vec<u8> = pieces.concat();
    let r = f.send(put("/files/chunked", chunked(pieces, false))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(std::fs::read(f.store.root().join("chunked")).unwrap(), want);
}

#[tokio::test]
async fn too_large_is_413_and_leaves_nothing() {
    let limits = HttpLimits { max_upload_bytes: 100_000, ..HttpLimits::default() };
    let f = Fixture::with(limits, Arc::new(|| json!({})));
    f.put("keep", b"original");

    // Declared too large: refused before any byte is read.
    let req = request("PUT", "/files/keep", &[("content-length", "100001")], Body::from(vec![1u8; 100_001]));
    let r = f.send(req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("100000"), "{}", r.text());

    // Undeclared and too large: cut off once it passes the limit.
    let r = f.send(put("/files/keep", chunked(vec![vec![2u8; 60_000], vec![3u8; 60_000]], false))).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(std::fs::read(f.store.root().join("keep")).unwrap(), b"original");
    eventually("the staging file is removed", Duration::from_secs(5), || f.uploads_left() == 0).await;

    // Exactly at the limit is fine.
    let r = f.send(put("/files/keep", vec![4u8; 100_000])).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_body_that_breaks_off_leaves_the_old_file() {
    let f = Fixture::new();
    f.put("target", b"old contents");
    let body = chunked(vec![vec![9u8; 3 << 20], vec![8u8; 100]], true);
    let r = f.send(put("/files/target", body)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(std::fs::read(f.store.root().join("target")).unwrap(), b"old contents");
    eventually("the staging file is removed", Duration::from_secs(5), || f.uploads_left() == 0).await;

    let r = f.send(put("/files/fresh", chunked(vec![vec![1u8; 10]], true))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!f.store.root().join("fresh").exists());
    eventually("the staging file is removed", Duration::from_secs(5), || f.uploads_left() == 0).await;
}

#[tokio::test]
async fn bad_targets() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(f.store.root().join("dir")).unwrap();
    f.put("file.txt", b"x");
    symlink(outside.path(), f.store.root().join("out")).unwrap();

    for (uri, want) in [
        ("/files/dir", StatusCode::CONFLICT),
        ("/files/file.txt/below", StatusCode::CONFLICT),
        ("/files/out/evil", StatusCode::NOT_FOUND),
        ("/files/../evil", StatusCode::BAD_REQUEST),
        ("/files/%2e%2e/evil", StatusCode::BAD_REQUEST),
        ("/files//tmp/evil", StatusCode::BAD_REQUEST),
        ("/files/a%00b", StatusCode::BAD_REQUEST),
        ("/files/.ferry-uploads/x", StatusCode::BAD_REQUEST),
    ] {
        let r = f.send(put(uri, "payload")).await;
        assert_eq!(r.status, want, "{uri}: {}", r.text());
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
    assert!(f.store.root().join("dir").is_dir());
    eventually("no staging file left", Duration::from_secs(5), || f.uploads_left() == 0).await;

    let req = request("PUT", "/files/part", &[("content-range", "bytes 0-3/10")], Body::from("abcd"));
    assert_eq!(f.send(req).await.status, StatusCode::BAD_REQUEST, "partial PUT is refused");
    assert!(!f.store.root().join("part").exists());
}

#[tokio::test]
async fn readers_see_old_or_new_never_a_mix() {
    let f = Arc::new(Fixture::new());
    let old = vec![b'o'; 2 << 20];
    let new = vec![b'n'; 2 << 20];
    f.put("swap.bin", &old);
    let reader = {
        let f = f.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let body = f.get("/files/swap.bin", &[]).await.body;
                assert_eq!(body.len(), 2 << 20);
                assert!(body.iter().all(|&b| b == body[0]), "a body mixing versions");
            }
        })
    };
    for i in 0..10 {
        let r = f.send(put("/files/swap.bin", if i % 2 == 0 { new.clone() } else { old.clone() })).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    reader.await.unwrap();
}

#[tokio::test]
async fn other_methods_are_refused() {
    let f = Fixture::new();
    f.put("x", b"x");
    let r = f.send(request("DELETE", "/files/x", &[], Body::empty())).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = r.header("allow").unwrap();
    assert!(["GET", "HEAD", "PUT"].iter().all(|m| allow.contains(m)), "{allow}");
    assert!(f.store.root().join("x").exists());
}
