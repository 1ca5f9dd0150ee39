//! META-DATA (ferry extension, type `0x0102`): the server's view of every file, sent on connect.
//!
//! The seed has the server send "a META-DATA file" on connect but leaves its format to an earlier
//! project; this is ferry's. Per file it carries the server's version (a roster-wide counter, so a larger
//! version is always a later change, whatever the clocks say), mtime, size and md5; a deleted file stays
//! as a tombstone, so a client that was away can tell "deleted on the server" from "never seen by it".
//! The same encoding is the server's own metadata file on disk.
//!
//! ```text
//! offset size field
//! 0      2    message type  0x0102
//! 2      2    format (METADATA_FORMAT)
//! 4      8    last version: the highest version the roster has handed out
//! 12     4    entry count
//! 16     4    body length in bytes (the entries)
//! 20     ...  entries, names in strictly ascending byte order:
//!   +0   1    kind: 0x00 file, 0x01 tombstone
//!   +1   8    version (1..=last version)
//!   +9   8    mtime, nanoseconds since the Unix epoch (signed); a tombstone's is when it was deleted
//!   +17  8    size in bytes (0 for a tombstone)
//!   +25  16   md5 of the whole file (zeros for a tombstone)
//!   +41  2    name length
//!   +43  n    name (UTF-8, a safe relative path)
//! ```
//!
//! Every field is fixed by the rest, so an encoding is canonical: decoding then encoding gives back the
//! same bytes. The header layout stays the same in later formats, so a reader can always skip a
//! META-DATA it does not understand.

use std::collections::BTreeMap;
use std::io::Cursor;

use bytes::{BufMut, BytesMut};
use ferry_files::SafeName;

use super::error::{DecodeError, WireError};
use super::limits::Limits;
use super::message_type::MessageType;
use super::read;
use crate::Md5Sum;

/// The META-DATA format this code reads and writes.
pub const METADATA_FORMAT: u16 = 1;
/// Bytes of a META-DATA message before its entries.
pub const METADATA_HEADER_LEN: usize = 20;
/// Bytes of an entry besides its name.
pub const ENTRY_FIXED_LEN: usize = 43;

const KIND_FILE: u8 = 0x00;
const KIND_TOMBSTONE: u8 = 0x01;

/// Whether a file exists on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    File {
        size: u64,
        md5: Md5Sum,
    },
    /// Deleted at `version`; kept so that clients learn of the delete.
    Deleted,
}

/// The server's record of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaEntry {
    /// When the server committed this state, on its roster-wide counter (1 is the first commit ever).
    pub version: u64,
    /// Nanoseconds since the Unix epoch: the file's mtime, or when it was deleted.
    pub mtime_ns: i64,
    pub state: EntryState,
}

impl MetaEntry {
    pub fn is_deleted(&self) -> bool {
        matches!(self.state, EntryState::Deleted)
    }

    /// The whole file's md5, `None` for a tombstone.
    pub fn md5(&self) -> Option<Md5Sum> {
        match self.state {
            EntryState::File { md5, .. } => Some(md5),
            EntryState::Deleted => None,
        }
    }
}

/// A whole META-DATA file: every entry by name, and the roster's version counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The highest version handed out so far; every entry's version is at most this.
    pub last_version: u64,
    pub entries: BTreeMap<SafeName, MetaEntry>,
}

/// Bytes one entry named `name` takes in the body.
pub fn entry_len(name: &str) -> usize {
    ENTRY_FIXED_LEN + name.len()
}

impl Metadata {
    /// Bytes of the entries (the body length field).
    pub fn body_len(&self) -> usize {
        self.entries.keys().map(|n| entry_len(n.as_str())).sum()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        METADATA_HEADER_LEN + self.body_len()
    }

    /// Checks a META-DATA whose type field the cursor has just read; leaves the cursor at its end.
    /// Walks the entries without allocating.
    pub(crate) fn check_body(src: &mut Cursor<&[u8]>, limits: &Limits) -> Result<(), DecodeError> {
        Self::walk(src, limits, |_, _| Ok(())).map(|_| ())
    }

    /// Decodes a META-DATA whose type field the cursor has just read.
    pub(crate) fn parse_body(src: &mut Cursor<&[u8]>, limits: &Limits) -> Result<Metadata, DecodeError> {
        let mut entries = Vec::new();
        let last_version = Self::walk(src, limits, |name, entry| {
            let name = SafeName::parse(name, limits.max_name_len())
                .map_err(|error| WireError::BadName { ty: MessageType::MetaData, error })?;
            entries.push((name, entry));
            Ok(())
        })?;
        // `walk` saw the names in strictly ascending order, so this builds the map in one sorted pass.
        Ok(Metadata { last_version, entries: entries.into_iter().collect() })
    }

