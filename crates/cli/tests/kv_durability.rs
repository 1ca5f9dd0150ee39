//! The kv service end to end, on the real binary: acknowledged writes
//! survive `kill -9` (durability `os` and `fsync`), a torn log tail is cut
//! off on start, expiry / cas / flush_all survive restarts, compaction keeps
//! the log bounded, a pipelining client keeps one connection through three
//! live upgrades, the memory and connection limits refuse instead of losing
//! data, and malformed input changes nothing stored.
//!
//! The server is started here with the kv service enabled (the shared
//! harness passes `--no-kv`); every wait polls with a deadline, and every
//! server started is SIGKILLed on drop, the processes that live upgrades
//! started included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{DEADLINE, alive, ferry, run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------
// A kv-enabled server.
// ---------------------------------------------------------------------------

/// A running `ferry serve` with the kv service on a free port.
struct KvServer {
    child: Child,
    /// `<dir>/data`.
    data: PathBuf,
    config: Option<PathBuf>,
    /// `127.0.0.1:PORT` of the kv service.
    addr: String,
    /// Pids of processes started by live upgrades (killed on drop if alive).
    upgraded: Vec<i32>,
    killed: bool,
}

impl KvServer {
    /// Starts a server with its data under `dir/data`; `config` is TOML
    /// written to `dir/ferry.toml` and passed with `--config`.
    fn start(dir: &Path, config: Option<&str>) -> KvServer {
        let config = config.map(|text| {
            let path = dir.join("ferry.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        KvServer::spawn(dir.join("data"), config)
    }

    fn spawn(data: PathBuf, config: Option<PathBuf>) -> KvServer {
        std::fs::create_dir_all(&data).unwrap();
        let listen = data.join("listen.json");
        // A killed server leaves its listen.json behind.
        let _ = std::fs::remove_file(&listen);
        let log = OpenOptions::new().create(true).append(true).open(data.join("serve.log")).unwrap();
        let mut cmd = ferry();
        cmd.args(["serve", "--data"]).arg(&data).args([
            "--transfer-port",
            "0",
            "--kv-port",
            "0",
            "--no-http",
            "--no-sync",
        ]);
        if let Some(config) = &config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry serve");
        let started = Instant::now();
        let addr = loop {
            let kv = std::fs::read_to_string(&listen)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|map| map["kv"].as_str().map(str::to_string));
            if let Some(addr) = kv {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(data.join("serve.log")).unwrap_or_default();
                panic!("ferry serve exited ({status}) before listening:\n{log}");
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timed out after {DEADLINE:?} waiting for listen.json to name kv");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        KvServer { child, data, config, addr, upgraded: Vec::new(), killed: false }
    }

    fn kv_dir(&self) -> PathBuf {
        self.data.join("kv")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("serve.log")).unwrap_or_default()
    }

    /// The pid serving now: `<data>/ferry.pid` (which names the new process
    /// after a live upgrade), else the process started here.
    fn serving_pid(&self) -> i32 {
        std::fs::read_to_string(self.data.join("ferry.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.child.id() as i32)
    }

    fn connect(&self) -> Mc {
        Mc::connect(&self.addr)
    }

    /// SIGKILL to every process of this server (a crash), and waits until
    /// they are gone. Idempotent.
    fn kill9(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        let own = self.child.id() as i32;
        let _ = kill(Pid::from_raw(own), Signal::SIGKILL);
        let _ = self.child.wait();
        // The processes live upgrades started: those recorded, the one in
        // ferry.pid, and any other still serving this data directory.
        let mut pids = self.upgraded.clone();
        pids.push(self.serving_pid());
        pids.extend(serving_from(&self.data));
        for pid in pids {
            if pid == own || !alive(pid) || !serving_from(&self.data).contains(&pid) {
                continue;
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let start = Instant::now();
            while !gone(pid) {
                assert!(start.elapsed() < Duration::from_secs(5), "pid {pid} survived SIGKILL for 5 s");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Crash (SIGKILL) and start again on the same data directory.
    fn restart(&mut self) {
        self.kill9();
        // A new server refuses to start while the admin socket accepts.
        let socket = self.data.join("ferry.sock");
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the admin socket still accepts 5 s after every server was killed; serving: {:?}",
                serving_from(&self.data)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let fresh = KvServer::spawn(self.data.clone(), self.config.clone());
        // The old value is killed already: dropping it does nothing.
        drop(std::mem::replace(self, fresh));
    }

    /// `ferry upgrade --json --data D`, which must succeed; returns its report.
    fn upgrade(&mut self) -> serde_json::Value {
        let out = run(ferry().args(["upgrade", "--json", "--data"]).arg(&self.data));
        assert!(
            out.status.success(),
            "ferry upgrade failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(pid) = report["new_pid"].as_i64() {
            self.upgraded.push(pid as i32);
        }
        report
    }

    fn status(&self) -> serde_json::Value {
        let out = run(ferry().args(["status", "--json", "--data"]).arg(&self.data));
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for KvServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether every thread of `pid` has exited. A killed process's leader
/// can be a zombie while its other threads still exit, holding the
/// descriptors they share (the listeners, the kv log's `LOCK`): `alive`
/// alone is not enough before starting a server on the same data.
fn gone(pid: i32) -> bool {
    if alive(pid) {
        return false;
    }
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok()).all(|t| t == pid),
        Err(_) => true,
    }
}

/// Live `ferry serve` processes whose command line names `data` (the only
/// processes this file ever kills: it guards against recycled pids).
fn serving_from(data: &Path) -> Vec<i32> {
    let data = data.to_string_lossy();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.iter().any(|a| *a == b"serve") && args.iter().any(|a| *a == data.as_bytes()) && alive(pid)
        })
        .collect()
}

/// Total size of the files in `dir` (not recursive), and their names.
fn dir_size(dir: &Path) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut names = Vec::new();
    for ent in std::fs::read_dir(dir).unwrap() {
        let ent = ent.unwrap();
        let meta = match ent.metadata() {
            Ok(m) => m,
            Err(_) => continue, // removed meanwhile
        };
        if meta.is_file() {
            total += meta.len();
            names.push(format!("{}={}", ent.file_name().to_string_lossy(), meta.len()));
        }
    }
    names.sort();
    (total, names)
}

/// The newest log segment (highest id) in a kv directory.
fn newest_segment(kv: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(kv)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap_or_else(|| panic!("no *.log in {}", kv.display()))
}

/// Where the records of `seg` end: the server keeps zeros written ahead of
/// its next append, so this is the file's length without its trailing
/// zeros. Exact when the last record (its value's last byte) ends in a
/// byte that is not zero.
fn records_end(seg: &Path) -> u64 {
    let bytes = std::fs::read(seg).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------
// A tiny memcached client.
// ---------------------------------------------------------------------------

/// One `VALUE` (or meta `VA`) block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Value {
    flags: u32,
    data: Vec<u8>,
    cas: Option<u64>,
}

/// A memcached text-protocol connection: bytes out, replies read up to an
/// expected terminator with a deadline.
struct Mc {
    s: TcpStream,
    buf: Vec<u8>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out waiting for {what}"))
}

impl Mc {
    fn connect(addr: &str) -> Mc {
        Mc::new(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}")))
    }

    fn new(s: TcpStream) -> Mc {
        s.set_nodelay(true).unwrap();
        Mc { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads more bytes, waiting at most until `deadline`. EOF is an error.
    fn fill(&mut self, deadline: Instant, what: &str) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        self.s.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF waiting for {what}"))),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Err(timed_out(what)),
            Err(e) => Err(e),
        }
    }

    /// One reply line, without its `\r\n`.
    fn try_line(&mut self) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill(deadline, "a reply line")?;
        }
    }

    fn line(&mut self) -> String {
        let line = self.try_line().unwrap_or_else(|e| panic!("reading a reply: {e}"));
        String::from_utf8(line).unwrap()
    }

    /// Exactly `n` bytes followed by `\r\n`.
    fn try_block(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        while self.buf.len() < n + 2 {
            self.fill(deadline, "a data block")?;
        }
        if &self.buf[n..n + 2] != b"\r\n" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "data block not followed by \\r\\n"));
        }
        let data = self.buf[..n].to_vec();
        self.buf.drain(..n + 2);
        Ok(data)
    }

    /// Sends one command line and reads one reply line.
    fn call(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }

    fn set_with(&mut self, key: &str, exptime: i64, value: &[u8]) -> String {
        self.send(&set_cmd(key, 0, exptime, value));
        self.line()
    }

    fn set(&mut self, key: &str, value: &[u8]) -> String {
        self.set_with(key, 0, value)
    }

    /// `VALUE` blocks up to `END`.
    fn try_values(&mut self) -> io::Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        loop {
            let line =
                String::from_utf8(self.try_line()?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if line == "END" {
                return Ok(out);
            }
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() < 4 || parts[0] != "VALUE" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply {line:?}")));
            }
            let len: usize = parts[3].parse().unwrap();
            let data = self.try_block(len)?;
            let value = Value { flags: parts[2].parse().unwrap(), data, cas: parts.get(4).map(|c| c.parse().unwrap()) };
            out.push((parts[1].to_string(), value));
        }
    }

