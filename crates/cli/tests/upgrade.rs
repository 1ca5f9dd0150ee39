//! Live upgrade end to end: `ferry upgrade` (and SIGUSR2) move every
//! listener, idle connection and transfer in flight to a new executable;
//! a new executable that exits, hangs or refuses the handover is rolled
//! back with every transfer intact; systemd is told the new main pid; the
//! admin socket moves too.
//!
//! Clients run with `--retries 0`: any dropped connection fails them, so a
//! client that exits 0 proves its connection was never re-established.
//! Transfers are slowed with `--limit-rate` so the upgrades land while they
//! run; every wait polls with a deadline.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAUSED: &str = "server paused the transfer: upgrading";
const RESUMED: &str = "transfer resumed (server version ";

/// Writes `len` deterministic pseudo-random bytes (BLAKE3's extendable
/// output keyed by `seed`: like the harness's `bytes()`, but fast enough
/// for a GiB in a debug build) 4 MiB at a time, without holding the file in
/// memory; returns the file's BLAKE3.
fn write_big(path: &Path, len: u64, seed: u64) -> String {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut stream =
        blake3::Hasher::new_derive_key("ferry upgrade test data").update(&seed.to_le_bytes()).finalize_xof();
    let mut file = std::fs::File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 4 * MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = chunk.len().min(left as usize);
        stream.fill(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    hasher.finalize().to_hex().to_string()
}

/// BLAKE3 of a file, read in pieces.
fn hash_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_hex().to_string()
}

/// `ferry upgrade --json --data <data> [--binary PATH]`.
fn upgrade(server: &Server, binary: Option<&Path>) -> Output {
    let mut cmd = ferry();
    cmd.args(["upgrade", "--json", "--data"]).arg(&server.data);
    if let Some(binary) = binary {
        cmd.arg("--binary").arg(binary);
    }
    run(cmd)
}

