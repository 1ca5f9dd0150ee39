//! Status codes: the payload of a Status Message, exactly the seed's list.
//!
//! The seed numbers them as bit values, but a Status Message carries one code at a time; a value that is
//! not exactly one of these (a combination included) is refused as malformed.

/// A Status Message's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatusCode {
    /// The message it answers was accepted.
    Ok = 0x0001,
    /// The chunk's data did not match its md5: send it again.
    ResendChecksum = 0x0002,
    /// The chunk's size was refused (zero, or over the receiver's limit): send it again.
    ResendChunkSize = 0x0004,
    /// A third incorrect checksum in a row: the transfer of this file is aborted.
    AbortChecksums = 0x0008,
    /// A third invalid chunk in a row: the transfer of this file is aborted.
    AbortChunkSizes = 0x0010,
    /// Delete File for a file the receiver does not have.
    NoFileToDelete = 0x0020,
    /// Another client holds the file's lock: the update or delete is refused.
    FileLocked = 0x0040,
    /// The receiver cannot open the file (for writing, or at all): it gives up on that file.
    FileInUse = 0x0080,
    /// Sent on an idle connection to show the peer is alive; never answered.
    KeepAlive = 0x8000,
}

impl StatusCode {
    pub const ALL: [StatusCode; 9] = [
        StatusCode::Ok,
        StatusCode::ResendChecksum,
        StatusCode::ResendChunkSize,
        StatusCode::AbortChecksums,
        StatusCode::AbortChunkSizes,
        StatusCode::NoFileToDelete,
        StatusCode::FileLocked,
        StatusCode::FileInUse,
        StatusCode::KeepAlive,
    ];

    pub fn from_u16(v: u16) -> Option<StatusCode> {
        Self::ALL.into_iter().find(|c| *c as u16 == v)
    }

    /// The seed's wording, for logs and error messages.
    pub fn description(self) -> &'static str {
        match self {
            StatusCode::Ok => "Status OK",
            StatusCode::ResendChecksum => "Resend / Checksum Incorrect",
            StatusCode::ResendChunkSize => "Resend / Invalid Chunk Size",
            StatusCode::AbortChecksums => "Abort after 3 incorrect checksums",
            StatusCode::AbortChunkSizes => "Abort after 3 invalid chunks",
            StatusCode::NoFileToDelete => "No file to delete",
            StatusCode::FileLocked => "Abort - File Locked",
            StatusCode::FileInUse => "Abort - File In Use",
            StatusCode::KeepAlive => "Keep-alive message",
        }
    }

    /// Whether the code ends the transfer of the file it answers.
    pub fn is_abort(self) -> bool {
        matches!(
            self,
            StatusCode::AbortChecksums
                | StatusCode::AbortChunkSizes
                | StatusCode::NoFileToDelete
                | StatusCode::FileLocked
                | StatusCode::FileInUse
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_exactly_the_seeds() {
        let nums: Vec<u16> = StatusCode::ALL.iter().map(|c| *c as u16).collect();
        assert_eq!(nums, [0x0001, 0x0002, 0x0004, 0x0008, 0x0010, 0x0020, 0x0040, 0x0080, 0x8000]);
        for c in StatusCode::ALL {
            assert_eq!(StatusCode::from_u16(c as u16), Some(c));
        }
        for v in [0x0000, 0x0003, 0x0100, 0x4000, 0x8001, 0xffff] {
            assert_eq!(StatusCode::from_u16(v), None, "0x{v:04x}");
        }
    }

    #[test]
    fn aborts_are_the_giving_up_codes() {
        let aborts: Vec<StatusCode> = StatusCode::ALL.into_iter().filter(|c| c.is_abort()).collect();
        assert_eq!(
            aborts,
            [
                StatusCode::AbortChecksums,
                StatusCode::AbortChunkSizes,
                StatusCode::NoFileToDelete,
                StatusCode::FileLocked,
                StatusCode::FileInUse
            ]
        );
    }
}
