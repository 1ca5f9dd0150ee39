//! The sync service end to end: a real `ferry serve` and two or three real `ferry sync` clients, each
//! on a temp folder, on ephemeral ports. Every wait polls with a deadline.
//!
//! Covers creating, modifying, deleting and renaming files (nested directories, empty files, a
//! 100 MiB file), simultaneous edits of one file (the lock), offline edits reconciled at reconnect,
//! conflicts that keep both versions, modify-beats-delete, a client killed mid-upload, the server
//! killed and restarted, and an upload carried across a live upgrade without a reconnect.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// How long the clients get to agree.
const CONVERGE: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// A running `ferry sync`.
struct Client {
    child: Child,
    folder: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl Client {
    /// `ferry sync 127.0.0.1 DIR/ID --client-id ID` against `server`, logging to `DIR/ID.log`.
    fn start(server: &Server, dir: &Path, id: &str, extra: &[&str]) -> Client {
        let (port, push_port) = server.sync_ports();
        let folder = dir.join(id);
        let mut args: Vec<String> = vec!["sync".into(), "127.0.0.1".into(), folder.display().to_string()];
        args.extend(["--port".into(), port.to_string(), "--push-port".into(), push_port.to_string()]);
        args.extend(["--client-id".into(), id.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join(format!("{id}.log"));
        let child = spawn(&args, &log);
        Client { child, folder, log, args }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.folder.join(name)
    }

    fn write(&self, name: &str, data: &[u8]) {
        write_file(&self.path(name), data);
    }

    /// Writes `data` outside the folder and moves it in, so the client sees the file whole.
    fn put(&self, name: &str, data: &[u8]) {
        let tmp = self.folder.with_extension(format!("tmp-{}", name.replace('/', "_")));
        std::fs::write(&tmp, data).unwrap();
        if let Some(dir) = self.path(name).parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times this client has connected (its log says so each time).
    fn connects(&self) -> usize {
        self.log().matches("connected to ").count()
    }

    fn wait_connected(&self, times: usize) {
        wait_for("the client to connect", DEADLINE, || (self.connects() >= times).then_some(()));
    }

    /// SIGTERM; the client must exit 0.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_exit(&mut self.child);
        assert!(status.success(), "ferry sync exited with {status}: {}", self.log());
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same client again (same folder, id and options).
    fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.args, &self.log);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    ferry()
        .args(args)
        .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn ferry sync")
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    wait_for("the client to exit", DEADLINE, || child.try_wait().unwrap())
}

/// Every file under `dir` (the client's state directory left out): name → BLAKE3 of the content.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".ferry-sync" {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if let Ok(data) = std::fs::read(&path) {
                out.insert(rel, blake3_hex(&data));
            }
        }
    }
    out
}

