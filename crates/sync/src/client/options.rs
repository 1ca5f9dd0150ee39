//! What `ferry sync` is told: where the server is, which folder to keep in sync, and its limits.

use std::path::PathBuf;
use std::time::Duration;

use crate::wire::limits::CHUNK_SIZE_CEILING;
use crate::{ClientId, Limits};

/// Default update port (the server's `--sync-port`).
pub const DEFAULT_PORT: u16 = 7071;
/// Default push port (the server's `--sync-push-port`).
pub const DEFAULT_PUSH_PORT: u16 = 7072;
/// Default chunk size: the server's default chunk limit, so the fewest round trips it accepts.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// A sync client's settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub host: String,
    pub port: u16,
    pub push_port: u16,
    /// The folder kept in sync; its metadata lives in `FOLDER/.ferry-sync/`.
    pub folder: PathBuf,
    /// Payload bytes per File Chunk this client sends.
    pub chunk_size: u32,
    /// The id to use instead of the one saved in the folder (or made up on first use).
    pub client_id: Option<ClientId>,
    /// Upload rate limit, bytes per second.
    pub limit_rate: Option<u64>,
    /// What the client accepts from the server (the server's chunks may be larger than ours).
    pub limits: Limits,
    /// Files uploaded at once, their chunks interleaved on the update connection.
    pub max_uploads: usize,
    /// How long the folder must be quiet after a change before it is looked at.
    pub debounce: Duration,
    /// A keep-alive goes out on a connection that sent nothing for this long.
    pub keepalive: Duration,
    /// A connection that receives nothing (keep-alives included) for this long is given up.
    pub idle_timeout: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl SyncOptions {
    /// Options for `folder` on `host` with every default.
    pub fn new(host: impl Into<String>, folder: impl Into<PathBuf>) -> SyncOptions {
        SyncOptions {
            host: host.into(),
            port: DEFAULT_PORT,
            push_port: DEFAULT_PUSH_PORT,
            folder: folder.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            client_id: None,
            limit_rate: None,
            limits: Limits { max_chunk_size: 16 << 20, ..Limits::default() },
            max_uploads: 16,
            debounce: Duration::from_millis(20),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Checks the settings, with the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_size == 0 || self.chunk_size > CHUNK_SIZE_CEILING {
            return Err(format!("--chunk-size must be between 1 and {CHUNK_SIZE_CEILING}"));
        }
        if self.max_uploads == 0 {
            return Err("at least one upload at a time".into());
        }
        if self.idle_timeout <= self.keepalive {
            return Err("the idle timeout must be longer than the keep-alive interval".into());
        }
        self.limits.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        let o = SyncOptions::new("localhost", "/tmp/x");
        o.validate().unwrap();
        assert!(SyncOptions { chunk_size: 0, ..o.clone() }.validate().is_err());
        assert!(SyncOptions { chunk_size: CHUNK_SIZE_CEILING + 1, ..o.clone() }.validate().is_err());
        assert!(SyncOptions { idle_timeout: o.keepalive, ..o }.validate().is_err());
    }
}
