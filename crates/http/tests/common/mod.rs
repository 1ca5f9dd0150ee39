//! Shared by the gateway's integration tests: a temp store, a fake status
//! source, and one-request helpers over `router()` and over raw sockets.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use ferry_files::{FileCache, FileStore};
use ferry_http::{HttpLimits, HttpState, StatusSource};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<FileStore>,
    pub state: HttpState,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(HttpLimits::default(), Arc::new(|| json!({})))
    }

    pub fn with(limits: HttpLimits, status: StatusSource) -> Fixture {
        Fixture::with_cache(limits, status, None)
    }

    /// Small-file reads go through `cache`, as in `ferry serve`.
    pub fn with_cache(limits: HttpLimits, status: StatusSource, cache: Option<Arc<FileCache>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(FileStore::open(&dir.path().join("root"), &dir.path().join("root/.ferry-uploads")).unwrap());
        let state = HttpState::with_cache(store.clone(), limits, status, cache);
        Fixture { dir, store, state }
    }

    /// Writes a file under the root (creating parents).
    pub fn put(&self, name: &str, bytes: &[u8]) {
        let path = self.store.root().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// One request through `router()`.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = ferry_http::router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        Reply { status, headers, body: body.unwrap_or_default() }
    }

    pub async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(request("GET", uri, headers, Body::empty())).await
    }

    pub fn uploads_left(&self) -> usize {
        std::fs::read_dir(self.store.uploads_dir()).unwrap().count()
    }
}

pub fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Deterministic bytes that differ at every offset within a 251-byte cycle.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ferry_http::serve` running on 127.0.0.1:0 over a fixture's state, until
/// [`Server::stop`].
pub struct Server {
    pub f: Fixture,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(f: Fixture) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ferry_http::serve(listener, f.state.clone(), async move {
            let _ = rx.await;
        }));
        Server { f, addr, stop: Some(tx), task }
    }

    /// Starts the drain, as a live upgrade does.
    pub fn stop(&mut self) {
        self.stop.take().unwrap().send(()).unwrap();
    }

    /// Waits (bounded) for `serve` to return, and checks it returned `Ok`.
    pub async fn finished(self) {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve() did not return")
            .unwrap()
            .unwrap();
    }
}