    /// `get`/`gets` of `keys`: the hits by key.
    fn get_many(&mut self, cmd: &str, keys: &[String]) -> HashMap<String, Value> {
        self.send(format!("{cmd} {}\r\n", keys.join(" ")).as_bytes());
        let values = self.try_values().unwrap_or_else(|e| panic!("{cmd}: {e}"));
        values.into_iter().collect()
    }

    fn get(&mut self, key: &str) -> Option<Value> {
        self.get_many("get", &[key.to_string()]).remove(key)
    }

    fn gets(&mut self, key: &str) -> Option<Value> {
        self.get_many("gets", &[key.to_string()]).remove(key)
    }

    fn stats(&mut self) -> BTreeMap<String, String> {
        self.send(b"stats\r\n");
        let mut map = BTreeMap::new();
        loop {
            let line = self.line();
            if line == "END" {
                return map;
            }
            let mut parts = line.splitn(3, ' ');
            assert_eq!(parts.next(), Some("STAT"), "{line}");
            let name = parts.next().unwrap().to_string();
            map.insert(name, parts.next().unwrap_or_default().to_string());
        }
    }

    fn stat(&mut self, name: &str) -> u64 {
        let stats = self.stats();
        stats.get(name).unwrap_or_else(|| panic!("no stat {name}: {stats:?}")).parse().unwrap()
    }
}

fn set_cmd(key: &str, flags: u32, exptime: i64, value: &[u8]) -> Vec<u8> {
    let mut req = format!("set {key} {flags} {exptime} {}\r\n", value.len()).into_bytes();
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
    req
}

/// Deterministic pseudo-random bytes of `len` (xorshift), protocol-looking
/// sequences included now and then.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    if seed % 5 == 0 {
        out.extend_from_slice(b"\r\nEND\r\nSTORED\r\n");
    }
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 29) as u8);
    }
    out.truncate(len);
    out
}

/// The value written under `k<i>` by the kill -9 test: 1 to 2,000 bytes.
fn value_for(i: u64) -> Vec<u8> {
    noise(1 + (i * 7919 % 2000) as usize, i + 1)
}

/// Asserts that every key in `expect` holds exactly its value, reading in
/// batches of 100 keys.
fn assert_values(mc: &mut Mc, expect: &BTreeMap<String, Vec<u8>>, what: &str) {
    let keys: Vec<String> = expect.keys().cloned().collect();
    let mut missing = Vec::new();
    for batch in keys.chunks(100) {
        let got = mc.get_many("get", batch);
        for key in batch {
            match got.get(key) {
                Some(v) => {
                    assert!(v.data == expect[key], "{what}: {key} holds the wrong value ({} bytes)", v.data.len())
                }
                None => missing.push(key.clone()),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} of {} keys missing, first: {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(10)]
    );
}

// ---------------------------------------------------------------------------
// 1. Acknowledged writes survive kill -9.
// ---------------------------------------------------------------------------

/// What one writer saw: the keys acknowledged, the highest key attempted,
/// and an unexpected reply if any.
struct Writer {
    acked: Vec<u64>,
    attempted: Option<u64>,
    unexpected: Option<String>,
}

fn kill_9_case(durability: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some(&format!("[kv]\ndurability = \"{durability}\"\n")));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<JoinHandle<Writer>> = (0..4u64)
        .map(|w| {
            let addr = server.addr.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut mc = Mc::connect(&addr);
                let mut me = Writer { acked: Vec::new(), attempted: None, unexpected: None };
                for n in 0..1_000_000u64 {
                    let i = n * 4 + w;
                    let value = value_for(i);
                    me.attempted = Some(i);
                    if mc.s.write_all(&set_cmd(&format!("k{i}"), 0, 0, &value)).is_err() {
                        break;
                    }
                    match mc.try_line() {
                        Ok(line) if line == b"STORED" => {
                            me.acked.push(i);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(line) => {
                            me.unexpected = Some(String::from_utf8_lossy(&line).into_owned());
                            break;
                        }
                        // The server was killed.
                        Err(_) => break,
                    }
                }
                me
            })
        })
        .collect();

    let limit = Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 2000 {
        assert!(started.elapsed() < limit, "only {} sets acknowledged in {limit:?}", acked.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = server.serving_pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed_at = started.elapsed();

    let mut expect = BTreeMap::new();
    let mut maybe = BTreeMap::new();
    for handle in writers {
        let me = handle.join().unwrap();
        assert!(me.unexpected.is_none(), "a set got {:?} instead of STORED", me.unexpected);
        for &i in &me.acked {
            expect.insert(format!("k{i}"), value_for(i));
        }
        // The set in flight when the server died: either state is fine.
        if let Some(i) = me.attempted.filter(|i| !me.acked.contains(i)) {
            maybe.insert(format!("k{i}"), value_for(i));
        }
    }
    assert!(expect.len() >= 2000, "{} acknowledged", expect.len());

    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, &format!("after kill -9 ({durability})"));
    for (key, value) in &maybe {
        if let Some(got) = mc.get(key) {
            assert!(&got.data == value, "{key} (in flight at the kill) came back with a different value");
        }
    }
    assert_eq!(mc.set("after", b"restart"), "STORED");
    eprintln!(
        "{durability}: {} acknowledged sets before kill -9 at {killed_at:?}; test took {:?}",
        expect.len(),
        started.elapsed()
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_os() {
    kill_9_case("os");
}

#[test]
fn acknowledged_writes_survive_kill_9_fsync() {
    kill_9_case("fsync");
}

// ---------------------------------------------------------------------------
// 2. A torn tail is truncated on start.
// ---------------------------------------------------------------------------

fn set_all(mc: &mut Mc, prefix: &str, n: u64, expect: &mut BTreeMap<String, Vec<u8>>) {
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let value = noise(10 + (i as usize * 37) % 500, i + prefix.len() as u64 * 1000);
        assert_eq!(mc.set(&key, &value), "STORED", "{key}");
        expect.insert(key, value);
    }
}

#[test]
fn torn_tail_is_truncated_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), None);
    let mut expect = BTreeMap::new();
    set_all(&mut server.connect(), "a", 200, &mut expect);
    // The last record ends in a byte that is not zero (see `records_end`).
    assert_eq!(server.connect().set("last", b"end"), "STORED");
    expect.insert("last".into(), b"end".to_vec());

    // Garbage after the last record (and after the zeros preallocated ahead).
    server.kill9();
    let seg = newest_segment(&server.kv_dir());
    let clean_len = records_end(&seg);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&noise(1000, 99)).unwrap();
    drop(f);
    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after garbage was appended");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), clean_len, "the garbage was not cut off");
    // Records appended now must be readable on the next start: they follow
    // the truncation point, not the garbage.
    set_all(&mut mc, "b", 50, &mut expect);
    server.restart();
    assert_values(&mut server.connect(), &expect, "after a restart following the garbage");

    // The last record cut in the middle (a write torn by a crash).
    let mut big = noise(1000, 7);
    big[999] = b'!'; // see `records_end`
    assert_eq!(server.connect().set("torn", &big), "STORED");
    server.kill9();
    let seg = newest_segment(&server.kv_dir());
    let len = records_end(&seg);
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 500).unwrap();
    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after the last record was cut");
    assert_eq!(mc.get("torn"), None, "a cut record must not come back");
    set_all(&mut mc, "c", 50, &mut expect);
    assert_eq!(mc.set("torn", b"again"), "STORED");
    expect.insert("torn".into(), b"again".to_vec());
    server.restart();
    assert_values(&mut server.connect(), &expect, "after a restart following the cut");
}

