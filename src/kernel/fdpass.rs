// SPDX-License-Identifier: MPL-2.0
//! Passing fds between processes over Unix sockets (`SCM_RIGHTS`), received `O_CLOEXEC`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::{Error, Result};

/// Most fds one message carries (one per plane of a frame, with room to spare).
pub const MAX_FDS: usize = 4;

/// Sends `bytes` with `fds` attached as one message. Never raises SIGPIPE: a peer that went
/// away is an `EPIPE` error.
pub fn send_with_fds(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        flags | SendFlags::NOSIGNAL,
    )
    .map_err(|e| Error::from_io("sendmsg", e.into()))
}

/// Receives one message into `buf`; attached fds come back `O_CLOEXEC`. Returns the byte count
/// (0: the peer closed) and the fds. Extra fds beyond [`MAX_FDS`] are closed by the kernel's
/// truncation and reported as an error.
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    flags: RecvFlags,
) -> Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| Error::from_io("recvmsg", e.into()))?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(Error::Io {
            op: "recvmsg",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "too many fds in one message",
            ),
        });
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_cross_a_socketpair_cloexec() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let memfd = crate::kernel::Memfd::new("fdpass-test", 4096).unwrap();
        send_with_fds(&a, b"hello", &[memfd.as_fd()], SendFlags::empty()).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, RecvFlags::empty()).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert_eq!(rustix::fs::fstat(&fds[0]).unwrap().st_size, 4096);
    }
}
