//! What a parked sync connection carries to the next process of a live upgrade (or back, after a
//! rollback): its own progress only. The roster and the queues travel through `<data>/sync/` (see
//! [`super::hub`]); bytes received but not parsed, and replies not yet written, travel in the
//! connection's buffers.
//!
//! Compatibility rule (docs/services.md): a release decodes the states of the release before it. Add
//! fields with `#[serde(default)]`, never change a field's meaning, bump [`STATE_FORMAT`] only for a
//! change old code cannot read.

use serde::{Deserialize, Serialize};

use crate::{Md5Sum, UploadTrackerState};

/// Version of the state layout this build writes and the newest it reads.
pub const STATE_FORMAT: u32 = 1;

/// A parked update connection (the client's uploads, deletes and update requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    pub format: u32,
    /// Identifies this connection in the client table across the upgrade.
    pub conn_id: u64,
    /// `None` until the hello arrived.
    pub client: Option<String>,
    /// Uploads in progress, each with its staged file and its partial md5.
    #[serde(default)]
    pub uploads: Vec<UploadState>,
    /// Files whose upload the server dropped (lease timeout); their next chunk is refused.
    #[serde(default)]
    pub lost: Vec<String>,
    /// Bytes of a refused message still to discard.
    #[serde(default)]
    pub swallow: u64,
}

/// One upload in progress: `written` bytes are in `<data>/sync/uploads/<staged_id>.part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub name: String,
    pub staged_id: u64,
    pub written: u64,
    pub tracker: UploadTrackerState,
}

/// A parked push connection (the server's updates to the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushState {
    pub format: u32,
    pub conn_id: u64,
    pub client: Option<String>,
    /// The update being sent, if any.
    #[serde(default)]
    pub current: Option<PushItemState>,
    /// Replies the client still owes, oldest first.
    #[serde(default)]
    pub expect: Vec<Expect>,
    #[serde(default)]
    pub swallow: u64,
}

/// A file (or delete) being pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PushItemState {
    /// File Chunks of `name`, then Finished. The file is reopened by name and must still have `size`
    /// and `mtime_ns`.
    Write {
        name: String,
        size: u64,
        mtime_ns: i64,
        /// The whole file's md5, sent in Finished.
        md5: Md5Sum,
        /// Bytes the client accepted.
        sent: u64,
        /// Length of the chunk sent after `sent` and not answered yet.
        unanswered: Option<u32>,
        finished_sent: bool,
    },
    /// Delete File for `name`, sent.
    Delete { name: String },
}

/// A reply the push connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Chunk,
    Finished,
    Delete,
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UploadTracker;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

    fn samples() -> (Vec<UpdateState>, Vec<PushState>) {
        let mut tracker = UploadTracker::new(1 << 40);
        tracker.chunk(Md5Sum::of(b"first chunk"), b"first chunk");
        let update = vec![
            UpdateState { format: 1, conn_id: 7, client: None, uploads: vec![], lost: vec![], swallow: 0 },
            UpdateState {
                format: 1,
                conn_id: 8,
                client: Some("laptop".into()),
                uploads: vec![UploadState {
                    name: "dir/big.bin".into(),
                    staged_id: 0x0123_4567_89ab_cdef,
                    written: 11,
                    tracker: tracker.to_state(),
                }],
                lost: vec!["gone.txt".into()],
                swallow: 12,
            },
        ];
        let push = vec![
            PushState {
                format: 1,
                conn_id: 9,
                client: Some("laptop".into()),
                current: None,
                expect: vec![],
                swallow: 0,
            },
            PushState {
                format: 1,
                conn_id: 10,
                client: Some("desk".into()),
                current: Some(PushItemState::Write {
                    name: "a/b.txt".into(),
                    size: 3 << 20,
                    mtime_ns: 1_700_000_000_123_456_789,
                    md5: Md5Sum::of(b"whole"),
                    sent: 1 << 20,
                    unanswered: Some(1 << 20),
                    finished_sent: false,
                }),
                expect: vec![Expect::Chunk],
                swallow: 0,
            },
            PushState {
                format: 1,
                conn_id: 11,
                client: Some("desk".into()),
                current: Some(PushItemState::Delete { name: "old".into() }),
                expect: vec![Expect::Delete],
                swallow: 0,
            },
        ];
        (update, push)
    }

    /// Every committed state must still decode: a release continues the sessions of the one before.
    #[test]
    fn golden_states_still_decode() {
        let text = std::fs::read_to_string(format!("{GOLDEN}/sync-update-state-v1.json")).unwrap();
        let update: Vec<UpdateState> = serde_json::from_str(&text).unwrap();
        let text = std::fs::read_to_string(format!("{GOLDEN}/sync-push-state-v1.json")).unwrap();
        let push: Vec<PushState> = serde_json::from_str(&text).unwrap();
        assert_eq!((update, push), samples());
        let (update, _) = samples();
        assert!(UploadTracker::from_state(&update[1].uploads[0].tracker).is_some());
    }

    #[test]
    fn states_round_trip() {
        let (update, push) = samples();
        let json = serde_json::to_string(&update).unwrap();
        assert_eq!(serde_json::from_str::<Vec<UpdateState>>(&json).unwrap(), update);
        let json = serde_json::to_string(&push).unwrap();
        assert_eq!(serde_json::from_str::<Vec<PushState>>(&json).unwrap(), push);
    }

    /// Writes the golden states of the current format:
    /// `cargo test -p ferry-sync -- --ignored write_golden`. Only add files; never rewrite those of a
    /// released format.
    #[test]
    #[ignore]
    fn write_golden() {
        let (update, push) = samples();
        std::fs::create_dir_all(GOLDEN).unwrap();
        let json = serde_json::to_string_pretty(&update).unwrap();
        std::fs::write(format!("{GOLDEN}/sync-update-state-v{STATE_FORMAT}.json"), json + "\n").unwrap();
        let json = serde_json::to_string_pretty(&push).unwrap();
        std::fs::write(format!("{GOLDEN}/sync-push-state-v{STATE_FORMAT}.json"), json + "\n").unwrap();
    }
}
