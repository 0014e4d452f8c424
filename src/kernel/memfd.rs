// SPDX-License-Identifier: MPL-2.0
//! memfd: anonymous shmem files, the memory udmabuf can export.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

use super::{Error, Mapping, Result};

/// An anonymous shmem file (`memfd_create` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`).
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
}

impl Memfd {
    /// Creates a memfd of `size` bytes sealed against shrinking, as udmabuf requires: the pages
    /// a dma-buf references can then never be truncated away under a device.
    pub fn new(name: &str, size: u64) -> Result<Memfd> {
        let memfd = Memfd::new_unsealed(name, size)?;
        memfd.add_seals(SealFlags::SHRINK)?;
        Ok(memfd)
    }

    /// Creates a memfd of `size` bytes without seals (tests use it to prove udmabuf's checks).
    /// A size larger than the machine's RAM is refused: shmem pages are allocated lazily, so
    /// such a file would be created, then fail (SIGBUS) on the first write past what fits.
    pub fn new_unsealed(name: &str, size: u64) -> Result<Memfd> {
        let ram = physical_memory();
        if size > ram {
            return Err(Error::OutOfMemory {
                op: "memfd_create",
                hint: format!(": {size} bytes are more than this machine's {ram} bytes of RAM"),
            });
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::from_io("memfd_create", e.into()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| Error::from_io("ftruncate", e.into()))?;
        Ok(Memfd { fd, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn add_seals(&self, seals: SealFlags) -> Result<()> {
        rustix::fs::fcntl_add_seals(&self.fd, seals).map_err(|e| Error::Io {
            op: "F_ADD_SEALS",
            source: e.into(),
        })
    }

    pub fn seals(&self) -> Result<SealFlags> {
        seals_of(self.fd.as_fd())
    }

    /// Maps the whole file shared and writable.
    ///
    /// # Safety
    /// The contract of [`Mapping::new`]: the slices of the mapping alias every other mapping
    /// of this memfd (and its udmabuf exports).
    pub unsafe fn map(&self) -> Result<Mapping> {
        // SAFETY: the caller takes over Mapping::new's contract.
        unsafe {
            Mapping::new(
                &self.fd,
                0,
                usize::try_from(self.size).map_err(|_| Error::Empty)?,
                true,
            )
        }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The seals of `fd`; a file that supports no seals is not a memfd.
pub(crate) fn seals_of(fd: BorrowedFd<'_>) -> Result<SealFlags> {
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) => Ok(seals),
        Err(rustix::io::Errno::INVAL) => Err(Error::NotMemfd),
        Err(e) => Err(Error::Io {
            op: "F_GET_SEALS",
            source: e.into(),
        }),
    }
}

/// The machine's RAM in bytes (`sysinfo`); unlimited if it cannot be read.
fn physical_memory() -> u64 {
    let info = rustix::system::sysinfo();
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1)))
}
