//! A transfer session's serializable state: everything needed to continue
//! it in a fresh session, on the same socket, possibly in a new executable.
//!
//! Compatibility rule: a release must decode the states of the release
//! before it. Add fields with `#[serde(default)]`; never change a field's
//! meaning; bump [`STATE_FORMAT`] only for a change old code cannot read.

use ferry_files::HashCheckpoint;
use serde::{Deserialize, Serialize};

/// Version of the state layout this build writes and the newest it reads.
pub const STATE_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub format: u32,
    pub phase: Phase,
}

/// Where in its life the session paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    /// Between commands.
    Idle,
    Get(GetState),
    Put(PutState),
}

/// A GET in progress. The file is reopened by name on resume and must
/// still have `etag`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetState {
    pub name: String,
    pub etag: String,
    pub size: u64,
    /// Offset the client asked to start from.
    pub start_offset: u64,
    /// Bytes queued as DATA (the next DATA starts here).
    pub sent: u64,
    /// Highest offset the client acknowledged.
    pub acked: u64,
    /// Whether `DONE` was queued.
    pub done_sent: bool,
}

/// A PUT in progress. The partial upload file holds `written` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutState {
    pub name: String,
    pub upload_id: String,
    pub size: Option<u64>,
    pub start_offset: u64,
    /// Bytes written to the partial upload (and acknowledged).
    pub written: u64,
    /// BLAKE3 state over a prefix of the written bytes; the rest is
    /// re-read from the partial upload on resume.
    pub hash: HashCheckpoint,
}

impl SessionState {
    pub fn new(phase: Phase) -> SessionState {
        SessionState { format: STATE_FORMAT, phase }
    }
}
