//! Resume after any interruption: a dropped connection, a killed client
//! run again, a killed and restarted server, a file changed between
//! attempts, and the non-rewindable ends (stdin, stdout).
//!
//! Transfers are slowed with `--limit-rate` so that the interruption lands
//! mid-transfer; every wait polls with a deadline.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use common::*;

const MIB: usize = 1 << 20;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The finished transfers the server remembers, oldest first.
fn recent(server: &Server) -> Vec<serde_json::Value> {
    server.status()["recent_transfers"].as_array().cloned().unwrap_or_default()
}

fn last_ok(server: &Server, kind: &str) -> serde_json::Value {
    recent(server)
        .into_iter()
        .rev()
        .find(|t| t["kind"] == kind && t["ok"] == true)
        .unwrap_or_else(|| panic!("no successful {kind} in {:?}", recent(server)))
}

/// Offset of the transfer in progress, if any.
fn active_offset(server: &Server) -> Option<u64> {
    server.status()["transfers"].as_array()?.first()?["offset"].as_u64()
}

/// A TCP proxy that cuts its first connection after `cut_after` bytes have
/// gone in one direction, and relays later connections untouched.
struct CuttingProxy {
    addr: String,
    connections: Arc<AtomicUsize>,
}

impl CuttingProxy {
    fn start(upstream: String, cut_after: u64, downstream_direction: bool) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream) else { return };
                let limit = if n == 0 { cut_after } else { u64::MAX };
                let moved = Arc::new(AtomicU64::new(0));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up_limit, down_limit) = if downstream_direction { (u64::MAX, limit) } else { (limit, u64::MAX) };
                let m1 = moved.clone();
                std::thread::spawn(move || relay(client, server, up_limit, m1));
                std::thread::spawn(move || relay(s2, c2, down_limit, moved));
            }
        });
        CuttingProxy { addr, connections }
    }
}

