//! The messages of the sync protocol and their byte layouts (docs/sync-protocol.md).
//!
//! Decoding is two steps, as in tokio's mini-redis: [`Message::check`] tells from the buffered bytes
//! whether a whole message is there, without allocating, refusing a bad header as soon as it has
//! arrived (before the body it announces is read); [`Message::parse`] then builds the message. Each
//! refusal carries the refused message's length when its header told it, so a receiver can skip just
//! that message, answer with the seed's status code ([`WireError::status`]) and carry on.
//!
//! The seed's six messages (all integers little-endian):
//!
//! ```text
//! File Chunk     type:2 md5:16 chunk_size:4 name_len:2 name chunk[chunk_size]
//! Status         type:2 code:2
//! Finished       type:2 md5:16 name_len:2 name
//! Abort File     type:2 md5:16 name_len:2 name
//! Delete File    type:2 md5:16 name_len:2 name
//! Request Update type:2 md5:16 name_len:2 name
//! ```
//!
//! plus ferry's [`Hello`] and [`Metadata`].

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_files::SafeName;

use super::error::{DecodeError, WireError};
use super::hello::Hello;
use super::limits::Limits;
use super::message_type::MessageType;
use super::metadata::Metadata;
use super::read;
use super::status_code::StatusCode;
use crate::Md5Sum;

/// Bytes of a File Chunk before its name.
pub const CHUNK_HEADER_LEN: usize = 24;
/// Bytes of a Finished, Abort File, Delete File or Request File Update before its name.
pub const NAMED_HEADER_LEN: usize = 20;
/// Bytes of a Status Message.
pub const STATUS_LEN: usize = 4;

