//! ERROR frame payloads: `<code> <message>`.
//!
//! The code is a fixed token a client can act on (retry, restart, give up);
//! the message is for people.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bytes that are not a valid frame: unknown type, malformed payload.
    BadFrame,
    /// A frame larger than the limit.
    TooLarge,
    /// The connection ended in the middle of a frame.
    Truncated,
    /// An INFO line that is not a known command, or a frame out of place.
    BadCommand,
    /// A file name that is invalid or escapes the root.
    BadName,
    NotFound,
    /// The file changed since the offset the client resumes from.
    Changed,
    /// An offset that does not match the transfer's state.
    BadOffset,
    /// Size or BLAKE3 of an upload did not match; nothing was stored.
    VerifyFailed,
    /// A limit was reached (connections, file size); try later.
    Busy,
    /// Nothing received for too long.
    Timeout,
    /// A server-side I/O failure; retrying may succeed.
    Io,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad-frame",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Truncated => "truncated",
            ErrorCode::BadCommand => "bad-command",
            ErrorCode::BadName => "bad-name",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Changed => "changed",
            ErrorCode::BadOffset => "bad-offset",
            ErrorCode::VerifyFailed => "verify-failed",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        const ALL: [ErrorCode; 13] = [
            ErrorCode::BadFrame,
            ErrorCode::TooLarge,
            ErrorCode::Truncated,
            ErrorCode::BadCommand,
            ErrorCode::BadName,
            ErrorCode::NotFound,
            ErrorCode::Changed,
            ErrorCode::BadOffset,
            ErrorCode::VerifyFailed,
            ErrorCode::Busy,
            ErrorCode::Timeout,
            ErrorCode::Io,
            ErrorCode::Internal,
        ];
        ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a client should try the same request again later.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Busy | ErrorCode::Timeout | ErrorCode::Io | ErrorCode::Internal)
    }

    /// Formats an ERROR payload.
    pub fn message(self, text: impl fmt::Display) -> String {
        format!("{} {}", self.as_str(), text)
    }
}

/// Splits an ERROR payload into its code (if known) and message.
pub fn split_error(payload: &str) -> (Option<ErrorCode>, &str) {
    match payload.split_once(' ') {
        Some((code, rest)) => match ErrorCode::parse(code) {
            Some(code) => (Some(code), rest),
            None => (None, payload),
        },
        None => (ErrorCode::parse(payload), payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let payload = ErrorCode::NotFound.message("no such file: a");
        assert_eq!(payload, "not-found no such file: a");
        assert_eq!(split_error(&payload), (Some(ErrorCode::NotFound), "no such file: a"));
        assert_eq!(split_error("weird thing"), (None, "weird thing"));
    }
}
