//! The basics end to end: put, ls, get, status, --help.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn put_ls_get_round_trip_with_verified_content() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(3 << 20, 1);
    write_file(&dir.path().join("in.bin"), &data);
    ok(server.client(dir.path(), &["put", "in.bin", "--as", "sub/dir/file.bin"]));
    let listing: serde_json::Value = serde_json::from_slice(&ok(server.client(dir.path(), &["ls", "--json"]))).unwrap();
    assert_eq!(listing[0]["name"], "sub/dir/file.bin");
    assert_eq!(listing[0]["size"], data.len());
    ok(server.client(dir.path(), &["get", "sub/dir/file.bin", "-o", "out.bin"]));
    assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), data);
    assert!(!dir.path().join("out.bin.part").exists());
    let stdout = ok(server.client(dir.path(), &["get", "sub/dir/file.bin", "-o", "-"]));
    assert_eq!(blake3_hex(&stdout), blake3_hex(&data));
    let status = server.status();
    assert_eq!(status["pid"], server.pid());
    assert_eq!(status["listeners"]["transfer"], server.addr);
    assert!(status["counters"]["transfers_completed"].as_u64().unwrap() >= 3);
}

#[test]
fn stored_file_lands_in_the_root_and_no_partial_upload_remains() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data = bytes(100_000, 2);
    write_file(&dir.path().join("a.txt"), &data);
    ok(server.client(dir.path(), &["put", "a.txt"]));
    assert_eq!(std::fs::read(server.root().join("a.txt")).unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(server.data.join("uploads")).unwrap().collect();
    assert!(leftovers.is_empty(), "uploads/ should be empty after STORED: {leftovers:?}");
}

#[test]
fn empty_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    write_file(&dir.path().join("empty"), b"");
    ok(server.client(dir.path(), &["put", "empty"]));
    ok(server.client(dir.path(), &["get", "empty", "-o", "empty.out"]));
    assert_eq!(std::fs::read(dir.path().join("empty.out")).unwrap(), b"");
}

#[test]
fn every_command_has_help() {
    for cmd in ["serve", "get", "put", "ls", "status", "config", "sync", "upgrade"] {
        let out = run(ferry().args([cmd, "--help"]));
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{cmd} --help shows no usage");
    }
}

#[test]
fn config_prints_every_default_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let text = String::from_utf8(ok(ferry().args(["config"]))).unwrap();
    for key in ["data = \"ferry-data\"", "bind = \"127.0.0.1\"", "port = 7070", "window_bytes", "[upgrade]"] {
        assert!(text.contains(key), "config output lacks {key}:\n{text}");
    }
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text.replace("port = 7070", "port = 7171")).unwrap();
    let again = String::from_utf8(ok(ferry().args(["config", "--config"]).arg(&path))).unwrap();
    assert!(again.contains("port = 7171"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[transfer]\nprot = 1\n").unwrap();
    let out = run(ferry().args(["config", "--config"]).arg(&bad));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run(ferry().args(["serve", "--transfer-port", "0", "--data"]).arg(&server.data));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ferry"));
}

#[test]
fn errors_are_one_line_with_nonzero_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = run(server.client(dir.path(), &["get", "missing.bin", "--retries", "0"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no such file: missing.bin"), "{stderr}");
    let out = run(ferry().args(["get", "x", "--retries", "0", "--server", "127.0.0.1:1"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn put_onto_a_directory_or_under_a_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    write_file(&server.root().join("d/inner.txt"), b"x");
    write_file(&dir.path().join("f.txt"), b"payload");
    for target in ["d", "d/inner.txt/child"] {
        let out = run(server.client(dir.path(), &["put", "f.txt", "--as", target]));
        assert!(!out.status.success(), "put --as {target} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("retrying"), "a bad target must not be retried: {stderr}");
    }
    assert_eq!(std::fs::read(server.root().join("d/inner.txt")).unwrap(), b"x");
}

#[test]
fn a_second_command_on_the_same_connection_follows_a_get() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    write_file(&server.root().join("a.bin"), &bytes(3 << 20, 9));
    let mut raw = Raw::connect(&server.addr);
    raw.info("GET a.bin");
    let mut received = 0u64;
    loop {
        let (ty, payload) = raw.recv().expect("frame");
        match ty {
            0x03 => received += payload.len() as u64 - 8,
            0x02 if payload.starts_with(b"DONE") => break,
            0x02 => {}
            other => panic!("unexpected frame type {other}"),
        }
    }
    assert_eq!(received, 3 << 20);
    // The final ACK and the next command in one write.
    let mut both = vec![0x04, 0, 0, 0, 8];
    both.extend_from_slice(&received.to_be_bytes());
    both.extend_from_slice(&[0x02, 0, 0, 0, 4]);
    both.extend_from_slice(b"LIST");
    raw.send_raw(&both);
    let (ty, payload) = raw.recv().expect("LIST reply");
    assert_eq!(ty, 0x02, "{}", String::from_utf8_lossy(&payload));
    assert!(payload.starts_with(b"ENTRY name=a.bin"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for i in 0..300 {
        std::fs::create_dir_all(server.root()).unwrap();
        std::fs::write(server.root().join(format!("f{i:03}.txt")), b"x").unwrap();
    }
    // `ferry ls | head -0`: the reader is gone before the first line.
    let mut child = server
        .client(dir.path(), &["ls"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "ferry ls panicked on a closed pipe: {stderr}");
    assert!(out.status.success(), "ferry ls into a closed pipe: {} {stderr}", out.status);
}
