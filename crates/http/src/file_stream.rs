//! A large file (or a range of it) as a streamed response body.
//!
//! Pieces are read ([`read_piece`]: no zeroing first) on the blocking pool,
//! one piece ahead of the socket: the first is [`FIRST_PIECE`] so a response
//! starts quickly, each next one twice as large up to [`MAX_PIECE`]. A
//! download therefore holds at most two pieces, and no blocking thread while
//! the client is slow to read. Pieces over 64 KiB are reserved from the
//! server's [`PieceBudget`], or read 64 KiB at a time when it is spent.
//!
//! After each piece the open file is checked against the etag it had when
//! opened; if it was modified in place, the stream ends with an error and
//! the client sees a truncated response (hyper closes the connection short
//! of `Content-Length`), never a body mixing two versions. A file replaced
//! by rename is unaffected: the open descriptor keeps the old version.
//! (The etag is metadata: a same-size rewrite within one tick of the
//! filesystem's timestamp clock is invisible to it, as to any such etag.)

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use ferry_files::Etag;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::file_body::{ensure_unchanged, read_piece_into};
use crate::piece_budget::{Piece, PieceBudget};

pub const FIRST_PIECE: usize = 256 << 10;
pub const MAX_PIECE: usize = 1 << 20;

pub struct FileStream {
    file: Arc<File>,
    etag: Etag,
    /// Next offset to schedule a read at.
    next: u64,
    /// Bytes handed to the client so far, as an offset.
    delivered: u64,
    /// One past the last byte to send.
    end: u64,
    /// Size of the next piece, if the budget allows.
    piece: usize,
    budget: Arc<PieceBudget>,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    failed: bool,
}

impl FileStream {
    /// Streams bytes `start..end` of `file`, which was opened as version
    /// `etag`, with pieces reserved from `budget`.
    pub fn new(file: File, etag: Etag, start: u64, end: u64, budget: Arc<PieceBudget>) -> FileStream {
        assert!(start <= end, "range start {start} past its end {end}");
        FileStream {
            file: Arc::new(file),
            etag,
            next: start,
            delivered: start,
            end,
            piece: FIRST_PIECE,
            budget,
            pending: None,
            failed: false,
        }
    }

    /// Starts reading the next piece on the blocking pool, if any is left.
    fn schedule(&mut self) {
        if self.pending.is_some() || self.next >= self.end {
            return;
        }
        let want = usize::try_from(self.end - self.next).map_or(self.piece, |left| left.min(self.piece));
        let (len, reservation) = self.budget.reserve(want);
        let (file, etag, offset) = (self.file.clone(), self.etag.clone(), self.next);
        // Allocated here, where it is freed once sent ([`whole_buffer`]).
        let buf = Vec::with_capacity(len);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            // One read at a time per stream (`pending`), so the file's
            // position is ours.
            let bytes = read_piece_into(&file, offset, len, buf)?;
            ensure_unchanged(&file, &etag)?;
            Ok(Bytes::from_owner(Piece::new(bytes, reservation)))
        }));
        self.next += len as u64;
        self.piece = (self.piece * 2).min(MAX_PIECE);
    }
}

impl Body for FileStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        this.schedule();
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        let piece = match joined {
            Ok(Ok(piece)) => piece,
            Ok(Err(e)) => {
                this.failed = true;
                tracing::warn!("http: stopping a download short: {e}");
                return Poll::Ready(Some(Err(e)));
            }
            Err(join) => {
                this.failed = true;
                return Poll::Ready(Some(Err(io::Error::other(join))));
            }
        };
        this.delivered += piece.len() as u64;
        debug_assert!(this.delivered <= this.end);
        // Read ahead while the socket takes this piece.
        this.schedule();
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.delivered >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.delivered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_body::is_file_changed;
    use crate::piece_budget::SMALL_PIECE;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn plenty() -> Arc<PieceBudget> {
        Arc::new(PieceBudget::new(64 << 20))
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn open(dir: &tempfile::TempDir, bytes: &[u8]) -> (std::path::PathBuf, File, Etag) {
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        // An old mtime, so a later write changes it even on a filesystem
        // with coarse timestamps.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let file = File::open(&path).unwrap();
        let etag = Etag::from_metadata(&file.metadata().unwrap());
        (path, file, etag)
    }

    #[tokio::test]
    async fn streams_ranges_in_growing_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(5 << 20);
        let (_p, file, etag) = open(&dir, &bytes);
        let mut body = FileStream::new(file, etag, 100, bytes.len() as u64 - 3, plenty());
        assert_eq!(body.size_hint().exact(), Some(bytes.len() as u64 - 103));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, &bytes[100..bytes.len() - 3]);
        assert_eq!(&sizes[..4], [FIRST_PIECE, 2 * FIRST_PIECE, MAX_PIECE, MAX_PIECE]);
        assert!(sizes.iter().all(|&s| s <= MAX_PIECE));
        assert!(body.is_end_stream());
    }

    /// Pieces held by slow clients spend the budget; the next downloads go
    /// on in small pieces rather than wait, and the budget refills as the
    /// pieces are dropped.
    #[tokio::test]
    async fn a_spent_budget_means_small_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(3 << 20);
        let (_p, file, etag) = open(&dir, &bytes);
        let budget = Arc::new(PieceBudget::new(1 << 20));
        let mut body = FileStream::new(file, etag, 0, bytes.len() as u64, budget.clone());
        let mut held = Vec::new();
        while let Some(frame) = body.frame().await {
            held.push(frame.unwrap().into_data().unwrap());
            assert!(budget.available() <= 1 << 20);
        }
        let sizes: Vec<usize> = held.iter().map(Bytes::len).collect();
        assert_eq!(&sizes[..3], [FIRST_PIECE, 2 * FIRST_PIECE, SMALL_PIECE], "1 MiB wanted, 256 KiB left");
        // Every larger piece came out of the budget: the last 256 KiB fit
        // what was left of it.
        let reserved: usize = sizes.iter().filter(|&&s| s > SMALL_PIECE).sum();
        assert_eq!(reserved, 1 << 20, "{sizes:?}");
        assert_eq!(budget.available(), 0);
        assert_eq!(held.concat(), bytes);
        drop(held);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[tokio::test]
    async fn empty_range_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_p, file, etag) = open(&dir, b"abc");
        let mut body = FileStream::new(file, etag, 3, 3, plenty());
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn in_place_change_stops_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(4 << 20);
        let (path, file, etag) = open(&dir, &bytes);
        let mut body = FileStream::new(file, etag, 0, bytes.len() as u64, plenty());
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, &bytes[..FIRST_PIECE]);
        // Modify in place while the read-ahead may already be done: the next
        // piece read after the write must fail, whichever piece that is.
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(b"changed").unwrap();
        w.sync_all().unwrap();
        let mut sent = first.len();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => sent += f.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("stream ended cleanly after an in-place change"),
            }
        };
        assert!(is_file_changed(&err), "{err}");
        assert!(sent < bytes.len());
        assert!(body.frame().await.is_none(), "nothing after the error");
    }
}