/// Copies `from` → `to`; after `limit` bytes cuts both connections.
fn relay(mut from: TcpStream, mut to: TcpStream, limit: u64, moved: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min((limit - total) as usize);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        if total >= limit {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn get_resumes_after_the_connection_drops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(48 * MIB, 11);
    write_file(&server.root().join("big.bin"), &data);
    let proxy = CuttingProxy::start(server.addr.clone(), 24 * MIB as u64, true);
    let out = run(ferry()
        .args(["get", "big.bin", "-o", "out.bin", "--server", &proxy.addr])
        .current_dir(dir.path())
        .env("FERRY_CACHE_DIR", dir.path().join("cache")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrying"));
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 2, "one cut, one resume");
    assert_eq!(blake3_hex(&std::fs::read(dir.path().join("out.bin")).unwrap()), blake3_hex(&data));
    let done = last_ok(&server, "get");
    let start = done["start_offset"].as_u64().unwrap();
    assert!(start > 8 * MIB as u64, "the second attempt resumed from {start}, not from what it had");
    // Restarting from 0 would have sent at least 48 + 16 MiB.
    let sent = server.status()["counters"]["bytes_sent"].as_u64().unwrap();
    assert!(sent < 60 * MIB as u64, "{sent} bytes sent for a 48 MiB file: bytes were sent twice");
}

#[test]
fn put_resumes_after_the_connection_drops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(40 * MIB, 12);
    write_file(&dir.path().join("big.bin"), &data);
    let proxy = CuttingProxy::start(server.addr.clone(), 20 * MIB as u64, false);
    let out = run(ferry()
        .args(["put", "big.bin", "--server", &proxy.addr])
        .current_dir(dir.path())
        .env("FERRY_CACHE_DIR", dir.path().join("cache")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        2,
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert_eq!(blake3_hex(&std::fs::read(server.root().join("big.bin")).unwrap()), blake3_hex(&data));
    let done = last_ok(&server, "put");
    assert!(done["start_offset"].as_u64().unwrap() > 4 * MIB as u64, "{done}");
    let received = server.status()["counters"]["bytes_received"].as_u64().unwrap();
    assert!(received <= 40 * MIB as u64 + 20 * MIB as u64, "{received}");
    assert!(received < 2 * 40 * MIB as u64);
}

#[test]
fn a_killed_get_run_again_continues_from_its_part_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(24 * MIB, 13);
    write_file(&server.root().join("big.bin"), &data);
    let part = dir.path().join("out.bin.part");
    let mut child =
        server.client(dir.path(), &["get", "big.bin", "-o", "out.bin", "--limit-rate", "6M"]).spawn().unwrap();
    wait_for("a partial download", DEADLINE, || (file_len(&part) >= 6 * MIB as u64).then_some(()));
    kill(&mut child);
    let kept = file_len(&part);
    assert!(kept < data.len() as u64);
    let out = run(server.client(dir.path(), &["get", "big.bin", "-o", "out.bin"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("resuming big.bin from byte {kept}")));
    assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), data);
    assert!(!part.exists());
    assert_eq!(last_ok(&server, "get")["start_offset"].as_u64(), Some(kept));
}

#[test]
fn a_killed_put_run_again_continues_its_upload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(24 * MIB, 14);
    write_file(&dir.path().join("big.bin"), &data);
    let mut child = server.client(dir.path(), &["put", "big.bin", "--limit-rate", "6M"]).spawn().unwrap();
    wait_for("a partial upload", DEADLINE, || (active_offset(&server)? >= 6 * MIB as u64).then_some(()));
    kill(&mut child);
    // The server notices the client is gone and keeps the partial upload.
    wait_for("the server to drop the session", DEADLINE, || (server.status()["connections"] == 0).then_some(()));
    let failed = recent(&server).into_iter().rev().find(|t| t["kind"] == "put").unwrap();
    let durable = failed["end_offset"].as_u64().unwrap();
    assert!(durable >= 6 * MIB as u64);
    let out = run(server.client(dir.path(), &["put", "big.bin"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), data);
    let done = last_ok(&server, "put");
    assert_eq!(done["start_offset"].as_u64(), Some(durable), "resumed from the durable offset");
}

#[test]
fn get_and_put_finish_across_a_server_crash_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let down = bytes(24 * MIB, 15);
    let up = bytes(24 * MIB, 16);
    write_file(&server.root().join("down.bin"), &down);
    write_file(&dir.path().join("up.bin"), &up);
    let mut get = server.client(dir.path(), &["get", "down.bin", "-o", "down.out", "--limit-rate", "6M"]);
    let get = get.stderr(Stdio::piped()).spawn().unwrap();
    let mut put = server.client(dir.path(), &["put", "up.bin", "--limit-rate", "6M"]);
    let put = put.stderr(Stdio::piped()).spawn().unwrap();
    wait_for("both transfers under way", DEADLINE, || {
        let part = file_len(&dir.path().join("down.out.part"));
        let uploaded = server.status()["transfers"]
            .as_array()?
            .iter()
            .any(|t| t["kind"] == "put" && t["offset"].as_u64().unwrap_or(0) > 4 * MIB as u64);
        (uploaded && part > 4 * MIB as u64).then_some(())
    });
    server.restart();
    let get_out = get.wait_with_output().unwrap();
    let put_out = put.wait_with_output().unwrap();
    assert!(get_out.status.success(), "{}", String::from_utf8_lossy(&get_out.stderr));
    assert!(put_out.status.success(), "{}", String::from_utf8_lossy(&put_out.stderr));
    assert!(String::from_utf8_lossy(&get_out.stderr).contains("retrying"));
    assert_eq!(std::fs::read(dir.path().join("down.out")).unwrap(), down);
    assert_eq!(std::fs::read(server.root().join("up.bin")).unwrap(), up);
    assert!(last_ok(&server, "get")["start_offset"].as_u64().unwrap() > 0);
    assert!(last_ok(&server, "put")["start_offset"].as_u64().unwrap() > 0);
}

