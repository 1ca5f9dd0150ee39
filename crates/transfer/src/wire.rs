//! Frames on a [`Conn`]: taking complete frames off the read buffer and
//! queueing frames for writing.

use std::io;

use ferry_core::Conn;

use crate::frame::{Frame, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame ({have} bytes of it received)")]
    Truncated { have: usize },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Pops one complete frame off the read buffer, if one is there.
pub fn take_frame(conn: &mut Conn, max_payload: u32) -> Result<Option<Frame>, FrameError> {
    match Frame::check(conn.read_buf(), max_payload)? {
        Some(n) => {
            let bytes = conn.read_buf().split_to(n).freeze();
            Frame::parse(bytes).map(Some)
        }
        None => Ok(None),
    }
}

/// Reads until a whole frame is buffered and returns it.
pub async fn recv_frame(conn: &mut Conn, max_payload: u32) -> Result<Frame, RecvError> {
    loop {
        if let Some(frame) = take_frame(conn, max_payload)? {
            return Ok(frame);
        }
        if conn.read_more().await? == 0 {
            let have = conn.read_buf().len();
            return Err(if have == 0 { RecvError::Closed } else { RecvError::Truncated { have } });
        }
    }
}

/// Queues a frame for writing (DATA payloads are not copied).
pub fn queue_frame(conn: &mut Conn, frame: &Frame) {
    let (prefix, body) = frame.encode_parts();
    conn.queue(prefix);
    conn.queue(body);
}

/// Queues a frame and writes everything queued.
pub async fn send_frame(conn: &mut Conn, frame: &Frame) -> io::Result<()> {
    queue_frame(conn, frame);
    conn.flush().await
}
