//! The client side of the transfer protocol: what `ferry get`, `ferry put`,
//! `ferry ls` and `ferry backup` run. Every transfer retries with backoff
//! on a dropped connection and continues from the offset already
//! transferred.

pub mod backup;
mod connection;
mod error;
mod get;
mod list;
mod observer;
mod put;
mod rate;
mod resume_store;
mod retry;
mod sink;
mod source;

pub use connection::ClientConn;
pub use error::ClientError;
pub use get::{GetResult, GetTarget, get};
pub use list::{list, list_cache};
pub use observer::{Observer, Silent};
pub use put::{PutResult, PutSource, put};
pub use resume_store::ResumeStore;
pub use retry::Backoff;

use std::path::PathBuf;
use std::time::Duration;

/// Default server address when neither `--server` nor `FERRY_SERVER` is set.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7070";

/// Settings shared by every client command.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `HOST:PORT` of the transfer service.
    pub server: String,
    /// Failed attempts tolerated in a row (an attempt that moved bytes
    /// resets the count).
    pub retries: u32,
    /// Bytes per second, or unlimited.
    pub limit_rate: Option<u64>,
    /// Unacknowledged bytes a PUT keeps in flight.
    pub window_bytes: u64,
    /// Payload bytes per DATA frame a PUT sends.
    pub chunk_bytes: usize,
    /// Largest frame accepted from the server.
    pub max_frame_bytes: u32,
    /// Where resume records live (`None`: resume across runs is off).
    pub cache_dir: Option<PathBuf>,
    /// Give up on a connection that is silent for this long.
    pub io_timeout: Duration,
    pub backoff: Backoff,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            server: DEFAULT_SERVER.to_string(),
            retries: 10,
            limit_rate: None,
            window_bytes: 8 << 20,
            chunk_bytes: 256 << 10,
            max_frame_bytes: 16 << 20,
            cache_dir: ResumeStore::default_dir(),
            io_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}
