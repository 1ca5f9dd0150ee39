//! A client's connection: a [`Conn`] plus timeouts.

use std::time::Duration;

use ferry_core::Conn;
use tokio::net::TcpStream;

use super::error::ClientError;
use crate::frame::Frame;
use crate::wire::{RecvError, recv_frame, send_frame};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ClientConn {
    pub(crate) conn: Conn,
    max_frame: u32,
    timeout: Duration,
}

impl ClientConn {
    pub async fn connect(addr: &str, max_frame: u32, timeout: Duration) -> Result<ClientConn, ClientError> {
        let connect = TcpStream::connect(addr);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ClientError::Connect { addr: addr.to_string(), source }),
            Err(_) => {
                let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
                return Err(ClientError::Connect { addr: addr.to_string(), source });
            }
        };
        let conn = Conn::new(stream, max_frame as usize + (1 << 20));
        Ok(ClientConn { conn, max_frame, timeout })
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeout, send_frame(&mut self.conn, frame)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(timed_out(self.timeout)),
        }
    }

    /// The next frame, or an error if the server goes away or is silent
    /// for too long.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        match tokio::time::timeout(self.timeout, recv_frame(&mut self.conn, self.max_frame)).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(RecvError::Closed)) => Err(closed()),
            Ok(Err(RecvError::Truncated { .. })) => Err(closed()),
            Ok(Err(RecvError::Io(e))) => Err(ClientError::Connection(e)),
            Ok(Err(RecvError::Frame(e))) => Err(ClientError::Protocol(e.to_string())),
            Err(_) => Err(timed_out(self.timeout)),
        }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

pub(crate) fn closed() -> ClientError {
    ClientError::Connection(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed the connection"))
}

pub(crate) fn timed_out(after: Duration) -> ClientError {
    let msg = format!("server silent for {}s", after.as_secs());
    ClientError::Connection(std::io::Error::new(std::io::ErrorKind::TimedOut, msg))
}
