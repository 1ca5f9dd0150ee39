//! The admin socket `<data>/ferry.sock`: one JSON request per line, one
//! JSON response per line. `ferry status` and `ferry upgrade` speak it; it
//! is a Unix socket, so only local users with access to the data directory
//! can reach it. Its listener moves to the new process in a live upgrade
//! like every other listener.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::pause::PauseSignal;
use crate::status::Status;
use crate::upgrade::UpgradeReport;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A client that does not send its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum AdminRequest {
    Status,
    Shutdown,
    /// Live upgrade to `binary` (default: the executable the server was
    /// started from).
    Upgrade {
        binary: Option<PathBuf>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum AdminResponse {
    Status(Box<Status>),
    Upgraded(UpgradeReport),
    Ok { message: String },
    Error { message: String },
}

/// The answer to an upgrade request, and a way to say it was delivered
/// (the old process exits only after its requester has the answer).
pub struct UpgradeTicket {
    pub result: oneshot::Receiver<Result<UpgradeReport, String>>,
    pub delivered: oneshot::Sender<()>,
}

/// What the admin socket can ask of the server.
pub trait AdminHandler: Send + Sync + 'static {
    fn status(&self) -> Status;
    fn shutdown(&self);
    /// Queues an upgrade; `None` if the server cannot take one now.
    fn upgrade(&self, binary: Option<PathBuf>) -> Option<UpgradeTicket>;
}

/// Serves the admin socket until a pause is requested, then returns the
/// listener (connections keep queueing in the kernel meanwhile).
pub async fn serve(listener: UnixListener, handler: Arc<dyn AdminHandler>, mut pause: PauseSignal) -> UnixListener {
    loop {
        if pause.requested().is_some() {
            return listener;
        }
        let accepted = tokio::select! {
            biased;
            _ = pause.wait() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, handler).await {
                tracing::debug!("admin client: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, handler: Arc<dyn AdminHandler>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let mut delivered = None;
    let response = match serde_json::from_str::<AdminRequest>(line.trim()) {
        Ok(AdminRequest::Status) => AdminResponse::Status(Box::new(handler.status())),
        Ok(AdminRequest::Shutdown) => {
            handler.shutdown();
            AdminResponse::Ok { message: "shutting down".into() }
        }
        Ok(AdminRequest::Upgrade { binary }) => match handler.upgrade(binary) {
            Some(ticket) => {
                delivered = Some(ticket.delivered);
                match ticket.result.await {
                    Ok(Ok(report)) => AdminResponse::Upgraded(report),
                    Ok(Err(message)) => AdminResponse::Error { message },
                    Err(_) => AdminResponse::Error { message: "the server dropped the upgrade".into() },
                }
            }
            None => AdminResponse::Error { message: "the server cannot start an upgrade now".into() },
        },
        Err(e) => AdminResponse::Error { message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    let written = async {
        write.write_all(&out).await?;
        write.shutdown().await
    }
    .await;
    if let Some(delivered) = delivered {
        let _ = delivered.send(());
    }
    written
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
    if reply.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the admin connection"));
    }
    serde_json::from_str(reply.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
