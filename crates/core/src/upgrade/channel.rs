//! The upgrade channel: a `SOCK_SEQPACKET` socketpair between the old and
//! the new process. Message boundaries are kept by the kernel, and file
//! descriptors travel as `SCM_RIGHTS` ancillary data (received with
//! `MSG_CMSG_CLOEXEC`, so they never leak into processes we start later).

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, setsockopt,
    socketpair, sockopt,
};
use nix::sys::time::TimeVal;

/// Most descriptors in one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 253;
/// Largest message payload; bigger data goes as several chunks.
pub const MAX_MESSAGE: usize = 60 * 1024;
/// Environment variable naming the child's end of the channel.
pub const UPGRADE_FD_ENV: &str = "FERRY_UPGRADE_FD";

#[derive(Debug)]
pub struct UpgradeChannel {
    fd: OwnedFd,
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl UpgradeChannel {
    /// A connected pair: our end (close-on-exec) and the end the new
    /// process inherits (not close-on-exec).
    pub fn pair() -> io::Result<(UpgradeChannel, OwnedFd)> {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::empty()).map_err(nix_err)?;
        fcntl(&ours, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(nix_err)?;
        Ok((UpgradeChannel { fd: ours }, theirs))
    }

    /// The channel handed down by the old process, if this process was
    /// started by a live upgrade. The descriptor is made close-on-exec at
    /// once.
    pub fn from_env() -> Option<io::Result<UpgradeChannel>> {
        let value = std::env::var(UPGRADE_FD_ENV).ok()?;
        // SAFETY of the check below: we only adopt a descriptor that is
        // open and is a socket, and the variable is removed so nothing else
        // in this process adopts it again.
        let fd: RawFd = match value.parse() {
            Ok(fd) if fd > 2 => fd,
            _ => return Some(Err(io::Error::other(format!("bad {UPGRADE_FD_ENV}={value}")))),
        };
        // SAFETY: removing an environment variable is only unsound when
        // other threads read the environment concurrently; this runs at
        // startup before the server spawns any thread that does.
        unsafe { std::env::remove_var(UPGRADE_FD_ENV) };
        if fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD).is_err() {
            return Some(Err(io::Error::other(format!("{UPGRADE_FD_ENV}={fd} is not an open descriptor"))));
        }
        // SAFETY: the old process passed this descriptor to us for our
        // exclusive use; it is open (checked above) and owned by no one
        // else in this process.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
            return Some(Err(nix_err(e)));
        }
        Some(Ok(UpgradeChannel { fd }))
    }

    /// Bounds how long a send may block (a new process that stops reading
    /// must not hang the old one).
    pub fn set_send_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros().max(1) as i64);
        setsockopt(&self.fd, sockopt::SendTimeout, &tv).map_err(nix_err)
    }

    /// Sends one message with up to [`MAX_FDS_PER_MESSAGE`] descriptors.
    pub fn send(&self, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        assert!(fds.len() <= MAX_FDS_PER_MESSAGE, "too many descriptors in one message");
        assert!(payload.len() <= MAX_MESSAGE, "message too large");
        let iov = [IoSlice::new(payload)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(nix_err(e)),
            }
        }
    }

    /// Receives one message, waiting at most `timeout`. `Ok(None)` on
    /// timeout; an error if the peer closed its end.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros().max(1) as i64);
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(nix_err)?;
        self.recv_flags(MsgFlags::MSG_CMSG_CLOEXEC)
    }

    /// Receives a message if one is waiting, without blocking. (A short
    /// receive timeout is no substitute: the kernel rounds it up to a
    /// scheduler tick, several milliseconds.)
    pub fn try_recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        self.recv_flags(MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT)
    }

    fn recv_flags(&self, flags: MsgFlags) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(nix_err)? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: SCM_RIGHTS installed these
                                // descriptors in this process for us; each
                                // is owned by nothing else yet.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.flags.contains(MsgFlags::MSG_TRUNC) {
                        return Err(io::Error::other("upgrade message truncated"));
                    }
                    break (msg.bytes, fds);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Ok(None),
                Err(e) => return Err(nix_err(e)),
            }
        };
        if len == 0 && fds.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other process closed the upgrade channel"));
        }
        buf.truncate(len);
        Ok(Some((buf, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn messages_and_descriptors_cross_the_channel() {
        let (a, b) = UpgradeChannel::pair().unwrap();
        let b = UpgradeChannel { fd: b };
        let (mut r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(b"hello", &[w.as_raw_fd()]).unwrap();
        let (msg, fds) = b.recv(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(msg, b"hello");
        assert_eq!(fds.len(), 1);
        let flags = fcntl(&fds[0], FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC), "received fds are close-on-exec");
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        w.write_all(b"y").unwrap();
    }

    #[test]
    fn a_full_batch_of_descriptors_fits_in_one_message() {
        let (a, b) = UpgradeChannel::pair().unwrap();
        let b = UpgradeChannel { fd: b };
        let files: Vec<std::fs::File> =
            (0..MAX_FDS_PER_MESSAGE).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        a.send(b"fds", &raw).unwrap();
        let (_, fds) = b.recv(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(fds.len(), MAX_FDS_PER_MESSAGE);
    }

    #[test]
    fn timeout_and_peer_exit_are_told_apart() {
        let (a, b) = UpgradeChannel::pair().unwrap();
        assert!(a.recv(Duration::from_millis(10)).unwrap().is_none());
        drop(b);
        assert!(a.recv(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn try_recv_does_not_wait() {
        let (a, b) = UpgradeChannel::pair().unwrap();
        let b = UpgradeChannel { fd: b };
        let asked = std::time::Instant::now();
        assert!(a.try_recv().unwrap().is_none());
        assert!(asked.elapsed() < Duration::from_millis(2), "{:?}", asked.elapsed());
        b.send(b"X", &[]).unwrap();
        assert_eq!(a.try_recv().unwrap().unwrap().0, b"X");
        drop(b);
        assert!(a.try_recv().is_err());
    }
}