/// An upgrade that must succeed; returns its report.
fn upgrade_ok(server: &Server, binary: Option<&Path>) -> serde_json::Value {
    let out = upgrade(server, binary);
    assert!(
        out.status.success(),
        "ferry upgrade failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An upgrade that must fail; returns ferry's one-line error.
fn upgrade_fails(server: &Server, binary: &Path) -> String {
    let out = upgrade(server, Some(binary));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "upgrade to {} succeeded: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("upgrade failed, the old server is still serving"), "{stderr}");
    stderr
}

/// `ferry status --json` that may fail (while an upgrade is under way).
fn try_status(data: &Path) -> Option<serde_json::Value> {
    let out = run(ferry().args(["status", "--json", "--data"]).arg(data));
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A client with its stderr captured.
fn spawn_client(server: &Server, dir: &Path, args: &[&str]) -> Child {
    server.client(dir, args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits for a client and asserts it exited 0; returns its stderr.
fn finish(child: Child, what: &str, server: &Server) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed ({}): {stderr}\nserver log:\n{}", out.status, server.log());
    stderr
}

/// The pause and resume notices in a client's stderr, in order.
fn notices(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(PAUSED) || l.contains(RESUMED)).collect()
}

/// Asserts `pairs` alternating paused/resumed notices and nothing else
/// about a retry; returns the versions the resumes named.
fn assert_pairs(stderr: &str, pairs: usize) -> Vec<String> {
    let seen = notices(stderr);
    assert_eq!(seen.len(), 2 * pairs, "expected {pairs} paused/resumed pairs:\n{stderr}");
    let mut versions = Vec::new();
    for pair in seen.chunks(2) {
        assert!(pair[0].contains(PAUSED) && pair[1].contains(RESUMED), "out of order:\n{stderr}");
        let version = pair[1].split(RESUMED).nth(1).unwrap().trim_end_matches(')');
        versions.push(version.to_string());
    }
    assert!(!stderr.contains("retrying"), "{stderr}");
    versions
}

/// Offset reached by the server's transfer of `kind`, if one is running.
fn offset_of(status: &serde_json::Value, kind: &str) -> Option<u64> {
    status["transfers"].as_array()?.iter().find(|t| t["kind"] == kind)?["offset"].as_u64()
}

/// Waits until the server reports each of `kinds` past `min` bytes.
fn wait_under_way(server: &Server, kinds: &[&str], min: u64) {
    wait_for("transfers under way", DEADLINE, || {
        let status = try_status(&server.data)?;
        kinds.iter().all(|k| offset_of(&status, k).is_some_and(|o| o >= min)).then_some(())
    });
}

/// The package version (without any build tag) of the binary under test.
fn package_version() -> String {
    let out = String::from_utf8(ok(ferry().arg("--version"))).unwrap();
    let version = out.split_whitespace().nth(1).unwrap();
    version.split('+').next().unwrap().to_string()
}

fn last_upgrade(server: &Server) -> serde_json::Value {
    server.status()["upgrades"].as_array().unwrap().last().cloned().unwrap()
}

/// Sends LIST on a raw connection; returns the INFO lines up to END.
fn list(raw: &mut Raw) -> Vec<String> {
    raw.info("LIST");
    let mut lines = Vec::new();
    loop {
        let (ty, payload) = raw.recv().expect("a LIST reply, not EOF");
        assert_eq!(ty, 0x02, "unexpected frame: {}", String::from_utf8_lossy(&payload));
        let line = String::from_utf8(payload).unwrap();
        let end = line.starts_with("END");
        lines.push(line);
        if end {
            return lines;
        }
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn transfers_and_idle_connections_survive_ten_upgrades() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let down = server.root().join("down.bin");
    let up = dir.path().join("up.bin");
    let down_hash = write_big(&down, GIB, 31);
    let up_hash = write_big(&up, GIB, 32);
    let generated = started.elapsed();

    // An idle connection that has run a command, so the server holds it as
    // a session.
    let mut idle = Raw::connect(&server.addr);
    let before = list(&mut idle);
    assert!(before.iter().any(|l| l.starts_with("ENTRY name=down.bin ")), "{before:?}");

    let rate = "64M";
    let mut get = spawn_client(
        &server,
        dir.path(),
        &["get", "down.bin", "-o", "down.out", "--limit-rate", rate, "--retries", "0"],
    );
    let mut put = spawn_client(&server, dir.path(), &["put", "up.bin", "--limit-rate", rate, "--retries", "0"]);
    wait_under_way(&server, &["get", "put"], 16 * MIB);

    let first = server.pid();
    let mut pids = vec![first];
    let upgrades_started = Instant::now();
    for i in 0..10 {
        let report = upgrade_ok(&server, None);
        let moved = report["sessions_moved"].as_u64().unwrap();
        // The GET, the PUT and the idle connection.
        assert!(moved >= 3, "upgrade {i} moved {moved} sessions: {report}");
        assert_eq!(report["old_pid"].as_i64().unwrap(), *pids.last().unwrap() as i64, "{report}");
        let new_pid = report["new_pid"].as_i64().unwrap() as i32;
        assert!(!pids.contains(&new_pid), "pid {new_pid} reused: {pids:?}");
        pids.push(new_pid);
        assert_eq!(server.current_pid(), Some(new_pid));
    }
    let upgrading = upgrades_started.elapsed();
    // Every upgrade happened while both transfers were running.
    assert!(get.try_wait().unwrap().is_none(), "the GET finished before the last upgrade");
    assert!(put.try_wait().unwrap().is_none(), "the PUT finished before the last upgrade");
    for &pid in &pids[1..pids.len() - 1] {
        wait_for("an old process to exit", DEADLINE, || (!alive(pid)).then_some(()));
    }

    let get_err = finish(get, "get", &server);
    let put_err = finish(put, "put", &server);
    assert_eq!(hash_file(&dir.path().join("down.out")), down_hash);
    assert_eq!(hash_file(&server.root().join("up.bin")), up_hash);
    assert_pairs(&get_err, 10);
    assert_pairs(&put_err, 10);

    // The idle connection opened before the first upgrade still answers.
    let after = list(&mut idle);
    assert!(after.iter().any(|l| l.starts_with("ENTRY name=down.bin ")), "{after:?}");
    assert!(after.iter().any(|l| l.starts_with("ENTRY name=up.bin ")), "{after:?}");

    let status = server.status();
    assert_eq!(status["pid"].as_i64().unwrap(), *pids.last().unwrap() as i64);
    let history = status["upgrades"].as_array().unwrap();
    assert_eq!(history.len(), 10, "{history:?}");
    for (i, record) in history.iter().enumerate() {
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["old_pid"].as_i64().unwrap(), pids[i] as i64, "{record}");
        assert_eq!(record["new_pid"].as_i64().unwrap(), pids[i + 1] as i64, "{record}");
    }

    for path in [down, up, dir.path().join("down.out"), server.root().join("up.bin")] {
        std::fs::remove_file(path).unwrap();
    }
    eprintln!(
        "two 1 GiB files generated in {generated:?}; 10 upgrades in {upgrading:?}; test took {:?}",
        started.elapsed()
    );
}

/// A second build of ferry whose version ends in `+canary`.
fn canary_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_CANARY_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let target = root.join("target").join("canary");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = run(Command::new(cargo)
        .args(["build", "-p", "ferry-cli", "--bin", "ferry", "--target-dir"])
        .arg(&target)
        .current_dir(&root)
        .env("FERRY_BUILD_TAG", "canary"));
    assert!(out.status.success(), "building the canary failed: {}", String::from_utf8_lossy(&out.stderr));
    target.join("debug").join("ferry")
}

#[test]
fn resumed_sessions_run_the_new_code() {
    let canary = canary_binary();
    let version = package_version();
    let canary_version = format!("{version}+canary");
    let shown = String::from_utf8(ok(Command::new(&canary).arg("--version"))).unwrap();
    assert!(shown.contains(&canary_version), "{} is not the canary: {shown}", canary.display());

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data_hash = write_big(&server.root().join("big.bin"), 48 * MIB, 41);
    let get =
        spawn_client(&server, dir.path(), &["get", "big.bin", "-o", "big.out", "--limit-rate", "8M", "--retries", "0"]);
    wait_under_way(&server, &["get"], 4 * MIB);

    let report = upgrade_ok(&server, Some(&canary));
    let new_version = report["new_version"].as_str().unwrap();
    assert!(new_version.ends_with("+canary"), "{report}");
    assert_eq!(new_version, canary_version);
    assert!(report["sessions_moved"].as_u64().unwrap() >= 1, "{report}");
    let status = server.status();
    assert_eq!(status["version"], canary_version.as_str());
    assert_eq!(status["pid"], report["new_pid"]);
    assert_eq!(status["upgrades"][0]["new_version"], canary_version.as_str());

    let stderr = finish(get, "get", &server);
    assert!(stderr.contains(&format!("transfer resumed (server version {canary_version})")), "{stderr}");
    assert_eq!(assert_pairs(&stderr, 1), [canary_version]);
    assert_eq!(hash_file(&dir.path().join("big.out")), data_hash);
}

/// A slow GET and PUT in flight on a server whose upgrades time out after
/// 3 s.
struct Rollback {
    // Fields drop in order: the server (which reads ferry.pid to find the
    // process serving now) before its directory.
    server: Server,
    dir: tempfile::TempDir,
    get: Child,
    put: Child,
    down_hash: String,
    up_hash: String,
}

impl Rollback {
    fn start() -> Rollback {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        std::fs::write(&config, "[upgrade]\ntimeout_secs = 3\n").unwrap();
        let server = Server::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
        let size = 64 * MIB;
        let down_hash = write_big(&server.root().join("down.bin"), size, 51);
        let up_hash = write_big(&dir.path().join("up.bin"), size, 52);
        let args = ["--limit-rate", "8M", "--retries", "0"];
        let get = spawn_client(&server, dir.path(), &[&["get", "down.bin", "-o", "down.out"][..], &args].concat());
        let put = spawn_client(&server, dir.path(), &[&["put", "up.bin"][..], &args].concat());
        wait_under_way(&server, &["get", "put"], 2 * MIB);
        Rollback { server, dir, get, put, down_hash, up_hash }
    }

    /// After the failed upgrade: the same process serves, and a normal
    /// upgrade still moves both transfers, which then finish intact with
    /// `pairs` paused/resumed notices each.
    fn check(mut self, pairs: usize) {
        let server = &self.server;
        assert_eq!(server.current_pid(), Some(server.pid()));
        assert_eq!(server.status()["pid"], server.pid());
        assert!(self.get.try_wait().unwrap().is_none(), "the GET ended during the failed upgrade");
        assert!(self.put.try_wait().unwrap().is_none(), "the PUT ended during the failed upgrade");

        let report = upgrade_ok(server, None);
        assert!(report["sessions_moved"].as_u64().unwrap() >= 2, "{report}");
        assert_eq!(report["old_pid"], server.pid());
        assert_eq!(server.current_pid(), report["new_pid"].as_i64().map(|p| p as i32));
        let history = server.status()["upgrades"].as_array().cloned().unwrap();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[1]["outcome"], "ok");

        let get_err = finish(self.get, "get", server);
        let put_err = finish(self.put, "put", server);
        assert_pairs(&get_err, pairs);
        assert_pairs(&put_err, pairs);
        assert_eq!(hash_file(&self.dir.path().join("down.out")), self.down_hash);
        assert_eq!(hash_file(&server.root().join("up.bin")), self.up_hash);
    }
}

#[test]
fn an_executable_that_exits_at_start_is_rolled_back() {
    let rb = Rollback::start();
    let binary = script(rb.dir.path(), "exits", "#!/bin/sh\nexit 3\n");
    let stderr = upgrade_fails(&rb.server, &binary);
    assert!(stderr.contains("exited (exit status: 3)"), "the reason does not mention the exit: {stderr}");
    let reason = stderr.trim().split("still serving: ").nth(1).unwrap();
    let record = last_upgrade(&rb.server);
    assert_eq!(record["outcome"], format!("failed: {reason}"), "{record}");
    assert_eq!(record["binary"], binary.to_str().unwrap());
    assert_eq!(record["old_pid"], rb.server.pid());
    // Nothing paused before the failure: only the later upgrade shows.
    rb.check(1);
}

#[test]
fn an_executable_that_hangs_is_killed_after_the_timeout() {
    let rb = Rollback::start();
    let binary = script(rb.dir.path(), "hangs", "#!/bin/sh\nexec sleep 600\n");
    let asked = Instant::now();
    let stderr = upgrade_fails(&rb.server, &binary);
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(10), "failed after {took:?}");
    assert!(stderr.contains("time"), "the reason does not mention the timeout: {stderr}");
    let record = last_upgrade(&rb.server);
    assert!(record["outcome"].as_str().unwrap().starts_with("failed"), "{record}");
    let hung = record["new_pid"].as_i64().expect("the history names the hung process") as i32;
    assert!(!alive(hung), "the hung process {hung} is still running");
    rb.check(1);
}

