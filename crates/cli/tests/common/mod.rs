//! Shared end-to-end harness: starts the real `ferry` binary on ephemeral
//! ports under a temp dir, waits for `listen.json` with a deadline (never a
//! fixed sleep), and drives it with real clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::BorrowMut;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The `ferry` binary under test.
pub fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `ferry serve`.
pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    /// `127.0.0.1:PORT` of the transfer service.
    pub addr: String,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server with its data under `dir/data` on a free port.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let data = dir.join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::spawn(data, "0", extra)
    }

    fn spawn(data: PathBuf, port: &str, extra: Vec<String>) -> Server {
        Server::spawn_env(data, port, extra, &[])
    }

    fn spawn_env(data: PathBuf, port: &str, extra: Vec<String>, env: &[(&str, &str)]) -> Server {
        let services = ["--transfer-port", port, "--no-http", "--no-kv", "--no-sync"];
        Server::launch(data, &services, extra, env, &[])
    }

    /// Starts `ferry serve --data <data>` with `services` (ports and
    /// `--no-*` flags) then `extra`, and waits for listen.json to name the
    /// transfer service and every one of `wait_for_keys`.
    fn launch(
        data: PathBuf,
        services: &[&str],
        extra: Vec<String>,
        env: &[(&str, &str)],
        wait_for_keys: &[&str],
    ) -> Server {
        let _ = std::fs::remove_file(data.join("listen.json"));
        let log = std::fs::create_dir_all(&data)
            .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(data.join("serve.log")))
            .expect("open server log");
        let child = ferry()
            .args(["serve", "--data"])
            .arg(&data)
            .args(services)
            .args(&extra)
            .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry serve");
        let listen = data.join("listen.json");
        let what = format!("listen.json naming transfer {}", wait_for_keys.join(" "));
        let addr = wait_for(&what, DEADLINE, || {
            let text = std::fs::read_to_string(&listen).ok()?;
            let map: serde_json::Value = serde_json::from_str(&text).ok()?;
            for key in wait_for_keys {
                map[key].as_str()?;
            }
            map["transfer"].as_str().map(str::to_string)
        });
        Server { child, data, addr, extra }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// SIGKILL, no cleanup: a crash.
    pub fn kill(&mut self) {
        self.kill_upgraded();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills and starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port().to_string();
        let data = self.data.clone();
        let extra = std::mem::take(&mut self.extra);
        let fresh = Server::spawn(data, &port, extra);
        // The old value is killed and reaped already; dropping it would
        // read ferry.pid, which now names the fresh server, and kill it.
        std::mem::forget(std::mem::replace(self, fresh));
    }

    /// `ferry status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = ferry().args(["status", "--json", "--data"]).arg(&self.data).output().unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The root of served files.
    pub fn root(&self) -> PathBuf {
        self.data.join("files")
    }

    /// A client command (`get`, `put`, `ls`) aimed at this server, with
    /// its resume records under `dir/cache`.
    pub fn client(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = ferry();
        cmd.args(args).args(["--server", &self.addr]).env("FERRY_CACHE_DIR", dir.join("cache")).current_dir(dir);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion and returns its output.
pub fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    cmd.borrow_mut().stdin(Stdio::null()).output().expect("run command")
}

/// Asserts success and returns stdout.
pub fn ok(cmd: impl BorrowMut<Command>) -> Vec<u8> {
    let out = run(cmd);
    assert!(out.status.success(), "command failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Deterministic pseudo-random bytes (fast, no dependency).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// A raw protocol connection for tests that speak frames by hand.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Raw { stream }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, ty: u8, payload: &[u8]) {
        let mut frame = vec![ty];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.send_raw(&frame);
    }

    pub fn info(&mut self, line: &str) {
        self.send(0x02, line.as_bytes());
    }

    /// Reads one frame: (type, payload). `None` at EOF.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).ok()?;
        Some((header[0], payload))
    }

    /// Reads frames until an ERROR arrives; returns its text.
    pub fn expect_error(&mut self) -> String {
        loop {
            match self.recv() {
                Some((0x01, payload)) => return String::from_utf8(payload).unwrap(),
                Some(_) => continue,
                None => panic!("connection closed without an ERROR frame"),
            }
        }
    }

    /// After an ERROR the server closes: reading reaches EOF.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) => panic!("expected EOF, got {e}"),
            }
        }
    }
}

/// Whether any thread of `pid` besides its main one still exists.
pub fn threads_left(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count() > 1).unwrap_or(false)
}

/// Whether `pid` names a live process (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

