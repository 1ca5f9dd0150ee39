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