#[test]
fn an_executable_that_refuses_the_handover_is_rolled_back() {
    let rb = Rollback::start();
    let body = format!("#!/bin/sh\nFERRY_TEST_REFUSE_HANDOVER=1 exec '{}' \"$@\"\n", env!("CARGO_BIN_EXE_ferry"));
    let binary = script(rb.dir.path(), "refuses", &body);
    let stderr = upgrade_fails(&rb.server, &binary);
    assert!(stderr.contains("refused"), "{stderr}");
    let record = last_upgrade(&rb.server);
    let outcome = record["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("rolled back"), "{record}");
    assert!(outcome.contains("refused"), "{record}");
    assert!(record["sessions_moved"].as_u64().unwrap() >= 2, "{record}");
    let refusing = record["new_pid"].as_i64().unwrap() as i32;
    assert!(!alive(refusing), "the refusing process {refusing} is still running");
    // Paused and resumed by the old process, then moved by the real upgrade.
    rb.check(2);
}

/// A streamed handover refused in mid-stream: the new process has resumed
/// batch 1 (32 idle sessions) when it refuses batch 2. The old process
/// kills it and resumes every session, those already moved included, from
/// the states it kept; each still answers, served by the old process, and
/// a later upgrade moves them all.
#[test]
fn a_handover_refused_after_some_batches_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[upgrade]\ntimeout_secs = 5\n").unwrap();
    let server = Server::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    const IDLE: usize = 100;
    let mut idle: Vec<Raw> = (0..IDLE).map(|_| Raw::connect(&server.addr)).collect();
    wait_for("every connection to register", DEADLINE, || {
        (server.status()["connections"].as_u64()? >= IDLE as u64).then_some(())
    });
    let body = format!("#!/bin/sh\nFERRY_TEST_REFUSE_BATCH=2 exec '{}' \"$@\"\n", env!("CARGO_BIN_EXE_ferry"));
    let binary = script(dir.path(), "refuses-batch-2", &body);
    let stderr = upgrade_fails(&server, &binary);
    assert!(stderr.contains("batch 2 refused"), "{stderr}");
    let record = last_upgrade(&server);
    assert!(record["outcome"].as_str().unwrap().starts_with("rolled back"), "{record}");
    assert!(record["sessions_moved"].as_u64().unwrap() >= 32, "batch 1 was sent: {record}");
    let refusing = record["new_pid"].as_i64().unwrap() as i32;
    assert!(!alive(refusing), "the refusing process {refusing} is still running");
    assert_eq!(server.current_pid(), Some(server.pid()));
    for (i, raw) in idle.iter_mut().enumerate() {
        let lines = list(raw);
        assert!(lines.last().unwrap().starts_with("END"), "connection {i}: {lines:?}");
    }

    let report = upgrade_ok(&server, None);
    assert!(report["sessions_moved"].as_u64().unwrap() >= IDLE as u64, "{report}");
    assert!(report["batches"].as_u64().unwrap() >= 3, "listeners, two batches of sessions, the final group: {report}");
    assert_eq!(report["session_gap"]["sessions"].as_u64(), report["sessions_moved"].as_u64(), "{report}");
    for (i, raw) in idle.iter_mut().enumerate() {
        let lines = list(raw);
        assert!(lines.last().unwrap().starts_with("END"), "connection {i} after the upgrade: {lines:?}");
    }
}

