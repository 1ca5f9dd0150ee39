//! A transfer session's serializable state: everything needed to continue
//! it in a fresh session, on the same socket, possibly in a new executable.
//!
//! Compatibility rule: a release must decode the states of the release
//! before it. Add fields with `#[serde(default)]`; never change a field's
//! meaning; bump [`STATE_FORMAT`] only for a change old code cannot read.

use std::collections::BTreeMap;

use ferry_files::HashCheckpoint;
use serde::{Deserialize, Serialize};

use crate::backup::held::{Awaiting, Held};

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
    /// A PUT is stored; its `STORED` waits for backup nodes to confirm.
    #[serde(rename = "put-confirm")]
    PutConfirm(ConfirmState),
    /// A backup node sending its inventory after `BACKUP`.
    #[serde(rename = "backup-register")]
    BackupRegister(RegisterState),
    /// A backup node's feed.
    Backup(FeedState),
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
    /// The file's BLAKE3 (hex) if it was known when the GET paused, so
    /// that the process continuing it does not hash the file again (the
    /// digest cache stays behind in a live upgrade). Trusted only for
    /// `etag`, which the resumed GET checks first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
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

/// A stored upload whose `STORED` is held until the backup nodes that were
/// in sync hold the file, or until the deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmState {
    pub name: String,
    pub blake3: String,
    /// The `STORED` line to send.
    pub stored: String,
    /// Node ids still waited for.
    pub nodes: Vec<String>,
    /// Wall clock, so the wait keeps its bound across a live upgrade.
    pub deadline_unix_ms: u64,
}

/// A backup node's inventory, partly received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterState {
    pub node: String,
    /// Inventory lines announced by `BACKUP ... files=N`.
    pub expected: u64,
    pub held: BTreeMap<String, Held>,
}

/// A backup node's feed. What was queued for the node and not yet written
/// is not here: the node drops unfinished transfers when it sees
/// `PAUSED`, and the resumed feed compares the whole store again, which
/// sends anything missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedState {
    pub node: String,
    pub since_unix_ms: u64,
    /// What the node holds, confirmed.
    pub held: BTreeMap<String, Held>,
    /// Commits and deletes sent and not yet confirmed (the confirmations
    /// may reach the resumed session).
    #[serde(default)]
    pub awaiting: Vec<Awaiting>,
    #[serde(default)]
    pub files_mirrored: u64,
    #[serde(default)]
    pub bytes_mirrored: u64,
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

    #[test]
    fn a_get_carries_its_digest_only_when_known() {
        let Phase::Get(mut get) = samples().swap_remove(1).phase else { panic!("sample 1 is a GET") };
        assert!(!serde_json::to_string(&get).unwrap().contains("blake3"), "unchanged when unknown");
        get.blake3 = Some(blake3::hash(b"x").to_hex().to_string());
        let back: GetState = serde_json::from_str(&serde_json::to_string(&get).unwrap()).unwrap();
        assert_eq!(back, get);
    }

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
                blake3: None,
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

    fn backup_samples() -> Vec<SessionState> {
        let digest = blake3::hash(b"abc").to_hex().to_string();
        let held: BTreeMap<String, Held> = [
            (
                "a.txt".to_string(),
                Held { size: 3, blake3: digest.clone(), etag: Some("3-1843f9a2b5c3d000-1a2b".into()) },
            ),
            ("dir/b c".to_string(), Held { size: 3, blake3: digest.clone(), etag: None }),
        ]
        .into();
        vec![
            SessionState::new(Phase::PutConfirm(ConfirmState {
                name: "up/new.bin".into(),
                blake3: digest.clone(),
                stored: format!("STORED size=3 etag=3-1843f9a2b5c3d000-1a2c blake3={digest}"),
                nodes: vec!["0123456789abcdef0123456789abcdef".into()],
                deadline_unix_ms: 1_750_000_000_000,
            })),
            SessionState::new(Phase::BackupRegister(RegisterState {
                node: "0123456789abcdef0123456789abcdef".into(),
                expected: 5,
                held: held.clone(),
            })),
            SessionState::new(Phase::Backup(FeedState {
                node: "0123456789abcdef0123456789abcdef".into(),
                since_unix_ms: 1_750_000_000_000,
                held,
                awaiting: vec![
                    Awaiting {
                        transfer: 77,
                        name: "up/new.bin".into(),
                        file: Some(Held { size: 3, blake3: digest, etag: Some("3-1843f9a2b5c3d000-1a2c".into()) }),
                    },
                    Awaiting { transfer: 78, name: "old.bin".into(), file: None },
                ],
                files_mirrored: 12,
                bytes_mirrored: 3 << 30,
            })),
        ]
    }

    /// The backup phases (added after the first release of format 1) must
    /// keep decoding too.
    #[test]
    fn golden_backup_states_still_decode() {
        let text = std::fs::read_to_string(format!("{GOLDEN_DIR}/session-state-v1-backup.json")).unwrap();
        let states: Vec<SessionState> = serde_json::from_str(&text).unwrap();
        assert_eq!(states, backup_samples());
        let Phase::Backup(feed) = &states[2].phase else { panic!("not a feed") };
        assert_eq!(feed.held.len(), 2);
        assert_eq!(feed.awaiting[1].file, None);
    }

    #[test]
    fn states_round_trip() {
        for state in samples().into_iter().chain(backup_samples()) {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(serde_json::from_str::<SessionState>(&json).unwrap(), state);
        }
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

    /// Writes the golden backup states:
    /// `cargo test -p ferry-transfer -- --ignored write_backup_golden`.
    #[test]
    #[ignore]
    fn write_backup_golden() {
        let json = serde_json::to_string_pretty(&backup_samples()).unwrap();
        std::fs::write(format!("{GOLDEN_DIR}/session-state-v{STATE_FORMAT}-backup.json"), json + "\n").unwrap();
    }
}
