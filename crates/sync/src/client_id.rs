//! Client ids: how the server tells clients apart.
//!
//! The seed keys its client list by address and pairs a client's two connections that way, which breaks
//! as soon as two clients share a host (or a NAT). ferry's hello carries a client-chosen id instead; the
//! same id names the holder of a lock lease and appears in conflicted-copy file names, so it is kept to
//! characters that are safe in a file name and readable in a log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Why a client id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("client id is empty")]
    Empty,
    #[error("client id is {0} bytes, limit is {MAX_CLIENT_ID_LEN}")]
    TooLong(usize),
    #[error("client id must start with a letter or digit")]
    BadStart,
    #[error("client id holds byte 0x{0:02x}; allowed are ASCII letters, digits, '.', '_' and '-'")]
    BadByte(u8),
}

/// A validated client id: 1 to [`MAX_CLIENT_ID_LEN`] ASCII letters, digits, `.`, `_` or `-`, starting
/// with a letter or digit (so it is never a dotfile or an option when it lands in a file name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    /// Checks `bytes` against the rules without allocating (the wire decoder's check step uses this).
    pub fn validate(bytes: &[u8]) -> Result<(), ClientIdError> {
        let Some(&first) = bytes.first() else { return Err(ClientIdError::Empty) };
        if bytes.len() > MAX_CLIENT_ID_LEN {
            return Err(ClientIdError::TooLong(bytes.len()));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(ClientIdError::BadStart);
        }
        match bytes.iter().find(|&&b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))) {
            Some(&b) => Err(ClientIdError::BadByte(b)),
            None => Ok(()),
        }
    }

    /// Validates `s`.
    pub fn parse(s: &str) -> Result<ClientId, ClientIdError> {
        Self::from_bytes(s.as_bytes())
    }

    /// Validates raw bytes (as they come off the wire).
    pub fn from_bytes(bytes: &[u8]) -> Result<ClientId, ClientIdError> {
        Self::validate(bytes)?;
        // Valid ids are ASCII, so the lossy conversion never replaces anything.
        Ok(ClientId(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientId {
    type Error = ClientIdError;

    fn try_from(s: String) -> Result<ClientId, ClientIdError> {
        Self::validate(s.as_bytes())?;
        Ok(ClientId(s))
    }
}

impl From<ClientId> for String {
    fn from(id: ClientId) -> String {
        id.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_like_ids() {
        for s in ["a", "alice-laptop", "host.example.org", "node_7", "0", &"x".repeat(64)] {
            assert_eq!(ClientId::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn rejects_each_rule() {
        assert_eq!(ClientId::parse(""), Err(ClientIdError::Empty));
        assert_eq!(ClientId::parse(&"x".repeat(65)), Err(ClientIdError::TooLong(65)));
        assert_eq!(ClientId::parse(".hidden"), Err(ClientIdError::BadStart));
        assert_eq!(ClientId::parse("-rf"), Err(ClientIdError::BadStart));
        assert_eq!(ClientId::parse("a/b"), Err(ClientIdError::BadByte(b'/')));
        assert_eq!(ClientId::parse("a b"), Err(ClientIdError::BadByte(b' ')));
        assert_eq!(ClientId::parse("a\0"), Err(ClientIdError::BadByte(0)));
        assert_eq!(ClientId::parse("é"), Err(ClientIdError::BadStart));
        assert_eq!(ClientId::parse("aé"), Err(ClientIdError::BadByte(0xc3)));
    }

    #[test]
    fn serde_is_a_validated_string() {
        let id: ClientId = serde_json::from_str(r#""alice""#).unwrap();
        assert_eq!(id.as_str(), "alice");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""alice""#);
        assert!(serde_json::from_str::<ClientId>(r#""a/b""#).is_err());
    }
}
