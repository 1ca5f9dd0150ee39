//! The receiving side of one file transfer: checks each chunk against its md5, decides the seed's
//! status reply, and digests the accepted chunks to compare with the md5 in Finished.
//!
//! The seed's rules: a chunk whose data does not match its md5 is answered "Resend / Checksum
//! Incorrect", a chunk of an invalid size "Resend / Invalid Chunk Size"; the third such failure in a row
//! aborts the transfer ("Abort after 3 incorrect checksums" / "Abort after 3 invalid chunks"). A good
//! chunk clears both counts, so three failures spread over a long file do not abort it. The server
//! drives one tracker per upload and the client one per pushed file; neither writes a byte that the
//! tracker has not accepted.

use md5::digest::common::hazmat::{SerializableState, SerializedState};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::twin_md5::chunk_md5_and_update;
use crate::{Md5Sum, StatusCode};

/// Failures in a row that abort a transfer (the seed's three).
pub const MAX_STRIKES: u8 = 3;

/// What to do with a chunk, and the status code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Keep the data (write it after what came before) and answer Status OK.
    Accepted,
    /// Drop the data; ask for the chunk again.
    ResendChecksum,
    /// Drop the data; ask for the chunk again.
    ResendChunkSize,
    /// Third bad checksum in a row: discard the whole transfer.
    AbortChecksums,
    /// Third invalid chunk in a row, or the file grew past the size limit: discard the whole transfer.
    AbortChunkSizes,
}

impl ChunkVerdict {
    /// The seed's status code for the reply.
    pub fn status(self) -> StatusCode {
        match self {
            ChunkVerdict::Accepted => StatusCode::Ok,
            ChunkVerdict::ResendChecksum => StatusCode::ResendChecksum,
            ChunkVerdict::ResendChunkSize => StatusCode::ResendChunkSize,
            ChunkVerdict::AbortChecksums => StatusCode::AbortChecksums,
            ChunkVerdict::AbortChunkSizes => StatusCode::AbortChunkSizes,
        }
    }

    pub fn is_abort(self) -> bool {
        matches!(self, ChunkVerdict::AbortChecksums | ChunkVerdict::AbortChunkSizes)
    }
}

/// The outcome of Finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishVerdict {
    /// The accepted chunks digest to the md5 Finished carries: commit the file.
    Complete { size: u64, md5: Md5Sum },
    /// They do not: discard the file. ferry answers Status "Abort after 3 incorrect checksums", the
    /// seed's only code for a file whose checksum is wrong and that will not be resent.
    Mismatch { claimed: Md5Sum, actual: Md5Sum },
    /// The transfer was already aborted (for this reason); nothing to commit.
    Aborted(ChunkVerdict),
}

impl FinishVerdict {
    pub fn status(self) -> StatusCode {
        match self {
            FinishVerdict::Complete { .. } => StatusCode::Ok,
            FinishVerdict::Mismatch { .. } => StatusCode::AbortChecksums,
            FinishVerdict::Aborted(verdict) => verdict.status(),
        }
    }
}

/// One transfer in progress.
#[derive(Debug, Clone)]
pub struct UploadTracker {
    file: Md5,
    bytes: u64,
    chunks: u64,
    bad_checksums: u8,
    bad_sizes: u8,
    max_file_size: u64,
    aborted: Option<ChunkVerdict>,
}

impl UploadTracker {
    /// A transfer of a file of at most `max_file_size` bytes.
    pub fn new(max_file_size: u64) -> UploadTracker {
        UploadTracker {
            file: Md5::new(),
            bytes: 0,
            chunks: 0,
            bad_checksums: 0,
            bad_sizes: 0,
            max_file_size,
            aborted: None,
        }
    }

