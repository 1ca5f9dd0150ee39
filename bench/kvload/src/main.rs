//! `ferry-kvload`: a pipelining load generator for memcached's text protocol, for the "pipelined" variant
//! of `bench/kv.sh` (memcaslap keeps only one request in flight per connection).
//!
//! Each connection sends `--depth` requests in one write (90% `get` of one key, 10% `set`, by default),
//! then reads all their replies, checks each, and repeats until `--duration` is over: a closed loop with
//! `depth` requests in flight, like memtier_benchmark's `--pipeline`. Keys are `--key-size` bytes drawn
//! uniformly from a key space of `--keys` that `--load` sets first (pipelined too), so every get must hit;
//! a miss or any unexpected reply fails the run. The last line printed imitates memcaslap's summary
//! (`Run time: ... Ops: N TPS: T ...`) so that the script reads both tools alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Buf, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest `--depth`, `--connections` and value size accepted (bounds every buffer).
const MAX_DEPTH: usize = 1024;
const MAX_CONNECTIONS: usize = 4096;
const MAX_VALUE: usize = 64 << 10;

#[derive(Parser, Debug, Clone)]
#[command(about = "Pipelining memcached-protocol load generator (bench/kv.sh)")]
struct Args {
    /// Server address (host:port).
    #[arg(long)]
    server: String,
    /// Connections, spread over the runtime's threads.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Client runtime threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Requests in flight per connection (sent in one write, then all replies read).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Seconds of load (after --load, if given).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key length in bytes (at least 12).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Share of requests that are gets; the rest are sets.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// First set every key of the key space (not timed, not counted).
    #[arg(long)]
    load: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!((1..=MAX_DEPTH).contains(&args.depth), "--depth must be 1 to {MAX_DEPTH}");
    ensure!((1..=MAX_CONNECTIONS).contains(&args.connections), "--connections must be 1 to {MAX_CONNECTIONS}");
    ensure!(args.value_size <= MAX_VALUE, "--value-size must be at most {MAX_VALUE}");
    ensure!((12..=250).contains(&args.key_size), "--key-size must be 12 to 250");
    ensure!(
        args.keys > 0 && args.threads > 0 && args.duration > 0.0,
        "--keys, --threads and --duration must be positive"
    );
    ensure!((0.0..=1.0).contains(&args.get_ratio), "--get-ratio must be within 0 and 1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if args.load {
        load(&args).await?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let args = args.clone();
        tasks.push(tokio::spawn(async move { connection(&args, c as u64, deadline).await }));
    }
    let mut ops = 0u64;
    for t in tasks {
        ops += t.await.context("connection task")??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("get_misses: 0");
    println!("Run time: {secs:.1}s Ops: {ops} TPS: {:.0} Net_rate: 0.0M/s", ops as f64 / secs);
    Ok(())
}

/// Sets every key once, `depth` per write, over all connections.
async fn load(args: &Args) -> Result<()> {
    let per = args.keys.div_ceil(args.connections as u64);
    let mut tasks = Vec::new();
    for c in 0..args.connections as u64 {
        let args = args.clone();
        let keys = (c * per).min(args.keys)..((c + 1) * per).min(args.keys);
        tasks.push(tokio::spawn(async move {
            let mut conn = Client::connect(&args).await?;
            let all: Vec<u64> = keys.collect();
            for batch in all.chunks(args.depth) {
                for &k in batch {
                    conn.push_set(k);
                }
                conn.exchange(batch.len()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("load task")??;
    }
    Ok(())
}

/// One connection's closed loop; returns the number of requests answered.
async fn connection(args: &Args, seed: u64, deadline: Instant) -> Result<u64> {
    let mut conn = Client::connect(args).await?;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut ops = 0;
    while Instant::now() < deadline {
        for _ in 0..args.depth {
            let r = xorshift(&mut rng);
            let key = r % args.keys;
            // The top 24 bits decide get or set, independently of the key.
            if ((r >> 40) as f64) < args.get_ratio * (1u64 << 24) as f64 {
                conn.push_get(key);
            } else {
                conn.push_set(key);
            }
        }
        conn.exchange(args.depth).await?;
        ops += args.depth as u64;
    }
    Ok(ops)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// What the next reply must be.
#[derive(Clone, Copy)]
enum Expect {
    Stored,
    Hit,
}

struct Client {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: BytesMut,
    expect: Vec<Expect>,
    key_size: usize,
    value: Vec<u8>,
}

impl Client {
    async fn connect(args: &Args) -> Result<Client> {
        let stream =
            TcpStream::connect(&args.server).await.with_context(|| format!("connecting to {}", args.server))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            out: Vec::with_capacity(args.depth * (args.value_size + 64)),
            inbuf: BytesMut::with_capacity(64 << 10),
            expect: Vec::with_capacity(args.depth),
            key_size: args.key_size,
            value: vec![b'v'; args.value_size],
        })
    }

    fn put_key(&mut self, key: u64) {
        let digits = format!("{key:012}");
        let pad = self.key_size - 12;
        self.out.extend(std::iter::repeat_n(b'k', pad));
        self.out.extend_from_slice(&digits.as_bytes()[digits.len() - 12..]);
    }

    fn push_get(&mut self, key: u64) {
        self.out.extend_from_slice(b"get ");
        self.put_key(key);
        self.out.extend_from_slice(b"\r\n");
        self.expect.push(Expect::Hit);
    }

    fn push_set(&mut self, key: u64) {
        self.out.extend_from_slice(b"set ");
        self.put_key(key);
        self.out.extend_from_slice(format!(" 0 0 {}\r\n", self.value.len()).as_bytes());
        self.out.extend_from_slice(&self.value);
        self.out.extend_from_slice(b"\r\n");
        self.expect.push(Expect::Stored);
    }

    /// Sends the queued requests in one write and reads and checks their `n` replies.
    async fn exchange(&mut self, n: usize) -> Result<()> {
        debug_assert_eq!(n, self.expect.len());
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        let mut next = 0;
        while next < self.expect.len() {
            match take_reply(&mut self.inbuf, self.expect[next])? {
                true => next += 1,
                false => {
                    ensure!(self.inbuf.len() < 8 << 20, "reply larger than 8 MiB");
                    if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                        bail!("server closed the connection");
                    }
                }
            }
        }
        self.expect.clear();
        Ok(())
    }
}

/// Consumes one complete reply from the front of `inbuf` and checks it; `false` if it has not all arrived.
fn take_reply(inbuf: &mut BytesMut, expect: Expect) -> Result<bool> {
    let Some(nl) = inbuf.iter().position(|&b| b == b'\n') else { return Ok(false) };
    let line = &inbuf[..nl + 1];
    match expect {
        Expect::Stored => {
            ensure!(line == b"STORED\r\n", "set: unexpected reply {:?}", String::from_utf8_lossy(line));
            inbuf.advance(nl + 1);
        }
        Expect::Hit => {
            ensure!(line != b"END\r\n", "get: a miss (every key was set first)");
            ensure!(
                line.starts_with(b"VALUE ") && nl >= 1,
                "get: unexpected reply {:?}",
                String::from_utf8_lossy(line)
            );
            let len: usize = std::str::from_utf8(&line[..nl - 1])?
                .rsplit(' ')
                .next()
                .context("VALUE line without a length")?
                .parse()
                .context("VALUE line: bad length")?;
            ensure!(len <= MAX_VALUE, "get: value of {len} bytes, more than any set");
            let total = nl + 1 + len + 2 + b"END\r\n".len();
            if inbuf.len() < total {
                return Ok(false);
            }
            ensure!(&inbuf[total - 5..total] == b"END\r\n", "get: no END after the value");
            inbuf.advance(total);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_are_taken_whole_and_checked() {
        let mut buf = BytesMut::from(&b"STORED\r\nVALUE kkkk000000000001 0 3\r\nabc\r\nEND\r\nVALUE k 0 3\r\nab"[..]);
        assert!(take_reply(&mut buf, Expect::Stored).unwrap());
        assert!(take_reply(&mut buf, Expect::Hit).unwrap());
        assert!(!take_reply(&mut buf, Expect::Hit).unwrap(), "the value has not all arrived");
        buf.extend_from_slice(b"c\r\nEND\r\n");
        assert!(take_reply(&mut buf, Expect::Hit).unwrap());
        assert!(buf.is_empty());
        assert!(!take_reply(&mut buf, Expect::Stored).unwrap());
    }

    #[test]
    fn misses_and_errors_fail_the_run() {
        assert!(take_reply(&mut BytesMut::from(&b"END\r\n"[..]), Expect::Hit).is_err());
        assert!(take_reply(&mut BytesMut::from(&b"SERVER_ERROR out of memory\r\n"[..]), Expect::Stored).is_err());
        assert!(take_reply(&mut BytesMut::from(&b"VALUE k 0 1\r\nx\r\nEXD\r\n"[..]), Expect::Hit).is_err());
        assert!(take_reply(&mut BytesMut::from(&b"VALUE k 0 zz\r\n"[..]), Expect::Hit).is_err());
    }
}
