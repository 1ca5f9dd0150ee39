//! Taking whole messages off the front of a connection's read buffer, and
//! skipping the ones refused.
//!
//! The decoder ([`Message::parse`]) refuses a bad message as soon as its header
//! says so and tells its whole length; the rest of it may not have arrived yet.
//! The reader drops what is buffered of it and remembers how many bytes of it
//! are still to come (`swallow`), so the stream stays in step without ever
//! buffering a refused body. `swallow` is part of a parked session's state:
//! the rest of a refused message can arrive after a live upgrade.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use ferry_core::Conn;

use crate::wire::message::CHUNK_HEADER_LEN;
use crate::{DecodeError, Limits, Message, StatusCode, WireError};

/// What the front of the buffer holds.
#[derive(Debug)]
pub enum Next {
    /// A whole message, taken off the buffer.
    Message(Message),
    /// A message refused and skipped (or being skipped); answer it with `status` if there is one.
    Refused { error: WireError, status: Option<StatusCode> },
    /// Not a whole message yet: read more.
    Incomplete,
    /// A message of an unknown type: the stream cannot be followed, close the connection.
    Fatal(WireError),
}

/// Per-connection decoding state: bytes of a refused message still to discard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageReader {
    swallow: u64,
}

impl MessageReader {
    /// A reader that first discards `swallow` bytes (from a parked session's state).
    pub fn resume(swallow: u64) -> MessageReader {
        MessageReader { swallow }
    }

    /// Bytes of a refused message still to discard.
    pub fn swallow(&self) -> u64 {
        self.swallow
    }

    /// The next message at the front of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut, limits: &Limits) -> Next {
        if self.swallow > 0 {
            let n = usize::try_from(self.swallow).unwrap_or(usize::MAX).min(buf.len());
            buf.advance(n);
            self.swallow -= n as u64;
            if self.swallow > 0 {
                return Next::Incomplete;
            }
        }
        let mut cursor = Cursor::new(&buf[..]);
        match Message::parse(&mut cursor, limits) {
            Ok(message) => {
                let len = cursor.position() as usize;
                buf.advance(len);
                Next::Message(message)
            }
            Err(DecodeError::Incomplete) => Next::Incomplete,
            Err(DecodeError::Invalid { error, skip: None }) => Next::Fatal(error),
            Err(DecodeError::Invalid { error, skip: Some(len) }) => {
                let here = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
                buf.advance(here);
                self.swallow = len - here as u64;
                let status = error.status();
                Next::Refused { error, status }
            }
        }
    }
}

/// Bytes a peer may have to buffer for one message it accepts: the largest chunk with its header and
/// longest name. A connection's read buffer is bounded by this plus room for reads.
pub fn max_message_len(limits: &Limits) -> usize {
    CHUNK_HEADER_LEN + limits.max_name_len() + limits.max_chunk_size as usize
}

/// The bytes of `message`.
pub fn encode(message: &Message) -> bytes::Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    message.encode(&mut buf);
    buf.freeze()
}

/// Queues `message` on `conn`. A File Chunk's data is queued as it is, after its encoded header,
/// rather than copied (the connection writes both with one vectored write).
pub fn queue(conn: &mut Conn, message: &Message) {
    let mut head = BytesMut::with_capacity(message.encoded_len().min(QUEUE_HEAD_CAPACITY));
    let data = message.encode_head(&mut head).cloned();
    conn.queue(head.freeze());
    if let Some(data) = data {
        conn.queue(data);
    }
}

