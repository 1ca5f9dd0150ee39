//! Backup nodes end to end: the real `ferry serve` and `ferry backup`
//! binaries on ephemeral ports. Registration and status, every PUT mirrored
//! with a matching BLAKE3, `ack = "all"` against `"none"`, a node killed or
//! frozen mid-PUT (the PUT still succeeds) and caught up after a restart
//! (deletes included), two nodes at once, PUTs at once, nodes that send garbage, a PUT
//! mirrored across `ferry upgrade` on one unbroken node connection, and the
//! backup directory served as a root after the primary is lost.
//!
//! Every wait polls with a deadline.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MIB: usize = 1 << 20;

/// A running `ferry backup`, its stderr in `<dir>.log`.
struct Node {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Node {
    fn start(server: &Server, dir: &Path) -> Node {
        Node::start_at(&server.addr, dir)
    }

    fn start_at(addr: &str, dir: &Path) -> Node {
        let log = dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = ferry()
            .args(["backup", "--dir"])
            .arg(dir)
            .args(["--server", addr])
            .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Node { child: Some(child), dir: dir.to_path_buf(), log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// The node id, once the node has chosen it.
    fn id(&self) -> String {
        let path = self.dir.join(".ferry-backup/node-id");
        wait_for("the node id", DEADLINE, || {
            let text = std::fs::read_to_string(&path).ok()?;
            (text.trim().len() == 32).then(|| text.trim().to_string())
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; the node must exit 0 soon.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_for("the node to exit", DEADLINE, || child.try_wait().unwrap());
        assert!(
            status.success(),
            "ferry backup exited with {status}:\n{}",
            std::fs::read_to_string(&self.log).unwrap()
        );
    }

    /// The BLAKE3 of `name` in the backup directory, if it is there.
    fn hash(&self, name: &str) -> Option<String> {
        hash_of(&self.dir.join(name))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen node would not die of SIGKILL before SIGCONT on
            // every kernel; wake it first.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.kill();
    }
}

fn hash_of(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 * MIB];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buf[..n]);
    }
}

/// `ferry status --json`, or `None` while it cannot answer (an upgrade).
fn try_status(server: &Server) -> Option<serde_json::Value> {
    let out = run(ferry().args(["status", "--json", "--data"]).arg(&server.data));
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The status of node `id`, as `ferry status --json` lists it.
fn node_status(server: &Server, id: &str) -> Option<serde_json::Value> {
    let status = try_status(server)?;
    let backups = status["services"]["transfer"]["backups"].as_array()?.clone();
    backups.into_iter().find(|b| b["node"] == id)
}

/// Waits until node `id` is in `state`; returns its status.
fn wait_state(server: &Server, id: &str, state: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let seen = node_status(server, id);
        if let Some(s) = &seen
            && s["state"] == state
        {
            return seen.unwrap();
        }
        assert!(start.elapsed() < DEADLINE, "node {id} not {state} after {DEADLINE:?}: {seen:?}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the node holds `name` with BLAKE3 `hash`.
fn wait_holds(node: &Node, name: &str, hash: &str) {
    wait_for(&format!("the node to hold {name}"), DEADLINE, || {
        (node.hash(name).as_deref() == Some(hash)).then_some(())
    });
}

/// Writes a file of `len` pseudo-random bytes; returns its BLAKE3.
fn make(path: &Path, len: usize, seed: u64) -> String {
    let data = bytes(len, seed);
    write_file(path, &data);
    blake3_hex(&data)
}

fn put(server: &Server, dir: &Path, path: &Path, name: &str) {
    ok(server.client(dir, &["put", path.to_str().unwrap(), "--as", name]));
}

/// A server with `config` as its TOML config.
fn server_with(dir: &Path, config: &str) -> Server {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_with(dir, &["--config", path.to_str().unwrap()])
}

/// Offset the server's PUT has reached, if one is running.
fn put_offset(server: &Server) -> Option<u64> {
    let status = try_status(server)?;
    status["transfers"].as_array()?.iter().find(|t| t["kind"] == "put")?["offset"].as_u64()
}

#[test]
fn registration_status_and_every_put_mirrored_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let early = make(&server.root().join("early.txt"), 1000, 1);
    let node = Node::start(&server, &dir.path().join("node"));
    let id = node.id();
    let status = wait_state(&server, &id, "in-sync");
    assert_eq!(status["files_held"], 1, "the file stored before the node came: {status}");
    assert_eq!(node.hash("early.txt").as_deref(), Some(early.as_str()));

    let text = String::from_utf8(ok(ferry().args(["status", "--data"]).arg(&server.data))).unwrap();
    assert!(text.contains("backup nodes:") && text.contains(&id) && text.contains("in sync"), "{text}");

    // ack = "all" (the default): when put returns, the node has the file.
    let files = [("a.bin", 3 * MIB + 17, 2), ("dir/with space=.txt", 10, 3), ("empty", 0, 4)];
    for (name, len, seed) in files {
        let src = dir.path().join(format!("src-{seed}"));
        let hash = make(&src, len, seed);
        put(&server, dir.path(), &src, name);
        assert_eq!(node.hash(name).as_deref(), Some(hash.as_str()), "{name} not on the node when STORED came");
    }
    let status = wait_state(&server, &id, "in-sync");
    assert_eq!((status["files_held"].as_u64(), status["lag_files"].as_u64()), (Some(4), Some(0)), "{status}");
    assert!(status["files_mirrored"].as_u64().unwrap() >= 4, "{status}");
    let mut listed: Vec<String> = std::fs::read_dir(node.dir.join(".ferry-backup/incoming"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert!(listed.is_empty(), "nothing left half received: {listed:?}");
    assert!(node.log().contains("registered with"), "{}", node.log());
}

#[test]
fn ack_all_waits_for_a_frozen_node_until_the_timeout_and_ack_none_does_not() {
    for (ack, timeout_ms) in [("all", 2000u64), ("none", 30_000)] {
        let dir = tempfile::tempdir().unwrap();
        let server = server_with(dir.path(), &format!("[backup]\nack = \"{ack}\"\ntimeout_ms = {timeout_ms}\n"));
        let node = Node::start(&server, &dir.path().join("node"));
        let id = node.id();
        wait_state(&server, &id, "in-sync");
        let src = dir.path().join("small");
        let hash = make(&src, 4096, 7);

        node.signal(Signal::SIGSTOP);
        let started = Instant::now();
        put(&server, dir.path(), &src, "small");
        let took = started.elapsed();
        if ack == "all" {
            assert!(took >= Duration::from_millis(timeout_ms), "STORED after {took:?}, before the timeout");
            assert!(took < Duration::from_millis(timeout_ms) + Duration::from_secs(10), "STORED after {took:?}");
            assert_eq!(node_status(&server, &id).unwrap()["state"], "behind");
        } else {
            assert!(took < Duration::from_secs(10), "ack = none still waited {took:?}");
        }
        node.signal(Signal::SIGCONT);
        wait_holds(&node, "small", &hash);
        wait_state(&server, &id, "in-sync");
    }
}

#[test]
fn a_node_killed_mid_put_does_not_fail_it_and_catches_up_with_deletes_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "[backup]\ntimeout_ms = 1000\n");
    let node_dir = dir.path().join("node");
    let mut node = Node::start(&server, &node_dir);
    let id = node.id();
    wait_state(&server, &id, "in-sync");
    let doomed = make(&dir.path().join("doomed"), 5000, 10);
    put(&server, dir.path(), &dir.path().join("doomed"), "doomed");
    wait_holds(&node, "doomed", &doomed);

    // A slow PUT; the node dies under it.
    let big = dir.path().join("big");
    let big_hash = make(&big, 48 * MIB, 11);
    let mut upload = server
        .client(dir.path(), &["put", big.to_str().unwrap(), "--limit-rate", "16M", "--retries", "0"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the PUT under way", DEADLINE, || put_offset(&server).filter(|&o| o >= 8 * MIB as u64));
    node.kill();
    let out = wait_for("the PUT to finish", Duration::from_secs(60), || upload.try_wait().unwrap());
    let mut stderr = String::new();
    upload.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(out.success(), "the PUT failed with its backup node: {stderr}");
    assert_eq!(hash_of(&server.root().join("big")).as_deref(), Some(big_hash.as_str()));
    let status = wait_state(&server, &id, "disconnected");
    assert!(status["lag_files"].as_u64().unwrap() >= 1, "{status}");

    // While it is down: another upload, and a file deleted on the primary.
    let later = make(&dir.path().join("later"), 70_000, 12);
    put(&server, dir.path(), &dir.path().join("later"), "sub/later");
    std::fs::remove_file(server.root().join("doomed")).unwrap();
    assert!(node_dir.join("doomed").exists());

    let node = Node::start(&server, &node_dir);
    assert_eq!(node.id(), id, "the same node comes back");
    wait_state(&server, &id, "in-sync");
    assert_eq!(node.hash("big").as_deref(), Some(big_hash.as_str()));
    assert_eq!(node.hash("sub/later").as_deref(), Some(later.as_str()));
    assert!(!node_dir.join("doomed").exists(), "the delete was not mirrored");
    assert!(node.log().contains("deleted doomed"), "{}", node.log());
}

#[test]
fn a_frozen_node_holds_a_put_back_no_longer_than_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "[backup]\ntimeout_ms = 1500\nmax_queue_bytes = 1048576\n");
    let node = Node::start(&server, &dir.path().join("node"));
    let id = node.id();
    wait_state(&server, &id, "in-sync");
    let big = dir.path().join("big");
    let hash = make(&big, 64 * MIB, 20);

    node.signal(Signal::SIGSTOP);
    let started = Instant::now();
    put(&server, dir.path(), &big, "big");
    let took = started.elapsed();
    // Held back once when its queue filled (at most 1.5 s), then dropped.
    assert!(took < Duration::from_secs(30), "the PUT took {took:?}");
    assert_eq!(node_status(&server, &id).unwrap()["state"], "behind");
    assert!(server.log().contains("too slow for this upload"), "{}", server.log());

    node.signal(Signal::SIGCONT);
    wait_holds(&node, "big", &hash);
    wait_state(&server, &id, "in-sync");
}

#[test]
fn two_nodes_hold_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let nodes = [Node::start(&server, &dir.path().join("one")), Node::start(&server, &dir.path().join("two"))];
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        wait_state(&server, id, "in-sync");
    }
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let src = dir.path().join(format!("src{i}"));
        let hash = make(&src, (i as usize * 700_001) % (5 * MIB) + 1, 30 + i);
        let name = format!("d{}/f{i}", i % 2);
        put(&server, dir.path(), &src, &name);
        expected.push((name, hash));
    }
    for node in &nodes {
        for (name, hash) in &expected {
            assert_eq!(node.hash(name).as_ref(), Some(hash), "{name} on {}", node.dir.display());
        }
    }
    let status = try_status(&server).unwrap();
    let backups = status["services"]["transfer"]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{status}");
    assert!(backups.iter().all(|b| b["state"] == "in-sync" && b["files_held"] == 6), "{backups:?}");
}

/// PUTs at once: the node receives one transfer at a time straight into
/// its write blocks and the others through its read buffer, interleaved
/// frame by frame on one connection. Every file must arrive whole.
#[test]
fn concurrent_puts_all_arrive_whole_on_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let node = Node::start(&server, &dir.path().join("node"));
    let id = node.id();
    wait_state(&server, &id, "in-sync");
    let files: Vec<(String, PathBuf, String)> = [24 * MIB, 16 * MIB + 5, 9 * MIB + 4093]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let src = dir.path().join(format!("src{i}"));
            let hash = make(&src, len, 60 + i as u64);
            (format!("at-once/{i}.bin"), src, hash)
        })
        .collect();
    std::thread::scope(|scope| {
        for (name, src, _) in &files {
            let (server, dir) = (&server, dir.path());
            scope.spawn(move || put(server, dir, src, name));
        }
    });
    // ack = "all": each PUT returned after the node confirmed its file, so
    // each is there now, not later through catch-up.
    for (name, _, hash) in &files {
        assert_eq!(node.hash(name).as_ref(), Some(hash), "{name} not on the node when STORED came");
    }
    assert!(!node.log().contains("cannot store"), "{}", node.log());
    let status = wait_state(&server, &id, "in-sync");
    assert_eq!(status["files_held"], 3, "{status}");
}

