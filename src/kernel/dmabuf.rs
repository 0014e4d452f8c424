// SPDX-License-Identifier: MPL-2.0
//! dma-buf fds: CPU access bracketing (`DMA_BUF_IOCTL_SYNC`), names, sizes.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::ioctl::{IntegerSetter, Opcode, Setter, opcode};

use super::{Error, Result};

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
pub fn sync_start(fd: BorrowedFd<'_>, access: SyncAccess) -> Result<()> {
    sync_start_within(fd, access, SYNC_TIMEOUT)
}

/// [`sync_start`] that waits at most `timeout` for devices (`Duration::ZERO`: not at all) and
/// fails with [`Error::Busy`] if they have not finished. The kernel's own wait in
/// `DMA_BUF_IOCTL_SYNC` has no timeout, so the fences are waited for here first.
pub fn sync_start_within(fd: BorrowedFd<'_>, access: SyncAccess, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // A reader waits for writers only; a writer for every access (the kernel's rule too).
    if !wait_fences(fd, access != SyncAccess::Read, timeout) {
        return Err(Error::Busy {
            op: "DMA_BUF_IOCTL_SYNC",
            waited_ms: timeout.as_millis() as u64,
        });
    }
    sync(fd, DMA_BUF_SYNC_START | access.flags(), deadline)
}

/// Ends CPU access begun with [`sync_start`]: what the CPU wrote becomes visible to devices.
pub fn sync_end(fd: BorrowedFd<'_>, access: SyncAccess) -> Result<()> {
    sync(
        fd,
        DMA_BUF_SYNC_END | access.flags(),
        Instant::now() + SYNC_TIMEOUT,
    )
}

/// Reads the first `len` bytes of a dma-buf through a mapping of its own, bracketed by
/// `DMA_BUF_IOCTL_SYNC` as the dma-buf API asks of CPU readers.
/// The bytes are copied out first: others (the producer, devices) may write them meanwhile.
pub fn read_dmabuf<R>(fd: BorrowedFd<'_>, len: usize, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
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
pub fn dmabuf_size(fd: BorrowedFd<'_>) -> Result<u64> {
    use rustix::fs::SeekFrom;
    let size = rustix::fs::seek(fd, SeekFrom::End(0)).map_err(|e| Error::Io {
        op: "lseek on dma-buf (is this fd a dma-buf?)",
        source: e.into(),
    })?;
    let _ = rustix::fs::seek(fd, SeekFrom::Start(0));
    Ok(size)
}

/// Names the dma-buf, so it can be recognised in /sys/kernel/debug/dma_buf/bufinfo and in
/// /proc/<pid>/fdinfo. Names are cut to the kernel's 31 bytes.
pub fn set_dmabuf_name(fd: BorrowedFd<'_>, name: &str) -> Result<()> {
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

/// The dma-buf's name as the kernel reports it in fdinfo ("" when unnamed), or `None` when the
/// fd is not a dma-buf.
pub fn dmabuf_name(fd: BorrowedFd<'_>) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    // Only dma-bufs have an "exp_name:" line; "name:" follows it.
    info.lines().find(|l| l.starts_with("exp_name:"))?;
    Some(
        info.lines()
            .find_map(|l| l.strip_prefix("name:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default(),
    )
}

/// The name of the driver that exported the dma-buf (fdinfo's `exp_name`: "udmabuf",
/// "system", "vmemexp", ...), or `None` when the fd is not a dma-buf.
pub fn dmabuf_exporter(fd: BorrowedFd<'_>) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("exp_name:"))
        .map(|n| n.trim().to_string())
}

/// Waits until every device access to the dma-buf has finished (all fences of its reservation
/// object signalled: `poll(POLLOUT)` on a dma-buf), at most `timeout`. Returns whether it is
/// idle. Recycling pages before this could overwrite what a device is still reading.
pub fn wait_idle(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    wait_fences(fd, true, timeout)
}

/// Waits at most `timeout` for the dma-buf's write fences (`all`: every fence) to signal.
fn wait_fences(fd: BorrowedFd<'_>, all: bool, timeout: Duration) -> bool {
    let flags = if all {
        rustix::event::PollFlags::OUT
    } else {
        rustix::event::PollFlags::IN
    };
    poll_dmabufs(&[fd], flags, timeout)[0]
}

/// Which of `fds` are idle (every fence signalled), waiting at most `timeout` for at least one
/// of them to become so; `Duration::ZERO` only looks.
pub fn idle_dmabufs(fds: &[BorrowedFd<'_>], timeout: Duration) -> Vec<bool> {
    poll_dmabufs(fds, rustix::event::PollFlags::OUT, timeout)
}

fn poll_dmabufs(
    fds: &[BorrowedFd<'_>],
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
