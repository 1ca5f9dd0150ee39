//! What a backup node reports as it runs (the CLI's status line, or
//! nothing).

use std::time::Duration;

use crate::client::ClientError;

pub trait BackupObserver: Send {
    /// Connecting to `server`; `attempt` counts failures in a row before it.
    fn connecting(&mut self, server: &str, attempt: u32);
    /// The server took the node's inventory of `files` files.
    fn registered(&mut self, server: &str, files: u64);
    /// A file was committed under `name`.
    fn stored(&mut self, name: &str, size: u64);
    /// `name` was deleted because the server no longer has it.
    fn deleted(&mut self, name: &str);
    /// Something a person should know: a pause, a file that failed.
    fn notice(&mut self, message: &str);
    /// The connection ended; the next attempt is in `retry_in`.
    fn disconnected(&mut self, error: &ClientError, retry_in: Duration);
}

/// Reports nothing.
pub struct SilentBackup;

impl BackupObserver for SilentBackup {
    fn connecting(&mut self, _server: &str, _attempt: u32) {}
    fn registered(&mut self, _server: &str, _files: u64) {}
    fn stored(&mut self, _name: &str, _size: u64) {}
    fn deleted(&mut self, _name: &str) {}
    fn notice(&mut self, _message: &str) {}
    fn disconnected(&mut self, _error: &ClientError, _retry_in: Duration) {}
}
