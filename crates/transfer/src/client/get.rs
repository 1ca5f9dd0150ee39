//! `ferry get`: download a file, resuming from `PATH.part` or from the
//! bytes already written to standard output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientOptions;
use super::connection::ClientConn;
use super::error::ClientError;
use super::observer::Observer;
use super::rate::RateLimit;
use super::resume_store::ResumeStore;
use super::retry::Retrier;
use super::sink::{PartFile, Sink, part_path};
use crate::command::{Reply, Request};
use crate::frame::Frame;

/// The client acknowledges at least this often (bytes consumed).
const ACK_EVERY: u64 = 1 << 20;

pub enum GetTarget {
    File(PathBuf),
    Stdout,
}

#[derive(Clone, Debug)]
pub struct GetResult {
    pub size: u64,
    pub blake3: String,
    /// Offset the first attempt of this run started from.
    pub resumed_from: u64,
    /// Connection attempts this run made.
    pub attempts: u32,
}

/// What the cache dir remembers about `PATH.part`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GetRecord {
    server: String,
    name: String,
    etag: String,
}

struct Download<'a> {
    opts: &'a ClientOptions,
    name: &'a str,
    sink: Sink,
    hasher: blake3::Hasher,
    etag: Option<String>,
    record: Option<(ResumeStore, String)>,
    rate: RateLimit,
}

pub async fn get(
    opts: &ClientOptions,
    name: &str,
    target: GetTarget,
    obs: &mut dyn Observer,
) -> Result<GetResult, ClientError> {
    let mut dl = open(opts, name, target)?;
    let resumed_from = dl.sink.pos();
    if resumed_from > 0 {
        obs.notice(&format!("resuming {name} from byte {resumed_from}"));
    }
    let mut retrier = Retrier::new(opts.retries, opts.backoff);
    let mut attempts = 0u32;
    let mut restarted_for_verify = false;
    loop {
        attempts += 1;
        let before = dl.sink.pos();
        match dl.attempt(obs).await {
            Ok((size, blake3)) => {
                if let Some((store, key)) = &dl.record {
                    store.remove("get", key);
                }
                obs.finish();
                return Ok(GetResult { size, blake3, resumed_from, attempts });
            }
            Err(e) if e.is_changed() => {
                if !dl.sink.can_restart() {
                    return Err(ClientError::CannotRewind {
                        stream: dl.sink.name(),
                        why: format!("{name} changed on the server"),
                        needed: 0,
                        at: dl.sink.pos(),
                    });
                }
                obs.notice(&format!("{name} changed on the server since the partial download; starting over"));
                dl.restart()?;
            }
            Err(ClientError::Verify(msg)) if dl.sink.can_restart() && !restarted_for_verify => {
                obs.notice(&format!("{msg}; discarding the partial download and starting over"));
                restarted_for_verify = true;
                dl.restart()?;
            }
            Err(e) => retrier.after(e, dl.sink.pos() > before, obs).await?,
        }
    }
}

fn open<'a>(opts: &'a ClientOptions, name: &'a str, target: GetTarget) -> Result<Download<'a>, ClientError> {
    let local =
        |what: &str, path: &Path, e: std::io::Error| ClientError::Local(format!("{what} {}: {e}", path.display()));
    let (sink, hasher, etag, record) = match target {
        GetTarget::Stdout => (Sink::Stdout { pos: 0 }, blake3::Hasher::new(), None, None),
        GetTarget::File(path) => {
            let absolute = std::path::absolute(&path).map_err(|e| local("cannot resolve", &path, e))?;
            let key = absolute.to_string_lossy().to_string();
            let store = opts.cache_dir.clone().map(ResumeStore::new);
            let previous: Option<GetRecord> = store.as_ref().and_then(|s| s.load("get", &key));
            let keep = part_path(&absolute).exists()
                && previous.as_ref().is_some_and(|r| r.server == opts.server && r.name == name);
            let (part, hasher) =
                PartFile::open(&absolute, keep).map_err(|e| local("cannot open", &part_path(&path), e))?;
            let etag = if keep { previous.map(|r| r.etag) } else { None };
            (Sink::Part(part), hasher, etag, store.map(|s| (s, key)))
        }
    };
    Ok(Download { opts, name, sink, hasher, etag, record, rate: RateLimit::new(opts.limit_rate) })
}

