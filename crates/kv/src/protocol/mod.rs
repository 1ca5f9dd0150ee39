//! The memcached text protocol, classic and meta, as memcached 1.6.18 speaks it: requests parsed from bytes
//! ([`parse()`]), replies encoded to bytes ([`reply`], [`meta`]).
//!
//! The goal is that a client cannot tell ferry from memcached: every accepted and refused input, every
//! error message and every byte a request consumes follows memcached 1.6.18 as observed on the wire
//! (quirks included: see each module). The parser is a pure function of the buffered bytes, so a session
//! calls it in a loop over its read buffer and pipelining needs no state beyond [`Parse::Error`]'s
//! `swallow`.
//!
//! - [`mod@parse`]: framing, tokenizing, per-command checks; [`Parse`], [`Limits`].
//! - [`request`]: [`Request`], what a session executes.
//! - [`meta`]: meta flags and meta replies.
//! - [`reply`]: classic replies and error lines.
//! - [`exptime`]: memcached's expiration-time rule.
//! - [`base64`]: memcached's base64, for binary meta keys.

pub mod base64;
pub mod exptime;
pub mod meta;
mod number;
pub mod parse;
pub mod reply;
pub mod request;

#[cfg(test)]
mod tests;

pub use exptime::{Expiry, absolute};
pub use meta::{MetaCmd, MetaDebugInfo, MetaFlags, MetaItem, MetaStatus, quiet_hides};
pub use parse::{Effect, Limits, Parse, parse};
pub use request::{Keys, Request, StoreCmd};