    /// Reads the header and every entry, handing each valid entry to `visit`; returns the last version.
    fn walk<'a>(
        src: &mut Cursor<&'a [u8]>,
        limits: &Limits,
        mut visit: impl FnMut(&'a str, MetaEntry) -> Result<(), WireError>,
    ) -> Result<u64, DecodeError> {
        let format = read::u16_le(src)?;
        let last_version = read::u64_le(src)?;
        let count = read::u32_le(src)?;
        let body_len = read::u32_le(src)?;
        let frame_len = METADATA_HEADER_LEN as u64 + u64::from(body_len);
        let refuse = |error| DecodeError::skip(error, frame_len);
        if format != METADATA_FORMAT {
            return Err(refuse(WireError::MetadataFormat(format)));
        }
        if count > limits.max_metadata_entries {
            return Err(refuse(WireError::TooManyEntries { count, max: limits.max_metadata_entries }));
        }
        if body_len > limits.max_metadata_bytes {
            return Err(refuse(WireError::MetadataTooLarge { len: body_len, max: limits.max_metadata_bytes }));
        }
        let body = read::take(src, body_len as usize)?;
        let malformed = |why| refuse(WireError::MalformedMetadata(why));
        let mut body = Cursor::new(body);
        let mut previous: Option<&'a str> = None;
        for _ in 0..count {
            let overrun = |_| malformed("an entry runs past the body length");
            let kind = read::u8(&mut body).map_err(overrun)?;
            let version = read::u64_le(&mut body).map_err(overrun)?;
            let mtime_ns = read::i64_le(&mut body).map_err(overrun)?;
            let size = read::u64_le(&mut body).map_err(overrun)?;
            let md5 = read::md5(&mut body).map_err(overrun)?;
            let name_len = read::u16_le(&mut body).map_err(overrun)?;
            if usize::from(name_len) > limits.max_name_len() {
                let max = limits.max_name_len();
                return Err(refuse(WireError::NameTooLong { ty: MessageType::MetaData, len: name_len.into(), max }));
            }
            let name = read::take(&mut body, name_len.into()).map_err(overrun)?;
            let name =
                std::str::from_utf8(name).map_err(|_| refuse(WireError::NameNotUtf8 { ty: MessageType::MetaData }))?;
            if previous.is_some_and(|p| p >= name) {
                return Err(malformed("names are not in strictly ascending order"));
            }
            previous = Some(name);
            if version == 0 || version > last_version {
                return Err(malformed("an entry's version is 0 or above the last version"));
            }
            let state = match kind {
                KIND_FILE => EntryState::File { size, md5 },
                KIND_TOMBSTONE if size == 0 && md5 == Md5Sum::ZERO => EntryState::Deleted,
                KIND_TOMBSTONE => return Err(malformed("a tombstone has a size or an md5")),
                _ => return Err(malformed("unknown entry kind")),
            };
            visit(name, MetaEntry { version, mtime_ns, state }).map_err(refuse)?;
        }
        if body.position() != u64::from(body_len) {
            return Err(malformed("the body is longer than its entries"));
        }
        Ok(last_version)
    }

    /// Appends the whole META-DATA, type field included.
    ///
    /// Panics if it holds more than `u32::MAX` entries or bytes, which no [`Limits`] allows; a roster
    /// keeps itself within the configured limits, so its snapshot always encodes.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        let body_len = self.body_len();
        let count = u32::try_from(self.entries.len()).expect("META-DATA entry count fits in 32 bits");
        let body_len32 = u32::try_from(body_len).expect("META-DATA body fits in 32 bits");
        dst.reserve(METADATA_HEADER_LEN + body_len);
        dst.put_u16_le(MessageType::MetaData as u16);
        dst.put_u16_le(METADATA_FORMAT);
        dst.put_u64_le(self.last_version);
        dst.put_u32_le(count);
        dst.put_u32_le(body_len32);
        for (name, entry) in &self.entries {
            let (kind, size, md5) = match entry.state {
                EntryState::File { size, md5 } => (KIND_FILE, size, md5),
                EntryState::Deleted => (KIND_TOMBSTONE, 0, Md5Sum::ZERO),
            };
            let name = name.as_str().as_bytes();
            dst.put_u8(kind);
            dst.put_u64_le(entry.version);
            dst.put_i64_le(entry.mtime_ns);
            dst.put_u64_le(size);
            dst.put_slice(&md5.0);
            dst.put_u16_le(u16::try_from(name.len()).expect("a META-DATA name fits in 16 bits"));
            dst.put_slice(name);
        }
    }
}
