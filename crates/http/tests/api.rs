//! The JSON API, /metrics, /healthz, the dashboard page and unknown routes,
//! through `router()`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use common::Fixture;
use ferry_http::HttpLimits;
use serde_json::{Value, json};

fn status_with_cache() -> Value {
    json!({
        "pid": 4242,
        "version": "0.1.0",
        "connections": 3,
        "sessions": [
            {"id": 1, "service": "transfer", "peer": "127.0.0.1:5000", "started_unix_ms": 1},
            {"id": 2, "service": "kv", "peer": "127.0.0.1:5001", "started_unix_ms": 1},
            {"id": 3, "service": "kv", "peer": "127.0.0.1:5002", "started_unix_ms": 1}
        ],
        "transfers": [{"session": 1, "kind": "get", "name": "big.iso", "size": 1000, "start_offset": 0, "offset": 250}],
        "upgrades": [{"unix_ms": 1, "old_pid": 1, "old_version": "a", "new_pid": 2, "new_version": "b",
                      "binary": "ferry", "pause_gap_us": 900, "sessions_moved": 2, "outcome": "ok"}],
        "cache": {"policy": "s3fifo", "max_bytes": 67108864, "bytes_held": 3072, "hits": 9, "misses": 3,
                  "hit_bytes": 9000, "miss_bytes": 1000, "evictions": 4, "object_hit_ratio": 0.75,
                  "byte_hit_ratio": 0.9, "entries": [{"name": "a.txt", "size": 3072, "hits": 9, "age_ms": 1500}]}
    })
}

#[tokio::test]
async fn healthz() {
    let f = Fixture::new();
    let r = f.get("/healthz", &[]).await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn files_listing() {
    let f = Fixture::new();
    f.put("b.txt", b"bb");
    f.put("a/nested.bin", b"nested!");
    f.put("c", b"");
    std::fs::write(f.store.uploads_dir().join("staged"), b"not listed").unwrap();
    let r = f.get("/api/files", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    let names: Vec<&str> = v["files"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a/nested.bin", "b.txt", "c"]);
    assert_eq!(v["count"], 3);
    assert_eq!(v["files"][0]["size"], 7);
    let etag = v["files"][0]["etag"].as_str().unwrap();
    assert_eq!(f.get("/files/a/nested.bin", &[]).await.header("etag").unwrap(), format!("\"{etag}\""));
    assert!(v["files"][0]["modified_unix_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn files_listing_is_bounded() {
    let limits = HttpLimits { max_list_entries: 2, ..HttpLimits::default() };
    let f = Fixture::with(limits, Arc::new(|| json!({})));
    for n in ["a", "b", "c"] {
        f.put(n, b"x");
    }
    let r = f.get("/api/files", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("limit 2"), "{}", r.text());
}

#[tokio::test]
async fn status_adds_the_gateway_metrics() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let f = Fixture::with(
        HttpLimits::default(),
        Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            status_with_cache()
        }),
    );
    f.put("x", b"x");
    f.get("/files/x", &[]).await;
    f.get("/files/missing", &[]).await;
    let v = f.get("/api/status", &[]).await.json();
    assert_eq!(v["pid"], 4242);
    assert_eq!(v["upgrades"][0]["outcome"], "ok");
    assert_eq!(v["http"]["responses"], json!([0, 1, 0, 1, 0]));
    assert_eq!(v["http"]["connections_open"], 0);
    assert!(v["http"]["transfers"].as_array().unwrap().is_empty());
    assert_eq!(calls.load(Ordering::Relaxed), 1, "the source is asked once per request");

    // Sources returning something other than an object are kept, not lost.
    let f = Fixture::with(HttpLimits::default(), Arc::new(|| json!("odd")));
    let v = f.get("/api/status", &[]).await.json();
    assert_eq!((v["status"].as_str(), v["http"].is_object()), (Some("odd"), true));
}

#[tokio::test]
async fn cache_is_the_status_cache_or_empty() {
    let f = Fixture::with(HttpLimits::default(), Arc::new(status_with_cache));
    let v = f.get("/api/cache", &[]).await.json();
    assert_eq!(v, status_with_cache()["cache"]);
    let f = Fixture::new();
    assert_eq!(f.get("/api/cache", &[]).await.json(), json!({}));
}

#[tokio::test]
async fn metrics_exposition() {
    let f = Fixture::with(HttpLimits::default(), Arc::new(status_with_cache));
    f.put("m", b"x");
    f.get("/files/m", &[]).await;
    f.get("/files/m", &[]).await;
    f.get("/files/..", &[]).await;
    f.state.metrics().record_cache_read(true);
    let r = f.get("/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    for want in [
        "# TYPE ferry_http_requests_total counter",
        "ferry_http_requests_total{code=\"2xx\"} 2",
        "ferry_http_requests_total{code=\"4xx\"} 1",
        "ferry_http_connections 0",
        "ferry_http_transfers{kind=\"download\"} 0",
        "ferry_http_cache_hits_total 1",
        "ferry_connections 3",
        "ferry_sessions{service=\"kv\"} 2",
        "ferry_transfers{kind=\"get\"} 1",
        "ferry_cache_hits_total 9",
        "ferry_cache_misses_total 3",
        "ferry_cache_evictions_total 4",
        "ferry_cache_bytes 3072",
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want:?} in\n{text}");
    }
    // Well-formed: every line is a comment or `name[{labels}] value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value.parse::<u64>().unwrap();
    }
}

#[tokio::test]
async fn dashboard_page_and_unknown_routes() {
    let f = Fixture::new();
    let r = f.get("/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = r.header("content-security-policy").unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'nonce-ferry-dashboard';"),
        "{policy}"
    );
    let html = r.text();
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script nonce=\"ferry-dashboard\">"), "the page's script carries the nonce");
    assert!(html.contains("<title>ferry</title>"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external resources");
    for api in ["/api/status", "/api/files", "/api/cache"] {
        assert!(html.contains(api), "the page polls {api}");
    }

    let r = f.get("/no/such/route", &[]).await;
    assert_eq!((r.status, r.text()), (StatusCode::NOT_FOUND, "not found\n"));
    assert_eq!(f.get("/files", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/api", &[]).await.status, StatusCode::NOT_FOUND);
}
