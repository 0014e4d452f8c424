// SPDX-License-Identifier: MPL-2.0
//! A client of dmabufsink's socket: receive frames with their dma-bufs, read them, release them.
//!
//! ```no_run
//! let client = gstvmem::dmabufsink::Client::connect("/tmp/frames.sock")?;
//! while let Some(frame) = client.recv()? {
//!     println!("frame {} checksum {:016x}", frame.info.frame_number, frame.checksum()?);
//!     client.release(&frame)?;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{self, MAX_MESSAGE_SIZE, Message};
use crate::kernel;

pub struct Client {
    fd: OwnedFd,
    /// How many frames the server lets this client hold before it misses frames.
    pub max_pending: u32,
}

/// A received frame: its description and its dma-buf fds (closed on drop).
pub struct ReceivedFrame {
    pub info: protocol::Frame,
    pub fds: Vec<OwnedFd>,
}

impl Client {
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Client> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path.as_ref())?)?;
        let mut client = Client { fd, max_pending: 0 };
        match client.recv_message()? {
            Some((Message::Hello(h), _)) => client.max_pending = h.max_pending,
            other => {
                return Err(invalid(format!(
                    "expected a hello, got {:?}",
                    other.map(|m| m.0)
                )));
            }
        }
        Ok(client)
    }

    fn recv_message(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        let (n, fds) = kernel::recv_with_fds(&self.fd, &mut buf, RecvFlags::empty())?;
        if n == 0 {
            return Ok(None);
        }
        let msg = Message::decode(&buf[..n], fds.len()).map_err(|e| invalid(e.to_string()))?;
        Ok(Some((msg, fds)))
    }

    /// The next frame; `None` at end of stream (the server said goodbye or went away).
    pub fn recv(&self) -> io::Result<Option<ReceivedFrame>> {
        match self.recv_message()? {
            None | Some((Message::Bye, _)) => Ok(None),
            Some((Message::Frame(info), fds)) => Ok(Some(ReceivedFrame { info, fds })),
            Some((other, _)) => Err(invalid(format!("unexpected {other:?}"))),
        }
    }

    /// Tells the server this client is done with the frame's pages.
    pub fn release(&self, frame: &ReceivedFrame) -> io::Result<()> {
        let msg = Message::Release {
            frame_number: frame.info.frame_number,
        }
        .encode();
        kernel::send_with_fds(&self.fd, &msg, &[], SendFlags::empty())?;
        Ok(())
    }

    /// The socket, for sending raw bytes in tests of the server's robustness.
    pub fn socket(&self) -> &OwnedFd {
        &self.fd
    }
}

impl ReceivedFrame {
    /// Maps the first dma-buf and checksums the frame's `size` bytes, bracketing the read with
    /// `DMA_BUF_IOCTL_SYNC` as the dma-buf API asks of CPU readers.
    pub fn checksum(&self) -> io::Result<u64> {
        let fd = self
            .fds
            .first()
            .ok_or_else(|| invalid("frame without fds".into()))?
            .as_fd();
        let len = usize::try_from(self.info.size).map_err(|_| invalid("size".into()))?;
        Ok(kernel::read_dmabuf(fd, len, protocol::checksum)?)
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