impl Server {
    /// Like [`Server::start_with`], with extra environment variables for
    /// the server (and so for every process a live upgrade starts).
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let data = dir.join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::spawn_env(data, "0", extra, env)
    }

    /// The pid in `<data>/ferry.pid`: the process serving now, which after a
    /// live upgrade is not the one this harness started.
    pub fn current_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("ferry.pid")).ok()?.trim().parse().ok()
    }

    /// SIGKILLs the serving process if a live upgrade replaced the one this
    /// harness started (that one is killed and reaped through `child`).
    fn kill_upgraded(&mut self) {
        let Some(pid) = self.current_pid() else { return };
        if pid == self.pid() || !alive(pid) {
            return;
        }
        // Guard against a recycled pid: only a ferry server is killed.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("serve") {
            return;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        // A killed process's threads exit after its main thread shows as a
        // zombie, and they hold its sockets until then: wait for all of them.
        let start = Instant::now();
        while (alive(pid) || threads_left(pid)) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Server {
    /// Starts a server with the kv (memcached protocol) service on a free
    /// port as well as the transfer service; find it with
    /// [`Server::kv_addr`]. The plain starters pass `--no-kv`, and so does
    /// [`Server::restart`]: a server from here is not meant to be restarted.
    pub fn start_kv(dir: &Path, extra: &[&str]) -> Server {
        let services = ["--transfer-port", "0", "--kv-port", "0", "--no-http", "--no-sync"];
        Server::launch(dir.join("data"), &services, extra.iter().map(|s| s.to_string()).collect(), &[], &["kv"])
    }

    /// Starts a server with the HTTP gateway on a free port as well as the
    /// transfer service; find it with [`Server::http_addr`].
    pub fn start_http(dir: &Path, extra: &[&str]) -> Server {
        let services = ["--transfer-port", "0", "--http-port", "0", "--no-kv", "--no-sync"];
        Server::launch(dir.join("data"), &services, extra.iter().map(|s| s.to_string()).collect(), &[], &["http"])
    }

    /// `127.0.0.1:PORT` of the HTTP gateway, from `listen.json`.
    pub fn http_addr(&self) -> String {
        let text = std::fs::read_to_string(self.data.join("listen.json")).expect("read listen.json");
        let map: serde_json::Value = serde_json::from_str(&text).expect("parse listen.json");
        map["http"].as_str().expect("listen.json has no http address (started without http?)").to_string()
    }

    /// `127.0.0.1:PORT` of the kv service, from `listen.json`.
    pub fn kv_addr(&self) -> String {
        let text = std::fs::read_to_string(self.data.join("listen.json")).expect("read listen.json");
        let map: serde_json::Value = serde_json::from_str(&text).expect("parse listen.json");
        map["kv"].as_str().expect("listen.json has no kv address (started without kv?)").to_string()
    }

    /// The kv service's port.
    pub fn kv_port(&self) -> String {
        self.kv_addr().rsplit(':').next().unwrap().to_string()
    }
}

/// The path of `tool` on `PATH`, or a failure that says how to get it:
/// tests that need an outside tool never skip silently. Under CI
/// (`CI` set) a missing tool means `.ci/run` failed to install it.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file());
    match found {
        Some(path) => path,
        None if std::env::var_os("CI").is_some() => {
            panic!("`{tool}` is not installed on this CI machine: .ci/run must install it ({install})")
        }
        None => panic!("this test needs `{tool}`, which is not on PATH; install it with: {install}"),
    }
}

/// A free TCP port on 127.0.0.1 (bound to :0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real memcached (`memcached` on PATH) on a free port, for differential
/// tests; killed through its `Child` when dropped.
pub struct Memcached {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Memcached {
    /// Starts `memcached -l 127.0.0.1 -p <free> -U 0 -m 64` plus `extra`,
    /// and waits until it accepts connections.
    pub fn start(extra: &[&str]) -> Memcached {
        let bin = require_tool("memcached", "apt-get install memcached");
        for _ in 0..5 {
            let port = free_port().to_string();
            let mut cmd = Command::new(&bin);
            cmd.args(["-l", "127.0.0.1", "-p", &port, "-U", "0", "-m", "64"]).args(extra);
            // `/proc/self` belongs to the effective user.
            let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
            if root {
                // memcached refuses to run as root without a user to become.
                cmd.args(["-u", "nobody"]);
            }
            let mut child =
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn memcached");
            let addr = format!("127.0.0.1:{port}");
            let start = Instant::now();
            while start.elapsed() < DEADLINE {
                if TcpStream::connect(&addr).is_ok() {
                    return Memcached { child, addr };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // lost the port to someone else: try another
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("memcached did not start");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server with the sync service (update and push ports) on free ports as well as the
    /// transfer service; find them with [`Server::sync_ports`]. Restart it with
    /// [`Server::restart_sync`], which keeps the sync ports.
    pub fn start_sync(dir: &Path, extra: &[&str]) -> Server {
        Server::spawn_sync(dir.join("data"), "0", "0", extra.iter().map(|s| s.to_string()).collect())
    }

    fn spawn_sync(data: PathBuf, port: &str, push_port: &str, extra: Vec<String>) -> Server {
        let services =
            ["--transfer-port", "0", "--sync-port", port, "--sync-push-port", push_port, "--no-http", "--no-kv"];
        Server::launch(data, &services, extra, &[], &["sync", "sync_push"])
    }

    /// The sync service's update and push ports, from `listen.json`.
    pub fn sync_ports(&self) -> (u16, u16) {
        let text = std::fs::read_to_string(self.data.join("listen.json")).expect("read listen.json");
        let map: serde_json::Value = serde_json::from_str(&text).expect("parse listen.json");
        let port = |key: &str| {
            let addr = map[key].as_str().expect("listen.json has no sync address (started without sync?)");
            addr.rsplit(':').next().unwrap().parse().unwrap()
        };
        (port("sync"), port("sync_push"))
    }

    /// Kills the server (SIGKILL) and starts it again on the same data and sync ports.
    pub fn restart_sync(&mut self) {
        let (port, push_port) = self.sync_ports();
        self.kill();
        let data = self.data.clone();
        let extra = std::mem::take(&mut self.extra);
        let fresh = Server::spawn_sync(data, &port.to_string(), &push_port.to_string(), extra);
        // The old value is killed and reaped; dropping it would kill the fresh server (see `restart`).
        std::mem::forget(std::mem::replace(self, fresh));
    }
}
