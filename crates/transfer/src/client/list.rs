//! `ferry ls`: the server's files.

use ferry_files::FileEntry;

use super::ClientOptions;
use super::connection::ClientConn;
use super::error::ClientError;
use super::observer::Silent;
use super::retry::Retrier;
use crate::command::{Reply, Request};
use crate::frame::Frame;

/// Lists the server's files (retrying a failed connection like transfers do).
pub async fn list(opts: &ClientOptions) -> Result<Vec<FileEntry>, ClientError> {
    let mut retrier = Retrier::new(opts.retries, opts.backoff);
    loop {
        match attempt(opts).await {
            Ok(entries) => return Ok(entries),
            Err(e) => retrier.after(e, false, &mut Silent).await?,
        }
    }
}

async fn attempt(opts: &ClientOptions) -> Result<Vec<FileEntry>, ClientError> {
    let mut conn = ClientConn::connect(&opts.server, opts.max_frame_bytes, opts.io_timeout).await?;
    conn.send(&Frame::Info(Request::List.to_string())).await?;
    let mut entries = Vec::new();
    loop {
        match conn.recv().await? {
            Frame::Info(line) => match Reply::parse(&line) {
                Ok(Reply::Entry { name, size, modified_unix_ms, etag }) => {
                    let etag = ferry_files::Etag::parse(&etag)
                        .ok_or_else(|| ClientError::Protocol(format!("invalid etag {etag:?}")))?;
                    entries.push(FileEntry { name, size, etag, modified_unix_ms });
                }
                Ok(Reply::End { count }) if count == entries.len() as u64 => return Ok(entries),
                Ok(Reply::End { count }) => {
                    return Err(ClientError::Protocol(format!("END says {count} entries, got {}", entries.len())));
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply to LIST: {line:?}"))),
            },
            Frame::Error(msg) => return Err(ClientError::server(&msg)),
            other => return Err(ClientError::Protocol(format!("unexpected {:?} frame", other.frame_type()))),
        }
    }
}

/// The server's file cache (`LIST CACHE`): entries, next victim first, and
/// totals.
pub async fn list_cache(opts: &ClientOptions) -> Result<ferry_files::CacheSnapshot, ClientError> {
    let mut retrier = Retrier::new(opts.retries, opts.backoff);
    loop {
        match attempt_cache(opts).await {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) => retrier.after(e, false, &mut Silent).await?,
        }
    }
}

async fn attempt_cache(opts: &ClientOptions) -> Result<ferry_files::CacheSnapshot, ClientError> {
    let mut conn = ClientConn::connect(&opts.server, opts.max_frame_bytes, opts.io_timeout).await?;
    conn.send(&Frame::Info(Request::ListCache.to_string())).await?;
    let mut entries = Vec::new();
    loop {
        match conn.recv().await? {
            Frame::Info(line) => match Reply::parse(&line) {
                Ok(Reply::Cached { name, size, hits, age_ms }) => {
                    entries.push(ferry_files::CacheEntryInfo { name, size, hits, age_ms });
                }
                Ok(Reply::CacheEnd(t)) if t.count == entries.len() as u64 => {
                    let ratio = |a: u64, b: u64| if a + b == 0 { 0.0 } else { a as f64 / (a + b) as f64 };
                    return Ok(ferry_files::CacheSnapshot {
                        policy: t.policy,
                        max_bytes: t.max_bytes,
                        bytes_held: t.bytes_held,
                        entries,
                        hits: t.hits,
                        misses: t.misses,
                        hit_bytes: t.hit_bytes,
                        miss_bytes: t.miss_bytes,
                        evictions: t.evictions,
                        object_hit_ratio: ratio(t.hits, t.misses),
                        byte_hit_ratio: ratio(t.hit_bytes, t.miss_bytes),
                    });
                }
                Ok(Reply::CacheEnd(t)) => {
                    return Err(ClientError::Protocol(format!(
                        "CACHEEND says {} entries, got {}",
                        t.count,
                        entries.len()
                    )));
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply to LIST CACHE: {line:?}"))),
            },
            Frame::Error(msg) => return Err(ClientError::server(&msg)),
            other => return Err(ClientError::Protocol(format!("unexpected {:?} frame", other.frame_type()))),
        }
    }
}
