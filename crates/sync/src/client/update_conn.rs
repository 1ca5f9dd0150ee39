//! The client's update connection: its uploads, deletes and update requests, several files at once.
//!
//! Up to `max_uploads` files are sent together, their chunks interleaved on the one connection (the
//! seed's parallel uploads). Each file has at most one chunk waiting for its Status (so a resend
//! request names one chunk); while it waits, the file's next chunk is read and digested on a blocking
//! thread, and the other files' chunks go out. The server answers every message in order, so the
//! replies are matched against a queue of what was sent.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::Conn;
use ferry_files::SafeName;
use md5::{Digest, Md5};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{Direction, SyncEvent};
use super::folder::mtime_ns;
use super::rate_limit::RateLimit;
use super::shared::{Job, Shared};
use crate::chunk_digests::{ChunkDigests, DigestedVersion};
use crate::message_reader::{MessageReader, Next};
use crate::twin_md5::chunk_md5_and_update;
use crate::{Md5Sum, Message, StatusCode};

/// What a reply on this connection answers.
#[derive(Debug)]
enum Expect {
    Chunk(SafeName),
    Finished(SafeName),
    Delete(SafeName),
    Request(SafeName),
    Abort,
}

/// A file's md5 with the size and mtime of the version it is the digest of.
#[derive(Debug, Clone, Copy)]
struct Known {
    md5: Md5Sum,
    size: u64,
    mtime_ns: i64,
}

#[derive(Debug, Clone)]
struct Chunk {
    data: Bytes,
    md5: Md5Sum,
}

/// One file being uploaded.
struct Upload {
    file: Arc<File>,
    size: u64,
    /// The mtime of the version opened.
    mtime_ns: i64,
    /// The file as the client last digested it, when the file opened is still that version: its
    /// chunks then need no whole-file digest, only a check before Finished that the file did not
    /// change meanwhile.
    known: Option<Known>,
    /// The chunk digests made when the client digested that version, so its chunks go out without an
    /// MD5 pass.
    digests: Option<Arc<ChunkDigests>>,
    /// Bytes handed to chunks so far.
    read_to: u64,
    /// The whole file's digest so far; away while a read holds it.
    hasher: Option<Md5>,
    reading: bool,
    /// The next chunk, read ahead.
    ready: Option<Chunk>,
    /// The chunk sent and not answered yet.
    unanswered: Option<Chunk>,
    acked: u64,
    /// The whole file's md5, once every byte was read.
    whole: Option<Md5Sum>,
    finished_sent: bool,
}

struct ReadOut {
    chunk: Option<Chunk>,
    hasher: Option<Md5>,
    /// Set at the end of the file (the size may be smaller than at the start: the file shrank).
    end: Option<(u64, Md5Sum)>,
}

type ReadResult = (SafeName, io::Result<ReadOut>);

pub(crate) async fn run(shared: Arc<Shared>, mut conn: Conn, stop: CancellationToken) -> Result<(), String> {
    let mut driver = Driver {
        shared: shared.clone(),
        reader: MessageReader::default(),
        expect: VecDeque::new(),
        uploads: HashMap::new(),
        order: VecDeque::new(),
        deletes: 0,
        abandoned: Vec::new(),
        rate_until: None,
        reads: JoinSet::new(),
        rate: RateLimit::new(shared.options.limit_rate),
        last_rx: Instant::now(),
        last_tx: Instant::now(),
    };
    let mut work = shared.work_signal();
    loop {
        driver.read_replies(&mut conn)?;
        driver.send_requests(&mut conn);
        driver.start_jobs(&mut conn).await;
        let rate_wait = driver.send_chunks(&mut conn);
        let options = &shared.options;
        let timer = (driver.last_rx + options.idle_timeout).min(driver.last_tx + options.keepalive);
        let wake_at = rate_wait.map_or(timer, |at| at.min(timer));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            Some(done) = driver.reads.join_next(), if !driver.reads.is_empty() => match done {
                Ok((name, read)) => driver.read_done(name, read),
                Err(e) => return Err(format!("read task failed: {e}")),
            },
            event = conn.pump(true) => match event {
                Ok(event) if event.peer_closed() => return Err("the server closed the update connection".into()),
                Ok(event) => {
                    if event.got_input() {
                        driver.last_rx = Instant::now();
                    }
                }
                Err(e) => return Err(format!("update connection: {e}")),
            },
            _ = work.changed() => {}
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if now >= driver.last_rx + options.idle_timeout {
                    return Err(format!("nothing from the server for {:?}", options.idle_timeout));
                }
                if now >= driver.last_tx + options.keepalive {
                    driver.send(&mut conn, &Message::Status(StatusCode::KeepAlive));
                }
            }
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    reader: MessageReader,
    expect: VecDeque<Expect>,
    uploads: HashMap<SafeName, Upload>,
    /// Upload names in the order their chunks take turns.
    order: VecDeque<SafeName>,
    deletes: usize,
    /// Uploads given up after the server got part of them: it is told to drop that part.
    abandoned: Vec<SafeName>,
    /// The rate limit holds chunks back until then.
    rate_until: Option<Instant>,
    reads: JoinSet<ReadResult>,
    rate: RateLimit,
    last_rx: Instant,
    last_tx: Instant,
}

