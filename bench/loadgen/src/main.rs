//! `ferry-loadgen`: holds many connections to a running `ferry serve`, some
//! of them transferring, asks the server for live upgrades in a row, and
//! checks afterwards that no connection and no transfer noticed more than a
//! pause. Used by `bench/upgrade.sh`; see docs/BENCHMARKS.md ("Upgrade").
//!
//! - Idle connections are raw TCP connections that send nothing. After the
//!   upgrades each one sends `LIST` and must get `END count=`: proof that the
//!   server never dropped it.
//! - Transfers use the real client library with `retries: 0`, so a dropped
//!   connection fails the transfer; each must finish in one attempt with the
//!   expected BLAKE3. Half are GETs of an existing file, half PUTs of
//!   generated data (different for each PUT, so crossed sessions show).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use clap::Parser;
use ferry_core::data_dir::DataDir;
use ferry_core::server::{query_status, request_upgrade};
use ferry_core::upgrade::UpgradeReport;
use ferry_transfer::client::{ClientOptions, GetTarget, Observer, PutSource, get, put};
use ferry_transfer::command::{Reply, Request};
use ferry_transfer::frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Descriptors kept for everything besides connections (runtime, files
/// being transferred, admin socket, stdio).
const FD_SLACK: u64 = 64;
/// Largest frame accepted in an idle connection's LIST reply.
const MAX_FRAME: u32 = 16 << 20;
/// How long an idle connection's LIST may take at the end.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(about = "Hold connections and transfers across live upgrades of a running ferry server")]
struct Args {
    /// Data directory of the running server (reads listen.json, talks to ferry.sock)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Connections to hold in all, the transferring ones included
    #[arg(long, default_value_t = 1000, value_name = "N")]
    connections: usize,
    /// Connections that transfer during the upgrades (half GET, half PUT)
    #[arg(long, default_value_t = 20, value_name = "K")]
    transfers: usize,
    /// Live upgrades to perform in a row
    #[arg(long, default_value_t = 1, value_name = "M")]
    upgrades: usize,
    /// Existing file under the server's root that the GETs download
    #[arg(long, default_value = "bench-src", value_name = "NAME")]
    get_file: String,
    /// Bytes each PUT uploads
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    put_bytes: u64,
    /// Rate limit of every transfer in bytes per second (so that they outlast the upgrades)
    #[arg(long, default_value_t = 512 << 10, value_name = "BYTES")]
    rate: u64,
    /// Scratch directory for GET outputs and PUT sources [default: a new temporary directory]
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Seconds to wait for the server to register every connection and for every transfer to start
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    setup_timeout: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

enum Job {
    Get { name: String, out: PathBuf, expect: String },
    Put { name: String, source: PathBuf, expect: String, stored: PathBuf },
}

/// What one transfer ended with.
struct Outcome {
    what: String,
    error: Option<String>,
    paused: u32,
    resumed: u32,
    /// Client-seen gaps, µs: from each `PAUSED` notice to the `RESUMED` after it.
    gaps_us: Vec<u64>,
    finished: Instant,
}

/// Counts the notices one transfer gets; `started` is shared so that the
/// upgrades begin only once every transfer is under way.
struct Watch {
    started: Arc<AtomicUsize>,
    begun: bool,
    paused: u32,
    resumed: u32,
    /// When the last `PAUSED` was read, until its `RESUMED`.
    paused_at: Option<Instant>,
    gaps_us: Vec<u64>,
    other: Vec<String>,
}

impl Observer for Watch {
    fn begin(&mut self, _total: Option<u64>, _offset: u64) {
        if !std::mem::replace(&mut self.begun, true) {
            self.started.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn progress(&mut self, _offset: u64) {}

    fn notice(&mut self, message: &str) {
        if message.starts_with("server paused") {
            self.paused += 1;
            self.paused_at = Some(Instant::now());
        } else if message.starts_with("transfer resumed") {
            self.resumed += 1;
            // One per upgrade, and upgrades are bounded by --upgrades.
            if let Some(at) = self.paused_at.take() {
                self.gaps_us.push(at.elapsed().as_micros() as u64);
            }
        } else {
            self.other.push(message.to_string());
        }
    }

    fn finish(&mut self) {}
}

async fn run(args: Args) -> Result<bool> {
    if args.transfers > args.connections {
        bail!("--transfers ({}) cannot exceed --connections ({})", args.transfers, args.connections);
    }
    let fd_limit = raise_fd_limit(args.connections as u64 + args.transfers as u64 + FD_SLACK)?;
    let data = DataDir::new(&args.data);
    let listen = data.read_listen().with_context(|| {
        format!(
            "cannot read {} (is `ferry serve --data {}` running?)",
            data.listen_file().display(),
            args.data.display()
        )
    })?;
    let addr = listen.get("transfer").context("listen.json names no transfer service")?.clone();
    let status = query_status(&args.data).await?;
    let root = PathBuf::from(&status.root);
    let baseline = status.connections;

    let (_tmp, work) = match &args.work {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            (None, dir.clone())
        }
        None => {
            let tmp = tempfile::tempdir().context("cannot create a scratch directory")?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    let puts = args.transfers / 2;
    let gets = args.transfers - puts;
    let mut jobs = Vec::new();
    if gets > 0 {
        let source = root.join(&args.get_file);
        let expect = hash_path(source.clone())
            .await
            .with_context(|| format!("the GET source must exist before the run: {}", source.display()))?;
        for i in 0..gets {
            jobs.push(Job::Get {
                name: args.get_file.clone(),
                out: work.join(format!("get-{i}")),
                expect: expect.clone(),
            });
        }
    }
    for i in 0..puts {
        let source = work.join(format!("put-{i}.src"));
        let expect = generate(&source, args.put_bytes, i as u64 + 1)?;
        let name = format!("loadgen-{}-put-{i}", std::process::id());
        jobs.push(Job::Put { stored: root.join(&name), name, source, expect });
    }
    let idle_count = args.connections - args.transfers;
    println!(
        "ferry-loadgen: server {addr} (pid {}), {} connections = {idle_count} idle + {gets} GET + {puts} PUT \
         at {} KiB/s each; {} upgrade(s); RLIMIT_NOFILE {fd_limit}",
        status.pid,
        args.connections,
        args.rate / 1024,
        args.upgrades
    );

    // Set up: idle connections, then transfers; wait until the server has
    // every connection and every transfer has started.
    let setup = Instant::now();
    let mut idle = Vec::with_capacity(idle_count);
    for i in 0..idle_count {
        let stream = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("cannot open idle connection {} of {idle_count} to {addr}", i + 1))?;
        idle.push(stream);
    }
    let started = Arc::new(AtomicUsize::new(0));
    let opts = ClientOptions {
        server: addr.clone(),
        retries: 0,
        limit_rate: Some(args.rate),
        cache_dir: None,
        ..ClientOptions::default()
    };
    let mut running = JoinSet::new();
    for job in jobs {
        running.spawn(transfer(opts.clone(), job, started.clone()));
    }
    let mut outcomes = Vec::new();
    let deadline = setup + Duration::from_secs(args.setup_timeout);
    let want = baseline + args.connections;
    loop {
        while let Some(done) = running.try_join_next() {
            let outcome = done.context("a transfer task panicked")?;
            if let Some(e) = &outcome.error {
                bail!("{} failed before the upgrades began: {e}", outcome.what);
            }
            outcomes.push(outcome);
        }
        let have = query_status(&args.data).await?.connections;
        let begun = started.load(Ordering::SeqCst) + outcomes.len();
        if have >= want && begun >= args.transfers {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after {}s the server has {have} of {want} connections and {begun} of {} transfers started \
                 (is its transfer.max_connections, 1024 by default, below {want}? its log says more)",
                args.setup_timeout,
                args.transfers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("setup: {want} connections registered, {} transfers under way ({:.1}s)", args.transfers, secs(setup));

    // The upgrades, back to back.
    let mut reports: Vec<UpgradeReport> = Vec::new();
    let mut walls_us: Vec<u64> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let upgrades = Instant::now();
    for i in 1..=args.upgrades {
        let asked = Instant::now();
        match request_upgrade(&args.data, None).await {
            Ok(Ok(r)) => {
                let wall = asked.elapsed().as_micros() as u64;
                println!(
                    "upgrade {i}/{}: pid {} -> {}, {} sessions moved in {} batches, session gap p50 {} / p99 {} / \
                     max {} ms, total handover {} ms, {} ms request to reply",
                    args.upgrades,
                    r.old_pid,
                    r.new_pid,
                    r.sessions_moved,
                    r.batches,
                    ms(r.session_gap.p50_us),
                    ms(r.session_gap.p99_us),
                    ms(r.session_gap.max_us),
                    ms(r.pause_gap_us),
                    ms(wall)
                );
                walls_us.push(wall);
                reports.push(r);
            }
            Ok(Err(reason)) => {
                println!("upgrade {i}/{}: FAILED (server still serving): {reason}", args.upgrades);
                failed.push(reason);
            }
            Err(e) => {
                println!("upgrade {i}/{}: FAILED (admin socket): {e}", args.upgrades);
                failed.push(e.to_string());
            }
        }
    }
    let upgrades_done = Instant::now();
    let upgrades_secs = secs(upgrades);

    // Transfers finish; then every idle connection must still answer.
    while let Some(done) = running.join_next().await {
        outcomes.push(done.context("a transfer task panicked")?);
    }
    let mut checks = JoinSet::new();
    for stream in idle {
        checks.spawn(async move {
            tokio::time::timeout(LIST_TIMEOUT, list_check(stream))
                .await
                .unwrap_or_else(|_| Err(format!("no END within {}s", LIST_TIMEOUT.as_secs())))
        });
    }
    let mut lost: Vec<String> = Vec::new();
    while let Some(done) = checks.join_next().await {
        if let Err(e) = done.unwrap_or_else(|e| Err(format!("check task failed: {e}"))) {
            lost.push(e);
        }
    }

    // Summary.
    let transfer_failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    // Mid-transfer at every upgrade: a PAUSED notice for each (only a GET or
    // PUT in progress gets one, and a GET's arrive behind its data, before
    // DONE) and still running after the last.
    let spanning = outcomes.iter().filter(|o| o.finished > upgrades_done && o.paused as usize == reports.len()).count();
    let gaps: Vec<u64> = sorted(reports.iter().map(|r| r.pause_gap_us));
    // Every session of every upgrade, pooled (each report carries its gaps).
    let session_gaps: Vec<u64> = sorted(reports.iter().flat_map(|r| r.session_gaps_us.iter().copied()));
    let upgrade_p99s: Vec<u64> = sorted(reports.iter().map(|r| r.session_gap.p99_us));
    let client_gaps: Vec<u64> = sorted(outcomes.iter().flat_map(|o| o.gaps_us.iter().copied()));
    let moved: Vec<u64> = sorted(reports.iter().map(|r| r.sessions_moved as u64));
    // Notices each kind of transfer saw, as "min-max".
    let seen = |kind: &str, field: fn(&Outcome) -> u32| {
        let v = sorted(outcomes.iter().filter(|o| o.what.starts_with(kind)).map(|o| u64::from(field(o))));
        format!("{}-{}", show(&v, 0.0), show(&v, 100.0))
    };
    let walls = sorted(walls_us.into_iter());
    println!();
    println!("upgrades           {} ok, {} failed, {upgrades_secs:.1}s in all", reports.len(), failed.len());
    for reason in failed.iter().take(5) {
        println!("  failure: {reason}");
    }
    println!("sessions moved     min {}, max {} (connections held: {want})", show(&moved, 0.0), show(&moved, 100.0));
    println!(
        "session gap ms     p50 {}, p99 {}, max {} (n={} sessions over all upgrades; pause in the old process to \
         first run in the new)",
        show_ms(&session_gaps, 50.0),
        show_ms(&session_gaps, 99.0),
        show_ms(&session_gaps, 100.0),
        session_gaps.len()
    );
    println!(
        "                   per-upgrade p99: p50 {}, max {} ms",
        show_ms(&upgrade_p99s, 50.0),
        show_ms(&upgrade_p99s, 100.0)
    );
    println!(
        "client gap ms      p50 {}, p99 {}, max {} (n={}; PAUSED to RESUMED as each transfer read them)",
        show_ms(&client_gaps, 50.0),
        show_ms(&client_gaps, 99.0),
        show_ms(&client_gaps, 100.0),
        client_gaps.len()
    );
    println!(
        "total handover ms  p50 {}, p99 {}, max {} (n={}; first accept loop stopped to every session resumed)",
        show_ms(&gaps, 50.0),
        show_ms(&gaps, 99.0),
        show_ms(&gaps, 100.0),
        gaps.len()
    );
    println!(
        "request-to-reply  p50 {} ms, max {} ms (client side, includes starting the new process)",
        show_ms(&walls, 50.0),
        show_ms(&walls, 100.0)
    );
    println!(
        "transfers          {} ok, {} failed (one attempt each, BLAKE3 checked)",
        outcomes.len() - transfer_failures.len(),
        transfer_failures.len()
    );
    println!(
        "                   PAUSED/RESUMED notices seen per transfer: GET {}/{}, PUT {}/{} (min-max)",
        seen("GET", |o| o.paused),
        seen("GET", |o| o.resumed),
        seen("PUT", |o| o.paused),
        seen("PUT", |o| o.resumed)
    );
    for o in transfer_failures.iter().take(10) {
        println!("  failure: {}: {}", o.what, o.error.as_deref().unwrap_or(""));
    }
    println!("                   {spanning} of {} were mid-transfer at every upgrade", outcomes.len());
    if spanning < outcomes.len() {
        println!("  note: some transfers were not; raise the sizes or lower --rate so that all span every upgrade");
    }
    println!("idle connections   {} checked, {} lost", idle_count, lost.len());
    for e in lost.iter().take(5) {
        println!("  lost: {e}");
    }
    let ok = failed.is_empty() && transfer_failures.is_empty() && lost.is_empty();
    println!(
        "summary connections={} transfers={} upgrades={} upgrades_ok={} upgrades_failed={} moved_min={} moved_max={} \
         session_gap_p50_us={} session_gap_p99_us={} session_gap_max_us={} client_gap_p50_us={} client_gap_p99_us={} \
         client_gap_max_us={} gap_p50_us={} gap_p99_us={} gap_max_us={} transfer_failures={} transfers_spanning={} \
         idle_lost={} result={}",
        args.connections,
        args.transfers,
        args.upgrades,
        reports.len(),
        failed.len(),
        show(&moved, 0.0),
        show(&moved, 100.0),
        show(&session_gaps, 50.0),
        show(&session_gaps, 99.0),
        show(&session_gaps, 100.0),
        show(&client_gaps, 50.0),
        show(&client_gaps, 99.0),
        show(&client_gaps, 100.0),
        show(&gaps, 50.0),
        show(&gaps, 99.0),
        show(&gaps, 100.0),
        transfer_failures.len(),
        spanning,
        lost.len(),
        if ok { "pass" } else { "fail" }
    );
    Ok(ok)
}

/// Runs one transfer to the end and checks it: one attempt, expected
/// BLAKE3 (for a PUT, also of the file the server stored, which is then
/// removed).
async fn transfer(opts: ClientOptions, job: Job, started: Arc<AtomicUsize>) -> Outcome {
    let mut watch =
        Watch { started, begun: false, paused: 0, resumed: 0, paused_at: None, gaps_us: Vec::new(), other: Vec::new() };
    let (what, result) = match job {
        Job::Get { name, out, expect } => {
            let result = get(&opts, &name, GetTarget::File(out.clone()), &mut watch).await;
            let _ = std::fs::remove_file(&out);
            let checked = match result {
                Ok(r) => verify(r.attempts, &r.blake3, &expect),
                Err(e) => Err(e.to_string()),
            };
            (format!("GET {name}"), checked)
        }
        Job::Put { name, source, expect, stored } => {
            let result = put(&opts, PutSource::File(source.clone()), &name, &mut watch).await;
            let _ = std::fs::remove_file(&source);
            let mut checked = match result {
                Ok(r) => verify(r.attempts, &r.blake3, &expect),
                Err(e) => Err(e.to_string()),
            };
            if checked.is_ok() {
                checked = match hash_path(stored.clone()).await {
                    Ok(on_disk) if on_disk == expect => Ok(()),
                    Ok(on_disk) => Err(format!("the stored file hashes to {on_disk}, expected {expect}")),
                    Err(e) => Err(format!("{e:#}")),
                };
                let _ = std::fs::remove_file(&stored);
            }
            (format!("PUT {name}"), checked)
        }
    };
    let finished = Instant::now();
    let mut error = result.err();
    if error.is_none() && !watch.other.is_empty() {
        error = Some(format!("unexpected notices: {}", watch.other.join("; ")));
    }
    Outcome { what, error, paused: watch.paused, resumed: watch.resumed, gaps_us: watch.gaps_us, finished }
}

fn verify(attempts: u32, got: &str, expect: &str) -> Result<(), String> {
    if attempts != 1 {
        return Err(format!("needed {attempts} connection attempts (a connection was dropped)"));
    }
    if got != expect {
        return Err(format!("BLAKE3 {got}, expected {expect}"));
    }
    Ok(())
}

/// Sends `LIST` on a connection that has been silent all along and reads up
/// to `END count=N`.
async fn list_check(mut stream: TcpStream) -> Result<u64, String> {
    let list = Frame::Info(Request::List.to_string()).encode();
    stream.write_all(&list).await.map_err(|e| format!("cannot send LIST: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match Frame::check(&buf, MAX_FRAME) {
            Ok(Some(n)) => match Frame::parse(buf.split_to(n).freeze()).map_err(|e| e.to_string())? {
                Frame::Info(line) => match Reply::parse(&line) {
                    Ok(Reply::End { count }) => return Ok(count),
                    Ok(Reply::Entry { .. } | Reply::Paused { .. } | Reply::Resumed { .. }) => {}
                    _ => return Err(format!("unexpected reply to LIST: {line:?}")),
                },
                Frame::Error(msg) => return Err(format!("server sent ERROR {msg}")),
                other => return Err(format!("unexpected {:?} frame", other.frame_type())),
            },
            Ok(None) => match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("connection lost: {e}")),
            },
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Raises the soft open-file limit to the hard one and checks that `need`
/// descriptors fit.
fn raise_fd_limit(need: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("cannot raise RLIMIT_NOFILE from {soft} to {hard}"))?;
    }
    if need > hard {
        bail!(
            "this run needs about {need} open files (connections + transfers + {FD_SLACK}) but the hard limit \
             (RLIMIT_NOFILE) is {hard}: lower --connections or raise the limit (as root: ulimit -Hn {need}; \
             under systemd: LimitNOFILE=)"
        );
    }
    Ok(hard.max(soft))
}

/// Writes `len` deterministic pseudo-random bytes; returns their BLAKE3.
fn generate(path: &Path, len: u64, seed: u64) -> Result<String> {
    let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

async fn hash_path(path: PathBuf) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let hash = ferry_files::hash_file(&file).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(hash.to_hex().to_string())
    })
    .await?
}

fn sorted(values: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v
}

/// Nearest-rank percentile of sorted values (`p` 0 is the minimum).
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

fn show(sorted: &[u64], p: f64) -> String {
    percentile(sorted, p).map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn show_ms(sorted: &[u64], p: f64) -> String {
    percentile(sorted, p).map_or_else(|| "-".to_string(), ms)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
