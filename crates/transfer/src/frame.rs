//! The native frame format (docs/protocol.md):
//!
//! ```text
//! frame := type:u8  len:u32 (big-endian)  payload[len]
//! ```
//!
//! As in mini-redis, parsing is two steps: [`Frame::check`] looks at the
//! buffered bytes and says whether a whole frame is there (rejecting an
//! unknown type or an oversized length as soon as the 5-byte header is in,
//! before buffering anything more), then [`Frame::parse`] decodes exactly
//! those bytes without copying DATA payloads.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HEADER_LEN: usize = 5;
/// Bytes a DATA payload spends before the file bytes (the offset).
pub const DATA_OVERHEAD: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Error = 0x01,
    Info = 0x02,
    Data = 0x03,
    Ack = 0x04,
    BackupInfo = 0x05,
    BackupData = 0x06,
}

impl FrameType {
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Error,
            0x02 => FrameType::Info,
            0x03 => FrameType::Data,
            0x04 => FrameType::Ack,
            0x05 => FrameType::BackupInfo,
            0x06 => FrameType::BackupData,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A failure; the sender ends the transfer.
    Error(String),
    /// A command, reply or notice (one UTF-8 line).
    Info(String),
    /// File bytes starting at `offset`.
    Data { offset: u64, data: Bytes },
    /// Everything before `offset` is consumed (GET) or written (PUT).
    Ack(u64),
    /// Reserved for backup nodes: a transfer's name and size.
    BackupInfo { transfer: u64, info: String },
    /// Reserved for backup nodes: a transfer's bytes.
    BackupData { transfer: u64, offset: u64, data: Bytes },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed {kind} frame: {why}")]
    Malformed { kind: &'static str, why: &'static str },
}