impl Driver {
    fn send(&mut self, conn: &mut Conn, message: &Message) {
        crate::message_reader::queue(conn, message);
        self.last_tx = Instant::now();
    }

    fn read_replies(&mut self, conn: &mut Conn) -> Result<(), String> {
        let limits = self.shared.options.limits;
        loop {
            match self.reader.next(conn.read_buf(), &limits) {
                Next::Incomplete => return Ok(()),
                Next::Fatal(e) => return Err(format!("update connection: {e}")),
                Next::Refused { error, .. } => tracing::debug!("update connection: ignored a message: {error}"),
                Next::Message(Message::Status(code)) => self.on_status(conn, code),
                Next::Message(other) => {
                    return Err(format!("the server sent {} on the update connection", other.message_type().name()));
                }
            }
        }
    }

    fn on_status(&mut self, conn: &mut Conn, code: StatusCode) {
        if code == StatusCode::KeepAlive {
            return;
        }
        let Some(expected) = self.expect.pop_front() else {
            tracing::debug!("a status with nothing to answer: {}", code.description());
            return;
        };
        match expected {
            Expect::Chunk(name) => {
                let Some(upload) = self.uploads.get_mut(&name) else { return };
                match code {
                    StatusCode::Ok => {
                        if let Some(chunk) = upload.unanswered.take() {
                            upload.acked += chunk.data.len() as u64;
                        }
                        let (done, total) = (upload.acked, upload.size);
                        self.shared.observer.event(SyncEvent::Progress { name, direction: Direction::Up, done, total });
                    }
                    StatusCode::ResendChecksum | StatusCode::ResendChunkSize => {
                        if code == StatusCode::ResendChecksum
                            && let Some(chunk) = upload.unanswered.as_mut()
                        {
                            // A kept digest is of the file when it was digested; the resend carries
                            // the digest of the bytes sent (a change since is caught before Finished).
                            chunk.md5 = Md5Sum::of(&chunk.data);
                        }
                        if let Some(chunk) = upload.unanswered.clone() {
                            let message = Message::FileChunk { md5: chunk.md5, name: name.clone(), data: chunk.data };
                            self.send(conn, &message);
                            self.expect.push_back(Expect::Chunk(name));
                        }
                    }
                    refusal => self.fail(name, refusal),
                }
            }
            Expect::Finished(name) => {
                let Some(upload) = self.remove_upload(&name) else { return };
                if code == StatusCode::Ok {
                    let md5 = upload.whole.unwrap_or(Md5Sum::EMPTY);
                    self.shared.upload_done(&name, md5, upload.size, upload.mtime_ns);
                } else {
                    self.shared_failed(name, code);
                }
            }
            Expect::Delete(name) => {
                self.deletes = self.deletes.saturating_sub(1);
                if let Some(delay) = self.shared.delete_done(&name, code) {
                    schedule_retry(&self.shared, name, delay);
                }
            }
            Expect::Request(name) => {
                if code != StatusCode::Ok {
                    tracing::info!("the server has no {name} to send ({})", code.description());
                }
            }
            Expect::Abort => {}
        }
    }

    fn fail(&mut self, name: SafeName, code: StatusCode) {
        self.remove_upload(&name);
        self.shared_failed(name, code);
    }

    fn shared_failed(&mut self, name: SafeName, code: StatusCode) {
        tracing::info!("the server refused {name}: {}", code.description());
        if let Some(delay) = self.shared.job_failed(&name, code) {
            schedule_retry(&self.shared, name, delay);
        }
    }

    fn remove_upload(&mut self, name: &SafeName) -> Option<Upload> {
        self.order.retain(|n| n != name);
        self.uploads.remove(name)
    }

