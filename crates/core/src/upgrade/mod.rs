//! Live upgrade: moving listeners, every established connection and each
//! session's state to a new executable (docs/upgrade.md).
//!
//! The old process starts the new one with one end of a `SOCK_SEQPACKET`
//! pair ([`channel`]), waits for `INIT`, then streams the handover in
//! batches ([`batches`]): the listeners of the streamed services first,
//! then their sessions a few at a time while the others keep serving, and
//! last everything else (the all-at-once services' listeners and sessions,
//! the admin socket). Each batch is descriptors plus one [`handover`]
//! blob. The old process exits once the new one says `READY`. Anything
//! else — the new process exits, hangs, or refuses a batch — rolls back:
//! the old process resumes every session and listener, those it already
//! sent included, from the copies it keeps until `READY`.

pub mod batches;
pub mod channel;
pub mod clock;
pub mod gaps;
pub mod handover;
pub mod history;
mod new_side;
mod old_side;
pub mod sd_notify;

use serde::{Deserialize, Serialize};

use gaps::GapSummary;
pub use new_side::{REFUSE_BATCH_ENV, REFUSE_HANDOVER_ENV};

pub(crate) use new_side::adopt;
pub(crate) use old_side::hand_over;

/// What `ferry upgrade` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub old_pid: u32,
    pub old_version: String,
    pub new_pid: u32,
    pub new_version: String,
    /// The total handover time, µs: from the old process stopping its
    /// first accept loop to the new process having resumed every session
    /// (wall clock). Before streamed handovers this was every session's gap.
    pub pause_gap_us: u64,
    pub sessions_moved: usize,
    /// Each moved session's own pause gap: from its pause in the old process
    /// to its task's first run in the new one.
    #[serde(default)]
    pub session_gap: GapSummary,
    /// Batches the handover took (listeners first, the final group last).
    #[serde(default)]
    pub batches: u32,
    /// The gaps themselves, µs, sorted (at most [`gaps::MAX_REPORTED_GAPS`]
    /// evenly spread ones), so a benchmark can pool them over upgrades.
    #[serde(default)]
    pub session_gaps_us: Vec<u64>,
}

/// Messages on the upgrade channel: a tag byte and a payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// New → old: initialised, ready to take over; carries the version.
    Init(String),
    /// Old → new: a batch of descriptors is attached.
    Fds,
    /// Old → new: the blob follows in chunks, this many bytes in all.
    Blob(u64),
    Chunk(Vec<u8>),
    /// Old → new: everything was sent (of this batch).
    End,
    /// New → old: batch N (not the last) is resumed here; the old process
    /// pauses the next one only then, so batches never queue up in the
    /// channel while their sessions wait.
    Took(u32),
    /// New → old: serving; carries a JSON [`ReadyInfo`].
    Ready(Vec<u8>),
    /// New → old: cannot take over, and why.
    Refuse(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReadyInfo {
    pub pid: u32,
    pub version: String,
    pub pause_gap_us: u64,
    pub sessions: usize,
    #[serde(default)]
    pub session_gap: GapSummary,
    #[serde(default)]
    pub batches: u32,
    #[serde(default)]
    pub session_gaps_us: Vec<u64>,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body): (u8, &[u8]) = match self {
            Message::Init(v) => (b'I', v.as_bytes()),
            Message::Fds => (b'F', &[]),
            Message::Blob(len) => return [&[b'B'][..], &len.to_be_bytes()].concat(),
            Message::Chunk(b) => (b'C', b),
            Message::End => (b'E', &[]),
            Message::Took(batch) => return [&[b'T'][..], &batch.to_be_bytes()].concat(),
            Message::Ready(b) => (b'R', b),
            Message::Refuse(r) => (b'X', r.as_bytes()),
        };
        [&[tag][..], body].concat()
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        let (&tag, body) = bytes.split_first().ok_or("empty upgrade message")?;
        let text = || String::from_utf8(body.to_vec()).map_err(|_| "upgrade message is not UTF-8".to_string());
        Ok(match tag {
            b'I' => Message::Init(text()?),
            b'F' => Message::Fds,
            b'B' => {
                let len: [u8; 8] = body.try_into().map_err(|_| "bad BLOB message")?;
                Message::Blob(u64::from_be_bytes(len))
            }
            b'C' => Message::Chunk(body.to_vec()),
            b'E' => Message::End,
            b'T' => {
                let batch: [u8; 4] = body.try_into().map_err(|_| "bad TOOK message")?;
                Message::Took(u32::from_be_bytes(batch))
            }
            b'R' => Message::Ready(body.to_vec()),
            b'X' => Message::Refuse(text()?),
            other => return Err(format!("unknown upgrade message tag 0x{other:02x}")),
        })
    }
}

/// Microseconds since the epoch (the pause gap spans two processes, so it
/// is measured on the shared wall clock).
pub(crate) fn now_unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Init("0.1.0".into()),
            Message::Fds,
            Message::Blob(1 << 40),
            Message::Chunk(vec![1, 2, 3]),
            Message::End,
            Message::Took(7),
            Message::Ready(b"{}".to_vec()),
            Message::Refuse("no".into()),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        assert!(Message::decode(b"").is_err());
        assert!(Message::decode(b"Z").is_err());
        assert!(Message::decode(b"T\x00").is_err());
    }
}