// ---------------------------------------------------------------------------
// 3. Expiry, cas and flush_all survive restarts.
// ---------------------------------------------------------------------------

/// `mg <key> t`: the ttl, `None` on a miss.
fn ttl(mc: &mut Mc, key: &str) -> Option<i64> {
    let line = mc.call(&format!("mg {key} t"));
    if line == "EN" {
        return None;
    }
    let t = line.strip_prefix("HD t").unwrap_or_else(|| panic!("mg {key} t answered {line:?}"));
    Some(t.parse().unwrap())
}

fn wait_gone(mc: &mut Mc, key: &str, limit: Duration) {
    let start = Instant::now();
    while mc.get(key).is_some() {
        assert!(start.elapsed() < limit, "{key} still there after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn expiry_cas_and_flush_survive_restarts() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), None);
    let mut mc = server.connect();
    let mut max_cas = 0;
    let mut saw = |v: &Option<Value>| {
        if let Some(c) = v.as_ref().and_then(|v| v.cas) {
            max_cas = max_cas.max(c);
        }
    };

    // A delayed flush: D1 is gone once its deadline has passed.
    assert_eq!(mc.set("D1", b"d1"), "STORED");
    saw(&mc.gets("D1"));
    assert_eq!(mc.call("flush_all 2"), "OK");
    assert!(mc.get("D1").is_some(), "a delayed flush_all acted at once");
    wait_gone(&mut mc, "D1", Duration::from_secs(6));

    // set A, flush_all, set B.
    assert_eq!(mc.set("A", b"a"), "STORED");
    saw(&mc.gets("A"));
    assert_eq!(mc.call("flush_all 0"), "OK");
    assert_eq!(mc.get("A"), None);
    assert_eq!(mc.set("B", b"b"), "STORED");
    let b = mc.gets("B");
    saw(&b);
    let b_cas = b.unwrap().cas.unwrap();
    assert_eq!(mc.set("D2", b"d2"), "STORED");

    // Expiry: relative, absolute, short; touch shortening a long one.
    let abs = unix_now() + 200_000;
    assert_eq!(mc.set_with("far", 100_000, b"far"), "STORED");
    assert_eq!(mc.set_with("abs", abs as i64, b"abs"), "STORED");
    assert_eq!(mc.set_with("short", 2, b"short"), "STORED");
    assert_eq!(mc.set_with("shortened", 100_000, b"x"), "STORED");
    assert_eq!(mc.call("touch shortened 2"), "TOUCHED");
    assert_eq!(mc.set_with("touched", 100_000, b"t"), "STORED");
    assert_eq!(mc.call("touch touched 50000"), "TOUCHED");
    for key in ["far", "abs", "short", "shortened", "touched", "D2"] {
        saw(&mc.gets(key));
    }
    // A cas update and a failed one.
    let far_cas = mc.gets("far").unwrap().cas.unwrap();
    mc.send(format!("cas far 0 100000 4 {far_cas}\r\nfar2\r\n").as_bytes());
    assert_eq!(mc.line(), "STORED");
    mc.send(format!("cas far 0 100000 4 {far_cas}\r\nfar3\r\n").as_bytes());
    assert_eq!(mc.line(), "EXISTS");
    saw(&mc.gets("far"));
    wait_gone(&mut mc, "short", Duration::from_secs(6));
    wait_gone(&mut mc, "shortened", Duration::from_secs(6));

    server.restart();
    let mut mc = server.connect();
    assert_eq!(mc.get("D1"), None, "D1 (flushed by a delayed flush_all) came back");
    assert_eq!(mc.get("D2").map(|v| v.data), Some(b"d2".to_vec()));
    assert_eq!(mc.get("A"), None, "A (flushed) came back");
    let b = mc.gets("B").expect("B lost");
    assert_eq!(b.data, b"b");
    assert_eq!(b.cas, Some(b_cas), "B's cas changed across the restart");
    assert_eq!(mc.get("short"), None, "an expired item came back");
    assert_eq!(mc.get("shortened"), None, "an item touched to expire came back");
    assert_eq!(mc.get("far").map(|v| v.data), Some(b"far2".to_vec()));
    let far = ttl(&mut mc, "far").expect("far lost");
    assert!(far > 99_000 && far <= 100_000, "far's ttl is {far}");
    let t = ttl(&mut mc, "abs").expect("abs lost");
    let want = abs as i64 - unix_now() as i64;
    assert!((want - 2..=want + 2).contains(&t), "abs's ttl is {t}, want about {want}");
    let t = ttl(&mut mc, "touched").expect("touched lost");
    assert!(t > 49_000 && t <= 50_000, "touched's ttl is {t} (touch 50000 before the restart)");

    // The cas taken before the restart still works, once.
    mc.send(format!("cas B 0 0 2 {b_cas}\r\nb2\r\n").as_bytes());
    assert_eq!(mc.line(), "STORED");
    let b2 = mc.gets("B").unwrap().cas.unwrap();
    assert!(b2 > max_cas, "cas after the restart ({b2}) is not above every cas seen before ({max_cas})");
    assert_eq!(mc.set("new", b"n"), "STORED");
    let new = mc.gets("new").unwrap().cas.unwrap();
    assert!(new > b2, "cas went back: {new} after {b2}");

    // And again, with nothing new written in between.
    server.restart();
    let mut mc = server.connect();
    assert_eq!(mc.set("newer", b"n"), "STORED");
    let newer = mc.gets("newer").unwrap().cas.unwrap();
    assert!(newer > new, "cas after a second restart ({newer}) is not above {new}");
    assert_eq!(mc.get("B").map(|v| v.data), Some(b"b2".to_vec()));
    eprintln!("expiry/cas/flush test took {:?}", started.elapsed());
}

/// `set k 0 2`, then `touch k 100000` (and the same through `gat` and
/// `mg T`): the touch must outlive the original expiry across a restart.
#[test]
fn touch_extending_a_short_ttl_survives_restart() {
    touch_extending_case(false);
}

/// The same across a live upgrade: the new process replays the log too.
#[test]
fn touch_extending_a_short_ttl_survives_upgrade() {
    touch_extending_case(true);
}

fn touch_extending_case(upgrade: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), None);
    let mut mc = server.connect();
    assert_eq!(mc.set_with("ext", 2, b"extended"), "STORED");
    assert_eq!(mc.call("touch ext 100000"), "TOUCHED");
    assert_eq!(mc.set_with("gat", 2, b"gat"), "STORED");
    mc.send(b"gat 100000 gat\r\n");
    assert_eq!(mc.try_values().unwrap().len(), 1);
    assert_eq!(mc.set_with("mg", 2, b"mg"), "STORED");
    assert!(mc.call("mg mg T100000").starts_with("HD"));
    // Past the original expiry, the items are alive.
    std::thread::sleep(Duration::from_millis(3100));
    for key in ["ext", "gat", "mg"] {
        assert!(mc.get(key).is_some(), "{key} expired before the restart");
    }
    let what = if upgrade {
        server.upgrade();
        "the upgrade"
    } else {
        server.restart();
        mc = server.connect();
        "the restart"
    };
    let lost: Vec<String> = ["ext", "gat", "mg"]
        .iter()
        .map(|key| (key, ttl(&mut mc, key)))
        .filter(|(_, t)| !t.is_some_and(|t| t > 99_000))
        .map(|(key, t)| format!("{key}: ttl {t:?}"))
        .collect();
    assert!(lost.is_empty(), "after {what}, items touched to 100000 before: {lost:?}");
}

