// SPDX-License-Identifier: MPL-2.0
//! dma-buf fds: CPU access bracketing (`DMA_BUF_IOCTL_SYNC`), names, sizes, fences.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::ioctl::{IntegerSetter, Opcode, Setter, opcode};

use super::{Error, Result};

/// A dma-buf fd, borrowed: what the sync, name and fence operations take, so that no other
/// file (a memfd, a socket a peer passed) reaches them.
#[derive(Debug, Clone, Copy)]
pub struct DmaBuf<'fd>(BorrowedFd<'fd>);

impl<'fd> DmaBuf<'fd> {
    /// `fd` as a dma-buf, after checking that it is one: for fds from elsewhere (a socket
    /// peer, a caller's OwnedFd).
    pub fn new(fd: BorrowedFd<'fd>) -> Result<DmaBuf<'fd>> {
        if is_dmabuf(fd) {
            Ok(DmaBuf(fd))
        } else {
            Err(Error::Io {
                op: "fstatfs (is this fd a dma-buf?)",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a dma-buf: its filesystem is not dmabuf",
                ),
            })
        }
    }

    /// `fd` as a dma-buf without a check: for fds known to be dma-bufs (just returned by an
    /// exporter's ioctl, or held by GStreamer's dma-buf memory).
    pub fn known(fd: BorrowedFd<'fd>) -> DmaBuf<'fd> {
        DmaBuf(fd)
    }

    /// The fd, for the length of the borrow it came from.
    pub fn fd(self) -> BorrowedFd<'fd> {
        self.0
    }
}

impl AsFd for DmaBuf<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
    }
}

#[repr(C)]
struct DmaBufSync {
    flags: u64,
}

const DMA_BUF_SYNC_READ: u64 = 1 << 0;
const DMA_BUF_SYNC_WRITE: u64 = 1 << 1;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 1 << 2;
const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);
// `_IOW('b', 1, const char *)`: the argument is the pointer itself.
const DMA_BUF_SET_NAME: Opcode = opcode::write::<u64>(b'b', 1);
/// `DMA_BUF_NAME_LEN`, including the terminating NUL.
const NAME_LEN: usize = 32;

/// The direction of a CPU access to a dma-buf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    Read,
    Write,
    ReadWrite,
}

impl SyncAccess {
    fn flags(self) -> u64 {
        match self {
            SyncAccess::Read => DMA_BUF_SYNC_READ,
            SyncAccess::Write => DMA_BUF_SYNC_WRITE,
            SyncAccess::ReadWrite => DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE,
        }
    }
}

/// How long [`sync_start`] lets devices finish with a dma-buf before it gives up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

fn sync(fd: BorrowedFd<'_>, flags: u64, deadline: Instant) -> Result<()> {
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC takes a `struct dma_buf_sync`, which the kernel only reads.
        let res = unsafe {
            rustix::ioctl::ioctl(
                fd,
                Setter::<DMA_BUF_IOCTL_SYNC, DmaBufSync>::new(DmaBufSync { flags }),
            )
        };
        match res {
            // Interrupted while waiting for fences: try again, as libdrm does, until the
            // deadline (a signal storm must not keep the caller here forever).
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN)
                if Instant::now() < deadline =>
            {
                continue;
            }
            Err(e) => {
                return Err(Error::Io {
                    op: "DMA_BUF_IOCTL_SYNC",
                    source: e.into(),
                });
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// Begins CPU access: caches are made coherent with what devices wrote. Devices still using
/// the dma-buf get [`SYNC_TIMEOUT`] to finish.
pub fn sync_start(fd: DmaBuf<'_>, access: SyncAccess) -> Result<()> {
    sync_start_within(fd, access, SYNC_TIMEOUT)
}

/// [`sync_start`] that waits at most `timeout` for devices (`Duration::ZERO`: not at all) and
/// fails with [`Error::Busy`] if they have not finished. The kernel's own wait in
/// `DMA_BUF_IOCTL_SYNC` has no timeout, so the fences are waited for here first.
pub fn sync_start_within(fd: DmaBuf<'_>, access: SyncAccess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // A reader waits for writers only; a writer for every access (the kernel's rule too).
    if !wait_fences(fd, access != SyncAccess::Read, timeout) {
        return Err(Error::Busy {
            op: "DMA_BUF_IOCTL_SYNC",
            waited_ms: timeout.as_millis() as u64,
        });
    }
    sync(fd.0, DMA_BUF_SYNC_START | access.flags(), deadline)
}

/// Ends CPU access begun with [`sync_start`]: what the CPU wrote becomes visible to devices.
pub fn sync_end(fd: DmaBuf<'_>, access: SyncAccess) -> Result<()> {
    sync(
        fd.0,
        DMA_BUF_SYNC_END | access.flags(),
        Instant::now() + SYNC_TIMEOUT,
    )
}

/// Reads the first `len` bytes of a dma-buf through a mapping of its own, bracketed by
/// `DMA_BUF_IOCTL_SYNC` as the dma-buf API asks of CPU readers.
/// The bytes are copied out first: others (the producer, devices) may write them meanwhile.
pub fn read_dmabuf<R>(fd: DmaBuf<'_>, len: usize, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
    // SAFETY: no slice of the mapping is formed; it is read with `copy_out` only.
    let map = unsafe { super::Mapping::new(fd, 0, len, false)? };
    sync_start(fd, SyncAccess::Read)?;
    let bytes = map.copy_out(0, len);
    sync_end(fd, SyncAccess::Read)?;
    Ok(read(&bytes))
}

/// `DMA_BUF_MAGIC`: `f_type` of the dma-buf pseudo filesystem ("dmab").
const DMA_BUF_MAGIC: u64 = 0x444d_4142;

/// Whether `fd` is a dma-buf (its filesystem is dma-buf's), not some other file passed as one.
pub fn is_dmabuf(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| s.f_type as u64 == DMA_BUF_MAGIC)
}

