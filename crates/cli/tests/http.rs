//! End-to-end: the HTTP gateway inside the real `ferry serve`, next to the
//! native protocol on the same file store, across a live upgrade (HTTP
//! connections drain in the old process, the listener moves), and the
//! dashboard in a real headless browser.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Server, alive, bytes, ferry, run, wait_for};

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw, method == "HEAD")
}

fn parse(raw: &[u8], head_only: bool) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    if head_only {
        body.clear();
    }
    Reply { status, headers, body }
}

fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

fn upgrade(server: &Server) -> serde_json::Value {
    let out = run(ferry().args(["upgrade", "--json", "--data"]).arg(&server.data));
    assert!(out.status.success(), "upgrade failed: {}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn put_native(server: &Server, dir: &Path, name: &str, bytes: &[u8]) {
    let src = dir.join(format!("src-{}", name.replace('/', "_")));
    std::fs::write(&src, bytes).unwrap();
    let out = run(server.client(dir, &["put", src.to_str().unwrap(), "--as", name]));
    assert!(out.status.success(), "ferry put: {}", String::from_utf8_lossy(&out.stderr));
}

/// The gateway serves what the native protocol stored and the other way
/// round, with ranges, etags and conditional requests, and refuses names
/// that escape the root.
#[test]
fn http_and_native_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_http(dir.path(), &[]);
    let http = server.http_addr();
    assert_eq!(get(&http, "/healthz").status, 200);

    // Native PUT, HTTP GET.
    let a = bytes(300_000, 1);
    put_native(&server, dir.path(), "dir/a.bin", &a);
    let r = get(&http, "/files/dir/a.bin");
    assert_eq!(r.status, 200);
    assert!(r.body == a, "HTTP body differs from what was PUT natively");
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").unwrap().to_string();
    let r = request(&http, "GET", "/files/dir/a.bin", &[("Range", "bytes=100-199")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/300000"));
    assert!(r.body == a[100..200]);
    let r = request(&http, "GET", "/files/dir/a.bin", &[("Range", "bytes=400000-")], b"");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    let r = request(&http, "GET", "/files/dir/a.bin", &[("If-None-Match", &etag)], b"");
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = request(&http, "HEAD", "/files/dir/a.bin", &[], b"");
    assert_eq!((r.status, r.header("content-length")), (200, Some("300000")));

    // HTTP PUT, native GET.
    let b = bytes(123_457, 2);
    let r = request(&http, "PUT", "/files/up/b.bin", &[], &b);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let out_path = dir.path().join("b.out");
    let out = run(server.client(dir.path(), &["get", "up/b.bin", "-o", out_path.to_str().unwrap()]));
    assert!(out.status.success(), "ferry get: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&out_path).unwrap() == b, "native GET differs from what was PUT over HTTP");

    // Names that escape the root get an error, never content.
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    for path in ["/files/../secret", "/files/%2e%2e/secret", "/files/dir/%2e%2e/%2e%2e/secret", "/files//etc/passwd"] {
        let r = get(&http, path);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert!(!String::from_utf8_lossy(&r.body).contains("outside"), "{path} leaked a file");
    }

    // The API and metrics see the same server.
    let status: serde_json::Value = serde_json::from_slice(&get(&http, "/api/status").body).unwrap();
    assert_eq!(status["pid"].as_i64(), Some(i64::from(server.pid())));
    assert_eq!(status["listeners"]["http"].as_str(), Some(http.as_str()));
    let files: serde_json::Value = serde_json::from_slice(&get(&http, "/api/files").body).unwrap();
    let text = files.to_string();
    assert!(text.contains("dir/a.bin") && text.contains("up/b.bin"), "{text}");
    let metrics = String::from_utf8(get(&http, "/metrics").body).unwrap();
    assert!(metrics.contains("# TYPE ferry_http_requests_total counter"), "{metrics}");
}

/// An HTTP download in progress during `ferry upgrade` finishes in the old
/// process (drain), byte-exact; new connections meanwhile reach the new
/// process on the same port; the old process exits once drained.
#[test]
fn http_download_drains_across_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_http(dir.path(), &[]);
    let http = server.http_addr();
    let big = bytes(48 << 20, 3);
    std::fs::create_dir_all(server.root()).unwrap();
    std::fs::write(server.root().join("big.bin"), &big).unwrap();

    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("GET /files/big.bin HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    // Read a little, then stop reading: the socket buffers fill and the
    // response stays in progress.
    let mut raw = vec![0u8; 256 << 10];
    s.read_exact(&mut raw).unwrap();
    let old_pid = server.pid();

    let report = upgrade(&server);
    let new_pid = report["new_pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, old_pid);
    // The old process is still alive: it drains the download.
    assert!(alive(old_pid), "the old process exited with a download in progress");
    // A new connection on the same port is the new process's.
    let status: serde_json::Value = serde_json::from_slice(&get(&http, "/api/status").body).unwrap();
    assert_eq!(status["pid"].as_i64(), Some(i64::from(new_pid)));

    // The download finishes on its original connection, byte for byte.
    s.read_to_end(&mut raw).unwrap();
    let r = parse(&raw, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len(), "the drained download was cut short");
    assert!(r.body == big, "the drained download holds wrong bytes");
    // Then the old process goes.
    let start = Instant::now();
    while alive(old_pid) {
        assert!(start.elapsed() < DEADLINE, "the old process did not exit after draining");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn find_chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
}

/// The dashboard of the real server, rendered by headless Chromium: the
/// stored files, and the history entry of an upgrade that happened.
#[test]
fn dashboard_shows_files_and_upgrades_in_a_browser() {
    let Some(chromium) = find_chromium() else {
        assert!(std::env::var_os("CI").is_none(), "chromium is not installed on this CI machine (.ci/run installs it)");
        eprintln!("SKIPPED: the dashboard test needs chromium (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_http(dir.path(), &[]);
    put_native(&server, dir.path(), "reports/q3.pdf", &bytes(5000, 4));
    put_native(&server, dir.path(), "notes.txt", b"hello");
    let report = upgrade(&server);
    let new_pid = report["new_pid"].as_i64().unwrap();
    let http = server.http_addr();
    wait_for("the new process to answer", DEADLINE, || {
        let v: serde_json::Value = serde_json::from_slice(&get(&http, "/api/status").body).ok()?;
        (v["pid"].as_i64() == Some(new_pid)).then_some(())
    });

    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{http}/"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains("data-loaded=\"1\""), "the page never rendered:\n{dom}");
    assert!(dom.contains(">reports/q3.pdf<") && dom.contains(">notes.txt<"), "files missing:\n{dom}");
    let history = dom.split("id=\"upgrades\"").nth(1).unwrap_or_default();
    assert!(history.contains(&new_pid.to_string()), "the upgrade is not in the history:\n{dom}");
    assert!(history.contains(">ok<"), "the upgrade's outcome is not shown:\n{dom}");
}
