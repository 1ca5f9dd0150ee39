//! Where a PUT's bytes come from: a file (a rewindable producer: any
//! offset can be read again) or standard input (non-rewindable: bytes are
//! kept only until the server acknowledges them).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

pub(crate) enum Source {
    File { file: File, size: u64, arena: BytesMut },
    Stdin(StdinSource),
}

/// Bytes reserved at once for file reads: chunks are split off one
/// allocation, which is reclaimed once the chunks sent from it are dropped
/// (instead of a fresh, page-faulting allocation per chunk).
const ARENA_BYTES: usize = 4 << 20;

impl Source {
    pub(crate) fn file(file: File, size: u64) -> Source {
        Source::File { file, size, arena: BytesMut::new() }
    }
}

/// Standard input plus the bytes read from it that the server has not yet
/// acknowledged (at most one window), so a dropped connection can resume
/// from any acknowledged offset without rewinding the stream.
pub(crate) struct StdinSource {
    /// Bytes read from stdin so far.
    read: u64,
    /// Unacknowledged bytes, starting at offset `kept_from`.
    kept: VecDeque<Bytes>,
    kept_from: u64,
    eof: bool,
}

impl StdinSource {
    pub(crate) fn new() -> StdinSource {
        StdinSource { read: 0, kept: VecDeque::new(), kept_from: 0, eof: false }
    }
}

/// A resume asked for an offset this source cannot produce.
pub(crate) struct RewindError {
    pub needed: u64,
    pub at: u64,
    pub oldest: u64,
}

impl Source {
    /// The total size, once known (a file's size; stdin's at EOF).
    pub(crate) fn size(&self) -> Option<u64> {
        match self {
            Source::File { size, .. } => Some(*size),
            Source::Stdin(s) => s.eof.then_some(s.read),
        }
    }

    /// Checks that the next read may start at `offset`.
    pub(crate) fn can_start_at(&self, offset: u64) -> Result<(), RewindError> {
        match self {
            Source::File { .. } => Ok(()),
            Source::Stdin(s) if offset >= s.kept_from && offset <= s.read => Ok(()),
            Source::Stdin(s) => Err(RewindError { needed: offset, at: s.read, oldest: s.kept_from }),
        }
    }

    /// Up to `max` bytes at `offset`; empty at the end. Returns whether the
    /// bytes are new (never produced before), which is when they are hashed.
    pub(crate) fn read_at(&mut self, offset: u64, max: usize) -> io::Result<Bytes> {
        match self {
            Source::File { file, size, arena } => {
                let len = (*size - offset.min(*size)).min(max as u64) as usize;
                if arena.capacity() < len {
                    arena.reserve(ARENA_BYTES.max(len));
                }
                arena.resize(len, 0);
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut arena[filled..], offset + filled as u64)? {
                        0 => return Err(io::Error::other("file shrank while being uploaded")),
                        n => filled += n,
                    }
                }
                Ok(arena.split_to(len).freeze())
            }
            Source::Stdin(s) => {
                if offset < s.read {
                    // Replay from the kept bytes.
                    let mut at = s.kept_from;
                    for chunk in &s.kept {
                        let end = at + chunk.len() as u64;
                        if offset < end {
                            let from = (offset - at) as usize;
                            let to = chunk.len().min(from + max);
                            return Ok(chunk.slice(from..to));
                        }
                        at = end;
                    }
                    return Err(io::Error::other("replay offset not kept"));
                }
                if s.eof {
                    return Ok(Bytes::new());
                }
                let mut buf = vec![0u8; max];
                let n = loop {
                    match io::stdin().lock().read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    s.eof = true;
                    return Ok(Bytes::new());
                }
                buf.truncate(n);
                let bytes = Bytes::from(buf);
                s.kept.push_back(bytes.clone());
                s.read += n as u64;
                Ok(bytes)
            }
        }
    }

    /// Forgets bytes before `acked` (stdin keeps only what may be resent).
    pub(crate) fn release(&mut self, acked: u64) {
        if let Source::Stdin(s) = self {
            while let Some(front) = s.kept.front() {
                let end = s.kept_from + front.len() as u64;
                if end > acked {
                    break;
                }
                s.kept_from = end;
                s.kept.pop_front();
            }
        }
    }

    pub(crate) fn is_stdin(&self) -> bool {
        matches!(self, Source::Stdin(_))
    }
}
