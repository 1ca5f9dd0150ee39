//! Bad input end to end: garbage, oversized, unknown, truncated and
//! malformed frames, names that try to leave the root (directly or through a
//! symlink), and commands out of place.
//!
//! Each case proves three things against the real `ferry serve`:
//! - the offender gets one ERROR frame with the exact code and a useful
//!   message, and then the server closes that connection;
//! - nothing is served that should not be and nothing is written where it
//!   should not be;
//! - everyone else is unaffected: a client that connected before the bad
//!   input still gets the same listing, a new client still downloads a file
//!   stored before it, and that file is byte-identical on disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

const ERROR: u8 = 0x01;
const INFO: u8 = 0x02;
const DATA: u8 = 0x03;
const ACK: u8 = 0x04;

/// The default `transfer.max_frame_bytes`.
const MAX_FRAME: u32 = 4 << 20;

/// A file stored before any bad input; it must survive every case.
const KEPT: &str = "kept/file.bin";
const KEPT_LEN: usize = 200_000;

/// A server with one file already stored.
struct Fixture {
    dir: TempDir,
    server: Server,
    kept: Vec<u8>,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let kept = bytes(KEPT_LEN, 7);
        write_file(&dir.path().join("kept.src"), &kept);
        ok(server.client(dir.path(), &["put", "kept.src", "--as", KEPT]));
        Fixture { dir, server, kept }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stores `data` as `name` with the real client.
    fn put(&self, name: &str, data: &[u8]) {
        let src = self.path().join("upload.src");
        write_file(&src, data);
        ok(self.server.client(self.path(), &["put", "upload.src", "--as", name]));
    }

    /// Runs `bad` on a fresh connection, with a bystander connected (and
    /// served) before it, then checks that the server still serves everyone
    /// else and that the stored files are untouched.
    fn misbehave(&self, bad: impl FnOnce(&mut Raw)) {
        let mut early = Raw::connect(&self.server.addr);
        let listing = list(&mut early);
        assert!(listing.iter().any(|e| e.starts_with(&format!("ENTRY name={KEPT} size={KEPT_LEN} "))), "{listing:?}");

        let mut offender = Raw::connect(&self.server.addr);
        bad(&mut offender);
        drop(offender);

        assert_eq!(list(&mut early), listing, "the early client sees a different listing after the bad input");
        let fetched = ok(self.server.client(self.path(), &["get", KEPT, "-o", "-"]));
        assert!(fetched == self.kept, "a new client got different bytes for {KEPT}");
        assert!(std::fs::read(self.server.root().join(KEPT)).unwrap() == self.kept, "{KEPT} changed on disk");
    }
}

/// `LIST` on an open connection: the `ENTRY` lines, checked against `END count=N`.
fn list(raw: &mut Raw) -> Vec<String> {
    raw.info("LIST");
    let mut entries = Vec::new();
    loop {
        let (ty, payload) = raw.recv().expect("connection closed during LIST");
        let line = String::from_utf8(payload).unwrap();
        assert_eq!(ty, INFO, "unexpected frame type {ty} during LIST: {line}");
        if let Some(count) = line.strip_prefix("END count=") {
            assert_eq!(count.parse::<usize>().unwrap(), entries.len(), "{line}");
            return entries;
        }
        assert!(line.starts_with("ENTRY "), "unexpected reply to LIST: {line}");
        entries.push(line);
    }
}

/// Waits for the ERROR answering bad input, checks its code and that no file
/// data came before it, then checks that the server closes the connection.
/// Returns the message after the code.
fn rejected(raw: &mut Raw, code: &str) -> String {
    let payload = loop {
        match raw.recv() {
            Some((ERROR, payload)) => break String::from_utf8(payload).unwrap(),
            Some((DATA, _)) => panic!("server sent file data instead of a {code} ERROR"),
            Some(_) => continue,
            None => panic!("no ERROR frame (expected {code}): connection closed or read timed out"),
        }
    };
    let (got, message) = payload.split_once(' ').unwrap_or((&payload, ""));
    assert_eq!(got, code, "ERROR payload: {payload:?}");
    raw.expect_closed();
    message.to_string()
}

fn data_payload(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut payload = offset.to_be_bytes().to_vec();
    payload.extend_from_slice(bytes);
    payload
}

/// A complete upload of `data` sent in one go, so that a server that wrongly
/// accepted the PUT would also store the file.
fn pipelined_put(raw: &mut Raw, escaped_name: &str, data: &[u8]) {
    raw.info(&format!("PUT {escaped_name} size={}", data.len()));
    raw.send(DATA, &data_payload(0, data));
    raw.info(&format!("DONE size={} blake3={}", data.len(), blake3_hex(data)));
}