/// What a misbehaving node sends once registered, and the ERROR code it
/// must get.
type Garbage = (&'static str, fn(&mut Raw), &'static str);

/// `BACKUP` on a raw connection with an empty inventory; returns it after
/// `REGISTERED`.
fn raw_node(server: &Server, id: &str) -> Raw {
    let mut raw = Raw::connect(&server.addr);
    raw.info(&format!("BACKUP node={id} files=0"));
    let (ty, payload) = raw.recv().expect("a reply to BACKUP");
    let line = String::from_utf8(payload).unwrap();
    assert_eq!(ty, 0x02, "{line}");
    assert!(line.starts_with(&format!("REGISTERED node={id} held=0")), "{line}");
    raw
}

#[test]
fn nodes_that_send_garbage_are_dropped_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let node = Node::start(&server, &dir.path().join("node"));
    let good = node.id();
    wait_state(&server, &good, "in-sync");
    let id = |n: u8| format!("{n:02x}").repeat(16);

    // Refused before registering.
    let mut raw = Raw::connect(&server.addr);
    raw.info("BACKUP node=../../etc files=0");
    assert!(raw.expect_error().starts_with("bad-command invalid node id"));
    let mut raw = Raw::connect(&server.addr);
    raw.info(&format!("BACKUP node={} files=1", id(1)));
    raw.info(&format!("HAVE ../escape size=1 blake3={}", blake3_hex(b"x")));
    assert!(raw.expect_error().starts_with("bad-name"));
    let mut raw = Raw::connect(&server.addr);
    raw.info(&format!("BACKUP node={} files=99999999999", id(2)));
    assert!(raw.expect_error().starts_with("too-large"));

    // Garbage after registering: each gets its ERROR and is closed.
    let cases: [Garbage; 5] = [
        ("unknown confirm", (|r: &mut Raw| r.info("CONFIRM transfer=123")), "bad-command"),
        ("a DATA frame", (|r: &mut Raw| r.send(0x03, &[0; 12])), "bad-command"),
        ("an unknown frame type", (|r: &mut Raw| r.send_raw(&[0x07, 0, 0, 0, 0])), "bad-frame"),
        ("an oversized frame", (|r: &mut Raw| r.send_raw(&[0x02, 0xff, 0xff, 0xff, 0xff])), "too-large"),
        ("a malformed line", (|r: &mut Raw| r.info("CONFIRM transfer=1 blake3=nothex")), "bad-command"),
    ];
    for (i, (what, send, code)) in cases.iter().enumerate() {
        let mut raw = raw_node(&server, &id(10 + i as u8));
        send(&mut raw);
        let error = raw.expect_error();
        assert!(error.starts_with(code), "{what}: {error}");
        raw.expect_closed();
    }

    // A node that lies about a hash: it confirms the first file it is sent
    // with another digest.
    let src = dir.path().join("a");
    let hash = make(&src, 100_000, 40);
    put(&server, dir.path(), &src, "a");
    let mut liar = Raw::connect(&server.addr);
    liar.info(&format!("BACKUP node={} files=0", id(30)));
    let transfer = loop {
        let (ty, payload) = liar.recv().expect("catch-up of a");
        if ty == 0x02
            && let Some(rest) = String::from_utf8(payload).unwrap().strip_prefix("BACKUPDONE transfer=")
        {
            break rest.split(' ').next().unwrap().to_string();
        }
    };
    liar.info(&format!("CONFIRM transfer={transfer} blake3={}", blake3_hex(b"not a")));
    let error = liar.expect_error();
    assert!(error.starts_with("verify-failed"), "{error}");
    liar.expect_closed();

    // The server and the honest node are fine.
    let src = dir.path().join("b");
    let b = make(&src, 2 * MIB, 41);
    put(&server, dir.path(), &src, "b");
    assert_eq!(node.hash("a").as_deref(), Some(hash.as_str()));
    assert_eq!(node.hash("b").as_deref(), Some(b.as_str()));
    assert_eq!(wait_state(&server, &good, "in-sync")["files_held"], 2);
    ok(server.client(dir.path(), &["get", "b", "-o", "b.out"]));
    assert_eq!(hash_of(&dir.path().join("b.out")).as_deref(), Some(b.as_str()));
}