/// One message of the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The next part of `name`; `md5` is the digest of `data` alone.
    FileChunk {
        md5: Md5Sum,
        name: SafeName,
        data: Bytes,
    },
    Status(StatusCode),
    /// `name` is complete; `md5` is the digest of the whole file.
    Finished {
        md5: Md5Sum,
        name: SafeName,
    },
    /// The sender gives up on `name`; the receiver discards what it received of it.
    AbortFile {
        md5: Md5Sum,
        name: SafeName,
    },
    /// Delete `name`; `md5` is that of the version the sender deletes (zeros if unknown).
    DeleteFile {
        md5: Md5Sum,
        name: SafeName,
    },
    /// Send me `name`; `md5` is that of the requester's copy (zeros if it has none).
    RequestUpdate {
        md5: Md5Sum,
        name: SafeName,
    },
    Hello(Hello),
    MetaData(Metadata),
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::FileChunk { .. } => MessageType::FileChunk,
            Message::Status(_) => MessageType::Status,
            Message::Finished { .. } => MessageType::Finished,
            Message::AbortFile { .. } => MessageType::AbortFile,
            Message::DeleteFile { .. } => MessageType::DeleteFile,
            Message::RequestUpdate { .. } => MessageType::RequestUpdate,
            Message::Hello(_) => MessageType::Hello,
            Message::MetaData(_) => MessageType::MetaData,
        }
    }

    /// Whether `src`, from its position, starts with one whole valid message. `Ok`: it does, and the
    /// cursor is left at its end (so `position()` minus the start is its length). On an error the cursor
    /// position means nothing; rewind it. Never allocates, except to report a refused chunk's name.
    pub fn check(src: &mut Cursor<&[u8]>, limits: &Limits) -> Result<(), DecodeError> {
        let ty = read::u16_le(src)?;
        match MessageType::from_u16(ty) {
            None => Err(DecodeError::Invalid { error: WireError::UnknownType(ty), skip: None }),
            Some(MessageType::FileChunk) => Self::read_chunk(src, limits).map(|_| ()),
            Some(MessageType::Status) => Self::read_status(src).map(|_| ()),
            Some(
                ty @ (MessageType::Finished
                | MessageType::AbortFile
                | MessageType::DeleteFile
                | MessageType::RequestUpdate),
            ) => Self::read_named(src, ty, limits).map(|_| ()),
            Some(MessageType::Hello) => Hello::check_body(src),
            Some(MessageType::MetaData) => Metadata::check_body(src, limits),
        }
    }

    /// Decodes the message at the cursor's position, leaving the cursor at its end. Checks it first, so
    /// it is safe on any bytes; besides [`Message::check`]'s refusals it refuses names that are not safe
    /// relative paths (`..`, absolute, control characters: see [`SafeName`]).
    pub fn parse(src: &mut Cursor<&[u8]>, limits: &Limits) -> Result<Message, DecodeError> {
        let start = src.position();
        Self::check(src, limits)?;
        let end = src.position();
        src.set_position(start);
        let frame_len = end - start;
        let ty = read::u16_le(src)?;
        let named = |ty: MessageType, name: &str| {
            SafeName::parse(name, limits.max_name_len())
                .map_err(|error| DecodeError::skip(WireError::BadName { ty, error }, frame_len))
        };
        let message = match MessageType::from_u16(ty) {
            None => return Err(DecodeError::Invalid { error: WireError::UnknownType(ty), skip: None }),
            Some(MessageType::FileChunk) => {
                let (md5, name, data) = Self::read_chunk(src, limits)?;
                Message::FileChunk {
                    md5,
                    name: named(MessageType::FileChunk, name)?,
                    data: Bytes::copy_from_slice(data),
                }
            }
            Some(MessageType::Status) => Message::Status(Self::read_status(src)?),
            Some(
                ty @ (MessageType::Finished
                | MessageType::AbortFile
                | MessageType::DeleteFile
                | MessageType::RequestUpdate),
            ) => {
                let (md5, name) = Self::read_named(src, ty, limits)?;
                let name = named(ty, name)?;
                match ty {
                    MessageType::Finished => Message::Finished { md5, name },
                    MessageType::AbortFile => Message::AbortFile { md5, name },
                    MessageType::DeleteFile => Message::DeleteFile { md5, name },
                    _ => Message::RequestUpdate { md5, name },
                }
            }
            Some(MessageType::Hello) => Message::Hello(Hello::parse_body(src)?),
            Some(MessageType::MetaData) => Message::MetaData(Metadata::parse_body(src, limits)?),
        };
        debug_assert_eq!(src.position(), end, "parse and check disagree on the length of a {ty:#06x}");
        Ok(message)
    }

    /// Reads a File Chunk after its type field: md5, then a size of 1 to `max_chunk_size`, then the name.
    fn read_chunk<'a>(src: &mut Cursor<&'a [u8]>, limits: &Limits) -> Result<(Md5Sum, &'a str, &'a [u8]), DecodeError> {
        let md5 = read::md5(src)?;
        let size = read::u32_le(src)?;
        let name_len = read::u16_le(src)?;
        let frame_len = CHUNK_HEADER_LEN as u64 + u64::from(name_len) + u64::from(size);
        let name = Self::read_name(src, MessageType::FileChunk, name_len, limits, frame_len)?;
        if size == 0 || size > limits.max_chunk_size {
            let error = WireError::ChunkSize { name: name.to_owned(), md5, size, max: limits.max_chunk_size };
            return Err(DecodeError::skip(error, frame_len));
        }
        let data = read::take(src, size as usize)?;
        Ok((md5, name, data))
    }

    fn read_status(src: &mut Cursor<&[u8]>) -> Result<StatusCode, DecodeError> {
        let code = read::u16_le(src)?;
        StatusCode::from_u16(code).ok_or(DecodeError::skip(WireError::UnknownStatus(code), STATUS_LEN as u64))
    }

    /// Reads a Finished, Abort File, Delete File or Request File Update after its type field.
    fn read_named<'a>(
        src: &mut Cursor<&'a [u8]>,
        ty: MessageType,
        limits: &Limits,
    ) -> Result<(Md5Sum, &'a str), DecodeError> {
        let md5 = read::md5(src)?;
        let name_len = read::u16_le(src)?;
        let frame_len = NAMED_HEADER_LEN as u64 + u64::from(name_len);
        Ok((md5, Self::read_name(src, ty, name_len, limits, frame_len)?))
    }

    /// Reads a name of `len` bytes: refused before it is buffered if too long, then if not UTF-8.
    fn read_name<'a>(
        src: &mut Cursor<&'a [u8]>,
        ty: MessageType,
        len: u16,
        limits: &Limits,
        frame_len: u64,
    ) -> Result<&'a str, DecodeError> {
        if usize::from(len) > limits.max_name_len() {
            let error = WireError::NameTooLong { ty, len: len.into(), max: limits.max_name_len() };
            return Err(DecodeError::skip(error, frame_len));
        }
        let name = read::take(src, len.into())?;
        std::str::from_utf8(name).map_err(|_| DecodeError::skip(WireError::NameNotUtf8 { ty }, frame_len))
    }

    /// Appends the message's bytes to `dst`.
    ///
    /// Panics if a name is over 65535 bytes or a chunk over 4 GiB, which the 16- and 32-bit length
    /// fields cannot express: names and chunks are kept within [`Limits`] before they get here.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        if let Some(data) = self.encode_head(dst) {
            dst.put_slice(data);
        }
    }

    /// Appends the message's bytes but for a File Chunk's data, which is returned, to be sent right
    /// after them as it is: a chunk goes out without being copied into the output buffer. `None` for
    /// the other messages, appended whole. Panics as [`Message::encode`] does.
    pub fn encode_head(&self, dst: &mut BytesMut) -> Option<&Bytes> {
        match self {
            Message::FileChunk { md5, name, data } => {
                let size = u32::try_from(data.len()).expect("a chunk fits the 32-bit chunk size field");
                dst.put_u16_le(MessageType::FileChunk as u16);
                dst.put_slice(&md5.0);
                dst.put_u32_le(size);
                put_name(dst, name);
                return Some(data);
            }
            Message::Status(code) => {
                dst.put_u16_le(MessageType::Status as u16);
                dst.put_u16_le(*code as u16);
            }
            Message::Finished { md5, name }
            | Message::AbortFile { md5, name }
            | Message::DeleteFile { md5, name }
            | Message::RequestUpdate { md5, name } => {
                dst.put_u16_le(self.message_type() as u16);
                dst.put_slice(&md5.0);
                put_name(dst, name);
            }
            Message::Hello(hello) => hello.encode(dst),
            Message::MetaData(metadata) => metadata.encode(dst),
        }
        None
    }

    /// The number of bytes [`Message::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::FileChunk { name, data, .. } => CHUNK_HEADER_LEN + name.as_str().len() + data.len(),
            Message::Status(_) => STATUS_LEN,
            Message::Finished { name, .. }
            | Message::AbortFile { name, .. }
            | Message::DeleteFile { name, .. }
            | Message::RequestUpdate { name, .. } => NAMED_HEADER_LEN + name.as_str().len(),
            Message::Hello(hello) => hello.encoded_len(),
            Message::MetaData(metadata) => metadata.encoded_len(),
        }
    }
}

fn put_name(dst: &mut BytesMut, name: &SafeName) {
    let name = name.as_str().as_bytes();
    dst.put_u16_le(u16::try_from(name.len()).expect("a name fits the 16-bit name length field"));
    dst.put_slice(name);
}