/// Waits until every client's folder holds the same files and `check` accepts them; returns them.
fn converge(
    clients: &[&Client],
    what: &str,
    check: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    let start = std::time::Instant::now();
    loop {
        let trees: Vec<_> = clients.iter().map(|c| tree(&c.folder)).collect();
        if trees.windows(2).all(|w| w[0] == w[1]) && check(&trees[0]) {
            return trees.into_iter().next().unwrap();
        }
        last = trees.into_iter().next().unwrap_or(last);
        if start.elapsed() > CONVERGE {
            let all: Vec<_> = clients.iter().map(|c| (c.folder.display().to_string(), tree(&c.folder))).collect();
            let logs: Vec<_> = clients.iter().map(|c| c.log()).collect();
            panic!("clients did not converge ({what}) within {CONVERGE:?}:\n{all:#?}\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hash(data: &[u8]) -> String {
    blake3_hex(data)
}

/// The conflicted copies of `name` (`stem (conflicted copy …).ext`) in a tree.
fn copies_of<'a>(tree: &'a BTreeMap<String, String>, stem: &str) -> Vec<(&'a String, &'a String)> {
    tree.iter().filter(|(n, _)| n.starts_with(&format!("{stem} (conflicted copy "))).collect()
}

/// The server's copy of `name`.
fn on_server(server: &Server, name: &str) -> Option<Vec<u8>> {
    std::fs::read(server.data.join("sync/files").join(name)).ok()
}

/// Bytes in `client`'s temporary files: what it has of files still being received.
fn receiving(client: &Client) -> u64 {
    let Ok(dir) = std::fs::read_dir(client.path(".ferry-sync/tmp")) else { return 0 };
    dir.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

/// Waits until `client` has received at least `min` bytes of a file not yet complete.
fn wait_receiving(client: &Client, min: u64) {
    wait_for("part of a file received", DEADLINE, || (receiving(client) >= min).then_some(()));
}

fn staged_uploads(server: &Server) -> usize {
    std::fs::read_dir(server.data.join("sync/uploads")).map(|d| d.count()).unwrap_or(0)
}

/// Waits until the server reports an upload of `name` past `min` bytes.
fn wait_upload_under_way(server: &Server, name: &str, min: u64) {
    wait_for("an upload under way", DEADLINE, || {
        let out = ferry().args(["status", "--json", "--data"]).arg(&server.data).output().ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let transfers = status["transfers"].as_array()?;
        transfers
            .iter()
            .find(|t| t["name"] == name && t["kind"] == "put" && t["offset"].as_u64() >= Some(min))
            .map(|_| ())
    });
}

#[test]
fn create_modify_delete_rename_and_nested_directories() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &[]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);

    a.write("top.txt", b"top");
    a.write("d1/d2/d3/deep.txt", b"deep");
    a.write("empty", b"");
    converge(&[&a, &b], "created on a", |t| t.len() == 3);
    assert_eq!(std::fs::read(b.path("d1/d2/d3/deep.txt")).unwrap(), b"deep");
    assert_eq!(std::fs::read(b.path("empty")).unwrap(), b"");

    b.write("top.txt", b"changed on b");
    converge(&[&a, &b], "modified on b", |t| t.get("top.txt") == Some(&hash(b"changed on b")));

    std::fs::remove_file(a.path("empty")).unwrap();
    converge(&[&a, &b], "deleted on a", |t| !t.contains_key("empty"));

    std::fs::rename(a.path("top.txt"), a.path("renamed.txt")).unwrap();
    std::fs::rename(a.path("d1"), a.path("moved")).unwrap();
    let t = converge(&[&a, &b], "renamed on a", |t| {
        t.contains_key("renamed.txt") && t.contains_key("moved/d2/d3/deep.txt")
    });
    assert_eq!(t.len(), 2, "the old names are gone: {t:?}");
    assert!(!b.path("d1").exists(), "the emptied directory is gone too");
    assert_eq!(on_server(&server, "moved/d2/d3/deep.txt").unwrap(), b"deep");
    assert_eq!(staged_uploads(&server), 0);
}

#[test]
fn a_100_mib_file_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &[]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    let data = bytes(100 * MIB, 7);
    a.put("big/file.bin", &data);
    let want = hash(&data);
    converge(&[&a, &b], "100 MiB", |t| t.get("big/file.bin") == Some(&want));
    assert_eq!(blake3_hex(&on_server(&server, "big/file.bin").unwrap()), want);
}

#[test]
fn three_clients_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let clients: Vec<Client> = ["a", "b", "c"].iter().map(|id| Client::start(&server, dir.path(), id, &[])).collect();
    for c in &clients {
        c.wait_connected(1);
    }
    for (i, c) in clients.iter().enumerate() {
        for j in 0..10 {
            c.write(&format!("from{i}/f{j}"), format!("{i}:{j}").as_bytes());
        }
    }
    let refs: Vec<&Client> = clients.iter().collect();
    converge(&refs, "30 files from three clients", |t| t.len() == 30);
    std::fs::remove_dir_all(clients[2].path("from0")).unwrap();
    clients[1].write("from2/f0", b"edited by b");
    let t =
        converge(&refs, "a delete and an edit", |t| t.len() == 20 && t.get("from2/f0") == Some(&hash(b"edited by b")));
    assert!(t.keys().all(|n| !n.starts_with("from0/")));
}

