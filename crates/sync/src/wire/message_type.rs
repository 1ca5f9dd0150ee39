//! Message type numbers: the first two bytes (little-endian) of every message.
//!
//! `0x0001`–`0x0006` are the seed's, unchanged. ferry's extensions take numbers with a non-zero high byte
//! (`0x01xx`), far from the seed's range, so a seed peer that meets one fails on an unknown type rather
//! than misreading it as one of its own.

/// The type of a message, as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// Seed: part of a file, with that part's md5.
    FileChunk = 0x0001,
    /// Seed: a status code (replies and keep-alives).
    Status = 0x0002,
    /// Seed: the file is complete; carries the whole file's md5.
    Finished = 0x0003,
    /// Seed: the sender gives up on a file; the receiver discards what it has of it.
    AbortFile = 0x0004,
    /// Seed: delete a file.
    DeleteFile = 0x0005,
    /// Seed: ask the server to send a file.
    RequestUpdate = 0x0006,
    /// ferry: the first message on each of a client's two connections; pairs them by client id.
    Hello = 0x0101,
    /// ferry: the server's META-DATA file, sent on connect.
    MetaData = 0x0102,
}

impl MessageType {
    pub const ALL: [MessageType; 8] = [
        MessageType::FileChunk,
        MessageType::Status,
        MessageType::Finished,
        MessageType::AbortFile,
        MessageType::DeleteFile,
        MessageType::RequestUpdate,
        MessageType::Hello,
        MessageType::MetaData,
    ];

    pub fn from_u16(v: u16) -> Option<MessageType> {
        Self::ALL.into_iter().find(|t| *t as u16 == v)
    }

    /// The seed's name for the type (ferry's own for the extensions), for error messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::FileChunk => "File Chunk",
            MessageType::Status => "Status Message",
            MessageType::Finished => "Finished / Close File",
            MessageType::AbortFile => "Abort File",
            MessageType::DeleteFile => "Delete File",
            MessageType::RequestUpdate => "Request File Update",
            MessageType::Hello => "Hello",
            MessageType::MetaData => "META-DATA",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_seeds_and_extensions_do_not_collide() {
        let nums: Vec<u16> = MessageType::ALL.iter().map(|t| *t as u16).collect();
        assert_eq!(nums, [0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0101, 0x0102]);
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_u16(t as u16), Some(t));
        }
        for v in [0x0000, 0x0007, 0x0100, 0x0103, 0xffff, 0x0201] {
            assert_eq!(MessageType::from_u16(v), None, "0x{v:04x}");
        }
    }
}