impl Download<'_> {
    fn restart(&mut self) -> Result<(), ClientError> {
        self.sink.restart().map_err(|e| ClientError::Local(format!("cannot restart {}: {e}", self.sink.name())))?;
        self.hasher = blake3::Hasher::new();
        self.etag = None;
        Ok(())
    }

    fn remember_etag(&mut self, etag: &str) {
        self.etag = Some(etag.to_string());
        if let Some((store, key)) = &self.record {
            let record = GetRecord { server: self.opts.server.clone(), name: self.name.to_string(), etag: etag.into() };
            if let Err(e) = store.save("get", key, &record) {
                tracing::debug!("cannot save resume record: {e}");
            }
        }
    }

    /// One connection's worth of the download.
    async fn attempt(&mut self, obs: &mut dyn Observer) -> Result<(u64, String), ClientError> {
        let opts = self.opts;
        let mut conn = ClientConn::connect(&opts.server, opts.max_frame_bytes, opts.io_timeout).await?;
        let offset = self.sink.pos();
        let etag = if offset > 0 { self.etag.clone() } else { None };
        conn.send(&Frame::Info(Request::Get { name: self.name.to_string(), offset, etag }.to_string())).await?;
        let size = match conn.recv().await? {
            Frame::Info(line) => match Reply::parse(&line) {
                Ok(Reply::Ok { size, etag }) => {
                    self.remember_etag(&etag);
                    size
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply to GET: {line:?}"))),
            },
            Frame::Error(msg) => return Err(ClientError::server(&msg)),
            other => return Err(ClientError::Protocol(format!("unexpected {:?} frame", other.frame_type()))),
        };
        if size < offset {
            return Err(ClientError::Protocol(format!("server size {size} is below resume offset {offset}")));
        }
        obs.begin(Some(size), offset);
        let mut acked = offset;
        loop {
            match conn.recv().await? {
                Frame::Data { offset: at, data } => {
                    let pos = self.sink.pos();
                    if at != pos || pos + data.len() as u64 > size {
                        return Err(ClientError::Protocol(format!("DATA at offset {at}, expected {pos}")));
                    }
                    self.sink
                        .write(&data)
                        .map_err(|e| ClientError::Local(format!("cannot write {}: {e}", self.sink.name())))?;
                    self.hasher.update(&data);
                    let pos = self.sink.pos();
                    obs.progress(pos);
                    self.rate.take(data.len() as u64).await;
                    if pos - acked >= ACK_EVERY {
                        conn.send(&Frame::Ack(pos)).await?;
                        acked = pos;
                    }
                }
                Frame::Info(line) => match Reply::parse(&line) {
                    Ok(Reply::Done { size: done_size, blake3 }) => {
                        let pos = self.sink.pos();
                        if done_size != size || pos != size {
                            return Err(ClientError::Protocol(format!("DONE at {pos} of {size} bytes")));
                        }
                        let actual = self.hasher.finalize().to_hex().to_string();
                        if actual != blake3 {
                            return Err(ClientError::Verify(format!(
                                "BLAKE3 mismatch for {}: received {actual}, server says {blake3}",
                                self.name
                            )));
                        }
                        self.sink
                            .finish()
                            .map_err(|e| ClientError::Local(format!("cannot finish {}: {e}", self.sink.name())))?;
                        // The server counts the transfer done on the ACK of
                        // the last byte; send it unless it already went out.
                        if acked < pos {
                            conn.send(&Frame::Ack(pos)).await?;
                        }
                        return Ok((size, actual));
                    }
                    Ok(Reply::Paused { reason }) => obs.notice(&format!("server paused the transfer: {reason}")),
                    Ok(Reply::Resumed { version }) => {
                        obs.notice(&format!("transfer resumed (server version {version})"))
                    }
                    _ => return Err(ClientError::Protocol(format!("unexpected INFO during GET: {line:?}"))),
                },
                Frame::Error(msg) => return Err(ClientError::server(&msg)),
                other => return Err(ClientError::Protocol(format!("unexpected {:?} frame", other.frame_type()))),
            }
        }
    }
}
