//! GET and HEAD /files/<path> through `router()`: headers, ranges,
//! conditional requests and path safety.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::StatusCode;
use common::{Fixture, pattern, request};
use ferry_files::{CacheConfig, CachePolicyKind, DEFAULT_MAX_NAME_BYTES, FileCache, SafeName};
use ferry_http::HttpLimits;

fn etag_of(f: &Fixture, name: &str) -> String {
    let meta = f.store.stat(&SafeName::parse(name, DEFAULT_MAX_NAME_BYTES).unwrap()).unwrap();
    format!("\"{}\"", meta.etag)
}

/// One fixture that reads files whole, one that streams everything over 1 KiB.
fn both() -> [Fixture; 2] {
    let streaming = HttpLimits { whole_file_max_bytes: 1024, ..HttpLimits::default() };
    [Fixture::new(), Fixture::with(streaming, std::sync::Arc::new(|| serde_json::json!({})))]
}

#[tokio::test]
async fn whole_file_with_validators() {
    for f in both() {
        let data = pattern(300_000);
        f.put("dir/data.bin", &data);
        let r = f.get("/files/dir/data.bin", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, data);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("content-length"), Some("300000"));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("etag").unwrap(), etag_of(&f, "dir/data.bin"));
        assert!(r.header("etag").unwrap().starts_with("\"493e0-"), "strong, quoted, from the store");
        let lm = httpdate::parse_http_date(r.header("last-modified").unwrap()).unwrap();
        let age = SystemTime::now().duration_since(lm).unwrap();
        assert!(age < Duration::from_secs(60), "last-modified is the file's mtime");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("content-security-policy"), Some("sandbox"));
        assert!(r.header("content-range").is_none());
    }
}

