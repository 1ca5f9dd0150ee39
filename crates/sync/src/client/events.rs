//! What the client reports as it works: a terminal shows progress and a line per file, a script or
//! test sees nothing it did not ask for.

use ferry_files::SafeName;

use crate::StatusCode;

/// Which way a file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// One thing the client did or saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// Both connections are up and the folder was reconciled with the server's META-DATA.
    Connected { server: String, client_id: String },
    /// The connection was lost (or could not be made); the client retries.
    Disconnected { reason: String },
    /// Bytes of a file sent or received so far.
    Progress { name: SafeName, direction: Direction, done: u64, total: u64 },
    /// A file reached the server.
    Uploaded { name: SafeName, size: u64 },
    /// A file from the server was written here.
    Received { name: SafeName, size: u64 },
    /// A file was deleted here because it was deleted on the server.
    DeletedHere { name: SafeName },
    /// A delete made here reached the server.
    DeletedThere { name: SafeName },
    /// A local edit was kept as `copy` before the server's version of `name` replaced it.
    ConflictedCopy { name: SafeName, copy: SafeName },
    /// The server refused an upload or a delete; the client tries again later.
    Refused { name: SafeName, status: StatusCode },
}

/// Receives the client's events (called from its tasks: keep it quick).
pub trait SyncObserver: Send + Sync {
    fn event(&self, event: SyncEvent);
}

/// An observer that drops everything.
pub struct Silent;

impl SyncObserver for Silent {
    fn event(&self, _event: SyncEvent) {}
}