#[test]
fn sigusr2_upgrades_to_the_same_executable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let data_hash = write_big(&server.root().join("big.bin"), 48 * MIB, 61);
    let get =
        spawn_client(&server, dir.path(), &["get", "big.bin", "-o", "big.out", "--limit-rate", "8M", "--retries", "0"]);
    wait_under_way(&server, &["get"], 4 * MIB);

    let old = server.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGUSR2).unwrap();
    let new = wait_for("the new process to serve", DEADLINE, || {
        let pid = server.current_pid().filter(|&p| p != old)?;
        let status = try_status(&server.data)?;
        (status["pid"].as_i64()? == pid as i64).then_some(pid)
    });
    wait_for("the old process to exit", DEADLINE, || (!alive(old)).then_some(()));
    let record = last_upgrade(&server);
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["old_pid"], old);
    assert_eq!(record["new_pid"], new);
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
    assert_eq!(exe, Path::new(env!("CARGO_BIN_EXE_ferry")).canonicalize().unwrap());

    let stderr = finish(get, "get", &server);
    assert_pairs(&stderr, 1);
    assert_eq!(hash_file(&dir.path().join("big.out")), data_hash);
}

#[test]
fn new_process_reports_mainpid_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let receive = || {
        let mut buf = vec![0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let server = Server::start_env(dir.path(), &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let first = receive();
    assert_eq!(first.lines().collect::<Vec<_>>(), ["READY=1"], "{first:?}");

    let report = upgrade_ok(&server, None);
    let new_pid = report["new_pid"].as_i64().unwrap();
    let message = receive();
    let lines: Vec<&str> = message.lines().collect();
    assert!(lines.contains(&format!("MAINPID={new_pid}").as_str()), "{message:?}");
    assert!(lines.contains(&"READY=1"), "{message:?}");
}

#[test]
fn admin_socket_moves_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    write_file(&server.root().join("a.txt"), b"hello");
    let listen = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(server.data.join("listen.json")).unwrap()).unwrap()
    };

    // Short clients and status queries, back to back, across the upgrades.
    let stop = Arc::new(AtomicBool::new(false));
    let loop_of = |args: Vec<String>| {
        let stop = stop.clone();
        let cache = dir.path().join("cache");
        std::thread::spawn(move || {
            let (mut runs, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let out = run(ferry().args(&args).env("FERRY_CACHE_DIR", &cache));
                runs += 1;
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (runs, failures)
        })
    };
    let ls =
        loop_of(["ls", "--json", "--retries", "0", "--server", &server.addr].iter().map(|s| s.to_string()).collect());
    let status = loop_of(vec!["status".into(), "--json".into(), "--data".into(), server.data.display().to_string()]);

    let mut pid = server.pid();
    for _ in 0..3 {
        let report = upgrade_ok(&server, None);
        assert_eq!(report["old_pid"], pid);
        pid = report["new_pid"].as_i64().unwrap() as i32;
        let answer = ok(ferry().args(["status", "--json", "--data"]).arg(&server.data));
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["pid"], pid, "status answered by the wrong process");
        assert_eq!(answer["listeners"]["transfer"], server.addr.as_str());
        assert_eq!(listen()["transfer"], server.addr.as_str());
        let mut fresh = Raw::connect(&server.addr);
        let lines = list(&mut fresh);
        assert!(lines[0].starts_with("ENTRY name=a.txt "), "{lines:?}");
    }
    stop.store(true, Ordering::SeqCst);
    for (what, handle) in [("ls", ls), ("status", status)] {
        let (runs, failures) = handle.join().unwrap();
        assert!(failures.is_empty(), "{} of {runs} {what} runs failed: {failures:?}", failures.len());
        assert!(runs >= 3, "only {runs} {what} runs");
    }
    assert!(server.data.join("ferry.sock").exists());
}