    /// A File Chunk arrived whose header says `claimed` is the md5 of `data`. On
    /// [`ChunkVerdict::Accepted`] the data belongs to the file, right after the previous accepted chunk.
    pub fn chunk(&mut self, claimed: Md5Sum, data: &[u8]) -> ChunkVerdict {
        if let Some(verdict) = self.aborted {
            return verdict;
        }
        if data.is_empty() {
            // The decoder refuses empty chunks; one reaching here is still an invalid size.
            return self.invalid_chunk_size();
        }
        // The chunk's digest and the whole file's in one pass (crate::twin_md5), the latter into a copy
        // of the whole-file state that is kept only if the chunk is accepted.
        let mut next = self.file.clone();
        let actual = chunk_md5_and_update(&mut next, data);
        if actual != claimed {
            self.bad_checksums += 1;
            if self.bad_checksums >= MAX_STRIKES {
                return self.abort(ChunkVerdict::AbortChecksums);
            }
            return ChunkVerdict::ResendChecksum;
        }
        let bytes = self.bytes.saturating_add(data.len() as u64);
        if bytes > self.max_file_size {
            return self.abort(ChunkVerdict::AbortChunkSizes);
        }
        self.file = next;
        self.bytes = bytes;
        self.chunks += 1;
        self.bad_checksums = 0;
        self.bad_sizes = 0;
        ChunkVerdict::Accepted
    }

    /// A File Chunk for this file was refused for its size ([`crate::WireError::ChunkSize`]).
    pub fn invalid_chunk_size(&mut self) -> ChunkVerdict {
        if let Some(verdict) = self.aborted {
            return verdict;
        }
        self.bad_sizes += 1;
        if self.bad_sizes >= MAX_STRIKES {
            return self.abort(ChunkVerdict::AbortChunkSizes);
        }
        ChunkVerdict::ResendChunkSize
    }

    /// Finished arrived with `claimed`, the whole file's md5.
    pub fn finish(&self, claimed: Md5Sum) -> FinishVerdict {
        if let Some(verdict) = self.aborted {
            return FinishVerdict::Aborted(verdict);
        }
        let actual = Md5Sum::of_hasher(&self.file);
        if actual == claimed {
            FinishVerdict::Complete { size: self.bytes, md5: actual }
        } else {
            FinishVerdict::Mismatch { claimed, actual }
        }
    }

    fn abort(&mut self, verdict: ChunkVerdict) -> ChunkVerdict {
        debug_assert!(verdict.is_abort());
        self.aborted = Some(verdict);
        verdict
    }

    /// Bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks accepted so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.is_some()
    }

    /// Everything needed to carry on with this transfer elsewhere (a live upgrade hands it to the new
    /// process), the partial md5 included.
    pub fn to_state(&self) -> UploadTrackerState {
        UploadTrackerState {
            md5_state: SerializableState::serialize(&self.file).to_vec(),
            bytes: self.bytes,
            chunks: self.chunks,
            bad_checksums: self.bad_checksums,
            bad_sizes: self.bad_sizes,
            max_file_size: self.max_file_size,
            aborted: self.aborted.map(|v| v == ChunkVerdict::AbortChunkSizes),
        }
    }

    /// Rebuilds a tracker from [`UploadTracker::to_state`]; `None` if the state is not one it made.
    pub fn from_state(state: &UploadTrackerState) -> Option<UploadTracker> {
        let md5_state = SerializedState::<Md5>::try_from(state.md5_state.as_slice()).ok()?;
        let file = <Md5 as SerializableState>::deserialize(&md5_state).ok()?;
        if state.bad_checksums >= MAX_STRIKES || state.bad_sizes >= MAX_STRIKES || state.bytes > state.max_file_size {
            return None;
        }
        Some(UploadTracker {
            file,
            bytes: state.bytes,
            chunks: state.chunks,
            bad_checksums: state.bad_checksums,
            bad_sizes: state.bad_sizes,
            max_file_size: state.max_file_size,
            aborted: state
                .aborted
                .map(|sizes| if sizes { ChunkVerdict::AbortChunkSizes } else { ChunkVerdict::AbortChecksums }),
        })
    }
}