/// Capacity reserved up front for what [`queue`] encodes (a chunk's header and name, or a whole
/// message of another kind: a META-DATA grows the buffer as it needs).
const QUEUE_HEAD_CAPACITY: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ferry_files::SafeName;

    use super::*;
    use crate::Md5Sum;

    fn chunk(name: &str, data: &'static [u8]) -> Message {
        Message::FileChunk {
            md5: Md5Sum::of(data),
            name: SafeName::parse(name, 1024).unwrap(),
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn takes_messages_one_by_one() {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode(&chunk("a", b"xyz")));
        buf.extend_from_slice(&encode(&Message::Status(StatusCode::KeepAlive)));
        buf.extend_from_slice(&[0x02]);
        let mut r = MessageReader::default();
        assert!(matches!(r.next(&mut buf, &limits), Next::Message(Message::FileChunk { .. })));
        assert!(matches!(r.next(&mut buf, &limits), Next::Message(Message::Status(StatusCode::KeepAlive))));
        assert!(matches!(r.next(&mut buf, &limits), Next::Incomplete));
        assert_eq!(buf.len(), 1, "a partial message stays buffered");
    }

    #[test]
    fn an_oversized_chunk_is_skipped_as_it_arrives() {
        let limits = Limits { max_chunk_size: 4, ..Limits::default() };
        let big = encode(&chunk("f", b"0123456789"));
        let after = encode(&Message::Status(StatusCode::Ok));
        let mut r = MessageReader::default();
        // Only the header and part of the body have arrived.
        let mut buf = BytesMut::from(&big[..30]);
        match r.next(&mut buf, &limits) {
            Next::Refused { status, .. } => assert_eq!(status, Some(StatusCode::ResendChunkSize)),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
        assert_eq!(r.swallow(), (big.len() - 30) as u64);
        // The rest arrives with the next message: the reader resumes from its state.
        let mut r = MessageReader::resume(r.swallow());
        buf.extend_from_slice(&big[30..]);
        buf.extend_from_slice(&after);
        assert!(matches!(r.next(&mut buf, &limits), Next::Message(Message::Status(StatusCode::Ok))));
        assert_eq!(r.swallow(), 0);
    }

    #[test]
    fn an_unknown_type_is_fatal() {
        let mut buf = BytesMut::from(&[0x77u8, 0x77, 0, 0][..]);
        assert!(matches!(MessageReader::default().next(&mut buf, &Limits::default()), Next::Fatal(_)));
    }

    #[test]
    fn a_bad_name_is_answered_and_skipped() {
        let mut raw = encode(&chunk("ok", b"data")).to_vec();
        // Turn "ok" into "..": a name the decoder refuses after reading it.
        let at = CHUNK_HEADER_LEN;
        raw[at..at + 2].copy_from_slice(b"..");
        raw.extend_from_slice(&encode(&Message::Status(StatusCode::Ok)));
        let mut buf = BytesMut::from(&raw[..]);
        let mut r = MessageReader::default();
        match r.next(&mut buf, &Limits::default()) {
            Next::Refused { status, .. } => assert_eq!(status, Some(StatusCode::FileInUse)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next(&mut buf, &Limits::default()), Next::Message(Message::Status(StatusCode::Ok))));
    }

    #[test]
    fn a_chunk_encodes_as_its_head_then_its_data_unchanged() {
        let chunk = chunk("d/name", b"the chunk's data");
        let mut head = BytesMut::new();
        let data = chunk.encode_head(&mut head).unwrap().clone();
        assert_eq!(
            data.as_ptr(),
            match &chunk {
                Message::FileChunk { data, .. } => data.as_ptr(),
                _ => unreachable!(),
            }
        );
        head.extend_from_slice(&data);
        assert_eq!(head.freeze(), encode(&chunk));
        let other = Message::Finished { md5: crate::Md5Sum::ZERO, name: SafeName::parse("f", 64).unwrap() };
        let mut whole = BytesMut::new();
        assert!(other.encode_head(&mut whole).is_none());
        assert_eq!(whole.freeze(), encode(&other));
    }

    #[test]
    fn max_message_len_covers_the_largest_chunk() {
        let limits = Limits { max_chunk_size: 100, max_name_len: 10, ..Limits::default() };
        assert_eq!(max_message_len(&limits), 24 + 10 + 100);
    }
}
