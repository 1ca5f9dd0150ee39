//! A cached file's answer sent by the kernel from the page cache: the head
//! with `send(MSG_MORE)`, the body with `sendfile(2)` from the descriptor
//! the cache entry keeps ([`ferry_files::cache::Loaded`]).
//!
//! The plain lane ([`crate::plain_lane`]) otherwise writes head and body in
//! one `writev`, which copies the body from the cache's memory into the
//! socket. From [`SENDFILE_FROM_BYTES`] up that copy is the largest part of
//! an answer's cost; `sendfile` hands the file's page-cache pages to the
//! socket instead, as nginx does (docs/BENCHMARKS.md has the figures).
//! `MSG_MORE` on the head holds it back until the body joins it, so the
//! answer leaves in as few segments as the `writev` made, although the
//! connection has `TCP_NODELAY`.
//!
//! What the body is: the bytes of the file's inode as they are at the
//! moment of sending. The lane sends this way only an entry the cache holds
//! for the version a `stat` taken after the request arrived still shows
//! (the same look as for the copy), so a file replaced since (a new inode:
//! ferry's PUT, any atomic writer) or written in place before that look (a
//! new mtime or size) is never sent from the old descriptor: its entry is
//! dropped and loaded again. A replacement that lands during the send does
//! not touch the old inode either. Not covered: a write *into* the file, in
//! place, that lands while its answer is being sent (or within the mtime's
//! granularity before the look) is sent as it is then, partly new bytes
//! under the old `ETag`, where the copy would have sent the bytes the cache
//! validated. nginx's `sendfile` has the same exposure; ferry's own writers
//! never write in place. A file shortened in place so that fewer bytes than
//! the announced length remain ends the connection with an error, so the
//! client sees a cut answer, not a short one.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

#[cfg(test)]
use tokio::io::DuplexStream;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

/// Whole cached bodies from this size up are sent with `sendfile`; smaller
/// ones are copied. Server CPU per request, `sendfile` against the copy in
/// the same rounds (medians): even to 8 % more at 16 KiB, 2 % less at 24,
/// 5 to 12 % more at 32, 8 % less at 48 and 7 to 12 % less at 64 KiB
/// (docs/BENCHMARKS.md): below about 40 KiB the copy costs less than the
/// second system call and the splice.
pub const SENDFILE_FROM_BYTES: u64 = 48 << 10;

/// Most bytes one `sendfile` call is asked for: the kernel moves at most
/// about 2 GiB per call anyway; the loop sends the rest.
const MAX_CHUNK_BYTES: usize = 1 << 30;

/// A connection whose socket the kernel can send a file into.
pub trait FileSocket: AsyncWrite + Unpin {
    /// The TCP socket underneath, if there is one.
    fn tcp(&self) -> Option<&TcpStream>;

    /// Records `n` bytes that went out through [`FileSocket::tcp`] rather
    /// than through the `AsyncWrite` side.
    fn sent_past_writer(&self, n: u64);
}

impl FileSocket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn sent_past_writer(&self, _n: u64) {}
}

/// In-memory connections (the lane's unit tests) have no socket: their
/// bodies are always copied.
#[cfg(test)]
impl FileSocket for DuplexStream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    fn sent_past_writer(&self, _n: u64) {}
}

/// Sends `head`, then bytes `0..len` of `file`, on `tcp`; `sent` is told
/// every amount that left. Fails with `UnexpectedEof` if the file has fewer
/// than `len` bytes (it was shortened in place): the caller must then close
/// the connection, whose answer is cut short.
pub async fn send_head_and_file(
    tcp: &TcpStream,
    head: &[u8],
    file: &File,
    len: u64,
    mut sent: impl FnMut(u64),
) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    let mut head = head;
    while !head.is_empty() {
        // More follows at once: the kernel holds the head for the body.
        match tcp.try_io(Interest::WRITABLE, || socket.send_with_flags(head, libc::MSG_MORE)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                head = &head[n..];
                sent(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    let end = i64::try_from(len).map_err(io::Error::other)?;
    let mut offset: i64 = 0;
    while offset < end {
        // Both fit: `end - offset` is at most `end`, an i64.
        let want = usize::try_from(end - offset).unwrap_or(MAX_CHUNK_BYTES).min(MAX_CHUNK_BYTES);
        let call = || {
            nix::sys::sendfile::sendfile64(tcp.as_fd(), file.as_fd(), Some(&mut offset), want).map_err(io::Error::from)
        };
        match tcp.try_io(Interest::WRITABLE, call) {
            Ok(0) => {
                let msg = format!("the file ended at {offset} of the {len} bytes announced: shortened in place");
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
            Ok(n) => sent(n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    assert_eq!(offset, end, "sendfile moves the offset by what it sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn file_of(dir: &tempfile::TempDir, data: &[u8]) -> File {
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        File::open(path).unwrap()
    }

    /// Larger than the socket buffers: the send waits for the reader and
    /// goes on where it stopped.
    #[tokio::test]
    async fn head_then_the_whole_file_through_a_full_socket() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let file = file_of(&dir, &data);
        let (server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut counted = 0;
        send_head_and_file(&server, b"HEAD\r\n\r\n", &file, data.len() as u64, |n| counted += n).await.unwrap();
        drop(server);
        let got = reader.await.unwrap();
        assert_eq!(counted, got.len() as u64);
        assert_eq!(&got[..8], b"HEAD\r\n\r\n");
        assert!(got[8..] == data[..], "the file's bytes, in order");
    }

    #[tokio::test]
    async fn a_file_shorter_than_announced_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_of(&dir, b"only ten b");
        let (server, _client) = pair().await;
        let e = send_head_and_file(&server, b"h", &file, 20, |_| {}).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("at 10 of the 20"), "{e}");
    }
}
