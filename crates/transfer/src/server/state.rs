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

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

    fn samples() -> Vec<SessionState> {
        let checkpoint = ferry_files::ResumableHash::new().checkpoint();
        vec![
            SessionState::new(Phase::Idle),
            SessionState::new(Phase::Get(GetState {
                name: "dir/big.bin".into(),
                etag: "40000000-1843f9a2b5c3d000-1a2b".into(),
                size: 1 << 30,
                start_offset: 4096,
                sent: 300 << 20,
                acked: 292 << 20,
                done_sent: false,
            })),
            SessionState::new(Phase::Put(PutState {
                name: "up/new.bin".into(),
                upload_id: "0123456789abcdef0123456789abcdef".into(),
                size: Some(1 << 30),
                start_offset: 0,
                written: 5 << 20,
                hash: checkpoint,
            })),
        ]
    }

    /// Every committed state file must still decode: a release must be able
    /// to continue the sessions of the release before it.
    #[test]
    fn golden_states_still_decode() {
        let text = std::fs::read_to_string(format!("{GOLDEN_DIR}/session-state-v1.json")).unwrap();
        let states: Vec<SessionState> = serde_json::from_str(&text).unwrap();
        assert_eq!(states.len(), 3);
        assert!(states.iter().all(|s| s.format == 1));
        assert_eq!(states[0].phase, Phase::Idle);
        let Phase::Get(get) = &states[1].phase else { panic!("not a GET") };
        assert_eq!((get.name.as_str(), get.sent, get.acked), ("dir/big.bin", 300 << 20, 292 << 20));
        let Phase::Put(put) = &states[2].phase else { panic!("not a PUT") };
        assert_eq!((put.written, put.size), (5 << 20, Some(1 << 30)));
        ferry_files::ResumableHash::from_checkpoint(&put.hash).unwrap();
    }

    /// Regenerates the golden states of the current format:
    /// `cargo test -p ferry-transfer -- --ignored write_golden`. Only add
    /// new files; never rewrite those of a released format.
    #[test]
    #[ignore]
    fn write_golden() {
        let json = serde_json::to_string_pretty(&samples()).unwrap();
        std::fs::write(format!("{GOLDEN_DIR}/session-state-v{STATE_FORMAT}.json"), json + "\n").unwrap();
    }
}