/// The dma-buf's size in bytes (dma-bufs answer `lseek(SEEK_END)`).
pub fn dmabuf_size(fd: DmaBuf<'_>) -> Result<u64> {
    use rustix::fs::SeekFrom;
    let size = rustix::fs::seek(fd, SeekFrom::End(0)).map_err(|e| Error::Io {
        op: "lseek on dma-buf (is this fd a dma-buf?)",
        source: e.into(),
    })?;
    let _ = rustix::fs::seek(fd, SeekFrom::Start(0));
    Ok(size)
}

/// Names the dma-buf, so it can be recognised in /sys/kernel/debug/dma_buf/bufinfo and in
/// `/proc/<pid>/fdinfo`. Names are cut to the kernel's 31 bytes.
pub fn set_dmabuf_name(fd: DmaBuf<'_>, name: &str) -> Result<()> {
    let mut bytes: Vec<u8> = name
        .bytes()
        .filter(|&b| b != 0)
        .take(NAME_LEN - 1)
        .collect();
    bytes.push(0);
    // SAFETY: DMA_BUF_SET_NAME reads a NUL-terminated string of at most NAME_LEN bytes from the
    // pointer passed as the argument; `bytes` outlives the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            IntegerSetter::<DMA_BUF_SET_NAME>::new_pointer(bytes.as_mut_ptr().cast()),
        )
    }
    .map_err(|e| Error::Io {
        op: "DMA_BUF_SET_NAME",
        source: e.into(),
    })
}

/// The value of `key` in the fd's `/proc/self/fdinfo` entry (`exp_name`, `name`, `size`, ...),
/// or `None` when the entry has no such line.
pub fn fdinfo_field(fd: BorrowedFd<'_>, key: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// The dma-buf's name as the kernel reports it in fdinfo ("" when unnamed), or `None` when
/// fdinfo cannot be read.
pub fn dmabuf_name(fd: DmaBuf<'_>) -> Option<String> {
    // Only dma-bufs have an "exp_name:" line; "name:" follows it when the buffer has a name.
    dmabuf_exporter(fd)?;
    Some(fdinfo_field(fd.0, "name").unwrap_or_default())
}

/// The name of the driver that exported the dma-buf (fdinfo's `exp_name`: "udmabuf",
/// "system", "vmemexp", ...).
pub fn dmabuf_exporter(fd: DmaBuf<'_>) -> Option<String> {
    fdinfo_field(fd.0, "exp_name")
}

/// Waits until every device access to the dma-buf has finished (all fences of its reservation
/// object signalled: `poll(POLLOUT)` on a dma-buf), at most `timeout`. Returns whether it is
/// idle. Recycling pages before this could overwrite what a device is still reading.
pub fn wait_idle(fd: DmaBuf<'_>, timeout: Duration) -> bool {
    wait_fences(fd, true, timeout)
}

/// Waits at most `timeout` for the dma-buf's write fences (`all`: every fence) to signal.
fn wait_fences(fd: DmaBuf<'_>, all: bool, timeout: Duration) -> bool {
    let flags = if all {
        rustix::event::PollFlags::OUT
    } else {
        rustix::event::PollFlags::IN
    };
    poll_dmabufs(&[fd], flags, timeout)[0]
}

/// Which of `fds` are idle (every fence signalled), waiting at most `timeout` for at least one
/// of them to become so; `Duration::ZERO` only looks.
pub fn idle_dmabufs(fds: &[DmaBuf<'_>], timeout: Duration) -> Vec<bool> {
    poll_dmabufs(fds, rustix::event::PollFlags::OUT, timeout)
}

fn poll_dmabufs(
    fds: &[DmaBuf<'_>],
    flags: rustix::event::PollFlags,
    timeout: Duration,
) -> Vec<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, flags)).collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut polled, Some(&timeout)) {
            Ok(_) => {
                // Not pollable (POLLERR/POLLNVAL): nothing to wait for.
                return polled
                    .iter()
                    .map(|p| !(p.revents() & (flags | PollFlags::ERR | PollFlags::NVAL)).is_empty())
                    .collect();
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return vec![true; fds.len()],
        }
    }
}