#[tokio::test]
async fn content_type_from_extension() {
    let f = Fixture::new();
    for (name, want) in [
        ("a.txt", "text/plain"),
        ("b.html", "text/html"),
        ("c.json", "application/json"),
        ("d.png", "image/png"),
        ("e.tar.gz", "application/gzip"),
        ("noext", "application/octet-stream"),
    ] {
        f.put(name, b"x");
        let r = f.get(&format!("/files/{name}"), &[]).await;
        assert_eq!(r.header("content-type"), Some(want), "{name}");
    }
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() {
    for f in both() {
        f.put("h.txt", &pattern(5000));
        let get = f.get("/files/h.txt", &[]).await;
        let head = f.send(request("HEAD", "/files/h.txt", &[], Body::empty())).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        for h in ["content-length", "content-type", "etag", "last-modified", "accept-ranges"] {
            assert_eq!(head.header(h), get.header(h), "{h}");
        }
        assert_eq!(head.header("content-length"), Some("5000"));
        let ranged = f.send(request("HEAD", "/files/h.txt", &[("range", "bytes=10-19")], Body::empty())).await;
        assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(ranged.header("content-range"), Some("bytes 10-19/5000"));
        assert_eq!(ranged.header("content-length"), Some("10"));
        assert!(ranged.body.is_empty());
    }
}

#[tokio::test]
async fn single_ranges() {
    for f in both() {
        let data = pattern(100_000);
        f.put("r.bin", &data);
        let cases: [(&str, usize, usize); 7] = [
            ("bytes=0-0", 0, 1),
            ("bytes=-500", 99_500, 100_000),
            ("bytes=10-", 10, 100_000),
            ("bytes=99999-", 99_999, 100_000),
            ("bytes=1000-2999", 1000, 3000),
            ("bytes=50000-999999999", 50_000, 100_000),
            ("bytes=-999999", 0, 100_000),
        ];
        for (range, start, end) in cases {
            let r = f.get("/files/r.bin", &[("range", range)]).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(r.header("content-range").unwrap(), format!("bytes {start}-{}/100000", end - 1), "{range}");
            assert_eq!(r.header("content-length").unwrap(), (end - start).to_string(), "{range}");
            assert_eq!(r.body, &data[start..end], "{range}");
            assert_eq!(r.header("etag").unwrap(), etag_of(&f, "r.bin"));
        }
    }
}

#[tokio::test]
async fn unsatisfiable_and_ignored_ranges() {
    for f in both() {
        let data = pattern(2000);
        f.put("u.bin", &data);
        for range in ["bytes=2000-", "bytes=5000-6000", "bytes=-0"] {
            let r = f.get("/files/u.bin", &[("range", range)]).await;
            assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(r.header("content-range"), Some("bytes */2000"), "{range}");
        }
        // Malformed, other units, and several ranges: the whole file, 200.
        for range in ["bytes=abc", "bytes=5-1", "pages=1-2", "bytes=0-1,5-6", "bytes", "bytes=--1"] {
            let r = f.get("/files/u.bin", &[("range", range)]).await;
            assert_eq!(r.status, StatusCode::OK, "{range}");
            assert_eq!(r.body, data, "{range}");
            assert!(r.header("content-range").is_none());
        }
    }
}

#[tokio::test]
async fn empty_file() {
    let f = Fixture::new();
    f.put("empty", b"");
    let r = f.get("/files/empty", &[]).await;
    assert_eq!((r.status, r.header("content-length")), (StatusCode::OK, Some("0")));
    let r = f.get("/files/empty", &[("range", "bytes=0-")]).await;
    assert_eq!((r.status, r.header("content-range")), (StatusCode::RANGE_NOT_SATISFIABLE, Some("bytes */0")));
    let r = f.get("/files/empty", &[("range", "bytes=-10")]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn if_none_match_and_if_modified_since() {
    for f in both() {
        f.put("c.txt", &pattern(3000));
        let tag = etag_of(&f, "c.txt");
        for inm in [tag.clone(), format!("W/{tag}"), format!("\"nope\", {tag}"), "*".to_owned()] {
            let r = f.get("/files/c.txt", &[("if-none-match", &inm)]).await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag").unwrap(), tag);
            assert!(r.header("last-modified").is_some());
        }
        let r = f.get("/files/c.txt", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(r.status, StatusCode::OK);
        let head = f.send(request("HEAD", "/files/c.txt", &[("if-none-match", &tag)], Body::empty())).await;
        assert_eq!(head.status, StatusCode::NOT_MODIFIED);

        let lm = f.get("/files/c.txt", &[]).await.header("last-modified").unwrap().to_owned();
        let r = f.get("/files/c.txt", &[("if-modified-since", &lm)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = f.get("/files/c.txt", &[("if-modified-since", "Thu, 01 Jan 1998 00:00:00 GMT")]).await;
        assert_eq!(r.status, StatusCode::OK);

        // Replacing the file changes the etag: the old one no longer matches.
        f.put("c.new", b"other");
        std::fs::rename(f.store.root().join("c.new"), f.store.root().join("c.txt")).unwrap();
        let r = f.get("/files/c.txt", &[("if-none-match", &tag)]).await;
        assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, b"other".as_ref()));
        assert_ne!(r.header("etag").unwrap(), tag);
    }
}

#[tokio::test]
async fn if_range() {
    for f in both() {
        let data = pattern(4000);
        f.put("ir.bin", &data);
        // An mtime well in the past makes Last-Modified a strong validator.
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options().write(true).open(f.store.root().join("ir.bin")).unwrap().set_modified(old).unwrap();
        let tag = etag_of(&f, "ir.bin");
        let lm = f.get("/files/ir.bin", &[]).await.header("last-modified").unwrap().to_owned();

        let r = f.get("/files/ir.bin", &[("range", "bytes=100-199"), ("if-range", &tag)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body, &data[100..200]);
        let r = f.get("/files/ir.bin", &[("range", "bytes=100-199"), ("if-range", &lm)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);

        for stale in ["\"0-0-0\"", "Thu, 01 Jan 1998 00:00:00 GMT", &format!("W/{tag}"), "garbage"] {
            let r = f.get("/files/ir.bin", &[("range", "bytes=100-199"), ("if-range", stale)]).await;
            assert_eq!(r.status, StatusCode::OK, "{stale}");
            assert_eq!(r.body, data, "{stale}");
        }
        // If-Range turns even an unsatisfiable range into the whole file.
        let r = f.get("/files/ir.bin", &[("range", "bytes=9000-"), ("if-range", "\"0-0-0\"")]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn paths_that_escape_get_400_or_404_never_content() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"TOP SECRET").unwrap();
    f.put("inside.txt", b"fine");
    std::fs::create_dir(f.store.root().join("sub")).unwrap();
    symlink(outside.path(), f.store.root().join("out")).unwrap();
    symlink(outside.path().join("secret"), f.store.root().join("secret-link")).unwrap();
    symlink(f.store.root().join("inside.txt"), f.store.root().join("sub/ok-link")).unwrap();
    symlink(f.store.uploads_dir(), f.store.root().join("staged")).unwrap();
    std::fs::write(f.store.uploads_dir().join("partial"), b"PARTIAL UPLOAD").unwrap();
    // A file literally named "%2e%2e" is a name like any other.
    f.put("%2e%2e", b"literal");

    let bad_request = [
        "/files/..",
        "/files/../secret",
        "/files/sub/../../secret",
        "/files/%2e%2e/secret",
        "/files/%2E%2E/%2e%2e/etc/passwd",
        "/files/sub/%2e%2e/%2e%2e/secret",
        "/files/.%2e/secret",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/sub//inside.txt",
        "/files/./inside.txt",
        "/files/inside.txt%00.png",
        "/files/..%5c..%5csecret",
        "/files/sub%5c..%5c..%5csecret",
        "/files/.ferry-uploads/partial",
        "/files/%ff",
        "/files/",
    ];
    for uri in bad_request {
        let r = f.get(uri, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(r.text().starts_with("bad file name: "), "{uri}: {}", r.text());
        let head = f.send(request("HEAD", uri, &[], Body::empty())).await;
        assert_eq!(head.status, StatusCode::BAD_REQUEST, "HEAD {uri}");
    }
    let not_found =
        ["/files/out/secret", "/files/secret-link", "/files/out", "/files/staged/partial", "/files/sub", "/files/nope"];
    for uri in not_found {
        let r = f.get(uri, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!r.text().contains("SECRET") && !r.text().contains("PARTIAL"), "{uri}");
    }
    assert_eq!(f.get("/files/sub/ok-link", &[]).await.body.as_ref(), b"fine", "symlinks inside the root are fine");
    assert_eq!(f.get("/files/%252e%252e", &[]).await.body.as_ref(), b"literal", "decoded once only");
    assert_eq!(
        f.get("/files/inside.txt?x=../../secret", &[]).await.body.as_ref(),
        b"fine",
        "the query is not the name"
    );
}

#[tokio::test]
async fn every_response_is_counted() {
    let f = Fixture::new();
    f.put("a", b"a");
    f.get("/files/a", &[]).await;
    f.get("/files/a", &[("range", "bytes=5-")]).await;
    f.get("/files/..", &[]).await;
    f.get("/nowhere", &[]).await;
    let s = f.state.metrics().snapshot();
    assert_eq!(s.responses, [0, 1, 0, 3, 0]);
    assert!(s.transfers.is_empty(), "finished downloads are unlisted");
}

fn cached() -> Fixture {
    let cache =
        FileCache::new(CacheConfig { max_bytes: 1 << 20, max_item_bytes: 256 << 10, policy: CachePolicyKind::Lru });
    Fixture::with_cache(
        HttpLimits::default(),
        std::sync::Arc::new(|| serde_json::json!({})),
        Some(std::sync::Arc::new(cache)),
    )
}

/// Requests for a name served a moment ago skip the blocking pool (on a
/// cache hit), but still look at the file: whatever changed it, the next
/// answer is the new version, at once.
#[tokio::test]
async fn a_cached_file_changed_on_disk_is_never_served_stale() {
    let f = cached();
    let old = SystemTime::now() - Duration::from_secs(3600);
    let v1 = pattern(5000);
    f.put("c.bin", &v1);
    File::options().write(true).open(f.store.root().join("c.bin")).unwrap().set_modified(old).unwrap();
    let first = f.get("/files/c.bin", &[]).await;
    let second = f.get("/files/c.bin", &[]).await;
    assert_eq!((first.body.as_ref(), second.body.as_ref()), (v1.as_slice(), v1.as_slice()));
    for h in ["etag", "last-modified", "content-type", "content-length", "accept-ranges", "cache-control"] {
        assert_eq!(first.header(h), second.header(h), "{h}");
    }
    let stats = f.state.cache().unwrap().stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    let tag1 = first.header("etag").unwrap().to_owned();

    // Replaced by a rename, as any atomic writer does.
    let v2 = b"version two".to_vec();
    f.put("c.new", &v2);
    std::fs::rename(f.store.root().join("c.new"), f.store.root().join("c.bin")).unwrap();
    let r = f.get("/files/c.bin", &[("if-none-match", &tag1)]).await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, v2.as_slice()));
    let tag2 = r.header("etag").unwrap().to_owned();
    assert_ne!(tag2, tag1);
    assert_eq!(f.get("/files/c.bin", &[("if-none-match", &tag2)]).await.status, StatusCode::NOT_MODIFIED);

    // Changed in place (the size changes, so even a coarse clock shows it).
    std::fs::OpenOptions::new().append(true).open(f.store.root().join("c.bin")).unwrap().write_all(b"+3").unwrap();
    let r = f.get("/files/c.bin", &[]).await;
    assert_eq!(r.body.as_ref(), b"version two+3");
    let head = f.send(request("HEAD", "/files/c.bin", &[], Body::empty())).await;
    assert_eq!(head.header("etag"), r.header("etag"));
    assert_eq!(head.header("content-length"), Some("13"));

    // Removed: 404 at once.
    std::fs::remove_file(f.store.root().join("c.bin")).unwrap();
    assert_eq!(f.get("/files/c.bin", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.send(request("HEAD", "/files/c.bin", &[], Body::empty())).await.status, StatusCode::NOT_FOUND);
}

/// Only downloads of 1 MiB and more are listed as transfers.
#[tokio::test]
async fn small_answers_are_counted_not_listed() {
    let f = cached();
    f.put("s", &pattern(100));
    f.get("/files/s", &[]).await;
    f.get("/files/s", &[]).await;
    let s = f.state.metrics().snapshot();
    assert_eq!(s.responses, [0, 2, 0, 0, 0]);
    assert_eq!((s.cache_hits, s.cache_misses), (1, 1));
    assert!(s.transfers.is_empty());
}
