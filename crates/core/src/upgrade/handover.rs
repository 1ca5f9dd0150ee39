//! The handover blob: everything the new process needs besides the file
//! descriptors themselves.
//!
//! Layout: `json_len:u32 BE | JSON header | raw bytes`. The JSON header
//! names every listener and session by the index of its descriptor in the
//! order they were sent, holds each session's service state (the service's
//! own versioned serde struct, as JSON), and points into the raw area for
//! bytes that were read but not parsed and bytes queued but not written —
//! so those are carried verbatim without inflating the JSON.
//!
//! Since format 2 a handover is a stream of such blobs, one per batch
//! (docs/upgrade.md): each names its own descriptors from index 0, says
//! whether it is the last, and stamps each session with the moment it
//! paused. A format-1 blob is a handover of one batch (`last` defaults to
//! true), so a new release still takes over from the previous one.
//!
//! Compatibility: [`HANDOVER_FORMAT`] is the layout version; a new release
//! must decode the blobs of the previous one (golden blobs under
//! `tests/golden/` are decoded by a test). Add fields with
//! `#[serde(default)]`; a change old code cannot read bumps the format.

use serde::{Deserialize, Serialize};

use super::history::UpgradeRecord;

pub const HANDOVER_FORMAT: u32 = 2;
/// Largest handover accepted (sessions' buffers included).
pub const MAX_HANDOVER_BYTES: usize = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub format: u32,
    pub old_pid: u32,
    pub old_version: String,
    /// When the old process asked its sessions to pause (µs since epoch).
    pub pause_started_unix_us: u64,
    pub listeners: Vec<ListenerRecord>,
    pub sessions: Vec<SessionRecord>,
    /// Sent with the last batch only.
    #[serde(default)]
    pub history: Vec<UpgradeRecord>,
    /// Position in the stream, from 0 (format 2).
    #[serde(default)]
    pub batch: u32,
    /// Whether this batch ends the handover (format 1: the only one).
    #[serde(default = "only_batch")]
    pub last: bool,
    /// In batch 0: the services that will send sessions, so a build that
    /// lacks one refuses before any session has moved (format 2).
    #[serde(default)]
    pub session_services: Vec<String>,
}

fn only_batch() -> bool {
    true
}

/// A listening socket: TCP for a service, or the admin Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerRecord {
    /// Service name (`transfer`, …) or `admin`.
    pub name: String,
    pub addr: String,
    /// Index of its descriptor among those sent.
    pub fd: usize,
}

/// An established connection and its service's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub service: String,
    pub fd: usize,
    pub state: serde_json::Value,
    /// Unparsed input: `(offset, len)` in the raw area.
    pub read_buf: (usize, usize),
    /// Unwritten output: `(offset, len)` in the raw area.
    pub pending_out: (usize, usize),
    /// When the session paused, µs on `CLOCK_MONOTONIC` (format 2; 0:
    /// unknown).
    #[serde(default)]
    pub paused_mono_us: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoverError {
    #[error("handover blob is truncated")]
    Truncated,
    #[error("handover blob is too large ({0} bytes)")]
    TooLarge(usize),
    #[error("handover header is not valid: {0}")]
    Header(String),
    #[error("handover format {found} is newer than this build reads ({supported})")]
    Format { found: u32, supported: u32 },
    #[error("handover refers to bytes outside its raw area")]
    BadRange,
    #[error("handover refers to descriptor {index} but {count} were received")]
    BadDescriptor { index: usize, count: usize },
}

/// Builds a blob, collecting session bytes into the raw area.
#[derive(Default)]
pub struct HandoverBuilder {
    raw: Vec<u8>,
}

impl HandoverBuilder {
    /// Appends bytes to the raw area; returns their range.
    pub fn bytes(&mut self, b: &[u8]) -> (usize, usize) {
        let at = self.raw.len();
        self.raw.extend_from_slice(b);
        (at, b.len())
    }

    pub fn finish(self, header: &Handover) -> Result<Vec<u8>, HandoverError> {
        let json = serde_json::to_vec(header).map_err(|e| HandoverError::Header(e.to_string()))?;
        let total = 4 + json.len() + self.raw.len();
        if total > MAX_HANDOVER_BYTES {
            return Err(HandoverError::TooLarge(total));
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.raw);
        Ok(out)
    }
}

/// A decoded blob: the header plus its raw area.
#[derive(Debug)]
pub struct DecodedHandover {
    pub header: Handover,
    raw: Vec<u8>,
}

impl DecodedHandover {
    pub fn decode(blob: &[u8], descriptors: usize) -> Result<DecodedHandover, HandoverError> {
        if blob.len() > MAX_HANDOVER_BYTES {
            return Err(HandoverError::TooLarge(blob.len()));
        }
        let len_bytes: [u8; 4] = blob.get(..4).and_then(|b| b.try_into().ok()).ok_or(HandoverError::Truncated)?;
        let json_len = u32::from_be_bytes(len_bytes) as usize;
        let json = blob.get(4..4 + json_len).ok_or(HandoverError::Truncated)?;
        let header: Handover = serde_json::from_slice(json).map_err(|e| HandoverError::Header(e.to_string()))?;
        if header.format > HANDOVER_FORMAT {
            return Err(HandoverError::Format { found: header.format, supported: HANDOVER_FORMAT });
        }
        let raw = blob[4 + json_len..].to_vec();
        let decoded = DecodedHandover { header, raw };
        for l in &decoded.header.listeners {
            check_fd(l.fd, descriptors)?;
        }
        for s in &decoded.header.sessions {
            check_fd(s.fd, descriptors)?;
            decoded.slice(s.read_buf)?;
            decoded.slice(s.pending_out)?;
        }
        Ok(decoded)
    }