/// Everything under `dir` (not following symlinks) except the server log,
/// which grows on its own: path → kind and content hash or link target.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                walk(&path, out);
                "dir".to_string()
            } else if meta.is_symlink() {
                format!("link to {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_file() && path.file_name().is_some_and(|n| n != "serve.log") {
                format!("file {}", blake3_hex(&std::fs::read(&path).unwrap()))
            } else {
                "other".to_string()
            };
            out.insert(path, kind);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

#[test]
fn garbage_bytes_are_a_bad_frame() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.send_raw(b"hello server\r\n");
        let msg = rejected(raw, "bad-frame");
        assert!(msg.contains("unknown frame type 0x68"), "{msg}");
    });
}

#[test]
fn a_frame_over_the_size_limit_is_refused_from_its_header() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        // Claim 4 MiB + 1 of DATA but send only 100 bytes of it and keep the
        // connection open: the ERROR must not wait for the rest.
        let mut head = vec![DATA];
        head.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        head.extend_from_slice(&[0u8; 100]);
        raw.send_raw(&head);
        let msg = rejected(raw, "too-large");
        assert!(msg.contains(&format!("frame of {} bytes exceeds the limit of {MAX_FRAME}", MAX_FRAME + 1)), "{msg}");
    });
}

#[test]
fn unknown_frame_types_are_a_bad_frame() {
    let fx = Fixture::start();
    for ty in [0x07u8, 0xff] {
        fx.misbehave(|raw| {
            raw.send(ty, b"LIST");
            let msg = rejected(raw, "bad-frame");
            assert!(msg.contains(&format!("unknown frame type 0x{ty:02x}")), "{msg}");
        });
    }
}

#[test]
fn a_frame_cut_short_by_the_client_closing_is_truncated() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        let mut partial = vec![INFO];
        partial.extend_from_slice(&100u32.to_be_bytes());
        partial.extend_from_slice(b"GET kept/f");
        raw.send_raw(&partial);
        raw.stream.shutdown(Shutdown::Write).unwrap();
        let msg = rejected(raw, "truncated");
        assert!(msg.contains("after 15 bytes of an incomplete frame"), "{msg}");
    });
}

#[test]
fn names_leaving_the_root_are_refused_for_get_and_put() {
    let fx = Fixture::start();
    let passwd = std::fs::read("/etc/passwd").ok();
    // (escaped name as sent, what the message must say)
    let cases = [
        ("../x", r#"".." component: "../x""#),
        ("/etc/passwd", r#"absolute: "/etc/passwd""#),
        ("a/../../x", r#"".." component: "a/../../x""#),
        ("a%00b", "NUL byte"),
    ];
    for (name, why) in cases {
        fx.misbehave(|raw| {
            raw.info(&format!("GET {name}"));
            let msg = rejected(raw, "bad-name");
            assert!(msg.contains(why), "GET {name}: {msg}");
        });
        fx.misbehave(|raw| {
            let before = tree(fx.path());
            pipelined_put(raw, name, b"evil!");
            let msg = rejected(raw, "bad-name");
            assert!(msg.contains(why), "PUT {name}: {msg}");
            assert_eq!(tree(fx.path()), before, "PUT {name} created or changed files");
        });
    }
    assert!(!fx.server.data.join("x").exists());
    assert!(!fx.server.root().join("a").exists());
    assert_eq!(std::fs::read("/etc/passwd").ok(), passwd);
}

#[test]
fn a_symlink_out_of_the_root_is_refused_for_get_and_put() {
    let fx = Fixture::start();
    let outside = fx.path().join("outside");
    let secret = b"the secret outside the root";
    write_file(&outside.join("secret.txt"), secret);
    symlink(&outside, fx.server.root().join("out")).unwrap();

    fx.misbehave(|raw| {
        raw.info("GET out/secret.txt");
        let msg = rejected(raw, "bad-name");
        assert!(msg.contains("escapes the root: out/secret.txt"), "{msg}");
        assert!(!msg.contains("secret outside"), "{msg}");
    });
    fx.misbehave(|raw| {
        let before = tree(fx.path());
        pipelined_put(raw, "out/new.txt", b"new");
        let msg = rejected(raw, "bad-name");
        assert!(msg.contains("escapes the root: out/new.txt"), "{msg}");
        assert_eq!(tree(fx.path()), before, "PUT through the symlink created or changed files");
    });
    assert!(!outside.join("new.txt").exists());
    assert_eq!(std::fs::read(outside.join("secret.txt")).unwrap(), secret);
    let listing = list(&mut Raw::connect(&fx.server.addr));
    assert!(listing.iter().all(|e| !e.contains("secret")), "LIST exposes the outside file: {listing:?}");
}

#[test]
fn a_symlink_inside_the_root_is_served() {
    let fx = Fixture::start();
    let data = bytes(50_000, 9);
    fx.put("real.bin", &data);
    symlink(fx.server.root().join("real.bin"), fx.server.root().join("alias.bin")).unwrap();
    let fetched = ok(fx.server.client(fx.path(), &["get", "alias.bin", "-o", "-"]));
    assert!(fetched == data, "the symlink served different bytes");
    let listing = list(&mut Raw::connect(&fx.server.addr));
    assert!(listing.iter().any(|e| e.starts_with("ENTRY name=alias.bin size=50000 ")), "{listing:?}");
}

#[test]
fn malformed_payloads_are_a_bad_frame() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.send(ACK, &[0, 0, 1]);
        let msg = rejected(raw, "bad-frame");
        assert!(msg.contains("malformed ACK frame: payload must be 8 bytes"), "{msg}");
    });
    fx.misbehave(|raw| {
        raw.send(INFO, b"GET \xff\xfe");
        let msg = rejected(raw, "bad-frame");
        assert!(msg.contains("malformed INFO frame: not UTF-8"), "{msg}");
    });
}