// ---------------------------------------------------------------------------
// 4. Compaction bounds the log.
// ---------------------------------------------------------------------------

fn compaction_value(key: usize, round: usize) -> Vec<u8> {
    let mut v = format!("{key}:{round}:").into_bytes();
    v.resize(100, b'a' + (round % 26) as u8);
    v
}

fn num(stats: &BTreeMap<String, String>, name: &str) -> u64 {
    stats[name].parse().unwrap()
}

/// Waits for the compactor to be done (with `compact_min_bytes` 1 MiB): at
/// least one compaction, none due (the log under 1 MiB or at most half
/// garbage), nothing changing. Returns `stats`, and the size and files of
/// the kv directory.
fn settled_log(mc: &mut Mc, kv: &Path) -> (BTreeMap<String, String>, u64, Vec<String>) {
    let start = Instant::now();
    let mut last = None;
    loop {
        let stats = mc.stats();
        let (size, files) = dir_size(kv);
        let (live, total) = (num(&stats, "live_log_bytes"), num(&stats, "log_bytes"));
        let due = total >= 1 << 20 && total - live > total / 2;
        let now = (num(&stats, "compactions"), total, size);
        if num(&stats, "compactions") >= 1 && !due && last == Some(now) {
            return (stats, size, files);
        }
        last = Some(now);
        assert!(start.elapsed() < DEADLINE, "compaction did not settle: {size} bytes in kv/ ({files:?})\n{stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn compaction_bounds_the_log() {
    const KEYS: usize = 2000;
    const ROUNDS: usize = 200;
    const CONNS: usize = 4;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some("[kv]\ncompact_min_bytes = 1048576\n"));
    let key = |i: usize| format!("key:{i:05}");

    // Each connection owns a quarter of the keys and overwrites them all,
    // round after round, one pipelined write per round.
    let writers: Vec<JoinHandle<()>> = (0..CONNS)
        .map(|c| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut mc = Mc::connect(&addr);
                let mine: Vec<usize> = (c..KEYS).step_by(CONNS).collect();
                for round in 0..ROUNDS {
                    let mut batch = Vec::with_capacity(mine.len() * 140);
                    for &i in &mine {
                        batch.extend_from_slice(&set_cmd(&format!("key:{i:05}"), 0, 0, &compaction_value(i, round)));
                    }
                    mc.send(&batch);
                    let deadline = Instant::now() + DEADLINE;
                    let want = b"STORED\r\n".repeat(mine.len());
                    while mc.buf.len() < want.len() {
                        mc.fill(deadline, "STORED replies").unwrap();
                    }
                    assert!(mc.buf == want, "round {round}: unexpected replies {:?}", String::from_utf8_lossy(&mc.buf));
                    mc.buf.clear();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let written = started.elapsed();

    let expect: BTreeMap<String, Vec<u8>> = (0..KEYS).map(|i| (key(i), compaction_value(i, ROUNDS - 1))).collect();
    let mut mc = server.connect();
    let (stats, size, files) = settled_log(&mut mc, &server.kv_dir());
    let live = num(&stats, "live_log_bytes");
    assert!(size <= 4 * live, "log not bounded: {size} bytes in kv/ ({files:?}) for {live} live\n{stats:?}");
    // The live set: 2,000 records of a 38-byte header, a 9-byte key and 100 bytes.
    assert_eq!(live, KEYS as u64 * (38 + 9 + 100), "{stats:?}");
    assert_eq!(stats["curr_items"], KEYS.to_string());
    let log_bytes: u64 = stats["log_bytes"].parse().unwrap();
    // The files also hold the zeros written ahead of the next append (at most 256 KiB more than needed).
    assert!(
        log_bytes <= size && size <= log_bytes + (512 << 10),
        "stats log_bytes {log_bytes} disagrees with the files ({size} bytes): {files:?}"
    );
    assert_values(&mut mc, &expect, "after the overwrites");

    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after a restart");
    let (size, files) = dir_size(&server.kv_dir());
    assert!(size <= 4 * live, "after a restart: {size} bytes in kv/ ({files:?})");
    assert_eq!(mc.stat("curr_items"), KEYS as u64);
    assert_eq!(mc.stat("live_log_bytes"), live);
    eprintln!(
        "{} sets in {written:?}; {} compactions; kv/ {size} bytes for {live} live; test took {:?}",
        KEYS * ROUNDS,
        stats["compactions"],
        started.elapsed()
    );
}

/// Per key: the last round acknowledged and the round in flight.
type Rounds = Vec<(Option<usize>, Option<usize>)>;

/// The values a key may hold after a crash: the last acknowledged, or the
/// one in flight.
type Allowed = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Overwrites `keys` round after round from `first_round`, 50 pipelined sets
/// at a time, until the connection fails or `stop` is set; returns what was
/// acknowledged, and the failure if any.
fn overwrite(
    addr: &str,
    keys: &[usize],
    first_round: usize,
    acked: &AtomicUsize,
    stop: &AtomicBool,
) -> (Rounds, Option<String>) {
    let mut mc = Mc::connect(addr);
    let mut rounds: Rounds = vec![(None, None); keys.len()];
    for round in first_round..first_round + 100_000 {
        for (chunk_no, chunk) in keys.chunks(50).enumerate() {
            if stop.load(Ordering::SeqCst) {
                return (rounds, None);
            }
            let mut batch = Vec::new();
            for &k in chunk {
                batch.extend_from_slice(&set_cmd(&format!("key:{k:05}"), 0, 0, &compaction_value(k, round)));
            }
            for r in &mut rounds[chunk_no * 50..chunk_no * 50 + chunk.len()] {
                r.1 = Some(round);
            }
            if let Err(e) = mc.s.write_all(&batch) {
                return (rounds, Some(format!("round {round}: write: {e}")));
            }
            for j in 0..chunk.len() {
                match mc.try_line() {
                    Ok(line) if line == b"STORED" => {
                        rounds[chunk_no * 50 + j] = (Some(round), None);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(line) => {
                        let e = format!("round {round}: set got {:?}", String::from_utf8_lossy(&line));
                        return (rounds, Some(e));
                    }
                    Err(e) => return (rounds, Some(format!("round {round}: read: {e}"))),
                }
            }
        }
    }
    (rounds, None)
}

/// kill -9 while the log is compacted over and over: every key holds its
/// last acknowledged value (or the one in flight), cycle after cycle.
#[test]
fn acknowledged_overwrites_survive_kill_9_during_compaction() {
    const KEYS: usize = 2000;
    const WRITERS: usize = 4;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some("[kv]\ncompact_min_bytes = 1048576\n"));
    let owned: Vec<Vec<usize>> = (0..WRITERS).map(|w| (w..KEYS).step_by(WRITERS).collect()).collect();
    let mut first_round = 0;
    let mut total_compactions = 0;
    for cycle in 0..4 {
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<JoinHandle<(Rounds, Option<String>)>> = owned
            .iter()
            .map(|keys| {
                let (addr, keys, acked, stop) = (server.addr.clone(), keys.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || overwrite(&addr, &keys, first_round, &acked, &stop))
            })
            .collect();
        // Let a few compactions run (a different number each cycle), then crash.
        let mut watch = server.connect();
        let start = Instant::now();
        let target = 2 + cycle as u64;
        loop {
            let done = watch.stat("compactions");
            if done >= target {
                total_compactions += done;
                break;
            }
            assert!(start.elapsed() < DEADLINE, "cycle {cycle}: {done} compactions after {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(3));
        }
        kill(Pid::from_raw(server.serving_pid()), Signal::SIGKILL).unwrap();
        // Per key: the value acknowledged last, and the one in flight.
        let mut expect: BTreeMap<String, Allowed> = BTreeMap::new();
        let mut last_round = first_round;
        for (keys, handle) in owned.iter().zip(writers) {
            // Each writer ends with an error: the server was killed.
            for (&k, (done, flying)) in keys.iter().zip(handle.join().unwrap().0) {
                last_round = last_round.max(done.unwrap_or(0)).max(flying.unwrap_or(0));
                let value = |r: Option<usize>| r.map(|r| compaction_value(k, r));
                expect.insert(format!("key:{k:05}"), (value(done), value(flying)));
            }
        }
        // The crash's half-written snapshots; the restarted server may start
        // a compaction of its own at once, whose temporary file has a new id.
        let (_, before) = dir_size(&server.kv_dir());
        let name = |f: &String| f.split('=').next().unwrap_or_default().to_string();
        let leftovers: Vec<String> = before.iter().filter(|f| f.contains(".tmp")).map(name).collect();
        server.restart();
        let (_, files) = dir_size(&server.kv_dir());
        let now: Vec<String> = files.iter().map(name).collect();
        let survived: Vec<&String> = leftovers.iter().filter(|f| now.contains(f)).collect();
        assert!(survived.is_empty(), "a leftover survived the restart: {survived:?} among {files:?}");
        let mut mc = server.connect();
        let keys: Vec<String> = expect.keys().cloned().collect();
        for batch in keys.chunks(100) {
            let got = mc.get_many("get", batch);
            for key in batch {
                let (done, flying) = &expect[key];
                let got = got.get(key).map(|v| &v.data);
                let ok = got == done.as_ref() || (flying.is_some() && got == flying.as_ref());
                assert!(
                    ok,
                    "cycle {cycle}: {key} holds {:?}, acknowledged {:?}, in flight {:?}",
                    got.map(|v| String::from_utf8_lossy(&v[..12]).into_owned()),
                    done.as_ref().map(|v| String::from_utf8_lossy(&v[..12]).into_owned()),
                    flying.as_ref().map(|v| String::from_utf8_lossy(&v[..12]).into_owned()),
                );
            }
        }
        first_round = last_round + 1;
    }
    eprintln!("4 crashes after {total_compactions} compactions in all; test took {:?}", started.elapsed());
}

/// Four connections overwrite 2,000 keys without pause while the log is
/// compacted over and over and three live upgrades happen: no set fails,
/// every key ends with its last acknowledged value (also after kill -9), and
/// the old generations' files are gone.
#[test]
fn overwrites_survive_upgrades_while_compacting() {
    const KEYS: usize = 2000;
    const WRITERS: usize = 4;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some("[kv]\ncompact_min_bytes = 1048576\n"));
    let owned: Vec<Vec<usize>> = (0..WRITERS).map(|w| (w..KEYS).step_by(WRITERS).collect()).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<JoinHandle<(Rounds, Option<String>)>> = owned
        .iter()
        .map(|keys| {
            let (addr, keys, acked, stop) = (server.addr.clone(), keys.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || overwrite(&addr, &keys, 0, &acked, &stop))
        })
        .collect();
    // About three compactions' worth of sets between upgrades.
    let wait_acked = |n: usize| {
        let start = Instant::now();
        while acked.load(Ordering::SeqCst) < n {
            assert!(start.elapsed() < DEADLINE, "only {} sets acknowledged", acked.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut reports = Vec::new();
    for u in 1..=3 {
        wait_acked(u * 20_000);
        reports.push(server.upgrade());
    }
    // Counted from the end of the last upgrade: the old process keeps serving while an upgrade runs, and
    // on a busy machine a slow one could otherwise leave the new process too few sets to compact (which
    // `settled_log` waits for).
    wait_acked(acked.load(Ordering::SeqCst) + 20_000);
    stop.store(true, Ordering::SeqCst);
    let mut expect = BTreeMap::new();
    for (keys, handle) in owned.iter().zip(writers) {
        let (rounds, error) = handle.join().unwrap();
        assert!(error.is_none(), "a writer failed across the upgrades: {error:?}\n{}", server.log());
        for (&k, (done, flying)) in keys.iter().zip(rounds) {
            assert_eq!(flying, None);
            expect.insert(format!("key:{k:05}"), compaction_value(k, done.unwrap()));
        }
    }
    for r in &reports {
        assert_eq!(r["sessions_moved"].as_u64(), Some(WRITERS as u64), "{r}");
    }
    let status = server.status();
    let history = status["upgrades"].as_array().unwrap();
    assert!(history.len() == 3 && history.iter().all(|h| h["outcome"] == "ok"), "{history:?}");

    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after the upgrades");
    let (stats, size, files) = settled_log(&mut mc, &server.kv_dir());
    let live = num(&stats, "live_log_bytes");
    assert_eq!(live, KEYS as u64 * (38 + 9 + 100), "{stats:?}");
    assert!(size <= 4 * live, "log not bounded after the upgrades: {size} bytes in kv/ ({files:?})");
    server.restart();
    assert_values(&mut server.connect(), &expect, "after the upgrades and kill -9");
    let log = server.log();
    eprintln!(
        "{} sets across 3 upgrades ({} of them caught up after a compaction in the old process); test took {:?}",
        acked.load(Ordering::SeqCst),
        log.matches("compacted since it was read").count(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 5. A pipelining client keeps its connection through live upgrades.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    Stored,
    Number(u64),
    Value(String, Vec<u8>),
    Meta(Vec<u8>),
}

fn pipeline_value(n: usize) -> Vec<u8> {
    noise(20 + (n * 131) % 280, n as u64 + 17)
}

/// The pipeline: its bytes, the start offset of each command, and the reply
/// each command expects, in order.
fn pipeline(commands: usize) -> (Vec<u8>, Vec<usize>, Vec<Expect>) {
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    let mut expect = Vec::new();
    let mut push = |bytes: &mut Vec<u8>, cmd: &[u8], e: Expect| {
        starts.push(bytes.len());
        bytes.extend_from_slice(cmd);
        expect.push(e);
    };
    push(&mut bytes, &set_cmd("counter", 0, 0, b"0"), Expect::Stored);
    let value = pipeline_value;
    let mut counter = 0;
    for n in 0..commands {
        match n % 4 {
            0 => push(&mut bytes, &set_cmd(&format!("p{n}"), 0, 0, &value(n)), Expect::Stored),
            1 => {
                counter += 1;
                push(&mut bytes, b"incr counter 1\r\n", Expect::Number(counter));
            }
            2 => {
                let k = n - 2;
                push(&mut bytes, format!("get p{k}\r\n").as_bytes(), Expect::Value(format!("p{k}"), value(k)));
            }
            _ => {
                // An earlier key, often one set before an upgrade.
                let k = (n * 7919 + 13) % (n / 4 + 1) * 4;
                if n % 8 == 3 {
                    push(&mut bytes, format!("mg p{k} v\r\n").as_bytes(), Expect::Meta(value(k)));
                } else {
                    push(&mut bytes, format!("get p{k}\r\n").as_bytes(), Expect::Value(format!("p{k}"), value(k)));
                }
            }
        }
    }
    (bytes, starts, expect)
}

/// Reads and checks every reply in order; returns how many matched.
fn check_replies(mc: &mut Mc, expect: &[Expect], progress: &AtomicUsize) -> Result<usize, String> {
    for (i, e) in expect.iter().enumerate() {
        let fail = |got: String| format!("reply {i} (expected {e:?}): {got}");
        match e {
            Expect::Stored | Expect::Number(_) => {
                let line = mc.try_line().map_err(|err| fail(err.to_string()))?;
                let want = match e {
                    Expect::Stored => "STORED".to_string(),
                    Expect::Number(n) => n.to_string(),
                    _ => unreachable!(),
                };
                if line != want.as_bytes() {
                    return Err(fail(format!("{:?}", String::from_utf8_lossy(&line))));
                }
            }
            Expect::Value(key, data) => {
                let values = mc.try_values().map_err(|err| fail(err.to_string()))?;
                if values.len() != 1 || &values[0].0 != key || &values[0].1.data != data {
                    return Err(fail(format!("{values:?}")));
                }
            }
            Expect::Meta(data) => {
                let line = mc.try_line().map_err(|err| fail(err.to_string()))?;
                if line != format!("VA {}", data.len()).as_bytes() {
                    return Err(fail(format!("{:?}", String::from_utf8_lossy(&line))));
                }
                let got = mc.try_block(data.len()).map_err(|err| fail(err.to_string()))?;
                if &got != data {
                    return Err(fail("wrong data".into()));
                }
            }
        }
        progress.store(i + 1, Ordering::SeqCst);
    }
    Ok(expect.len())
}

#[test]
fn pipelined_client_survives_upgrades() {
    pipelined_case("os");
}

/// The same in fsync mode, where replies wait for a group commit that the
/// handover must not strand.
#[test]
fn pipelined_client_survives_upgrades_fsync() {
    pipelined_case("fsync");
}

fn pipelined_case(durability: &str) {
    const COMMANDS: usize = 20_000;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some(&format!("[kv]\ndurability = \"{durability}\"\n")));
    let first_pid = server.serving_pid();
    let (bytes, starts, expect) = pipeline(COMMANDS);
    let total_replies = expect.len();

    // Cut points inside commands: in a set's data block, inside a command
    // line, and inside a get line.
    let set_at = |from: usize| (from..starts.len()).find(|&i| bytes[starts[i]..].starts_with(b"set ")).unwrap();
    let incr_at = |from: usize| (from..starts.len()).find(|&i| bytes[starts[i]..].starts_with(b"incr ")).unwrap();
    let get_at = |from: usize| (from..starts.len()).find(|&i| bytes[starts[i]..].starts_with(b"get ")).unwrap();
    let c1 = starts[set_at(starts.len() / 4)] + 20; // "set pN 0 0 L\r\n" is shorter than 20
    let c2 = starts[incr_at(starts.len() / 2)] + 6; // "incr c|ounter 1"
    let c3 = starts[get_at(starts.len() * 3 / 4)] + 5; // "get p|N"
    let complete_before = |cut: usize| starts.iter().filter(|&&s| s < cut).count() - 1;

    let stream = TcpStream::connect(&server.addr).unwrap();
    let mut reader = Mc::new(stream.try_clone().unwrap());
    let mut out = stream;
    let progress = Arc::new(AtomicUsize::new(0));
    let reading = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let res = check_replies(&mut reader, &expect, &progress);
            (res, reader)
        })
    };
    let wait_progress = |n: usize, what: &str| {
        let start = Instant::now();
        while progress.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: only {} of {n} replies after {DEADLINE:?}",
                progress.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let mut reports = Vec::new();
    let mut upgrade_times = Vec::new();
    // Upgrade 1: everything up to c1 answered; a set's data block half sent.
    out.write_all(&bytes[..c1]).unwrap();
    wait_progress(complete_before(c1), "before upgrade 1");
    let t = Instant::now();
    reports.push(server.upgrade());
    upgrade_times.push(t.elapsed());

    // Upgrade 2: the next part streams in pieces while the upgrade runs.
    let data_dir = server.data.clone();
    let upgrading = std::thread::spawn(move || {
        let t = Instant::now();
        let out = run(ferry().args(["upgrade", "--json", "--data"]).arg(&data_dir));
        (out, t.elapsed())
    });
    let pieces = 16;
    let piece = (c2 - c1).div_ceil(pieces);
    for chunk in bytes[c1..c2].chunks(piece) {
        out.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    let (upgrade2, took) = upgrading.join().unwrap();
    assert!(
        upgrade2.status.success(),
        "upgrade 2 failed: {}\n{}",
        String::from_utf8_lossy(&upgrade2.stderr),
        server.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&upgrade2.stdout).unwrap();
    server.upgraded.push(report["new_pid"].as_i64().unwrap() as i32);
    reports.push(report);
    upgrade_times.push(took);

    // Upgrade 3: a large write, ending inside a get line, right before it.
    out.write_all(&bytes[c2..c3]).unwrap();
    let t = Instant::now();
    reports.push(server.upgrade());
    upgrade_times.push(t.elapsed());
    out.write_all(&bytes[c3..]).unwrap();

    let (res, mut reader) = reading.join().unwrap();
    let checked = res.unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", server.log()));
    assert_eq!(checked, total_replies);

    // The same connection, now served by the third new process.
    let last_pid = reports[2]["new_pid"].as_i64().unwrap();
    assert_eq!(server.serving_pid() as i64, last_pid);
    out.write_all(b"incr counter 1\r\nstats\r\n").unwrap();
    assert_eq!(reader.line(), (COMMANDS / 4 + 1).to_string());
    let mut pid_line = None;
    loop {
        let line = reader.line();
        if line == "END" {
            break;
        }
        if let Some(pid) = line.strip_prefix("STAT pid ") {
            pid_line = Some(pid.parse::<i64>().unwrap());
        }
    }
    assert_eq!(pid_line, Some(last_pid), "the connection is not served by the newest process");

    let mut pids = vec![first_pid as i64];
    for r in &reports {
        assert!(r["sessions_moved"].as_u64().unwrap() >= 1, "{r}");
        pids.push(r["new_pid"].as_i64().unwrap());
    }
    let status = server.status();
    let history = status["upgrades"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    for (i, record) in history.iter().enumerate() {
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["old_pid"].as_i64().unwrap(), pids[i], "{record}");
        assert_eq!(record["new_pid"].as_i64().unwrap(), pids[i + 1], "{record}");
    }
    // A fresh connection sees the same data, and so does a restart after a
    // crash of the last process: what each process appended is in the log.
    let counter = |mc: &mut Mc| mc.get("counter").map(|v| String::from_utf8(v.data).unwrap().trim().to_string());
    let want = Some((COMMANDS / 4 + 1).to_string());
    let sets: BTreeMap<String, Vec<u8>> =
        (0..COMMANDS).step_by(4).map(|n| (format!("p{n}"), pipeline_value(n))).collect();
    let mut mc = server.connect();
    assert_eq!(counter(&mut mc), want);
    assert_values(&mut mc, &sets, "after the upgrades");
    server.restart();
    let mut mc = server.connect();
    assert_eq!(counter(&mut mc), want, "after the upgrades and kill -9");
    assert_values(&mut mc, &sets, "after the upgrades and kill -9");
    eprintln!(
        "{durability}: {total_replies} pipelined replies checked through upgrades taking {upgrade_times:?}; test took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 6. The memory limit refuses instead of losing data.
// ---------------------------------------------------------------------------

#[test]
fn memory_limit_refuses_instead_of_losing_data() {
    const OOM: &str = "SERVER_ERROR out of memory storing object";
    let value = |i: u64| noise(60 * 1024, i + 1000);
    let limits = "max_memory = 2097152\nmax_item_bytes = 65536\n";

    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some(&format!("[kv]\ndurability = \"os\"\n{limits}")));
    let mut mc = server.connect();
    let mut stored = BTreeMap::new();
    let mut refused = 0;
    for i in 0..60u64 {
        let key = format!("big{i}");
        match mc.set(&key, &value(i)).as_str() {
            "STORED" => {
                assert_eq!(refused, 0, "{key} stored after an out-of-memory refusal without anything freed");
                stored.insert(key, value(i));
            }
            OOM => refused += 1,
            other => panic!("{key}: {other}"),
        }
    }
    assert!(refused > 0, "60 values of 60 KiB fit in 2 MiB");
    assert!(stored.len() >= 20, "only {} values stored before running out", stored.len());
    assert_values(&mut mc, &stored, "after running out of memory");
    assert_eq!(mc.stat("evictions"), 0);
    assert!(mc.stat("bytes") <= 2_097_152);
    // Deleting makes room again.
    let first = stored.keys().next().unwrap().clone();
    assert_eq!(mc.call(&format!("delete {first}")), "DELETED");
    stored.remove(&first);
    assert_eq!(mc.set("after-delete", &value(999)), "STORED");
    stored.insert("after-delete".into(), value(999));
    let bytes = mc.stat("bytes");
    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &stored, "after running out of memory and a restart");
    // The replayed store counts the same memory, and is as full as before.
    assert_eq!(mc.stat("bytes"), bytes, "memory accounting changed across the restart");
    assert_eq!(mc.set("one-more", &value(1000)), OOM);
    drop(server);

    // A cache evicts instead.
    let dir = tempfile::tempdir().unwrap();
    let server = KvServer::start(dir.path(), Some(&format!("[kv]\ndurability = \"memory\"\n{limits}")));
    let mut mc = server.connect();
    for i in 0..60u64 {
        assert_eq!(mc.set(&format!("big{i}"), &value(i)), "STORED", "memory mode refused big{i}");
    }
    assert!(mc.stat("evictions") > 0);
    assert!(mc.stat("bytes") <= 2_097_152);
    assert_eq!(mc.get("big59").map(|v| v.data), Some(value(59)), "the newest item was evicted");
}

// ---------------------------------------------------------------------------
// 7. The connection limit.
// ---------------------------------------------------------------------------

#[test]
fn connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), Some("[kv]\nmax_connections = 4\n"));
    let mut conns: Vec<Mc> = (0..4).map(|_| server.connect()).collect();
    for mc in &mut conns {
        assert!(mc.call("version").starts_with("VERSION "));
    }
    // The fifth is refused: memcached's line, then closed (or just closed).
    assert_refused(&server);
    // The four still work.
    for mc in &mut conns {
        assert!(mc.call("version").starts_with("VERSION "));
    }
    // Closing one makes room (once the server has seen it close).
    drop(conns.pop());
    let start = Instant::now();
    let mut fresh = loop {
        let mut mc = server.connect();
        mc.send(b"version\r\n");
        if mc.try_line().is_ok_and(|l| l.starts_with(b"VERSION ")) {
            break mc;
        }
        assert!(start.elapsed() < DEADLINE, "no connection accepted after closing one");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(fresh.set("k", b"v"), "STORED");
    assert_eq!(conns[0].get("k").map(|v| v.data), Some(b"v".to_vec()));

    // The limit holds across a live upgrade: the four moved sessions keep
    // their places and a fifth is still refused.
    conns.push(fresh);
    let report = server.upgrade();
    assert_eq!(report["sessions_moved"].as_u64(), Some(4), "{report}");
    for mc in &mut conns {
        assert!(mc.call("version").starts_with("VERSION "));
    }
    assert_refused(&server);
}

/// A fifth connection gets memcached's refusal and is closed (or is closed).
fn assert_refused(server: &KvServer) {
    let mut fifth = server.connect();
    let _ = fifth.s.write_all(b"version\r\n");
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match fifth.fill(deadline, "the refusal") {
            Ok(()) => got = fifth.buf.clone(),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => panic!("the fifth connection is still open: {got:?}"),
            Err(_) => break, // EOF or reset
        }
    }
    assert!(got.is_empty() || got == b"ERROR Too many open connections\r\n", "{:?}", String::from_utf8_lossy(&got));
}

// ---------------------------------------------------------------------------
// 8. Malformed input changes nothing stored.
// ---------------------------------------------------------------------------

#[test]
fn bad_input_keeps_everything_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = KvServer::start(dir.path(), None);
    let mut good = server.connect();
    let mut expect = BTreeMap::new();
    set_all(&mut good, "kept", 20, &mut expect);
    assert_eq!(good.set("num", b"41"), "STORED");
    assert_eq!(good.set("k", b"old"), "STORED");
    expect.insert("k".into(), b"old".to_vec());

    let mut bad = server.connect();
    let long = "x".repeat(251);
    // A 251-byte key: the line is refused, its data block read as a command.
    assert_eq!(bad.call(&format!("set {long} 0 0 1\r\nz")), "CLIENT_ERROR bad command line format");
    assert_eq!(bad.line(), "ERROR");
    assert_eq!(bad.call(&format!("get {long}")), "CLIENT_ERROR bad command line format");
    // A data block longer than announced: refused, then its rest is a line.
    assert_eq!(bad.call("set k 0 0 3\r\nabcd"), "CLIENT_ERROR bad data chunk");
    assert_eq!(bad.line(), "ERROR");
    // Unknown commands, wrong token counts, bad numbers.
    assert_eq!(bad.call("bogus k"), "ERROR");
    assert_eq!(bad.call("set k 0 0"), "ERROR");
    assert_eq!(bad.call("set k 0 0 -1"), "CLIENT_ERROR bad command line format");
    assert_eq!(bad.call("set k 0 0 99999999999999999999"), "CLIENT_ERROR bad command line format");
    assert_eq!(bad.call("incr k 1"), "CLIENT_ERROR cannot increment or decrement non-numeric value");
    assert_eq!(bad.call("incr num x"), "CLIENT_ERROR invalid numeric delta argument");
    // A huge <bytes>: refused, and its data block skipped unread.
    let huge = 2_000_000;
    assert_eq!(bad.call(&format!("set k 0 0 {huge}")), "SERVER_ERROR object too large for cache");
    let mut block = noise(huge, 3);
    block.extend_from_slice(b"\r\n");
    bad.send(&block);
    // The same connection still works, and so does another one meanwhile.
    assert_eq!(good.call("version").split(' ').next(), Some("VERSION"));
    assert_eq!(bad.call("incr num 1"), "42");
    expect.insert("num".into(), b"42".to_vec());
    assert_values(&mut bad, &expect, "on the connection that sent bad input");
    assert_values(&mut good, &expect, "on another connection");
    // A refused block half skipped when a live upgrade moves the connection:
    // the new process skips the rest.
    assert_eq!(bad.call(&format!("set k 0 0 {huge}")), "SERVER_ERROR object too large for cache");
    bad.send(&block[..huge / 2]);
    let report = server.upgrade();
    assert!(report["sessions_moved"].as_u64().unwrap() >= 2, "{report}");
    bad.send(&block[huge / 2..]);
    assert_eq!(bad.call("incr num 1"), "43");
    expect.insert("num".into(), b"43".to_vec());
    assert_values(&mut bad, &expect, "after an upgrade in the middle of a skipped block");
    // An endless line closes only that connection.
    let mut endless = server.connect();
    endless.send(&vec![b'x'; 64 * 1024]);
    // Closed without a reply (EOF or reset).
    match endless.fill(Instant::now() + DEADLINE, "the close") {
        Ok(()) => panic!("an endless line got a reply: {:?}", String::from_utf8_lossy(&endless.buf)),
        Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "an endless line did not close the connection"),
    }
    assert_values(&mut good, &expect, "after an endless line");
    // Nothing of the above reached the log.
    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after a restart");
    assert_eq!(mc.stat("curr_items"), expect.len() as u64);
}

// ---------------------------------------------------------------------------
// Disk full.
// ---------------------------------------------------------------------------

/// A small tmpfs mounted over a directory for the length of a test, so the
/// disk really fills (ENOSPC from the kernel, not an injected error).
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `at`; `None` where this process may not
    /// mount (not root): a skip locally, a failure under CI.
    fn mount(at: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(std::env::var_os("CI").is_none(), "cannot mount a tmpfs under CI: {why}");
            eprintln!("SKIPPED: the disk-full test needs to mount a tmpfs (run as root): {why}");
            return None;
        }
        Some(SmallDisk { at: at.to_path_buf() })
    }

    fn resize(&self, bytes: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}"), "tmpfs"])
            .arg(&self.at)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// A full disk: sets fail with `SERVER_ERROR`, the server keeps serving
