//! ferry's native transfer service: resumable GET and PUT of files over the
//! framed protocol of docs/protocol.md, backup nodes that mirror every
//! upload, the server's sessions and the client side used by `ferry get`,
//! `ferry put`, `ferry ls` and `ferry backup`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backup;
pub mod client;
pub mod command;
pub mod error_code;
pub mod escape;
pub mod frame;
pub mod server;
pub mod wire;

pub use error_code::ErrorCode;
pub use frame::{Frame, FrameError};
pub use server::TransferService;
