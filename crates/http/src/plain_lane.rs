//! The plain lane: a connection's first phase, in which ferry answers plain
//! cached `GET`s and `HEAD`s of `/files/...` itself, before hyper is involved.
//!
//! A cached small answer is mostly the kernel's work, but of what is left in
//! user space hyper's per-request work (reading into its buffer, parsing
//! into a `Request` with a header map, the service call, encoding the
//! response head) was about a third, and its allocations most of the rest.
//! For the one request that dominates a file server's traffic that is all
//! unnecessary: the answer's header block is built once per file version
//! ([`crate::file_head::FileHead::whole_block`]), the body is the cache's
//! bytes. So every connection starts here: requests are read into the
//! connection's own buffer and parsed with `httparse` (hyper's own parser);
//! a request [`parse_plain`] recognizes and [`plain_whole`] can answer gets
//! the bytes hyper would write for it, in one `writev`, or, for a body of
//! [`crate::send_file::SENDFILE_FROM_BYTES`] or more whose cache entry keeps
//! its file open, the head with `MSG_MORE` and the body by `sendfile` from
//! the page cache, without copying it ([`crate::send_file`]).
//!
//! Anything else — a request that is not plain, one whose answer is not a
//! whole 200 from memory, a head that has not fully arrived — ends the
//! lane: the connection goes to hyper for the rest of its life, with every
//! byte read and not answered put back in front ([`crate::rewind_io`]), so
//! hyper answers it as if it had read it itself. hyper keeps everything
//! hard: limits and their errors, ranges, conditionals, uploads, slow
//! clients.

use std::io::{self, IoSlice};
use std::pin::pin;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::date_line::extend_date_line;
use crate::get::{WholeAnswer, plain_whole};
use crate::plain_request::parse_plain;
use crate::send_file::{FileSocket, send_head_and_file};
use crate::state::HttpState;

/// What the connection's read buffer holds at most: one read's worth. A
/// plain request is far smaller; a larger head is hyper's.
pub const READ_BYTES: usize = 8192;

/// Room reserved for an answer's head: the header block (etag, dates and
/// length of fixed size, a content type from a fixed table: about 300
/// bytes), `connection: close` and the date.
const HEAD_ROOM: usize = 1024;

/// How the plain lane ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneEnd {
    /// The connection is done: the client closed it, it sat idle past the
    /// head timeout, or the server is draining and it had nothing in flight.
    Close,
    /// hyper takes the connection over, starting with what is in the buffer.
    ToHyper,
}

/// Answers plain requests on `io` until one is not, then returns
/// [`LaneEnd::ToHyper`] with `buf` holding everything read and not answered.
/// `head_timeout` bounds the wait for each next request, as hyper's
/// `header_read_timeout` does; zero means no bound.
pub async fn serve_plain<S>(
    io: &mut S,
    buf: &mut BytesMut,
    state: &HttpState,
    head_timeout: Duration,
    drain: &CancellationToken,
) -> io::Result<LaneEnd>
where
    S: AsyncRead + FileSocket,
{
    let max_head = state.limits().max_header_bytes.max(READ_BYTES);
    let mut out = Vec::with_capacity(HEAD_ROOM);
    let mut deadline = pin!(tokio::time::sleep(head_timeout));
    loop {
        if buf.is_empty() {
            if drain.is_cancelled() {
                return Ok(LaneEnd::Close);
            }
            buf.clear();
            buf.reserve(READ_BYTES);
            if !head_timeout.is_zero() {
                deadline.as_mut().reset(Instant::now() + head_timeout);
            }
            let read = tokio::select! {
                read = io.read_buf(buf) => read?,
                () = drain.cancelled() => return Ok(LaneEnd::Close),
                () = &mut deadline, if !head_timeout.is_zero() => return Ok(LaneEnd::Close),
            };
            if read == 0 {
                return Ok(LaneEnd::Close);
            }
        }
        let Some(req) = parse_plain(buf, max_head) else { return Ok(LaneEnd::ToHyper) };
        let (len, head) = (req.len, req.head);
        let Some(answer) = plain_whole(state, req.path, head).await else { return Ok(LaneEnd::ToHyper) };
        // A drain that began meanwhile ends the connection after this
        // answer, which says so, as hyper's would.
        let last = drain.is_cancelled();
        write_answer(io, &mut out, &answer, last).await?;
        state.metrics().record_response(StatusCode::OK);
        buf.advance(len);
        if last {
            return Ok(LaneEnd::Close);
        }
    }
}

