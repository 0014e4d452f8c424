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
//!
//! The server is not trusted blindly either: [`Client::connect`] checks that it runs as our
//! own user (`SO_PEERCRED`; [`Client::connect_to_uid`] names another), and [`Client::recv`]
//! checks that every fd it received is a dma-buf large enough for the frame's layout, so a
//! squatting process cannot make the reader fault (SIGBUS) on a truncated file.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{self, MAX_MESSAGE_SIZE, Message};
use crate::kernel;

/// How long a server may take to say hello; past it, connecting fails with `WouldBlock`.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Client {
    fd: OwnedFd,
    /// How many frames the server lets this client hold before it misses frames.
    pub max_pending: u32,
}

/// What [`Client::next`] received.
pub enum Received {
    Frame(ReceivedFrame),
    /// The server ended its stream (it sent its goodbye).
    Bye,
    /// The connection closed without a goodbye: the server went away.
    Closed,
}

/// A received frame: its description and its dma-buf fds (closed on drop).
pub struct ReceivedFrame {
    pub info: protocol::Frame,
    pub fds: Vec<OwnedFd>,
    /// The size of each dma-buf in `fds`.
    pub fd_sizes: Vec<u64>,
}

impl Client {
    /// Connects to a server that runs as our own (effective) user.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Client> {
        Client::connect_to_uid(path, rustix::process::geteuid().as_raw())
    }

    /// Connects to a server that must run as `server_uid` (for a server of another user that
    /// lets us in with `allow-other-users` or `socket-group`).
    pub fn connect_to_uid(path: impl AsRef<Path>, server_uid: u32) -> io::Result<Client> {
        let path = path.as_ref();
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        let cred = kernel::peer_credentials(&fd)?;
        if cred.uid != server_uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the server at {} runs as uid {}, not uid {server_uid}: not trusting it \
                     (another user's process may have taken the path)",
                    path.display(),
                    cred.uid
                ),
            ));
        }
        // A server that accepts but never says hello must not hang us (or the element whose
        // streaming thread connects): its hello is due at once.
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(HELLO_TIMEOUT),
        )?;
        let mut client = Client { fd, max_pending: 0 };
        let hello = client.recv_message();
        rustix::net::sockopt::set_socket_timeout(
            &client.fd,
            rustix::net::sockopt::Timeout::Recv,
            None,
        )?;
        match hello? {
            Some((Message::Hello(h), _)) => client.max_pending = h.max_pending,
            Some((Message::Refused(reason), _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{} refused us: {reason}", path.display()),
                ));
            }
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
        let mut reset = false;
        let (n, fds) = loop {
            match kernel::recv_with_fds(&self.fd, &mut buf, RecvFlags::empty()) {
                // A server that closes while our releases are unread makes the kernel report
                // ECONNRESET once, ahead of the messages still queued for us: read on.
                Err(e)
                    if !reset
                        && e.raw_os_error()
                            == Some(rustix::io::Errno::CONNRESET.raw_os_error()) =>
                {
                    reset = true;
                }
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let msg = Message::decode(&buf[..n], fds.len()).map_err(|e| invalid(e.to_string()))?;
        Ok(Some((msg, fds)))
    }

    /// The next frame; `None` at end of stream (the server said goodbye or went away). A frame
    /// whose fds are not dma-bufs, or are smaller than its layout says, is an error.
    pub fn recv(&self) -> io::Result<Option<ReceivedFrame>> {
        match self.next()? {
            Received::Frame(frame) => Ok(Some(frame)),
            Received::Bye | Received::Closed => Ok(None),
        }
    }

    /// The next message: a frame, the server's goodbye (the end of its stream), or the
    /// connection closed without one (the server went away: a crash, or its pipeline was
    /// stopped). A frame whose fds are not dma-bufs, or are smaller than its layout says, and
    /// any message a server must not send, are errors.
    pub fn next(&self) -> io::Result<Received> {
        match self.recv_message()? {
            None => Ok(Received::Closed),
            Some((Message::Bye, _)) => Ok(Received::Bye),
            Some((Message::Frame(info), fds)) => {
                let fd_sizes = check_fds(&info, &fds)?;
                Ok(Received::Frame(ReceivedFrame {
                    info,
                    fds,
                    fd_sizes,
                }))
            }
            Some((other, _)) => Err(invalid(format!("unexpected {other:?}"))),
        }
    }

    /// Tells the server this client is done with the frame's pages. A server that has gone
    /// (the stream ended while we read) holds nothing any more: that is not an error, and the
    /// frames it sent before are still there for [`Client::recv`].
    pub fn release(&self, frame: &ReceivedFrame) -> io::Result<()> {
        self.release_number(frame.info.frame_number, SendFlags::empty())
    }

    /// [`Client::release`] by frame number, never blocking: for a release sent from whichever
    /// thread drops the frame's last buffer. A full socket (a server that reads none of our
    /// messages) is reported as `WouldBlock`; the server's hold timeout then frees the frame.
    pub fn release_nonblocking(&self, frame_number: u64) -> io::Result<()> {
        self.release_number(frame_number, SendFlags::DONTWAIT)
    }

    fn release_number(&self, frame_number: u64, flags: SendFlags) -> io::Result<()> {
        let msg = Message::Release { frame_number }.encode();
        match kernel::send_with_fds(&self.fd, &msg, &[], flags) {
            Err(e)
                if [rustix::io::Errno::PIPE, rustix::io::Errno::CONNRESET]
                    .iter()
                    .any(|gone| e.raw_os_error() == Some(gone.raw_os_error())) =>
            {
                Ok(())
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// The socket, for sending raw bytes in tests of the server's robustness.
    pub fn socket(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Checks each fd is a dma-buf holding what the frame says lies in it; returns their sizes.
fn check_fds(info: &protocol::Frame, fds: &[OwnedFd]) -> io::Result<Vec<u64>> {
    let need = protocol::required_fd_sizes(info);
    let mut sizes = Vec::with_capacity(fds.len());
    for (i, fd) in fds.iter().enumerate() {
        let Ok(dmabuf) = kernel::DmaBuf::new(fd.as_fd()) else {
            return Err(invalid(format!(
                "frame {}: fd {i} is not a dma-buf: refusing to map it",
                info.frame_number
            )));
        };
        let size = kernel::dmabuf_size(dmabuf)?;
        if size < need[i] {
            return Err(invalid(format!(
                "frame {}: dma-buf {i} has {size} bytes, but the frame's layout ({}x{}) needs {}",
                info.frame_number, info.width, info.height, need[i]
            )));
        }
        sizes.push(size);
    }
    Ok(sizes)
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
        // Checked to be a dma-buf on arrival (check_fds).
        let dmabuf = kernel::DmaBuf::known(fd);
        Ok(kernel::read_dmabuf(dmabuf, len, protocol::checksum)?)
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that closes while our release is unread: the kernel reports ECONNRESET ahead
    /// of the messages still queued for us, which must still be read (here: its goodbye).
    #[test]
    fn what_the_server_sent_before_closing_is_read_despite_a_reset() {
        let dir = std::env::temp_dir().join(format!("vmem-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 1).unwrap();
        let server = std::thread::spawn(move || {
            let conn = rustix::net::accept(&listener).unwrap();
            let hello = Message::Hello(protocol::Hello { max_pending: 4 }).encode();
            kernel::send_with_fds(&conn, &hello, &[], SendFlags::empty()).unwrap();
            // Wait for the client's message, leave it unread, say goodbye and close.
            let mut fds = [rustix::event::PollFd::new(
                &conn,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, None).unwrap();
            kernel::send_with_fds(&conn, &Message::Bye.encode(), &[], SendFlags::empty()).unwrap();
        });
        let client = Client::connect(&path).unwrap();
        let release = Message::Release { frame_number: 1 }.encode();
        kernel::send_with_fds(&client.fd, &release, &[], SendFlags::empty()).unwrap();
        server.join().unwrap();
        let frame = ReceivedFrame {
            info: protocol::Frame::default(),
            fds: Vec::new(),
            fd_sizes: Vec::new(),
        };
        client
            .release(&frame)
            .expect("releasing to a server that left is no error");
        assert!(
            matches!(client.recv(), Ok(None)),
            "the goodbye, not ECONNRESET"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
