//! The client's push connection: the server's updates, one file at a time, each chunk checked against
//! its md5 and written to a temporary file under `.ferry-sync/tmp/`, then moved into place (after a
//! conflicted copy of a local edit, if there is one) when Finished's md5 matches. Every message is
//! answered with one Status, in order.
//!
//! A chunk is answered once it is checked; its write lands while the server sends the next one, which
//! is checked meanwhile, so checking and writing overlap on two threads. At most one write per file is
//! in flight: the next chunk's answer, and Finished's, wait for it, and a write that failed fails the
//! file there (File In Use).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::Conn;
use ferry_files::SafeName;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{Direction, SyncEvent};
use super::shared::Shared;
use crate::message_reader::{MessageReader, Next, encode};
use crate::{ChunkVerdict, FinishVerdict, Md5Sum, Message, StatusCode, UploadTracker};
use ferry_files::DirectChunks;

/// Chunks at least this large are answered before they are written (their write overlaps with the
/// next chunk); smaller ones are written at once, with no extra thread hand-over.
const WRITE_BEHIND_FROM: usize = 256 * 1024;
/// Files the server may be sending at once (it sends one; this bounds a misbehaving one).
const MAX_DOWNLOADS: usize = 8;

/// A file being received.
struct Download {
    tmp: PathBuf,
    file: Arc<File>,
    /// Large aligned chunks are written with `O_DIRECT` (no page-cache copy; the file is not read
    /// back before it is renamed into place).
    direct: Arc<DirectChunks>,
    /// Away while a chunk is being checked and written.
    tracker: UploadTracker,
    /// Bytes accepted (written, or being written by `writing`).
    written: u64,
    /// The last accepted chunk's write, if it may not have landed yet.
    writing: Option<JoinHandle<io::Result<()>>>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut conn: Conn, stop: CancellationToken) -> Result<(), String> {
    let mut reader = MessageReader::default();
    let mut downloads: HashMap<SafeName, Download> = HashMap::new();
    let (mut last_rx, mut last_tx) = (Instant::now(), Instant::now());
    let limits = shared.options.limits;
    let result = 'session: loop {
        loop {
            let reply = match reader.next(conn.read_buf(), &limits) {
                Next::Incomplete => break,
                Next::Fatal(e) => return Err(format!("push connection: {e}")),
                Next::Refused { error, status } => {
                    tracing::debug!("push connection: refused a message: {error}");
                    if let crate::WireError::ChunkSize { name, .. } = &error
                        && let Ok(name) = SafeName::parse(name, limits.max_name_len())
                        && let Some(d) = downloads.get_mut(&name)
                    {
                        let verdict = d.tracker.invalid_chunk_size();
                        if verdict.is_abort() {
                            discard(downloads.remove(&name));
                        }
                        Some(verdict.status())
                    } else {
                        status
                    }
                }
                Next::Message(message) => match handle(&shared, &mut downloads, message).await {
                    Ok(reply) => reply,
                    Err(e) => break 'session Err(e),
                },
            };
            if let Some(code) = reply {
                conn.queue(encode(&Message::Status(code)));
                last_tx = Instant::now();
            }
        }
        let options = &shared.options;
        let timer = (last_rx + options.idle_timeout).min(last_tx + options.keepalive);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            event = conn.pump(true) => match event {
                Ok(event) if event.peer_closed() => break Err("the server closed the push connection".into()),
                Ok(event) => {
                    if event.got_input() {
                        last_rx = Instant::now();
                    }
                }
                Err(e) => break Err(format!("push connection: {e}")),
            },
            _ = tokio::time::sleep_until(timer) => {
                let now = Instant::now();
                if now >= last_rx + options.idle_timeout {
                    break Err(format!("nothing from the server for {:?}", options.idle_timeout));
                }
                if now >= last_tx + options.keepalive {
                    conn.queue(encode(&Message::Status(StatusCode::KeepAlive)));
                    last_tx = Instant::now();
                }
            }
        }
    };
    for (_, download) in downloads.drain() {
        discard(Some(download));
    }
    result
}