#[test]
fn frames_and_commands_out_of_place_are_a_bad_command() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.send(DATA, &data_payload(0, b"abc"));
        let msg = rejected(raw, "bad-command");
        assert!(msg.contains("expected a command (INFO), got Data frame"), "{msg}");
    });
    let lines = [
        (format!("DONE size=3 blake3={}", blake3_hex(b"abc")), "DONE outside a PUT"),
        ("FETCH x".to_string(), r#"unknown command "FETCH""#),
        (format!("GET {KEPT} offset=abc"), "offset=abc is not a number"),
    ];
    for (line, why) in lines {
        fx.misbehave(|raw| {
            raw.info(&line);
            let msg = rejected(raw, "bad-command");
            assert!(msg.contains(why), "{line}: {msg}");
        });
    }
}

#[test]
fn get_from_past_the_end_is_a_bad_offset() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.info(&format!("GET {KEPT} offset={}", KEPT_LEN + 1));
        let msg = rejected(raw, "bad-offset");
        assert!(
            msg.contains(&format!("offset {} is past the end of {KEPT} ({KEPT_LEN} bytes)", KEPT_LEN + 1)),
            "{msg}"
        );
    });
}

#[test]
fn put_data_at_the_wrong_offset_is_a_bad_offset() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.info("PUT skewed.bin size=10");
        assert_eq!(raw.recv(), Some((ACK, 0u64.to_be_bytes().to_vec())), "PUT should be answered with ACK 0");
        raw.send(DATA, &data_payload(4, b"abcdef"));
        let msg = rejected(raw, "bad-offset");
        assert!(msg.contains("DATA at offset 4, expected 0"), "{msg}");
    });
    assert!(!fx.server.root().join("skewed.bin").exists());
}

#[test]
fn a_failed_verification_keeps_the_old_version() {
    let fx = Fixture::start();
    let old = b"old version".to_vec();
    fx.put("doc.txt", &old);
    fx.misbehave(|raw| {
        raw.info("PUT doc.txt size=3");
        raw.send(DATA, &data_payload(0, b"new"));
        raw.info(&format!("DONE size=3 blake3={}", blake3_hex(b"not new")));
        let msg = rejected(raw, "verify-failed");
        assert!(msg.contains("BLAKE3 mismatch"), "{msg}");
        assert!(msg.contains("nothing was stored"), "{msg}");
    });
    assert_eq!(std::fs::read(fx.server.root().join("doc.txt")).unwrap(), old);
    let listing: serde_json::Value =
        serde_json::from_slice(&ok(fx.server.client(fx.path(), &["ls", "--json"]))).unwrap();
    let doc = listing.as_array().unwrap().iter().find(|e| e["name"] == "doc.txt").expect("doc.txt is listed");
    assert_eq!(doc["size"], old.len());
    let leftovers: Vec<_> = std::fs::read_dir(fx.server.data.join("uploads")).unwrap().collect();
    assert!(leftovers.is_empty(), "the rejected upload was not discarded: {leftovers:?}");
}

#[test]
fn get_of_a_missing_file_is_not_found() {
    let fx = Fixture::start();
    fx.misbehave(|raw| {
        raw.info("GET missing.bin");
        let msg = rejected(raw, "not-found");
        assert_eq!(msg, "no such file: missing.bin");
    });
}