#[test]
fn simultaneous_edits_of_one_file_keep_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    // a uploads slowly, so its lock is held while b edits the same file.
    let a = Client::start(&server, dir.path(), "a", &["--limit-rate", "1M", "--chunk-size", "256K"]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    let from_a = bytes(3 * MIB, 1);
    a.put("shared.bin", &from_a);
    wait_upload_under_way(&server, "shared.bin", 256 * 1024);
    b.put("shared.bin", b"b's edit, made while a held the lock");
    let t = converge(&[&a, &b], "both versions kept", |t| {
        t.get("shared.bin") == Some(&hash(&from_a)) && copies_of(t, "shared").len() == 1
    });
    let (copy, content) = copies_of(&t, "shared")[0];
    assert_eq!(content, &hash(b"b's edit, made while a held the lock"));
    assert!(copy.starts_with("shared (conflicted copy b ") && copy.ends_with(").bin"), "{copy}");
    assert!(b.log().contains("Abort - File Locked"), "b's upload met a's lock: {}", b.log());
}

#[test]
fn offline_edits_are_reconciled_at_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &[]);
    let mut b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    a.write("keep", b"kept");
    a.write("edit-on-a", b"v1");
    a.write("delete-on-a", b"x");
    a.write("edit-on-b", b"v1");
    a.write("delete-on-b", b"y");
    converge(&[&a, &b], "the starting files", |t| t.len() == 5);

    b.stop();
    a.write("edit-on-a", b"v2 from a");
    std::fs::remove_file(a.path("delete-on-a")).unwrap();
    a.write("new-on-a", b"new a");
    b.write("edit-on-b", b"v2 from b");
    std::fs::remove_file(b.path("delete-on-b")).unwrap();
    b.write("new-on-b", b"new b");
    wait_for("a's changes on the server", DEADLINE, || (on_server(&server, "new-on-a").is_some()).then_some(()));

    b.restart();
    b.wait_connected(1);
    let want: BTreeMap<String, String> = [
        ("keep", &b"kept"[..]),
        ("edit-on-a", b"v2 from a"),
        ("edit-on-b", b"v2 from b"),
        ("new-on-a", b"new a"),
        ("new-on-b", b"new b"),
    ]
    .iter()
    .map(|(n, d)| (n.to_string(), hash(d)))
    .collect();
    converge(&[&a, &b], "after reconnect", |t| *t == want);
}

