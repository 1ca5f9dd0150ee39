//! ferry's kv service: a drop-in memcached (text and meta protocol) whose
//! values survive restarts and crashes, in an append-only log (Bitcask).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod commands;
mod polled_when_woken;
pub mod protocol;
mod service;
mod session;
pub mod stats;
pub mod store;
pub mod workers;

pub use service::KvService;
pub use session::{KvState, STATE_FORMAT};
