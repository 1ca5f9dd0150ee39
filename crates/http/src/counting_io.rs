//! A connection's socket, counting the bytes that cross it: for the
//! gateway's byte counters and for spotting a connection where nothing moves.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::HttpMetrics;
use crate::send_file::FileSocket;

pub struct CountingIo<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
    /// Bytes moved either way on this connection; only ever grows.
    moved: Arc<AtomicU64>,
}

impl<S> CountingIo<S> {
    pub fn new(inner: S, metrics: Arc<HttpMetrics>, moved: Arc<AtomicU64>) -> CountingIo<S> {
        CountingIo { inner, metrics, moved }
    }

    fn count(&self, sent: usize, received: usize) {
        let n = (sent + received) as u64;
        if n > 0 {
            self.moved.fetch_add(n, Ordering::Relaxed);
            self.metrics.record_io(sent as u64, received as u64);
        }
    }
}

/// Bytes sent with `sendfile` are counted like written ones.
impl<S: FileSocket> FileSocket for CountingIo<S> {
    fn tcp(&self) -> Option<&TcpStream> {
        self.inner.tcp()
    }

    fn sent_past_writer(&self, n: u64) {
        self.inner.sent_past_writer(n);
        self.count(usize::try_from(n).unwrap_or(usize::MAX), 0);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let received = buf.filled().len() - before;
        self.count(0, received);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let sent = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.count(sent, 0);
        Poll::Ready(Ok(sent))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let sent = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.count(sent, 0);
        Poll::Ready(Ok(sent))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let metrics = Arc::new(HttpMetrics::default());
        let moved = Arc::new(AtomicU64::new(0));
        let mut io = CountingIo::new(a, metrics.clone(), moved.clone());
        io.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        let s = metrics.snapshot();
        assert_eq!((s.sent_bytes, s.received_bytes, moved.load(Ordering::Relaxed)), (5, 3, 8));
    }
}