    fn send_requests(&mut self, conn: &mut Conn) {
        while let Some((name, md5)) = self.shared.take_request() {
            self.send(conn, &Message::RequestUpdate { md5, name: name.clone() });
            self.expect.push_back(Expect::Request(name));
        }
    }

    async fn start_jobs(&mut self, conn: &mut Conn) {
        while self.uploads.len() + self.deletes < self.shared.options.max_uploads {
            let Some(job) = self.shared.take_job() else { return };
            match job {
                Job::Delete { name, md5 } => {
                    self.send(conn, &Message::DeleteFile { md5, name: name.clone() });
                    self.expect.push_back(Expect::Delete(name));
                    self.deletes += 1;
                }
                Job::Upload { name } => {
                    let path = self.shared.folder.path(&name);
                    let opened = tokio::task::spawn_blocking(move || {
                        let file = File::open(path)?;
                        let meta = file.metadata()?;
                        if !meta.is_file() {
                            return Err(io::Error::other("not a regular file"));
                        }
                        Ok((file, meta.len(), mtime_ns(&meta)))
                    })
                    .await;
                    let (file, size, mtime) = match opened {
                        Ok(Ok(opened)) => opened,
                        Ok(Err(e)) => {
                            // Gone (the watcher reports what it became) or unreadable for now.
                            tracing::debug!("cannot upload {name}: {e}");
                            self.shared_failed(name, StatusCode::FileInUse);
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("open task failed: {e}");
                            self.shared_failed(name, StatusCode::FileInUse);
                            continue;
                        }
                    };
                    let current = self.shared.lock().metadata.get(&name).and_then(|e| e.current);
                    let known = current
                        .filter(|f| f.size == size && f.mtime_ns == mtime && !f.is_undigested())
                        .map(|f| Known { md5: f.md5, size, mtime_ns: mtime });
                    let chunk_size = self.shared.options.chunk_size;
                    let digests = known.and_then(|k| {
                        self.shared.chunk_digests(&name, DigestedVersion { size, md5: k.md5, chunk_size })
                    });
                    let mut upload = Upload {
                        file: Arc::new(file),
                        size,
                        mtime_ns: mtime,
                        known,
                        digests,
                        read_to: 0,
                        hasher: known.is_none().then(Md5::new),
                        reading: false,
                        ready: None,
                        unanswered: None,
                        acked: 0,
                        whole: (size == 0).then_some(Md5Sum::EMPTY),
                        finished_sent: false,
                    };
                    self.read_ahead(&name, &mut upload);
                    self.uploads.insert(name.clone(), upload);
                    self.order.push_back(name);
                }
            }
        }
    }

    /// Starts reading the next chunk of `name` if it needs one.
    fn read_ahead(&mut self, name: &SafeName, upload: &mut Upload) {
        if upload.reading || upload.ready.is_some() || upload.whole.is_some() || upload.read_to >= upload.size {
            return;
        }
        let hasher = match (upload.hasher.take(), upload.known) {
            (Some(hasher), _) => Some(hasher),
            (None, Some(_)) => None,
            // The digest is away with a read in flight.
            (None, None) => return,
        };
        let chunk_size = u64::from(self.shared.options.chunk_size);
        let (file, at, size, known) = (upload.file.clone(), upload.read_to, upload.size, upload.known);
        let len = chunk_size.min(size - at);
        let kept = upload.digests.as_ref().and_then(|d| d.at(at, len));
        let name = name.clone();
        upload.reading = true;
        self.reads.spawn_blocking(move || (name, read_chunk(&file, at, len, size, hasher, known, kept)));
    }

    fn read_done(&mut self, name: SafeName, read: io::Result<ReadOut>) {
        let Some(mut upload) = self.uploads.remove(&name) else { return };
        upload.reading = false;
        match read {
            Ok(out) => {
                upload.hasher = out.hasher;
                if let Some(chunk) = out.chunk {
                    upload.read_to += chunk.data.len() as u64;
                    upload.ready = Some(chunk);
                }
                if let Some((size, md5)) = out.end {
                    upload.size = size;
                    upload.whole = Some(md5);
                }
                self.uploads.insert(name, upload);
            }
            Err(e) => {
                tracing::warn!("cannot read {name}: {e}");
                self.order.retain(|n| *n != name);
                if upload.unanswered.is_some() || upload.acked > 0 {
                    // The server holds part of it: tell it to drop that.
                    self.abandoned.push(name.clone());
                }
                self.shared_failed(name, StatusCode::FileInUse);
            }
        }
    }