/// Handles one message from the server; returns the status to answer it with, if it takes one.
async fn handle(
    shared: &Arc<Shared>,
    downloads: &mut HashMap<SafeName, Download>,
    message: Message,
) -> Result<Option<StatusCode>, String> {
    match message {
        Message::FileChunk { md5, name, data } => Ok(Some(chunk(shared, downloads, md5, name, data).await)),
        Message::Finished { md5, name } => {
            let download = match downloads.remove(&name) {
                Some(mut d) => {
                    if let Err(e) = landed(d.writing.take()).await {
                        tracing::warn!("cannot write {name}: {e}");
                        discard(Some(d));
                        return Ok(Some(StatusCode::FileInUse));
                    }
                    d
                }
                // An empty file: Finished alone.
                None => match start(shared) {
                    Some(d) => d,
                    None => return Ok(Some(StatusCode::FileInUse)),
                },
            };
            match download.tracker.finish(md5) {
                FinishVerdict::Complete { md5, .. } => {
                    let (shared, tmp) = (shared.clone(), download.tmp.clone());
                    let applied = tokio::task::spawn_blocking(move || shared.apply_received(&name, &tmp, md5)).await;
                    Ok(Some(applied.unwrap_or(StatusCode::FileInUse)))
                }
                verdict => {
                    tracing::warn!("dropping {name} from the server: {}", verdict.status().description());
                    discard(Some(download));
                    Ok(Some(verdict.status()))
                }
            }
        }
        Message::AbortFile { name, .. } => {
            discard(downloads.remove(&name));
            Ok(Some(StatusCode::Ok))
        }
        Message::DeleteFile { name, .. } => {
            let shared = shared.clone();
            let applied = tokio::task::spawn_blocking(move || shared.apply_delete(&name)).await;
            Ok(Some(applied.unwrap_or(StatusCode::FileInUse)))
        }
        Message::Status(code) => {
            if code != StatusCode::KeepAlive {
                tracing::debug!("push connection: status {}", code.description());
            }
            Ok(None)
        }
        other => Err(format!("the server sent {} on the push connection", other.message_type().name())),
    }
}

async fn chunk(
    shared: &Arc<Shared>,
    downloads: &mut HashMap<SafeName, Download>,
    md5: Md5Sum,
    name: SafeName,
    data: Bytes,
) -> StatusCode {
    if !downloads.contains_key(&name) {
        if downloads.len() >= MAX_DOWNLOADS {
            return StatusCode::FileInUse;
        }
        match start(shared) {
            Some(d) => downloads.insert(name.clone(), d),
            None => return StatusCode::FileInUse,
        };
    }
    let Some(download) = downloads.remove(&name) else { return StatusCode::FileInUse };
    let Download { tmp, file, direct, mut tracker, written, writing } = download;
    let len = data.len() as u64;
    // A small chunk (a small file's whole content, mostly) is written at once, on the same thread.
    let write_now = writing.is_none() && data.len() < WRITE_BEHIND_FROM;
    let now_file = file.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let verdict = tracker.chunk(md5, &data);
        let write = match verdict {
            ChunkVerdict::Accepted if write_now => Some(now_file.write_all_at(&data, written)),
            _ => None,
        };
        (tracker, verdict, data, write)
    });
    // The previous chunk's write lands while this one is checked.
    let previous = landed(writing).await;
    let Ok((tracker, verdict, data, written_now)) = checked.await else {
        discard(Some(Download { tmp, file, direct, tracker: UploadTracker::new(0), written, writing: None }));
        return StatusCode::FileInUse;
    };
    let mut download = Download { tmp, file, direct, tracker, written, writing: None };
    if let Err(e) = previous.and(written_now.unwrap_or(Ok(()))) {
        tracing::warn!("cannot write {name}: {e}");
        discard(Some(download));
        return StatusCode::FileInUse;
    }
    match verdict {
        ChunkVerdict::Accepted => {
            if !write_now {
                let (file, at) = (download.file.clone(), download.written);
                let (direct, path) = (download.direct.clone(), download.tmp.clone());
                download.writing =
                    Some(tokio::task::spawn_blocking(move || direct.write_at(&file, &path, &data, at).map(drop)));
            }
            download.written += len;
            shared.observer.event(SyncEvent::Progress {
                name: name.clone(),
                direction: Direction::Down,
                done: download.written,
                total: 0,
            });
            downloads.insert(name, download);
            StatusCode::Ok
        }
        verdict if verdict.is_abort() => {
            discard(Some(download));
            verdict.status()
        }
        verdict => {
            downloads.insert(name, download);
            verdict.status()
        }
    }
}

/// Waits for a chunk's write, if one is in flight.
async fn landed(writing: Option<JoinHandle<io::Result<()>>>) -> io::Result<()> {
    match writing {
        None => Ok(()),
        Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(format!("write task failed: {e}")))),
    }
}

/// A new download into a temporary file; `None` if none can be made.
fn start(shared: &Shared) -> Option<Download> {
    match shared.folder.temp_file() {
        Ok((tmp, file)) => Some(Download {
            tmp,
            file: Arc::new(file),
            direct: Arc::default(),
            tracker: UploadTracker::new(shared.options.limits.max_file_size),
            written: 0,
            writing: None,
        }),
        Err(e) => {
            tracing::warn!("cannot make a temporary file: {e}");
            None
        }
    }
}

fn discard(download: Option<Download>) {
    if let Some(d) = download {
        let _ = std::fs::remove_file(&d.tmp);
    }
}