#[test]
fn a_conflict_keeps_both_versions_and_modify_beats_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &[]);
    let mut b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    a.write("notes.txt", b"v1");
    a.write("doomed.txt", b"v1");
    converge(&[&a, &b], "the starting files", |t| t.len() == 2);

    b.stop();
    // Both edit notes.txt; a deletes doomed.txt, which b edits.
    a.write("notes.txt", b"a's version");
    std::fs::remove_file(a.path("doomed.txt")).unwrap();
    b.write("notes.txt", b"b's version");
    b.write("doomed.txt", b"b kept this alive");
    wait_for("a's delete on the server", DEADLINE, || on_server(&server, "doomed.txt").is_none().then_some(()));

    b.restart();
    let t = converge(&[&a, &b], "conflict resolved", |t| {
        t.get("notes.txt") == Some(&hash(b"a's version"))
            && copies_of(t, "notes").len() == 1
            && t.get("doomed.txt") == Some(&hash(b"b kept this alive"))
    });
    assert_eq!(copies_of(&t, "notes")[0].1, &hash(b"b's version"));
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn a_client_killed_mid_upload_leaves_no_partial_file_and_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let mut a = Client::start(&server, dir.path(), "a", &["--limit-rate", "1M", "--chunk-size", "256K"]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    a.put("big.bin", &bytes(8 * MIB, 3));
    wait_upload_under_way(&server, "big.bin", 512 * 1024);
    // The upload is relayed to b as it arrives: b has part of it, which the abort must take away.
    wait_receiving(&b, 256 * 1024);
    a.kill();
    wait_for("the partial upload to be dropped", DEADLINE, || (staged_uploads(&server) == 0).then_some(()));
    assert!(on_server(&server, "big.bin").is_none(), "no partial file on the server");
    assert!(!b.path("big.bin").exists(), "no partial file on the other client");
    // The lock went with the client: b can write the file.
    b.write("big.bin", b"b's own");
    wait_for("b's file on the server", DEADLINE, || {
        (on_server(&server, "big.bin").as_deref() == Some(b"b's own")).then_some(())
    });
    let leftovers: Vec<_> = std::fs::read_dir(b.path(".ferry-sync/tmp")).unwrap().collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_large_upload_reaches_the_others_while_it_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &["--limit-rate", "4M", "--chunk-size", "256K"]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    let c = Client::start(&server, dir.path(), "c", &[]);
    for client in [&a, &b, &c] {
        client.wait_connected(1);
    }
    let data = bytes(12 * MIB, 11);
    a.put("big.bin", &data);
    // Cut-through: b and c are writing the file before the server has all of it...
    wait_receiving(&b, 2 * MIB as u64);
    wait_receiving(&c, 2 * MIB as u64);
    assert!(on_server(&server, "big.bin").is_none(), "the upload is not committed yet");
    // ...and see it complete only once the server has committed it.
    assert!(!b.path("big.bin").exists() && !c.path("big.bin").exists());
    let want = hash(&data);
    converge(&[&a, &b, &c], "the relayed file arrived", |t| t.get("big.bin") == Some(&want) && t.len() == 1);
    assert_eq!(blake3_hex(&on_server(&server, "big.bin").unwrap()), want);
    wait_for("the temporary files to go", DEADLINE, || (receiving(&b) + receiving(&c) == 0).then_some(()));
}

#[test]
fn the_server_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &[]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    a.write("before", b"synced before the crash");
    converge(&[&a, &b], "before the crash", |t| t.len() == 1);

    server.kill();
    a.write("during", b"written while the server was down");
    b.write("before", b"edited while the server was down");
    server.restart_sync();
    a.wait_connected(2);
    b.wait_connected(2);
    converge(&[&a, &b], "after the restart", |t| {
        t.get("during") == Some(&hash(b"written while the server was down"))
            && t.get("before") == Some(&hash(b"edited while the server was down"))
    });
    assert_eq!(on_server(&server, "during").unwrap(), b"written while the server was down");
}

#[test]
fn an_upload_continues_across_a_live_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_sync(dir.path(), &[]);
    let a = Client::start(&server, dir.path(), "a", &["--limit-rate", "2M", "--chunk-size", "256K"]);
    let b = Client::start(&server, dir.path(), "b", &[]);
    a.wait_connected(1);
    b.wait_connected(1);
    let data = bytes(6 * MIB, 5);
    a.put("moving.bin", &data);
    wait_upload_under_way(&server, "moving.bin", MIB as u64);
    // b receives it as it is uploaded: the relay ends at the upgrade, and b gets the file afterwards.
    wait_receiving(&b, 256 * 1024);
    let old_pid = server.current_pid();
    let out = run(ferry().args(["upgrade", "--json", "--data"]).arg(&server.data));
    assert!(out.status.success(), "upgrade failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["sessions_moved"].as_u64().unwrap() >= 4, "{report}");
    assert_ne!(server.current_pid(), old_pid);
    let want = hash(&data);
    converge(&[&a, &b], "the upload finished in the new process", |t| t.get("moving.bin") == Some(&want));
    assert_eq!(blake3_hex(&on_server(&server, "moving.bin").unwrap()), want);
    // Neither client noticed: one connection each, no reconnect.
    assert_eq!(a.connects(), 1, "{}", a.log());
    assert_eq!(b.connects(), 1, "{}", b.log());
    assert!(!a.log().contains("disconnected"), "{}", a.log());
}
