//! `ferry put`: upload a file or standard input, resuming a partial upload
//! by its id.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ClientOptions;
use super::connection::{ClientConn, closed, timed_out};
use super::error::ClientError;
use super::observer::Observer;
use super::rate::RateLimit;
use super::resume_store::ResumeStore;
use super::retry::Retrier;
use super::source::{Source, StdinSource};
use crate::command::{Reply, Request};
use crate::frame::Frame;
use crate::wire::{queue_frame, take_frame};

pub enum PutSource {
    File(PathBuf),
    Stdin,
}

#[derive(Clone, Debug)]
pub struct PutResult {
    pub size: u64,
    pub etag: String,
    pub blake3: String,
    /// Offset the server asked for on the first attempt of this run.
    pub resumed_from: u64,
    pub attempts: u32,
}

/// What the cache dir remembers about a file's partial upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PutRecord {
    upload_id: String,
}

struct Upload<'a> {
    opts: &'a ClientOptions,
    name: &'a str,
    source: Source,
    upload_id: String,
    hasher: blake3::Hasher,
    /// Bytes fed to `hasher` (always a prefix of the source).
    hashed: u64,
    /// Highest offset the server acknowledged.
    acked: u64,
    rate: RateLimit,
}

pub async fn put(
    opts: &ClientOptions,
    source: PutSource,
    name: &str,
    obs: &mut dyn Observer,
) -> Result<PutResult, ClientError> {
    let (source, record) = match source {
        PutSource::Stdin => (Source::Stdin(StdinSource::new()), None),
        PutSource::File(path) => {
            let file =
                File::open(&path).map_err(|e| ClientError::Local(format!("cannot open {}: {e}", path.display())))?;
            let meta =
                file.metadata().map_err(|e| ClientError::Local(format!("cannot stat {}: {e}", path.display())))?;
            if !meta.is_file() {
                return Err(ClientError::Local(format!("{} is not a regular file", path.display())));
            }
            let absolute = std::path::absolute(&path).unwrap_or(path.clone());
            // Same server, file, name and version → same upload.
            let identity = format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                opts.server,
                absolute.display(),
                name,
                meta.len(),
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                meta.ino()
            );
            (Source::file(file, meta.len()), opts.cache_dir.clone().map(|d| (ResumeStore::new(d), identity)))
        }
    };
    let upload_id = record
        .as_ref()
        .and_then(|(store, key)| store.load::<PutRecord>("put", key))
        .map(|r| r.upload_id)
        .unwrap_or_else(|| blake3::Hash::from_bytes(rand::random()).to_hex()[..32].to_string());
    if let Some((store, key)) = &record
        && let Err(e) = store.save("put", key, &PutRecord { upload_id: upload_id.clone() })
    {
        tracing::debug!("cannot save resume record: {e}");
    }
    let mut up = Upload {
        opts,
        name,
        source,
        upload_id,
        hasher: blake3::Hasher::new(),
        hashed: 0,
        acked: 0,
        rate: RateLimit::new(opts.limit_rate),
    };
    let mut retrier = Retrier::new(opts.retries, opts.backoff);
    let mut attempts = 0u32;
    let mut resumed_from = None;
    loop {
        attempts += 1;
        let before = up.acked;
        match up.attempt(obs, &mut resumed_from).await {
            Ok(result) => {
                if let Some((store, key)) = &record {
                    store.remove("put", key);
                }
                obs.finish();
                return Ok(PutResult { resumed_from: resumed_from.unwrap_or(0), attempts, ..result });
            }
            Err(e) => retrier.after(e, up.acked > before, obs).await?,
        }
    }
}

