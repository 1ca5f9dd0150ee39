//! [`Conn`]: one client socket plus the bytes ferry holds for it.
//!
//! Following mini-redis's `Connection`, the read buffer belongs to the
//! connection and not to a `BufReader`, and so does the queue of output not
//! yet written. Both can be taken out with [`Conn::into_parts`] at any safe
//! point, which is what lets a session pause, travel to a new process, and
//! resume without losing or repeating a byte.
//!
//! Output is either bytes in memory or a range of a file, which goes out
//! with `sendfile(2)` straight from the page cache: a file the server has
//! just written is sent on without being copied through user space again.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Smallest and largest room made in the read buffer for one read. The
/// size adapts: reads that fill their room double it (a fast stream is
/// read in large pieces and the buffer is regrown rarely, which matters
/// because complete frames split off the buffer keep its old allocation
/// alive and regrowing copies the partial frame), reads that use little of
/// it halve it (an idle connection holds little memory).
const READ_MIN: usize = 16 * 1024;
const READ_MAX: usize = 1024 * 1024;
/// Most slices handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// Most bytes of a queued file range read back into memory at once when a
/// connection is taken apart (the range is split into reads this large).
const FILE_READ_MAX: usize = 1024 * 1024;

/// One piece of queued output.
#[derive(Debug)]
enum Out {
    Bytes(Bytes),
    /// `len` bytes of `file` from `offset`, sent with `sendfile(2)`. The
    /// queuer promises that the range does not change until it is sent.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Bytes(b) => b.len(),
            Out::File { len, .. } => *len,
        }
    }

    /// Drops the first `n` bytes (`n` < `len()`).
    fn advance(&mut self, n: usize) {
        debug_assert!(n < self.len());
        match self {
            Out::Bytes(b) => b.advance(n),
            Out::File { offset, len, .. } => {
                *offset += n as u64;
                *len -= n;
            }
        }
    }

    /// Keeps the first `n` bytes (`n` < `len()`).
    fn truncate(&mut self, n: usize) {
        debug_assert!(n < self.len());
        match self {
            Out::Bytes(b) => b.truncate(n),
            Out::File { len, .. } => *len = n,
        }
    }
}

/// A client connection: socket, read buffer, output queue.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    read_buf: BytesMut,
    /// Room made for the next read (between READ_MIN and READ_MAX).
    read_room: usize,
    out: VecDeque<Out>,
    out_len: usize,
    /// Hard bound on buffered input; the protocol layer rejects oversized
    /// frames long before this, so hitting it means a bug or an attack.
    max_read_buffer: usize,
}

/// What [`Conn::pump`] did: possibly both read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoEvent {
    /// Bytes appended to the read buffer; `Some(0)` means the peer closed
    /// its side.
    pub read: Option<usize>,
    /// Bytes of queued output written.
    pub wrote: usize,
}

impl IoEvent {
    /// The peer closed its side (read returned 0).
    pub fn peer_closed(&self) -> bool {
        self.read == Some(0)
    }

    /// New input arrived.
    pub fn got_input(&self) -> bool {
        self.read.is_some_and(|n| n > 0)
    }
}

/// Where [`Conn::poll_pump`] puts what it reads.
enum ReadTo<'a> {
    /// Nothing: only write.
    Nothing,
    /// The read buffer, at most `most` bytes.
    Buffer { most: usize },
    /// The caller's slice, bypassing the read buffer.
    Slice(&'a mut [u8]),
}

