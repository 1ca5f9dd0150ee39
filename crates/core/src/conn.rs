//! [`Conn`]: one client socket plus the bytes ferry holds for it.
//!
//! Following mini-redis's `Connection`, the read buffer belongs to the
//! connection and not to a `BufReader`, and so does the queue of output not
//! yet written. Both can be taken out with [`Conn::into_parts`] at any safe
//! point, which is what lets a session pause, travel to a new process, and
//! resume without losing or repeating a byte.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// A client connection: socket, read buffer, output queue.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    read_buf: BytesMut,
    /// Room made for the next read (between READ_MIN and READ_MAX).
    read_room: usize,
    out: VecDeque<Bytes>,
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
    /// written: the caller decides whether to flush it first.
    pub fn into_parts(self) -> ConnParts {
        let mut pending_out = Vec::with_capacity(self.out_len);
        for chunk in &self.out {
            pending_out.extend_from_slice(chunk);
        }
        ConnParts { stream: self.stream, read_buf: self.read_buf.to_vec(), pending_out }
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
            // One chunk (a request–reply session's usual case) goes out with
            // a plain `write`, without building the iovec array: the
            // kernel's single-buffer path is also shorter than importing a
            // one-element iovec.
            let written = match self.out.as_slices() {
                ([one], []) | ([], [one]) => Pin::new(&mut self.stream).poll_write(cx, one),
                _ => {
                    let (slices, count) = out_slices(&self.out);
                    Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count])
                }
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")));
                }
                Poll::Ready(Ok(n)) => {
                    self.advance_out(n);
                    event.wrote = n;
                }
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

    /// One non-blocking vectored write of queued output; `None` if the
    /// socket would block.
    fn try_write_queued(&mut self) -> io::Result<Option<usize>> {
        let (slices, count) = out_slices(&self.out);
        match self.stream.try_write_vectored(&slices[..count]) {
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
        self.out.push_back(bytes);
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
            if back.len() <= n {
                n -= back.len();
                self.out.pop_back();
            } else {
                back.truncate(back.len() - n);
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
        let (slices, count) = out_slices(&self.out);
        let n = self.stream.write_vectored(&slices[..count]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes"));
        }
        self.advance_out(n);
        Ok(n)
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
            if front.len() <= n {
                n -= front.len();
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

/// The first [`MAX_IOVECS`] chunks of an output queue as slices for one
/// vectored write, and how many there are. On the stack: this runs once per
/// reply on busy connections.
fn out_slices(out: &VecDeque<Bytes>) -> ([IoSlice<'_>; MAX_IOVECS], usize) {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(out.iter()) {
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    (slices, count)
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