    pub fn slice(&self, (at, len): (usize, usize)) -> Result<&[u8], HandoverError> {
        self.raw.get(at..at.checked_add(len).ok_or(HandoverError::BadRange)?).ok_or(HandoverError::BadRange)
    }
}

fn check_fd(index: usize, count: usize) -> Result<(), HandoverError> {
    if index < count { Ok(()) } else { Err(HandoverError::BadDescriptor { index, count }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Vec<u8> {
        let mut b = HandoverBuilder::default();
        let read_buf = b.bytes(b"\x04\x00\x00");
        let pending_out = b.bytes(b"\x02\x00\x00\x00\x11PAUSED upgrading");
        let header = Handover {
            format: HANDOVER_FORMAT,
            old_pid: 4242,
            old_version: "0.1.0".into(),
            pause_started_unix_us: 1_790_000_000_000_000,
            listeners: vec![
                ListenerRecord { name: "transfer".into(), addr: "127.0.0.1:7070".into(), fd: 0 },
                ListenerRecord { name: "admin".into(), addr: "ferry-data/ferry.sock".into(), fd: 1 },
            ],
            sessions: vec![SessionRecord {
                service: "transfer".into(),
                fd: 2,
                state: serde_json::json!({"format": 1, "phase": {"phase": "idle"}}),
                read_buf,
                pending_out,
                paused_mono_us: 123_456_789,
            }],
            history: vec![],
            batch: 1,
            last: false,
            session_services: vec!["transfer".into()],
        };
        b.finish(&header).unwrap()
    }

    #[test]
    fn round_trips_with_raw_bytes() {
        let blob = sample();
        let d = DecodedHandover::decode(&blob, 3).unwrap();
        assert_eq!(d.header.sessions.len(), 1);
        assert_eq!(d.slice(d.header.sessions[0].read_buf).unwrap(), b"\x04\x00\x00");
        assert!(d.slice(d.header.sessions[0].pending_out).unwrap().ends_with(b"PAUSED upgrading"));
    }

    #[test]
    fn damaged_blobs_are_refused() {
        let blob = sample();
        assert_eq!(DecodedHandover::decode(&blob[..2], 3).unwrap_err(), HandoverError::Truncated);
        assert_eq!(DecodedHandover::decode(&blob[..40], 3).unwrap_err(), HandoverError::Truncated);
        assert!(matches!(DecodedHandover::decode(&blob, 2), Err(HandoverError::BadDescriptor { .. })));
        let cut = &blob[..blob.len() - 5];
        assert_eq!(DecodedHandover::decode(cut, 3).unwrap_err(), HandoverError::BadRange);
        let mut garbage = blob.clone();
        garbage[10] = b'!';
        assert!(matches!(DecodedHandover::decode(&garbage, 3), Err(HandoverError::Header(_))));
    }

    const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

    /// Every committed handover blob must still decode: a release must be
    /// able to take over from the release before it.
    #[test]
    fn golden_blobs_still_decode() {
        let v1 = std::fs::read(format!("{GOLDEN_DIR}/handover-v1.bin")).unwrap();
        let d = DecodedHandover::decode(&v1, 3).unwrap();
        assert_eq!(d.header.format, 1);
        assert_eq!(d.header.old_pid, 4242);
        assert_eq!(d.header.listeners[0].name, "transfer");
        assert_eq!(d.header.listeners[1].name, "admin");
        let s = &d.header.sessions[0];
        assert_eq!(s.service, "transfer");
        assert_eq!(s.fd, 2);
        assert_eq!(d.slice(s.read_buf).unwrap(), b"\x04\x00\x00");
        assert!(d.slice(s.pending_out).unwrap().ends_with(b"PAUSED upgrading"));
        // Format 1 had one blob per handover: it is the last batch.
        assert!(d.header.last);
        assert_eq!((d.header.batch, s.paused_mono_us), (0, 0));

        let v2 = std::fs::read(format!("{GOLDEN_DIR}/handover-v2.bin")).unwrap();
        let d = DecodedHandover::decode(&v2, 3).unwrap();
        assert_eq!(d.header.format, 2);
        assert_eq!((d.header.batch, d.header.last), (1, false));
        assert_eq!(d.header.session_services, vec!["transfer".to_string()]);
        let s = &d.header.sessions[0];
        assert_eq!((s.service.as_str(), s.fd, s.paused_mono_us), ("transfer", 2, 123_456_789));
        assert_eq!(d.slice(s.read_buf).unwrap(), b"\x04\x00\x00");
    }

    /// Regenerates the golden blob of the current format:
    /// `cargo test -p ferry-core -- --ignored write_golden`. Only add new
    /// files; never rewrite the blob of a released format.
    #[test]
    #[ignore]
    fn write_golden() {
        std::fs::write(format!("{GOLDEN_DIR}/handover-v{HANDOVER_FORMAT}.bin"), sample()).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused() {
        let mut b = HandoverBuilder::default();
        let _ = b.bytes(b"");
        let header = Handover {
            format: HANDOVER_FORMAT + 1,
            old_pid: 1,
            old_version: "9".into(),
            pause_started_unix_us: 0,
            listeners: vec![],
            sessions: vec![],
            history: vec![],
            batch: 0,
            last: true,
            session_services: vec![],
        };
        let blob = b.finish(&header).unwrap();
        assert!(matches!(DecodedHandover::decode(&blob, 0), Err(HandoverError::Format { .. })));
    }
}
