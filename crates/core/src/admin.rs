//! The admin socket `<data>/ferry.sock`: one JSON request per line, one
//! JSON response per line. `ferry status` and (later) `ferry upgrade` speak
//! it; it is a Unix socket so only local users with access to the data
//! directory can reach it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::status::Status;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A client that does not finish its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum AdminRequest {
    Status,
    Shutdown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum AdminResponse {
    Status(Box<Status>),
    Ok { message: String },
    Error { message: String },
}

/// What the admin socket can ask of the server.
pub trait AdminHandler: Send + Sync + 'static {
    fn status(&self) -> Status;
    fn shutdown(&self);
}

/// Serves the admin socket until the task is dropped.
pub async fn serve(listener: UnixListener, handler: Arc<dyn AdminHandler>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, handler)).await {
                tracing::debug!("admin client timed out: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, handler: Arc<dyn AdminHandler>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<AdminRequest>(line.trim()) {
        Ok(AdminRequest::Status) => AdminResponse::Status(Box::new(handler.status())),
        Ok(AdminRequest::Shutdown) => {
            handler.shutdown();
            AdminResponse::Ok { message: "shutting down".into() }
        }
        Err(e) => AdminResponse::Error { message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends one request and reads the response (client side).
pub async fn request(socket: &Path, req: &AdminRequest) -> io::Result<AdminResponse> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read).take(64 << 20).read_line(&mut reply).await?;
    serde_json::from_str(reply.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