/// A connection taken apart at a safe point.
#[derive(Debug)]
pub struct ConnParts {
    pub stream: TcpStream,
    /// Bytes received but not yet parsed.
    pub read_buf: Vec<u8>,
    /// Bytes queued but not yet written to the socket.
    pub pending_out: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream, max_read_buffer: usize) -> Conn {
        // Replies are small and must not wait for Nagle. The option stays
        // on the socket, so a connection rebuilt by `from_parts` (in a new
        // process after an upgrade) keeps it without another syscall.
        let _ = stream.set_nodelay(true);
        Conn::from_parts(stream, &[], &[], max_read_buffer)
    }

    /// Rebuilds a connection from the pieces [`Conn::into_parts`] returned,
    /// possibly in another process.
    pub fn from_parts(stream: TcpStream, read_buf: &[u8], pending_out: &[u8], max_read_buffer: usize) -> Conn {
        let mut conn = Conn {
            stream,
            read_buf: BytesMut::with_capacity(READ_MIN.max(read_buf.len())),
            read_room: READ_MIN,
            out: VecDeque::new(),
            out_len: 0,
            max_read_buffer: max_read_buffer.max(READ_MIN),
        };
        conn.read_buf.extend_from_slice(read_buf);
        if !pending_out.is_empty() {
            conn.queue(Bytes::copy_from_slice(pending_out));
        }
        conn
    }

    /// Takes the connection apart. Output still queued is returned, not
    /// written: the caller decides whether to flush it first. Queued file
    /// ranges are read back into memory here (a blocking read of at most
    /// what is queued); a session that queues them should call
    /// [`Conn::inline_files`] before it pauses, so a read error can fail the
    /// session. One that fails here ends the returned output before that
    /// range, so the peer sees a truncated stream rather than wrong bytes.
    pub fn into_parts(mut self) -> ConnParts {
        if let Err(e) = self.inline_files() {
            tracing::warn!("cannot read queued file output back for a handover: {e}");
            let sendable = self.out.iter().take_while(|o| matches!(o, Out::Bytes(_))).count();
            self.out.truncate(sendable);
        }
        let mut pending_out = Vec::with_capacity(self.out_len);
        for chunk in &self.out {
            if let Out::Bytes(b) = chunk {
                pending_out.extend_from_slice(b);
            }
        }
        ConnParts { stream: self.stream, read_buf: self.read_buf.to_vec(), pending_out }
    }

    /// Replaces every queued file range by its bytes, read now: what a
    /// session does before it pauses, since a handover carries bytes only.
    /// On an error nothing is replaced after the range that failed.
    pub fn inline_files(&mut self) -> io::Result<()> {
        for out in self.out.iter_mut() {
            if let Out::File { file, offset, len } = out {
                let mut bytes = BytesMut::with_capacity(*len);
                let mut at = *offset;
                while bytes.len() < *len {
                    let step = (*len - bytes.len()).min(FILE_READ_MAX);
                    let start = bytes.len();
                    bytes.resize(start + step, 0);
                    file.read_exact_at(&mut bytes[start..], at)?;
                    at += step as u64;
                }
                *out = Out::Bytes(bytes.freeze());
            }
        }
        Ok(())
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Unparsed input. Parsers `split_to` complete frames off its front.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Reads whatever the socket has into the read buffer. Returns the number
    /// of bytes read; 0 means the peer closed its side. Cancel-safe: if the
    /// future is dropped before completing, nothing was read.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        let room = self.reserve_read_room()?;
        let mut limited = (&mut self.read_buf).limit(room);
        let n = self.stream.read_buf(&mut limited).await?;
        self.adapt_read_room(n, room);
        Ok(n)
    }

    /// Waits until the socket can make progress and makes it: writes queued
    /// output if the socket takes it, and reads if `want_read` and input is
    /// there — both in one call when both are ready, so neither direction
    /// starves the other (a sender must see ACKs while it streams). One
    /// borrow of the connection serves both directions, so a session's
    /// `select!` can also wait on file I/O and the pause signal.
    /// Cancel-safe. `want_read` false with no output waits forever.
    ///
    /// Both directions go through tokio's `poll_*` methods rather than
    /// `ready()` + `try_*`: after a short read (or write) those clear the
    /// cached readiness, because on an edge-triggered epoll a short read
    /// proves the socket drained. A request–reply session otherwise pays,
    /// per request, one more `recvfrom` that can only return EAGAIN (the
    /// write of the reply finds the read readiness of the request still
    /// set). A peer close is not lost by this: tokio never clears the
    /// read-closed state, so the next poll reads the 0 that reports it.
    pub async fn pump(&mut self, want_read: bool) -> io::Result<IoEvent> {
        if !want_read && self.out_len == 0 {
            return std::future::pending().await;
        }
        let mut to = if want_read { ReadTo::Buffer { most: usize::MAX } } else { ReadTo::Nothing };
        std::future::poll_fn(|cx| self.poll_pump(cx, &mut to)).await
    }

    /// [`Conn::pump`] with reads of at most `most` bytes (at least 1): a
    /// reader that takes bulk payloads with [`Conn::pump_into`] reads only
    /// up to the end of the next frame header into the buffer, so the
    /// payload after it stays in the socket for `pump_into`.
    pub async fn pump_at_most(&mut self, most: usize) -> io::Result<IoEvent> {
        assert!(most > 0, "a read of at most 0 bytes");
        let mut to = ReadTo::Buffer { most };
        std::future::poll_fn(|cx| self.poll_pump(cx, &mut to)).await
    }

    /// [`Conn::pump`], reading straight into `dst` instead of the read
    /// buffer, which must be empty (its bytes come first). This saves the
    /// copy out of the read buffer for a payload whose destination is known
    /// before it arrives (a backup node's aligned write block).
    /// `IoEvent::read` counts the bytes put in `dst`. Cancel-safe.
    pub async fn pump_into(&mut self, dst: &mut [u8]) -> io::Result<IoEvent> {
        assert!(!dst.is_empty(), "a read into an empty slice");
        assert!(self.read_buf.is_empty(), "buffered input would be overtaken");
        let mut to = ReadTo::Slice(dst);
        std::future::poll_fn(|cx| self.poll_pump(cx, &mut to)).await
    }

    /// One step of [`Conn::pump`]: `Pending` (with this task registered
    /// for every direction it wants) until a write or a read happened.
    fn poll_pump(&mut self, cx: &mut Context<'_>, to: &mut ReadTo<'_>) -> Poll<io::Result<IoEvent>> {
        let mut event = IoEvent::default();
        if self.out_len > 0 {
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(n)) => event.wrote = n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        match to {
            ReadTo::Nothing => {}
            ReadTo::Buffer { most } => {
                let room = self.reserve_read_room()?;
                let mut limited = (&mut self.read_buf).limit(room.min(*most));
                // `read_buf`'s future is one `poll_read` into the buffer's
                // spare room: polled once and dropped, it has read either
                // nothing or `n` bytes that are in the buffer.
                let read = std::pin::pin!(self.stream.read_buf(&mut limited));
                match read.poll(cx) {
                    Poll::Ready(Ok(n)) => {
                        if *most >= room {
                            self.adapt_read_room(n, room);
                        }
                        event.read = Some(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            ReadTo::Slice(dst) => {
                let mut buf = ReadBuf::new(dst);
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => event.read = Some(buf.filled().len()),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
        }
        if event.read.is_some() || event.wrote > 0 { Poll::Ready(Ok(event)) } else { Poll::Pending }
    }

    /// One write of the front of the queued output (which must not be
    /// empty): the leading byte chunks in one vectored write, or a file
    /// range with `sendfile(2)`. Advances the queue by what was written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        debug_assert!(self.out_len > 0);
        let written = match self.out.front() {
            Some(Out::File { file, offset, len }) => poll_send_file(&self.stream, cx, file, *offset, *len),
            _ => match self.out.as_slices() {
                // One chunk (a request–reply session's usual case) goes out
                // with a plain `write`, without building the iovec array:
                // the kernel's single-buffer path is also shorter than
                // importing a one-element iovec.
                ([Out::Bytes(one)], []) | ([], [Out::Bytes(one)]) => Pin::new(&mut self.stream).poll_write(cx, one),
                _ => {
                    let (slices, count) = out_slices(&self.out);
                    Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count])
                }
            },
        };
        match ready!(written) {
            Ok(0) => Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"))),
            Ok(n) => {
                self.advance_out(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// One non-blocking write of queued output; `None` if the socket would
    /// block.
    fn try_write_queued(&mut self) -> io::Result<Option<usize>> {
        let written = match self.out.front() {
            Some(Out::File { file, offset, len }) => try_send_file(&self.stream, file, *offset, *len),
            _ => {
                let (slices, count) = out_slices(&self.out);
                self.stream.try_write_vectored(&slices[..count])
            }
        };
        match written {
            Ok(0) => Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
            Ok(n) => {
                self.advance_out(n);
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes room for one read and says how much may be read. When the
    /// buffer must grow it grows by several reads' worth at once.
    fn reserve_read_room(&mut self) -> io::Result<usize> {
        if self.read_buf.len() >= self.max_read_buffer {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "read buffer limit reached"));
        }
        let left = self.max_read_buffer - self.read_buf.len();
        let room = left.min(self.read_room);
        if self.read_buf.capacity() - self.read_buf.len() < room {
            self.read_buf.reserve(left.min(self.read_room * 4));
        }
        Ok(room)
    }

    fn adapt_read_room(&mut self, n: usize, room: usize) {
        if n == room {
            self.read_room = (self.read_room * 2).min(READ_MAX);
        } else if n < room / 8 {
            self.read_room = (self.read_room / 2).max(READ_MIN);
        }
    }

    /// Appends bytes to the output queue (not yet written).
    pub fn queue(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.out_len += bytes.len();
        self.out.push_back(Out::Bytes(bytes));
    }

    /// Appends `len` bytes of `file` from `offset` to the output queue, to
    /// be sent with `sendfile(2)` from the page cache without a copy in
    /// user space. The range must hold those bytes and keep them until
    /// they are written (the file is read when the socket takes them, or
    /// by [`Conn::inline_files`]); a range past the end of the file fails
    /// the write that reaches it.
    pub fn queue_file(&mut self, file: Arc<File>, offset: u64, len: usize) {
        if len == 0 {
            return;
        }
        self.out_len += len;
        self.out.push_back(Out::File { file, offset, len });
    }

    /// Takes back the last `n` queued bytes, which must not have been
    /// written (`n <= pending_out()`, and no write has started on them:
    /// the caller knows its frame boundaries). A session pausing for an
    /// upgrade uses this to keep whole unsent frames out of the handover.
    pub fn retract(&mut self, mut n: usize) {
        assert!(n <= self.out_len, "retracting more than is queued");
        self.out_len -= n;
        while n > 0 {
            let Some(back) = self.out.back_mut() else { break };
            let len = back.len();
            if len <= n {
                n -= len;
                self.out.pop_back();
            } else {
                back.truncate(len - n);
                n = 0;
            }
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.out_len
    }

    pub fn has_output(&self) -> bool {
        self.out_len > 0
    }

    /// One vectored write of queued output. Cancel-safe: a write either
    /// happened (and the queue advanced) or it did not.
    pub async fn write_some(&mut self) -> io::Result<usize> {
        if self.out_len == 0 {
            return Ok(0);
        }
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.out_len > 0 {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Writes as much queued output as the socket takes without waiting.
    /// Used when pausing: a notice should go out now if it can, and what
    /// cannot go out travels with the session state.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while self.out_len > 0 {
            if self.try_write_queued()?.is_none() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn advance_out(&mut self, mut n: usize) {
        debug_assert!(n <= self.out_len);
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else { break };
            let len = front.len();
            if len <= n {
                n -= len;
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Closes the write half after flushing, so the peer reads EOF.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }
}

/// The leading byte chunks of an output queue (at most [`MAX_IOVECS`], up
/// to the first file range) as slices for one vectored write, and how many
/// there are. On the stack: this runs once per reply on busy connections.
fn out_slices(out: &VecDeque<Out>) -> ([IoSlice<'_>; MAX_IOVECS], usize) {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(out.iter()) {
        let Out::Bytes(chunk) = chunk else { break };
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    (slices, count)
}

/// `sendfile(2)` of up to `len` bytes of `file` from `offset` to the
/// socket, once it is writable.
fn poll_send_file(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    file: &File,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match try_send_file(stream, file, offset, len) {
            // `try_io` cleared the readiness: the next poll registers.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

/// One non-blocking `sendfile(2)`; `WouldBlock` if the socket is full. A
/// range past the end of the file (sendfile returns 0) is an error, not a
/// write of nothing.
fn try_send_file(stream: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut at = i64::try_from(offset).map_err(|_| io::Error::other("file offset out of range"))?;
    let n = stream.try_io(Interest::WRITABLE, || {
        nix::sys::sendfile::sendfile64(stream.as_fd(), file.as_fd(), Some(&mut at), len).map_err(io::Error::from)
    })?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "queued file range is past the end of the file"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn parts_round_trip_keeps_unread_and_unwritten_bytes() {
        let (client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        let mut client = client;
        client.write_all(b"hello world").await.unwrap();
        while conn.read_buf().len() < 11 {
            conn.read_more().await.unwrap();
        }
        let _ = conn.read_buf().split_to(6);
        conn.queue(Bytes::from_static(b"pending"));
        let parts = conn.into_parts();
        assert_eq!(parts.read_buf, b"world");
        assert_eq!(parts.pending_out, b"pending");
        let mut conn = Conn::from_parts(parts.stream, &parts.read_buf, &parts.pending_out, 1 << 20);
        conn.flush().await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pending");
        assert_eq!(&conn.read_buf()[..], b"world");
    }

    #[tokio::test]
    async fn retract_takes_back_the_unwritten_tail() {
        let (client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        for part in [&b"ab"[..], b"cde", b"fgh"] {
            conn.queue(Bytes::copy_from_slice(part));
        }
        conn.retract(4);
        assert_eq!(conn.pending_out(), 4);
        conn.flush().await.unwrap();
        let mut client = client;
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
    }

    /// Data and FIN in one segment: the short read clears the read
    /// readiness, and the close must still be seen by the next pump.
    #[tokio::test]
    async fn pump_sees_a_close_that_came_with_the_last_bytes() {
        let (mut client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut closed = false;
        let deadline = std::time::Duration::from_secs(5);
        while !closed {
            let event = tokio::time::timeout(deadline, conn.pump(true)).await.unwrap().unwrap();
            closed = event.peer_closed();
        }
        assert_eq!(&conn.read_buf()[..], b"last words");
    }

    /// A reply written while the request's read readiness was cleared, then
    /// the next request: the pump must wake for it (readiness is not lost).
    #[tokio::test]
    async fn pump_reads_the_next_request_after_a_reply() {
        let (mut client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        let deadline = std::time::Duration::from_secs(5);
        for round in 0..100u32 {
            let request = format!("request {round}\n");
            client.write_all(request.as_bytes()).await.unwrap();
            while conn.read_buf().len() < request.len() {
                tokio::time::timeout(deadline, conn.pump(true)).await.unwrap().unwrap();
            }
            assert_eq!(&conn.read_buf().split()[..], request.as_bytes());
            conn.queue(Bytes::from(format!("reply {round}\n")));
            while conn.has_output() {
                tokio::time::timeout(deadline, conn.pump(true)).await.unwrap().unwrap();
            }
            let mut got = vec![0u8; format!("reply {round}\n").len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, format!("reply {round}\n").into_bytes());
        }
    }

    /// A header read into the buffer with `pump_at_most`, its payload
    /// straight into a slice with `pump_into`, then the next header.
    #[tokio::test]
    async fn pump_into_reads_a_payload_past_the_buffer() {
        let (mut client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = b"HEAD".to_vec();
        sent.extend_from_slice(&payload);
        sent.extend_from_slice(b"NEXT");
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let deadline = std::time::Duration::from_secs(5);
        while conn.read_buf().len() < 4 {
            let most = 4 - conn.read_buf().len();
            tokio::time::timeout(deadline, conn.pump_at_most(most)).await.unwrap().unwrap();
        }
        assert_eq!(&conn.read_buf().split()[..], b"HEAD");
        let mut got = vec![0u8; payload.len()];
        let mut filled = 0;
        while filled < got.len() {
            let event = tokio::time::timeout(deadline, conn.pump_into(&mut got[filled..])).await.unwrap().unwrap();
            let n = event.read.unwrap_or(0);
            assert!(n > 0, "closed early");
            filled += n;
        }
        assert!(got == payload, "payload differs");
        assert!(conn.read_buf().is_empty(), "the payload went through the buffer");
        while conn.read_buf().len() < 4 {
            tokio::time::timeout(deadline, conn.pump(true)).await.unwrap().unwrap();
        }
        assert_eq!(&conn.read_buf()[..], b"NEXT");
        drop(writer.await.unwrap());
    }

    fn file_with(contents: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, contents).unwrap();
        Arc::new(file)
    }

    /// Bytes, a file range larger than the socket takes at once, bytes: the
    /// peer reads them in order, and the range's own bytes only.
    #[tokio::test]
    async fn file_ranges_go_out_between_queued_bytes() {
        let (mut client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        let contents: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let file = file_with(&contents);
        conn.queue(Bytes::from_static(b"head"));
        conn.queue_file(file.clone(), 1000, 2_500_000);
        conn.queue(Bytes::from_static(b"tail"));
        assert_eq!(conn.pending_out(), 2_500_008);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 2_500_008];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), conn.flush()).await.unwrap().unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..2_500_004] == contents[1000..2_501_000], "file range differs");
        assert_eq!(&got[2_500_004..], b"tail");
    }

    #[tokio::test]
    async fn a_file_range_past_the_end_fails_the_write() {
        let (_client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        conn.queue_file(file_with(b"short"), 2, 10);
        let err = conn.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A handover carries file ranges as their bytes; retract trims them.
    #[tokio::test]
    async fn parts_read_queued_file_ranges_back() {
        let (_client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        let file = file_with(b"0123456789");
        conn.queue(Bytes::from_static(b"<"));
        conn.queue_file(file.clone(), 2, 6);
        conn.queue(Bytes::from_static(b">"));
        conn.queue_file(file, 0, 3);
        conn.retract(2);
        assert_eq!(conn.pending_out(), 9);
        assert_eq!(conn.into_parts().pending_out, b"<234567>0");
    }

    #[tokio::test]
    async fn queue_advances_across_chunks() {
        let (client, server) = pair().await;
        let mut conn = Conn::new(server, 1 << 20);
        for part in [&b"ab"[..], b"cde", b"f"] {
            conn.queue(Bytes::copy_from_slice(part));
        }
        assert_eq!(conn.pending_out(), 6);
        conn.flush().await.unwrap();
        assert!(!conn.has_output());
        let mut client = client;
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");
    }
}
