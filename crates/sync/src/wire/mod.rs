//! The sync protocol on the wire: the seed's six messages byte for byte, ferry's two extensions, and
//! the limits a receiver enforces. Specified in docs/sync-protocol.md.
//!
//! - [`message`]: [`Message`], its layouts, `check`/`parse`/`encode`.
//! - [`message_type`], [`status_code`]: the numbers.
//! - [`hello`]: ferry's hello, pairing a client's two connections by client id.
//! - [`metadata`]: ferry's META-DATA, the server's file list sent on connect.
//! - [`limits`]: the [`Limits`].
//! - [`error`]: [`DecodeError`], [`WireError`].

pub mod error;
pub mod hello;
pub mod limits;
pub mod message;
pub mod message_type;
pub mod metadata;
mod read;
pub mod status_code;

#[cfg(test)]
mod tests;

pub use error::{DecodeError, WireError};
pub use hello::{Hello, PROTOCOL_VERSION, Role};
pub use limits::{Limits, LimitsError};
pub use message::Message;
pub use message_type::MessageType;
pub use metadata::{EntryState, METADATA_FORMAT, MetaEntry, Metadata};
pub use status_code::StatusCode;
