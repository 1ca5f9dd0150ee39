//! End-to-end: the file cache shared by the native GET and HTTP, seen
//! through `ferry cache`, `LIST CACHE` and `/api/cache`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::{DEADLINE, Server, bytes, run};

const KIB: usize = 1024;

/// A server with HTTP and a small cache (1 MiB, files up to 256 KiB).
fn server(dir: &Path, policy: &str) -> Server {
    let config = dir.join("ferry.toml");
    std::fs::write(&config, format!("[cache]\nmax_bytes = 1048576\nmax_item_bytes = 262144\npolicy = \"{policy}\"\n"))
        .unwrap();
    Server::start_http(dir, &["--config", config.to_str().unwrap()])
}

fn cache_json(server: &Server, dir: &Path) -> serde_json::Value {
    let out = run(server.client(dir, &["cache", "--json"]));
    assert!(out.status.success(), "ferry cache: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn native_get(server: &Server, dir: &Path, name: &str) -> Vec<u8> {
    let out_path = dir.join("got");
    let out = run(server.client(dir, &["get", name, "-o", out_path.to_str().unwrap()]));
    assert!(out.status.success(), "ferry get {name}: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&out_path).unwrap()
}

fn native_put(server: &Server, dir: &Path, name: &str, bytes: &[u8]) {
    let src = dir.join("src");
    std::fs::write(&src, bytes).unwrap();
    let out = run(server.client(dir, &["put", src.to_str().unwrap(), "--as", name]));
    assert!(out.status.success(), "ferry put {name}: {}", String::from_utf8_lossy(&out.stderr));
}

fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[..end]).split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[end + 4..].to_vec())
}

fn names(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// One file read natively then over HTTP is loaded once and hit once; a
/// file over the item bound is never cached; a PUT drops the old version.
#[test]
fn native_and_http_share_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "s3fifo");
    let http = server.http_addr();
    let a = bytes(100 * KIB, 1);
    native_put(&server, dir.path(), "a.bin", &a);
    let big = bytes(300 * KIB, 2);
    native_put(&server, dir.path(), "big.bin", &big);

    assert!(native_get(&server, dir.path(), "a.bin") == a);
    let (status, body) = http_get(&http, "/files/a.bin");
    assert_eq!(status, 200);
    assert!(body == a);
    assert!(native_get(&server, dir.path(), "big.bin") == big);

    let snap = cache_json(&server, dir.path());
    assert_eq!(names(&snap), ["a.bin"], "{snap}");
    assert_eq!(snap["entries"][0]["hits"], 1, "{snap}");
    assert_eq!(snap["entries"][0]["size"], 100 * KIB, "{snap}");
    assert_eq!((snap["hits"].as_u64(), snap["misses"].as_u64()), (Some(1), Some(1)), "{snap}");
    assert_eq!(snap["policy"], "s3fifo");
    assert_eq!(snap["bytes_held"], 100 * KIB);

    // The same over HTTP, and in Prometheus text.
    let (_, api) = http_get(&http, "/api/cache");
    let api: serde_json::Value = serde_json::from_slice(&api).unwrap();
    assert_eq!(names(&api), ["a.bin"], "{api}");
    let (_, metrics) = http_get(&http, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("cache"), "{metrics}");

    // A new version replaces the entry; nobody reads the old bytes.
    let a2 = bytes(100 * KIB, 3);
    native_put(&server, dir.path(), "a.bin", &a2);
    assert!(names(&cache_json(&server, dir.path())).is_empty(), "a PUT left the old version cached");
    assert!(http_get(&http, "/files/a.bin").1 == a2, "HTTP served a stale version");
    assert!(native_get(&server, dir.path(), "a.bin") == a2, "GET served a stale version");
    // Changed behind the server's back (no PUT): the etag differs, so the
    // cached bytes are not served either.
    let a3 = bytes(100 * KIB + 1, 4);
    std::fs::write(server.root().join("a.bin"), &a3).unwrap();
    assert!(http_get(&http, "/files/a.bin").1 == a3, "HTTP served a file changed on disk from the cache");
    assert!(native_get(&server, dir.path(), "a.bin") == a3, "GET served a file changed on disk from the cache");
}

/// Many readers over more data than the cache holds: every byte served is
/// right, the bound holds, entries are evicted and listed.
#[test]
fn the_bound_holds_under_concurrent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "lru");
    let http = server.http_addr();
    let files: Vec<Vec<u8>> = (0..12).map(|i| bytes(150 * KIB + i * 100, i as u64 + 10)).collect();
    std::fs::create_dir_all(server.root()).unwrap();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(server.root().join(format!("f{i}.bin")), f).unwrap();
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let (http, files) = (&http, &files);
            s.spawn(move || {
                for round in 0..30 {
                    let i = (t * 7 + round * 5) % files.len();
                    let (status, body) = http_get(http, &format!("/files/f{i}.bin"));
                    assert_eq!(status, 200);
                    assert!(body == files[i], "f{i}.bin: wrong bytes under concurrency");
                }
            });
        }
    });
    let snap = cache_json(&server, dir.path());
    let held: u64 = snap["entries"].as_array().unwrap().iter().map(|e| e["size"].as_u64().unwrap()).sum();
    assert_eq!(snap["bytes_held"].as_u64(), Some(held), "{snap}");
    assert!(held <= 1 << 20, "the cache holds {held} bytes, over its 1 MiB bound");
    assert!(snap["evictions"].as_u64().unwrap() > 0, "{snap}");
    assert_eq!(snap["hits"].as_u64().unwrap() + snap["misses"].as_u64().unwrap(), 240, "{snap}");
    // The table form names the policy and the ratios.
    let out = run(server.client(dir.path(), &["cache"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(lru)") && text.contains("hit ratio"), "{text}");
}