    /// Sends every chunk (and Finished) that may go now, taking turns between files. Returns when the
    /// rate limit allows the next one, if it is what holds them back.
    fn send_chunks(&mut self, conn: &mut Conn) -> Option<Instant> {
        for name in std::mem::take(&mut self.abandoned) {
            self.send(conn, &Message::AbortFile { md5: Md5Sum::ZERO, name });
            self.expect.push_back(Expect::Abort);
        }
        if let Some(until) = self.rate_until {
            if until > Instant::now() {
                return Some(until);
            }
            self.rate_until = None;
        }
        // Files take turns: the one that went first last time goes last.
        if self.order.len() > 1 {
            self.order.rotate_left(1);
        }
        let names: Vec<SafeName> = self.order.iter().cloned().collect();
        for name in names {
            let Some(mut upload) = self.uploads.remove(&name) else { continue };
            let mut sent = 0;
            if upload.unanswered.is_none() && !upload.finished_sent {
                if let Some(chunk) = upload.ready.take() {
                    let message = Message::FileChunk { md5: chunk.md5, name: name.clone(), data: chunk.data.clone() };
                    self.send(conn, &message);
                    self.expect.push_back(Expect::Chunk(name.clone()));
                    sent = chunk.data.len() as u64;
                    upload.unanswered = Some(chunk);
                } else if let Some(md5) = upload.whole
                    && upload.acked >= upload.size
                {
                    if !unchanged(&upload) {
                        // Written to while it was sent: the md5 known at the start is not the bytes
                        // sent. The server drops them; the change is sent afresh.
                        self.send(conn, &Message::AbortFile { md5: Md5Sum::ZERO, name: name.clone() });
                        self.expect.push_back(Expect::Abort);
                        self.order.retain(|n| *n != name);
                        self.shared.upload_abandoned(&name);
                        continue;
                    }
                    self.send(conn, &Message::Finished { md5, name: name.clone() });
                    self.expect.push_back(Expect::Finished(name.clone()));
                    upload.finished_sent = true;
                }
            }
            self.read_ahead(&name, &mut upload);
            self.uploads.insert(name, upload);
            if sent > 0
                && let Some(due) = self.rate.due(sent)
            {
                // What was sent is over the rate: the next chunk waits.
                self.rate_until = Some(due);
                return Some(due);
            }
        }
        None
    }
}

/// Puts `name` back in line after `delay`.
fn schedule_retry(shared: &Arc<Shared>, name: SafeName, delay: std::time::Duration) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(shared) = shared.upgrade() {
            shared.retry(&name);
        }
    });
}

/// Whether an upload that relies on the md5 known at its start still has that file (same size and
/// mtime on the open descriptor).
fn unchanged(upload: &Upload) -> bool {
    let Some(known) = upload.known else { return true };
    upload.file.metadata().is_ok_and(|m| m.len() == known.size && mtime_ns(&m) == known.mtime_ns)
}

/// Reads `len` bytes at `at` of a file of `size` bytes and digests them as a chunk (unless `kept` is
/// that chunk's digest already), and into the whole file's digest unless that is `known` already.
fn read_chunk(
    file: &File,
    at: u64,
    len: u64,
    size: u64,
    hasher: Option<Md5>,
    known: Option<Known>,
    kept: Option<Md5Sum>,
) -> io::Result<ReadOut> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    let read_to = at + got as u64;
    let ends = read_to >= size || (got as u64) < len;
    let Some(mut hasher) = hasher else {
        // The whole file's md5 is known; a file that shrank is caught before Finished.
        let md5 = kept.filter(|_| got as u64 == len).unwrap_or_else(|| Md5Sum::of(&buf));
        let end = known.filter(|_| ends).map(|k| (read_to, k.md5));
        let chunk = (got > 0).then(|| Chunk { data: Bytes::from(buf), md5 });
        return Ok(ReadOut { chunk, hasher: None, end });
    };
    if got == 0 {
        // The file shrank below what was read: it ends here.
        return Ok(ReadOut {
            chunk: None,
            end: Some((at, Md5Sum(hasher.clone().finalize().into()))),
            hasher: Some(hasher),
        });
    }
    let md5 = chunk_md5_and_update(&mut hasher, &buf);
    let end = ends.then(|| (read_to, Md5Sum::of_hasher(&hasher)));
    Ok(ReadOut { chunk: Some(Chunk { data: Bytes::from(buf), md5 }), hasher: Some(hasher), end })
}