/// A serializable [`UploadTracker`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTrackerState {
    /// md-5's serialized hasher state.
    pub md5_state: Vec<u8>,
    pub bytes: u64,
    pub chunks: u64,
    pub bad_checksums: u8,
    pub bad_sizes: u8,
    pub max_file_size: u64,
    /// `Some(true)`: aborted for chunk sizes, `Some(false)`: for checksums.
    pub aborted: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    fn good(data: &[u8]) -> (Md5Sum, &[u8]) {
        (Md5Sum::of(data), data)
    }

    #[test]
    fn good_chunks_build_the_whole_file_md5() {
        let mut t = UploadTracker::new(MAX);
        for part in [&b"hello "[..], b"wor", b"ld"] {
            let (md5, data) = good(part);
            assert_eq!(t.chunk(md5, data), ChunkVerdict::Accepted);
        }
        assert_eq!((t.bytes(), t.chunks()), (11, 3));
        let whole = Md5Sum::of(b"hello world");
        assert_eq!(t.finish(whole), FinishVerdict::Complete { size: 11, md5: whole });
        assert_eq!(t.finish(whole).status(), StatusCode::Ok);
    }

    #[test]
    fn an_empty_file_is_finished_without_chunks() {
        let t = UploadTracker::new(MAX);
        assert_eq!(t.finish(Md5Sum::EMPTY), FinishVerdict::Complete { size: 0, md5: Md5Sum::EMPTY });
    }

    #[test]
    fn a_bad_checksum_asks_for_a_resend_and_keeps_nothing() {
        let mut t = UploadTracker::new(MAX);
        assert_eq!(t.chunk(Md5Sum::of(b"abc"), b"abx"), ChunkVerdict::ResendChecksum);
        assert_eq!(ChunkVerdict::ResendChecksum.status(), StatusCode::ResendChecksum);
        assert_eq!(t.bytes(), 0);
        let (md5, data) = good(b"abc");
        assert_eq!(t.chunk(md5, data), ChunkVerdict::Accepted);
        assert_eq!(t.finish(Md5Sum::of(b"abc")), FinishVerdict::Complete { size: 3, md5: Md5Sum::of(b"abc") });
    }

    #[test]
    fn three_bad_checksums_in_a_row_abort() {
        let mut t = UploadTracker::new(MAX);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"x"), ChunkVerdict::ResendChecksum);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"x"), ChunkVerdict::ResendChecksum);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"x"), ChunkVerdict::AbortChecksums);
        assert_eq!(ChunkVerdict::AbortChecksums.status(), StatusCode::AbortChecksums);
        assert!(t.is_aborted());
        // Once aborted, it stays aborted, whatever arrives.
        let (md5, data) = good(b"x");
        assert_eq!(t.chunk(md5, data), ChunkVerdict::AbortChecksums);
        assert_eq!(t.invalid_chunk_size(), ChunkVerdict::AbortChecksums);
        assert_eq!(t.finish(Md5Sum::of(b"")), FinishVerdict::Aborted(ChunkVerdict::AbortChecksums));
    }

    #[test]
    fn three_invalid_sizes_in_a_row_abort() {
        let mut t = UploadTracker::new(MAX);
        assert_eq!(t.invalid_chunk_size(), ChunkVerdict::ResendChunkSize);
        assert_eq!(t.chunk(Md5Sum::EMPTY, b""), ChunkVerdict::ResendChunkSize);
        assert_eq!(t.invalid_chunk_size(), ChunkVerdict::AbortChunkSizes);
        assert_eq!(t.finish(Md5Sum::EMPTY).status(), StatusCode::AbortChunkSizes);
        assert_eq!(ChunkVerdict::AbortChunkSizes.status(), StatusCode::AbortChunkSizes);
        assert_eq!(ChunkVerdict::ResendChunkSize.status(), StatusCode::ResendChunkSize);
    }

    #[test]
    fn a_good_chunk_clears_both_counts() {
        let mut t = UploadTracker::new(MAX);
        let (md5, data) = good(b"ok");
        for _ in 0..5 {
            assert_eq!(t.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::ResendChecksum);
            assert_eq!(t.invalid_chunk_size(), ChunkVerdict::ResendChunkSize);
            assert_eq!(t.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::ResendChecksum);
            assert_eq!(t.invalid_chunk_size(), ChunkVerdict::ResendChunkSize);
            assert_eq!(t.chunk(md5, data), ChunkVerdict::Accepted);
        }
        assert!(!t.is_aborted());
    }

    #[test]
    fn checksums_and_sizes_are_counted_apart() {
        let mut t = UploadTracker::new(MAX);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::ResendChecksum);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::ResendChecksum);
        assert_eq!(t.invalid_chunk_size(), ChunkVerdict::ResendChunkSize);
        assert_eq!(t.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::AbortChecksums);
    }

    #[test]
    fn finished_with_the_wrong_md5_is_a_mismatch() {
        let mut t = UploadTracker::new(MAX);
        let (md5, data) = good(b"abc");
        t.chunk(md5, data);
        let v = t.finish(Md5Sum::of(b"abd"));
        assert_eq!(v, FinishVerdict::Mismatch { claimed: Md5Sum::of(b"abd"), actual: Md5Sum::of(b"abc") });
        assert_eq!(v.status(), StatusCode::AbortChecksums);
    }

    #[test]
    fn the_file_size_is_bounded() {
        let mut t = UploadTracker::new(5);
        let (md5, data) = good(b"abc");
        assert_eq!(t.chunk(md5, data), ChunkVerdict::Accepted);
        assert_eq!(t.chunk(md5, data), ChunkVerdict::AbortChunkSizes);
        assert_eq!(t.bytes(), 3);
        let mut exact = UploadTracker::new(6);
        assert_eq!(exact.chunk(md5, data), ChunkVerdict::Accepted);
        assert_eq!(exact.chunk(md5, data), ChunkVerdict::Accepted);
    }

    #[test]
    fn large_chunks_after_a_small_one_digest_the_same() {
        let big: Vec<u8> = (0..256 * 1024 + 17).map(|i| (i * 7) as u8).collect();
        let mut t = UploadTracker::new(MAX);
        assert_eq!(t.chunk(Md5Sum::ZERO, &big), ChunkVerdict::ResendChecksum, "a bad large chunk is dropped");
        let (md5, data) = good(b"small first, ");
        assert_eq!(t.chunk(md5, data), ChunkVerdict::Accepted);
        assert_eq!(t.chunk(Md5Sum::of(&big), &big), ChunkVerdict::Accepted);
        let mut whole = b"small first, ".to_vec();
        whole.extend_from_slice(&big);
        let md5 = Md5Sum::of(&whole);
        assert_eq!(t.finish(md5), FinishVerdict::Complete { size: whole.len() as u64, md5 });
    }

    #[test]
    fn state_round_trips_mid_file() {
        let mut t = UploadTracker::new(MAX);
        let (md5, data) = good(b"first part, longer than nothing; ");
        t.chunk(md5, data);
        t.chunk(Md5Sum::ZERO, b"bad");
        let state = t.to_state();
        let json = serde_json::to_string(&state).unwrap();
        let back: UploadTrackerState = serde_json::from_str(&json).unwrap();
        let mut resumed = UploadTracker::from_state(&back).unwrap();
        assert_eq!(resumed.to_state(), state);
        // The strike count carried over: two more bad checksums abort.
        assert_eq!(resumed.chunk(Md5Sum::ZERO, b"bad"), ChunkVerdict::ResendChecksum);
        let (md5, data) = good(b"second");
        assert_eq!(resumed.chunk(md5, data), ChunkVerdict::Accepted);
        let whole = Md5Sum::of(b"first part, longer than nothing; second");
        assert_eq!(resumed.finish(whole), FinishVerdict::Complete { size: 39, md5: whole });
    }

    #[test]
    fn a_damaged_state_is_refused() {
        let mut state = UploadTracker::new(MAX).to_state();
        state.md5_state.pop();
        assert!(UploadTracker::from_state(&state).is_none());
        let mut state = UploadTracker::new(MAX).to_state();
        state.bad_sizes = MAX_STRIKES;
        assert!(UploadTracker::from_state(&state).is_none());
    }
}
