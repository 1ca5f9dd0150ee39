//! What can go wrong on the client side, and whether trying again helps.

use std::io;

use crate::error_code::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection lost: {0}")]
    Connection(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{message}")]
    Server { code: Option<ErrorCode>, message: String },
    /// A resume needs bytes a stream can no longer produce or take back.
    #[error(
        "cannot rewind {stream}: {why}, so the transfer must continue from offset {needed}, but the stream is at offset {at}"
    )]
    CannotRewind { stream: &'static str, why: String, needed: u64, at: u64 },
    #[error("{0}")]
    Verify(String),
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Connection(_) => true,
            ClientError::Server { code, .. } => code.is_some_and(|c| c.is_transient()),
            _ => false,
        }
    }

    /// The server said the file changed since the offset being resumed.
    pub fn is_changed(&self) -> bool {
        matches!(self, ClientError::Server { code: Some(ErrorCode::Changed), .. })
    }

    pub fn server(payload: &str) -> ClientError {
        let (code, message) = crate::error_code::split_error(payload);
        ClientError::Server { code, message: message.to_string() }
    }
}