impl Upload<'_> {
    fn local(&self, e: std::io::Error) -> ClientError {
        let what = if self.source.is_stdin() { "standard input".to_string() } else { "the file".to_string() };
        ClientError::Local(format!("cannot read {what}: {e}"))
    }

    /// Feeds the hash up to `offset` with bytes not yet hashed (a file
    /// resumed by a new process starts hashing at the server's offset).
    fn hash_up_to(&mut self, offset: u64) -> Result<(), ClientError> {
        while self.hashed < offset {
            let want = ((offset - self.hashed) as usize).min(1 << 20);
            let data = self.source.read_at(self.hashed, want).map_err(|e| self.local(e))?;
            if data.is_empty() {
                return Err(ClientError::Local("source ended before the server's offset".into()));
            }
            self.hasher.update(&data);
            self.hashed += data.len() as u64;
        }
        Ok(())
    }

    async fn attempt(
        &mut self,
        obs: &mut dyn Observer,
        resumed_from: &mut Option<u64>,
    ) -> Result<PutResult, ClientError> {
        let opts = self.opts;
        let mut client = ClientConn::connect(&opts.server, opts.max_frame_bytes, opts.io_timeout).await?;
        let size = if self.source.is_stdin() { None } else { self.source.size() };
        let request = Request::Put { name: self.name.to_string(), size, id: Some(self.upload_id.clone()) };
        client.send(&Frame::Info(request.to_string())).await?;
        let start = match client.recv().await? {
            Frame::Ack(offset) => offset,
            Frame::Error(msg) => return Err(ClientError::server(&msg)),
            other => return Err(ClientError::Protocol(format!("unexpected {:?} reply to PUT", other.frame_type()))),
        };
        resumed_from.get_or_insert(start);
        if let Err(r) = self.source.can_start_at(start) {
            return Err(ClientError::CannotRewind {
                stream: "standard input",
                why: format!(
                    "the server holds {} bytes of this upload (bytes from {} are still buffered)",
                    r.needed, r.oldest
                ),
                needed: r.needed,
                at: r.at,
            });
        }
        if let Some(size) = self.source.size()
            && start > size
        {
            return Err(ClientError::Protocol(format!("server offset {start} is past the end ({size} bytes)")));
        }
        self.hash_up_to(start)?;
        self.acked = self.acked.max(start);
        obs.begin(self.source.size(), start);

        let max_frame = client.max_frame();
        let timeout = client.timeout();
        let chunk = opts.chunk_bytes.min(max_frame as usize - 64);
        let window = opts.window_bytes.max(chunk as u64);
        let conn = &mut client.conn;
        let mut sent = start;
        let mut acked = start;
        let mut done_sent = false;
        loop {
            // Produce while the window and the output queue allow.
            while !done_sent && sent - acked < window && conn.pending_out() < 2 * chunk {
                let data = self.source.read_at(sent, chunk).map_err(|e| self.local(e))?;
                if data.is_empty() {
                    let Some(size) = self.source.size() else {
                        return Err(ClientError::Local("source ended early".into()));
                    };
                    if sent != size {
                        return Err(ClientError::Local(format!("source ended at {sent} of {size} bytes")));
                    }
                    let blake3 = self.hasher.finalize().to_hex().to_string();
                    queue_frame(conn, &Frame::Info(Request::Done { size, blake3 }.to_string()));
                    done_sent = true;
                    break;
                }
                let n = data.len() as u64;
                if sent == self.hashed {
                    self.hasher.update(&data);
                    self.hashed += n;
                }
                queue_frame(conn, &Frame::Data { offset: sent, data });
                sent += n;
                self.rate.take(n).await;
            }
            let event = match tokio::time::timeout(timeout, conn.pump(true)).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => return Err(ClientError::Connection(e)),
                Err(_) => return Err(timed_out(timeout)),
            };
            let closed_now = event.peer_closed();
            loop {
                let frame = match take_frame(conn, max_frame) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                };
                match frame {
                    Frame::Ack(offset) => {
                        if offset > sent {
                            return Err(ClientError::Protocol(format!("ACK {offset} beyond the {sent} bytes sent")));
                        }
                        if offset > acked {
                            acked = offset;
                            self.acked = offset;
                            self.source.release(offset);
                            obs.progress(offset);
                        }
                    }
                    Frame::Info(line) => match Reply::parse(&line) {
                        Ok(Reply::Stored { size, etag, blake3 }) => {
                            let ours = self.hasher.finalize().to_hex().to_string();
                            if !done_sent || blake3 != ours {
                                return Err(ClientError::Verify(format!(
                                    "server stored BLAKE3 {blake3} but the data hashes to {ours}"
                                )));
                            }
                            obs.progress(size);
                            return Ok(PutResult { size, etag, blake3, resumed_from: 0, attempts: 0 });
                        }
                        Ok(Reply::Paused { reason }) => obs.notice(&format!("server paused the transfer: {reason}")),
                        Ok(Reply::Resumed { version }) => {
                            obs.notice(&format!("transfer resumed (server version {version})"))
                        }
                        _ => return Err(ClientError::Protocol(format!("unexpected INFO during PUT: {line:?}"))),
                    },
                    Frame::Error(msg) => return Err(ClientError::server(&msg)),
                    other => return Err(ClientError::Protocol(format!("unexpected {:?} frame", other.frame_type()))),
                }
            }
            if closed_now {
                return Err(closed());
            }
        }
    }
}