/// everything it acknowledged, nothing half-written reaches the log, and
/// once there is room again writes succeed and a restart finds every
/// acknowledged value.
#[test]
fn disk_full_refuses_writes_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("data").join("kv"), 2 << 20) else { return };
    let mut server = KvServer::start(dir.path(), None);
    let mut mc = server.connect();
    let mut expect = BTreeMap::new();
    let mut refused = 0;
    // 40 KiB values: about 50 fit in 2 MiB.
    for i in 0..200u64 {
        let key = format!("full{i}");
        let value = noise(40 << 10, i + 7);
        match mc.set(&key, &value).as_str() {
            "STORED" => {
                assert_eq!(refused, 0, "{key} stored after a refusal on a disk that did not grow");
                expect.insert(key, value);
            }
            reply => {
                assert_eq!(reply, "SERVER_ERROR out of disk space storing object", "{key}");
                refused += 1;
            }
        }
    }
    assert!(refused > 100 && expect.len() > 20, "stored {}, refused {refused}", expect.len());
    // An overwrite of a stored key is refused too, and loses nothing.
    let first = expect.keys().next().unwrap().clone();
    assert_eq!(mc.set(&first, &noise(40 << 10, 999)), "SERVER_ERROR out of disk space storing object");
    assert_values(&mut mc, &expect, "on a full disk");
    assert_values(&mut server.connect(), &expect, "on a full disk, another connection");

    // Room again: writes go on, on the same connection.
    disk.resize(16 << 20);
    for i in 200..220u64 {
        let (key, value) = (format!("full{i}"), noise(40 << 10, i + 7));
        assert_eq!(mc.set(&key, &value), "STORED", "{key} after the disk grew");
        expect.insert(key, value);
    }
    assert_eq!(mc.call(&format!("delete {first}")), "DELETED");
    expect.remove(&first);
    // The log replays cleanly: every acknowledged value, nothing torn.
    server.restart();
    let mut mc = server.connect();
    assert_values(&mut mc, &expect, "after a restart");
    assert!(mc.get(&first).is_none(), "a deleted key came back");
    assert!(!server.log().contains("truncat"), "the restart truncated the log:\n{}", server.log());
}
