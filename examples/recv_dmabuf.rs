// SPDX-License-Identifier: MPL-2.0
//! The receiving side of dma-buf fd passing, in a few lines: takes one dma-buf fd from the
//! Unix socket it inherited as fd `SOCKET_FD`, reads its first `LEN` bytes through a mapping
//! of its own (bracketed by DMA_BUF_IOCTL_SYNC) and prints their checksum.
//!
//! ```text
//! recv_dmabuf SOCKET_FD LEN    # prints "checksum <u64>"
//! ```
//! The VM suite uses it to show that another process reads the very bytes a dma-buf holds.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use gstvmem::dmabufsink::protocol;
use gstvmem::kernel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, len] = &args[..] else {
        return Err("usage: recv_dmabuf SOCKET_FD LEN".into());
    };
    let raw: i32 = socket.parse()?;
    let len: usize = len.parse()?;
    rustix::io::fcntl_getfd(
        // SAFETY: only borrowed to check that the fd number is open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
    )
    .map_err(|e| format!("fd {raw} is not open: {e}"))?;
    // SAFETY: the fd is open (checked above) and was passed for this process to own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut buf = [0u8; 8];
    let (_, fds) = kernel::recv_with_fds(&socket, &mut buf, rustix::net::RecvFlags::empty())?;
    let fd = fds.first().ok_or("no fd received")?;
    let sum = kernel::read_dmabuf(kernel::DmaBuf::new(fd.as_fd())?, len, protocol::checksum)?;
    println!("checksum {sum}");
    Ok(())
}
