//! What the decoder says about bytes that are not (yet) a message.

use ferry_files::NameError;

use super::message_type::MessageType;
use super::metadata::METADATA_FORMAT;
use super::status_code::StatusCode;
use crate::{ClientIdError, Md5Sum};

/// Why a message was refused. Each names the message type and the field at fault, so the text can go
/// straight into a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown message type 0x{0:04x}")]
    UnknownType(u16),
    #[error("Status Message: unknown status code 0x{0:04x}")]
    UnknownStatus(u16),
    #[error("{}: file name of {len} bytes, limit is {max}", ty.name())]
    NameTooLong { ty: MessageType, len: usize, max: usize },
    #[error("{}: file name is not UTF-8", ty.name())]
    NameNotUtf8 { ty: MessageType },
    #[error("{}: {error}", ty.name())]
    BadName { ty: MessageType, error: NameError },
    #[error("File Chunk for {name:?} declares {size} bytes; a chunk is 1 to {max} bytes")]
    ChunkSize { name: String, md5: Md5Sum, size: u32, max: u32 },
    #[error("Hello: unknown connection role 0x{0:04x}")]
    UnknownRole(u16),
    #[error("Hello: {0}")]
    BadClientId(ClientIdError),
    #[error("META-DATA format {0} is not supported (this side reads format {METADATA_FORMAT})")]
    MetadataFormat(u16),
    #[error("META-DATA holds {count} entries, limit is {max}")]
    TooManyEntries { count: u32, max: u32 },
    #[error("META-DATA body is {len} bytes, limit is {max}")]
    MetadataTooLarge { len: u32, max: u32 },
    #[error("malformed META-DATA: {0}")]
    MalformedMetadata(&'static str),
}

impl WireError {
    /// The seed's status code that answers a message refused for this reason, if the seed has one: an
    /// invalid chunk size asks for a resend, a name the receiver cannot use is "File In Use" (the seed's
    /// answer for a file that cannot be opened), or "No file to delete" for a Delete File. `None`: the
    /// seed has no answer, and the receiver drops the message (or the connection, for an unknown type).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            WireError::ChunkSize { .. } => Some(StatusCode::ResendChunkSize),
            WireError::NameTooLong { ty, .. } | WireError::NameNotUtf8 { ty } | WireError::BadName { ty, .. } => {
                match ty {
                    MessageType::DeleteFile => Some(StatusCode::NoFileToDelete),
                    MessageType::FileChunk
                    | MessageType::Finished
                    | MessageType::AbortFile
                    | MessageType::RequestUpdate => Some(StatusCode::FileInUse),
                    MessageType::Status | MessageType::Hello | MessageType::MetaData => None,
                }
            }
            _ => None,
        }
    }
}

/// The outcome of decoding the front of a buffer that is not a whole valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes so far are a valid beginning: read more and try again with them all.
    #[error("incomplete message")]
    Incomplete,
    /// The message is refused. `skip` is its whole length, counted from its first byte, when the header
    /// told it: discard that many bytes (they may not all have arrived yet) and the stream is in step
    /// again. `None` (an unknown type) means the stream cannot be followed any further.
    #[error("{error}")]
    Invalid { error: WireError, skip: Option<u64> },
}

impl DecodeError {
    pub(crate) fn skip(error: WireError, frame_len: u64) -> DecodeError {
        DecodeError::Invalid { error, skip: Some(frame_len) }
    }
}