impl Frame {
    /// Whether `buf` starts with a complete frame. `Ok(Some(n))`: the first
    /// `n` bytes are one frame; `Ok(None)`: need more bytes; `Err`: the
    /// stream is not a valid frame stream (and cannot be resynchronised).
    pub fn check(buf: &[u8], max_payload: u32) -> Result<Option<usize>, FrameError> {
        let Some(&ty) = buf.first() else { return Ok(None) };
        if FrameType::from_u8(ty).is_none() {
            return Err(FrameError::UnknownType(ty));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len > max_payload {
            return Err(FrameError::TooLarge { len, max: max_payload });
        }
        let total = HEADER_LEN + len as usize;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Decodes one whole frame (as measured by [`Frame::check`]).
    pub fn parse(mut frame: Bytes) -> Result<Frame, FrameError> {
        debug_assert!(frame.len() >= HEADER_LEN);
        let ty = frame.get_u8();
        let len = frame.get_u32() as usize;
        debug_assert_eq!(len, frame.len());
        let ty = FrameType::from_u8(ty).ok_or(FrameError::UnknownType(ty))?;
        let text = |kind: &'static str, b: Bytes| {
            String::from_utf8(b.to_vec()).map_err(|_| FrameError::Malformed { kind, why: "not UTF-8" })
        };
        let need = |kind: &'static str, n: usize, b: &Bytes| {
            if b.len() < n { Err(FrameError::Malformed { kind, why: "payload too short" }) } else { Ok(()) }
        };
        Ok(match ty {
            FrameType::Error => Frame::Error(text("ERROR", frame)?),
            FrameType::Info => Frame::Info(text("INFO", frame)?),
            FrameType::Data => {
                need("DATA", 8, &frame)?;
                let offset = frame.get_u64();
                Frame::Data { offset, data: frame }
            }
            FrameType::Ack => {
                if frame.len() != 8 {
                    return Err(FrameError::Malformed { kind: "ACK", why: "payload must be 8 bytes" });
                }
                Frame::Ack(frame.get_u64())
            }
            FrameType::BackupInfo => {
                need("BACKUPINFO", 8, &frame)?;
                let transfer = frame.get_u64();
                Frame::BackupInfo { transfer, info: text("BACKUPINFO", frame)? }
            }
            FrameType::BackupData => {
                need("BACKUPDATA", 16, &frame)?;
                let transfer = frame.get_u64();
                let offset = frame.get_u64();
                Frame::BackupData { transfer, offset, data: frame }
            }
        })
    }

    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Error(_) => FrameType::Error,
            Frame::Info(_) => FrameType::Info,
            Frame::Data { .. } => FrameType::Data,
            Frame::Ack(_) => FrameType::Ack,
            Frame::BackupInfo { .. } => FrameType::BackupInfo,
            Frame::BackupData { .. } => FrameType::BackupData,
        }
    }

    /// Encodes as (prefix, body): `prefix` holds the header and any fixed
    /// fields, `body` the bulk bytes, so DATA payloads are never copied.
    pub fn encode_parts(&self) -> (Bytes, Bytes) {
        let (fixed, body): (Vec<u64>, Bytes) = match self {
            Frame::Error(s) | Frame::Info(s) => (vec![], Bytes::copy_from_slice(s.as_bytes())),
            Frame::Data { offset, data } => (vec![*offset], data.clone()),
            Frame::Ack(offset) => (vec![*offset], Bytes::new()),
            Frame::BackupInfo { transfer, info } => (vec![*transfer], Bytes::copy_from_slice(info.as_bytes())),
            Frame::BackupData { transfer, offset, data } => (vec![*transfer, *offset], data.clone()),
        };
        let len = fixed.len() * 8 + body.len();
        let mut prefix = BytesMut::with_capacity(HEADER_LEN + fixed.len() * 8);
        prefix.put_u8(self.frame_type() as u8);
        prefix.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        for v in fixed {
            prefix.put_u64(v);
        }
        (prefix.freeze(), body)
    }

    /// The header and fixed fields of a BACKUPDATA frame whose `payload`
    /// file bytes follow separately: a sender that joins several pieces
    /// into one frame writes this and then the pieces, without copying
    /// them together.
    pub fn backup_data_header(transfer: u64, offset: u64, payload: usize) -> Bytes {
        let mut prefix = BytesMut::with_capacity(HEADER_LEN + 16);
        prefix.put_u8(FrameType::BackupData as u8);
        prefix.put_u32(u32::try_from(payload + 16).unwrap_or(u32::MAX));
        prefix.put_u64(transfer);
        prefix.put_u64(offset);
        prefix.freeze()
    }

    /// Encodes into one contiguous buffer (tests and small frames).
    pub fn encode(&self) -> Bytes {
        let (prefix, body) = self.encode_parts();
        let mut out = BytesMut::with_capacity(prefix.len() + body.len());
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&body);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        assert_eq!(Frame::check(&bytes, 1 << 20), Ok(Some(bytes.len())));
        assert_eq!(Frame::parse(bytes).unwrap(), frame);
    }

    #[test]
    fn every_type_round_trips() {
        round_trip(Frame::Error("not-found no such file: a".into()));
        round_trip(Frame::Info("GET a offset=3".into()));
        round_trip(Frame::Data { offset: 7, data: Bytes::from_static(b"abc") });
        round_trip(Frame::Data { offset: 0, data: Bytes::new() });
        round_trip(Frame::Ack(u64::MAX));
        round_trip(Frame::BackupInfo { transfer: 9, info: "a 3".into() });
        round_trip(Frame::BackupData { transfer: 9, offset: 1, data: Bytes::from_static(b"z") });
    }

    #[test]
    fn a_backup_data_header_and_its_pieces_make_the_frame() {
        let mut joined = BytesMut::from(&Frame::backup_data_header(9, 1 << 40, 5)[..]);
        joined.extend_from_slice(b"ab");
        joined.extend_from_slice(b"cde");
        let whole = Frame::BackupData { transfer: 9, offset: 1 << 40, data: Bytes::from_static(b"abcde") };
        assert_eq!(joined.freeze(), whole.encode());
    }

    #[test]
    fn byte_layout_matches_the_spec() {
        let bytes = Frame::Ack(0x0102).encode();
        assert_eq!(&bytes[..], &[0x04, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x01, 0x02]);
        let bytes = Frame::Data { offset: 1, data: Bytes::from_static(b"hi") }.encode();
        assert_eq!(&bytes[..], &[0x03, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 1, b'h', b'i']);
    }

    #[test]
    fn incomplete_frames_need_more() {
        let bytes = Frame::Info("hello".into()).encode();
        for cut in 0..bytes.len() {
            assert_eq!(Frame::check(&bytes[..cut], 1 << 20), Ok(None));
        }
    }

    #[test]
    fn unknown_type_is_rejected_from_the_first_byte() {
        assert_eq!(Frame::check(b"G", 100), Err(FrameError::UnknownType(b'G')));
        assert_eq!(Frame::check(&[0], 100), Err(FrameError::UnknownType(0)));
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header() {
        assert_eq!(Frame::check(&[3, 0, 0x10, 0, 1], 4096), Err(FrameError::TooLarge { len: 0x100001, max: 4096 }));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let ack = Bytes::from_static(&[4, 0, 0, 0, 3, 1, 2, 3]);
        assert!(matches!(Frame::parse(ack), Err(FrameError::Malformed { .. })));
        let info = Bytes::from_static(&[2, 0, 0, 0, 2, 0xff, 0xfe]);
        assert!(matches!(Frame::parse(info), Err(FrameError::Malformed { .. })));
        let data = Bytes::from_static(&[3, 0, 0, 0, 2, 0, 0]);
        assert!(matches!(Frame::parse(data), Err(FrameError::Malformed { .. })));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some(n)) = Frame::check(&bytes, 32) {
                let _ = Frame::parse(Bytes::copy_from_slice(&bytes[..n]));
            }
        }
    }
}