#[test]
fn a_put_mirrored_across_an_upgrade_arrives_complete_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let node = Node::start(&server, &dir.path().join("node"));
    let id = node.id();
    let before = wait_state(&server, &id, "in-sync");

    let big = dir.path().join("big");
    let hash = make(&big, 40 * MIB, 50);
    let upload = server
        .client(dir.path(), &["put", big.to_str().unwrap(), "--limit-rate", "8M", "--retries", "0"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the PUT under way", DEADLINE, || put_offset(&server).filter(|&o| o >= 8 * MIB as u64));
    let out = run(ferry().args(["upgrade", "--json", "--data"]).arg(&server.data));
    assert!(out.status.success(), "upgrade failed: {}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["sessions_moved"].as_u64().unwrap() >= 2, "the PUT and the feed: {report}");
    assert_ne!(report["new_pid"], server.pid());

    let out = upload.wait_with_output().unwrap();
    assert!(out.status.success(), "put failed: {}", String::from_utf8_lossy(&out.stderr));
    wait_holds(&node, "big", &hash);
    let after = wait_state(&server, &id, "in-sync");
    // One TCP connection throughout: same peer address, one registration.
    assert_eq!(after["peer"], before["peer"], "the node reconnected");
    assert_eq!(node.log().matches("registered with").count(), 1, "{}", node.log());
    assert!(node.log().contains("server paused the feed: upgrading"), "{}", node.log());
    assert!(node.log().contains("feed resumed"), "{}", node.log());
    assert!(!node.log().contains("reconnecting"), "{}", node.log());

    // The resumed feed goes on mirroring.
    let src = dir.path().join("after");
    let after_hash = make(&src, 300_000, 51);
    put(&server, dir.path(), &src, "after");
    assert_eq!(node.hash("after").as_deref(), Some(after_hash.as_str()));
}

#[test]
fn the_backup_directory_serves_every_file_when_the_primary_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Server::start(&dir.path().join("primary"));
    let node_dir = dir.path().join("node");
    let mut node = Node::start(&primary, &node_dir);
    let id = node.id();
    wait_state(&primary, &id, "in-sync");
    let mut expected = Vec::new();
    for (i, name) in ["top.bin", "a/b/deep.txt", "a/sibling", "name with spaces", "zero"].iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        let len = if *name == "zero" { 0 } else { (i + 1) * 333_333 };
        expected.push((name.to_string(), make(&src, len, 60 + i as u64)));
        put(&primary, dir.path(), &src, name);
    }
    for (name, hash) in &expected {
        wait_holds(&node, name, hash);
    }
    node.stop();
    primary.kill();

    let standby = Server::start_with(&dir.path().join("standby"), &["--root", node_dir.to_str().unwrap()]);
    let listing: serde_json::Value =
        serde_json::from_slice(&ok(standby.client(dir.path(), &["ls", "--json"]))).unwrap();
    let mut names: Vec<&str> = listing.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    names.sort();
    let mut want: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    want.sort();
    assert_eq!(names, want, "the node's own state is not served");
    for (i, (name, hash)) in expected.iter().enumerate() {
        let out = format!("got{i}");
        ok(standby.client(dir.path(), &["get", name, "-o", &out]));
        assert_eq!(hash_of(&dir.path().join(&out)).as_ref(), Some(hash), "{name}");
    }
    let mut raw = Raw::connect(&standby.addr);
    raw.info("GET .ferry-backup/node-id");
    assert!(raw.expect_error().starts_with("bad-name"));
}

#[test]
fn backup_has_help_and_refuses_a_directory_in_use() {
    let out = run(ferry().args(["backup", "--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--dir"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let node = Node::start(&server, &dir.path().join("node"));
    wait_state(&server, &node.id(), "in-sync");
    let out = run(ferry().args(["backup", "--dir"]).arg(dir.path().join("node")).args(["--server", &server.addr]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ferry backup is running"), "{out:?}");

    // A directory with files of its own is not taken over by accident.
    let other = dir.path().join("other");
    write_file(&other.join("precious.txt"), b"mine");
    let out = run(ferry().args(["backup", "--dir"]).arg(&other).args(["--server", &server.addr]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--adopt"), "{out:?}");
    assert_eq!(std::fs::read(other.join("precious.txt")).unwrap(), b"mine");
}