/// Writes the head and body of `answer` as hyper would: the header block,
/// `connection: close` on the last answer, `date`, the blank line, the body
/// (sent from the entry's open file if it has one and `io` is a socket).
async fn write_answer<S>(io: &mut S, out: &mut Vec<u8>, answer: &WholeAnswer, last: bool) -> io::Result<()>
where
    S: FileSocket,
{
    out.clear();
    out.extend_from_slice(&answer.head.whole_block);
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
    extend_date_line(out);
    out.extend_from_slice(b"\r\n");
    let body = answer.body.as_deref().unwrap_or_default();
    if let Some(file) = &answer.file
        && let Some(tcp) = io.tcp()
    {
        let io = &*io;
        return send_head_and_file(tcp, out, file, body.len() as u64, |n| io.sent_past_writer(n)).await;
    }
    let mut parts = [IoSlice::new(out), IoSlice::new(body)];
    let mut left = &mut parts[..];
    while !left.is_empty() {
        let n = io.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &tempfile::TempDir) -> HttpState {
        crate::test_state::cached_state(dir)
    }

    async fn lane(state: &HttpState, input: &[u8]) -> (LaneEnd, BytesMut, Vec<u8>) {
        let (mut server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let end =
            serve_plain(&mut server, &mut buf, state, Duration::from_secs(5), &CancellationToken::new()).await.unwrap();
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (end, buf, out)
    }

    /// The lane answers plain requests itself, and hands over exactly the
    /// bytes of the first one it does not answer (and what follows).
    #[tokio::test]
    async fn plain_requests_are_answered_here_and_the_rest_handed_over_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        std::fs::write(s.store().root().join("a.txt"), b"hello").unwrap();
        let get = b"GET /files/a.txt HTTP/1.1\r\nhost: x\r\n\r\n";
        let head = b"HEAD /files/a.txt HTTP/1.1\r\nhost: x\r\n\r\n";
        let rest = b"GET /files/a.txt HTTP/1.1\r\nrange: bytes=0-1\r\n\r\nGET /files/a.txt HTTP/1.1\r\n\r\n";
        let input = [&get[..], get, head, rest].concat();
        let (end, buf, out) = lane(&s, &input).await;
        assert_eq!(end, LaneEnd::ToHyper);
        assert_eq!(&buf[..], rest, "the unanswered bytes, untouched");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
        assert_eq!(text.matches("\r\n\r\nhello").count(), 2, "two bodies, the HEAD has none: {text}");
        assert!(text.ends_with("\r\n\r\n"), "the HEAD's answer comes last");
        assert_eq!(s.metrics().snapshot().responses[1], 3);
        let cache = s.cache().unwrap().snapshot();
        assert_eq!((cache.misses, cache.hits), (1, 1), "loaded once, then hit");
    }

    #[tokio::test]
    async fn what_the_lane_does_not_answer_goes_to_hyper_with_nothing_sent() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        std::fs::write(s.store().root().join("big"), vec![1u8; 100 << 10]).unwrap();
        std::fs::write(s.store().root().join("empty"), b"").unwrap();
        for req in [
            &b"GET /files/missing HTTP/1.1\r\n\r\n"[..],
            b"GET /files/big HTTP/1.1\r\n\r\n",
            b"GET /files/empty HTTP/1.1\r\n\r\n",
            b"GET /files/%2e%2e/x HTTP/1.1\r\n\r\n",
            b"GET /files/a HTTP/1.1\r\nhost: x\r\n",
            b"PUT /files/a HTTP/1.1\r\ncontent-length: 1\r\n\r\nx",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            let (end, buf, out) = lane(&s, req).await;
            assert_eq!(end, LaneEnd::ToHyper, "{req:?}");
            assert_eq!(&buf[..], req);
            assert!(out.is_empty());
        }
        assert_eq!(s.metrics().snapshot().responses, [0; 5]);
    }

    /// A request already read when the drain begins is answered, with
    /// `connection: close` (hyper's words for a last answer), and the lane
    /// ends.
    #[tokio::test]
    async fn an_answer_during_a_drain_is_the_last_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        std::fs::write(s.store().root().join("a"), b"hello").unwrap();
        let (mut server, mut client) = tokio::io::duplex(1 << 16);
        let mut buf = BytesMut::from(&b"GET /files/a HTTP/1.1\r\n\r\nGET /files/a HTTP/1.1\r\n\r\n"[..]);
        let drain = CancellationToken::new();
        drain.cancel();
        let end = serve_plain(&mut server, &mut buf, &s, Duration::from_secs(5), &drain).await.unwrap();
        assert_eq!(end, LaneEnd::Close);
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\r\nconnection: close\r\ndate: "), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "one answer only: {out}");
    }

    #[tokio::test]
    async fn a_closed_or_draining_connection_ends_the_lane() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        let (end, buf, out) = lane(&s, b"").await;
        assert_eq!((end, buf.len(), out.len()), (LaneEnd::Close, 0, 0));
        let (mut server, _client) = tokio::io::duplex(1024);
        let drain = CancellationToken::new();
        drain.cancel();
        let mut buf = BytesMut::new();
        let end = serve_plain(&mut server, &mut buf, &s, Duration::ZERO, &drain).await.unwrap();
        assert_eq!(end, LaneEnd::Close);
        // Nothing arrives within the head timeout.
        let (mut server, _client) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let end =
            serve_plain(&mut server, &mut buf, &s, Duration::from_millis(50), &CancellationToken::new()).await.unwrap();
        assert_eq!(end, LaneEnd::Close);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