#[test]
fn a_file_changed_between_attempts_is_fetched_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    write_file(&server.root().join("doc.bin"), &bytes(16 * MIB, 17));
    let part = dir.path().join("doc.out.part");
    let mut child =
        server.client(dir.path(), &["get", "doc.bin", "-o", "doc.out", "--limit-rate", "4M"]).spawn().unwrap();
    wait_for("a partial download", DEADLINE, || (file_len(&part) >= 2 * MIB as u64).then_some(()));
    kill(&mut child);
    let new = bytes(5 * MIB, 18);
    write_file(&server.root().join("doc.bin"), &new);
    let out = run(server.client(dir.path(), &["get", "doc.bin", "-o", "doc.out"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("changed on the server since the partial download; starting over"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("doc.out")).unwrap(), new);
    assert_eq!(last_ok(&server, "get")["start_offset"].as_u64(), Some(0));
}

#[test]
fn stdin_upload_survives_a_server_restart_from_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let data = bytes(20 * MIB, 19);
    let mut child = server.client(dir.path(), &["put", "-", "--as", "stream.bin", "--limit-rate", "5M"]);
    let mut child = child.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = data.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    wait_for("a partial upload", DEADLINE, || (active_offset(&server)? >= 4 * MIB as u64).then_some(()));
    server.restart();
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(server.root().join("stream.bin")).unwrap(), data);
    assert!(last_ok(&server, "put")["start_offset"].as_u64().unwrap() > 0);
}

#[test]
fn stdin_that_would_need_rewinding_stops_with_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let data = bytes(20 * MIB, 20);
    let mut child = server.client(dir.path(), &["put", "-", "--as", "stream.bin", "--limit-rate", "5M"]);
    let mut child = child.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    wait_for("a partial upload", DEADLINE, || (active_offset(&server)? >= 4 * MIB as u64).then_some(()));
    // The server loses the partial upload: resuming needs offset 0, which
    // standard input can no longer produce.
    server.kill();
    std::fs::remove_dir_all(server.data.join("uploads")).unwrap();
    server.restart();
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(!out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.contains("cannot rewind standard input"), "{stderr}");
    assert!(line.contains("must continue from offset 0, but the stream is at offset"), "{stderr}");
    assert!(!server.root().join("stream.bin").exists(), "no partial file under the real name");
}

#[test]
fn stdout_download_continues_across_a_restart_and_refuses_to_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let data = bytes(16 * MIB, 21);
    write_file(&server.root().join("s.bin"), &data);

    // Same file after the restart: stdout continues where it was.
    let mut child = server.client(dir.path(), &["get", "s.bin", "-o", "-", "--limit-rate", "4M"]);
    let mut child = child.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            counter.store(all.len() as u64, Ordering::Relaxed);
        }
        all
    });
    wait_for("output under way", DEADLINE, || (got.load(Ordering::Relaxed) >= 2 * MIB as u64).then_some(()));
    server.restart();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(blake3_hex(&reader.join().unwrap()), blake3_hex(&data));

    // A changed file would need stdout rewound to 0: a clear error instead.
    let mut child = server.client(dir.path(), &["get", "s.bin", "-o", "-", "--limit-rate", "4M"]);
    let mut child = child.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            counter.store(total as u64, Ordering::Relaxed);
        }
        total
    });
    wait_for("output under way", DEADLINE, || (got.load(Ordering::Relaxed) >= 2 * MIB as u64).then_some(()));
    server.kill();
    write_file(&server.root().join("s.bin"), &bytes(MIB, 22));
    server.restart();
    let out = child.wait_with_output().unwrap();
    let written = reader.join().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.contains("cannot rewind standard output: s.bin changed on the server"), "{stderr}");
    assert!(line.contains(&format!("must continue from offset 0, but the stream is at offset {written}")), "{stderr}");
}
