//! Hello (ferry extension, type `0x0101`): the first message on each of a client's two connections.
//!
//! The seed has a client open two connections (one to send updates, one to receive them) and leaves the
//! server to pair them by the client's address, which cannot tell apart two clients on one host. The
//! hello names the client and the connection's role, so the server pairs the update and push
//! connections that carry the same client id, whatever addresses they come from.
//!
//! ```text
//! offset size field
//! 0      2    message type  0x0101
//! 2      2    protocol version (PROTOCOL_VERSION)
//! 4      2    role: 0x0001 update (client -> server), 0x0002 push (server -> client)
//! 6      2    client id length (1..=64)
//! 8      n    client id (ASCII letters, digits, '.', '_', '-')
//! ```
//!
//! Later protocol versions keep these first eight bytes, so a server can always read a hello and answer
//! a version it does not speak with its own hello before closing.

use std::io::Cursor;

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, WireError};
use super::message_type::MessageType;
use super::read;
use crate::{ClientId, MAX_CLIENT_ID_LEN};

/// The sync protocol version this code speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of a hello before the client id.
pub const HELLO_HEADER_LEN: usize = 8;

/// Which of a client's two connections this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Role {
    /// The client sends its updates (chunks, deletes, update requests) on this one.
    Update = 0x0001,
    /// The server sends other clients' updates to this client on this one.
    Push = 0x0002,
}

impl Role {
    pub fn from_u16(v: u16) -> Option<Role> {
        match v {
            0x0001 => Some(Role::Update),
            0x0002 => Some(Role::Push),
            _ => None,
        }
    }
}

/// A client's introduction on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    pub client_id: ClientId,
}

impl Hello {
    /// A hello for this code's protocol version.
    pub fn new(role: Role, client_id: ClientId) -> Hello {
        Hello { version: PROTOCOL_VERSION, role, client_id }
    }

    /// Checks a hello whose type field (2 bytes) the cursor has just read; leaves the cursor at its end.
    pub(crate) fn check_body(src: &mut Cursor<&[u8]>) -> Result<(), DecodeError> {
        Self::read_body(src).map(|_| ())
    }

    /// Decodes a hello whose type field the cursor has just read.
    pub(crate) fn parse_body(src: &mut Cursor<&[u8]>) -> Result<Hello, DecodeError> {
        let (version, role, id) = Self::read_body(src)?;
        let frame_len = (HELLO_HEADER_LEN + id.len()) as u64;
        let client_id =
            ClientId::from_bytes(id).map_err(|e| DecodeError::skip(WireError::BadClientId(e), frame_len))?;
        Ok(Hello { version, role, client_id })
    }

    fn read_body<'a>(src: &mut Cursor<&'a [u8]>) -> Result<(u16, Role, &'a [u8]), DecodeError> {
        let version = read::u16_le(src)?;
        let role = read::u16_le(src)?;
        let id_len = read::u16_le(src)?;
        let frame_len = (HELLO_HEADER_LEN + usize::from(id_len)) as u64;
        let Some(role) = Role::from_u16(role) else {
            return Err(DecodeError::skip(WireError::UnknownRole(role), frame_len));
        };
        if usize::from(id_len) > MAX_CLIENT_ID_LEN {
            return Err(DecodeError::skip(
                WireError::BadClientId(crate::ClientIdError::TooLong(id_len.into())),
                frame_len,
            ));
        }
        let id = read::take(src, id_len.into())?;
        ClientId::validate(id).map_err(|e| DecodeError::skip(WireError::BadClientId(e), frame_len))?;
        Ok((version, role, id))
    }

    /// Appends the whole hello, type field included.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        let id = self.client_id.as_str().as_bytes();
        // ClientId's invariant: at most MAX_CLIENT_ID_LEN (64) bytes.
        assert!(id.len() <= MAX_CLIENT_ID_LEN);
        dst.reserve(HELLO_HEADER_LEN + id.len());
        dst.put_u16_le(MessageType::Hello as u16);
        dst.put_u16_le(self.version);
        dst.put_u16_le(self.role as u16);
        dst.put_u16_le(id.len() as u16);
        dst.put_slice(id);
    }

    pub(crate) fn encoded_len(&self) -> usize {
        HELLO_HEADER_LEN + self.client_id.as_str().len()
    }
}
