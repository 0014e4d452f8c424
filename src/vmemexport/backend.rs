// SPDX-License-Identifier: MPL-2.0
//! What turns the memory of vmemexport's own pool into dma-bufs.
//!
//! The pool's memory is sealed memfds ([`super::MemfdAllocator`]). [`Udmabuf`] exports one as
//! a dma-buf of the same pages; with a dma-heap pool ([`HeapPool`]) the buffers already are
//! dma-bufs and nothing is exported. [`FakeUdmabuf`] stands in for udmabuf on machines whose
//! kernel has none (the build hosts), so that negotiation, the pool, the copy fallback and the
//! counters run under `cargo test` (`tests/element_harness.rs`); the VM suite proves the
//! kernel's side.

use std::fmt::Debug;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::export::Refusal;
use crate::heapalloc::DmaHeapAllocator;
use crate::kernel::{self, PinAccess, Udmabuf, UdmabufLimits, UdmabufRange, Vmemexp};

/// Where an element's dma-bufs come from: the kernel's devices, or for tests a fake udmabuf
/// and nothing else (no dma-heap, no vmemexp), so that they behave the same on every machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Devices {
    #[default]
    Kernel,
    Fake,
}

impl Devices {
    /// What exports the memfd pool: udmabuf, or why it cannot be opened.
    pub fn udmabuf(self) -> kernel::Result<Box<dyn Backend>> {
        Ok(match self {
            Devices::Kernel => Box::new(Udmabuf::open()?),
            Devices::Fake => Box::new(FakeUdmabuf::new()),
        })
    }

    /// What exports the memfd pool on kernels without udmabuf: vmemexp, or why not.
    pub fn vmemexp_pool(self) -> Result<Box<dyn Backend>, String> {
        Ok(Box::new(VmemexpPool(self.vmemexp()?)))
    }

    /// The dma-heap allocator for `selection` (the `heap` property).
    pub fn heap(self, selection: &str) -> Result<DmaHeapAllocator, String> {
        match self {
            Devices::Kernel => DmaHeapAllocator::new(selection).map_err(|e| e.to_string()),
            Devices::Fake => Err("the fake udmabuf comes with no dma-heap".into()),
        }
    }

    /// `/dev/vmemexp`, for memory that is not from the pool.
    pub fn vmemexp(self) -> Result<Vmemexp, String> {
        match self {
            Devices::Kernel => Vmemexp::open().map_err(|e| e.to_string()),
            Devices::Fake => Err("the fake udmabuf comes with no vmemexp".into()),
        }
    }
}

/// Makes a dma-buf of the first `size` bytes of a pool memfd.
pub trait Backend: Debug + Send + Sync {
    /// A new dma-buf (`O_CLOEXEC`) of `memfd`'s first `size` bytes (page aligned), or why not.
    fn export(&self, memfd: BorrowedFd<'_>, size: u64) -> Result<OwnedFd, Refusal>;

    /// The largest `size` [`Backend::export`] takes, if it takes any.
    fn size_limit(&self) -> Option<u64>;

    /// Whether the kernel names each export itself (vmemexp: after the exporting process),
    /// where udmabuf's exports get vmemexport's name.
    fn names_exports(&self) -> bool {
        false
    }
}

impl Backend for Udmabuf {
    fn export(&self, memfd: BorrowedFd<'_>, size: u64) -> Result<OwnedFd, Refusal> {
        self.create(memfd, 0, size)
            .map_err(|e| Refusal::Udmabuf(e.to_string()))
    }

    fn size_limit(&self) -> Option<u64> {
        Some(self.limits().size_limit)
    }
}

/// `backing=auto` on kernels without udmabuf (Debian 12's, many vendor kernels) but with the
/// vmemexp module: the pool's memfds are mapped for a moment and their pages exported through
/// vmemexp, the same pages under the same cache as udmabuf's exports. The pages are shmem, which
/// vmemexp pins (it refuses other page cache); the pin is charged to the user's
/// RLIMIT_MEMLOCK for as long as a holder keeps the dma-buf, so a refusal is a copy counted
/// under `pin-refused` with vmemexp's reason, not an error.
///
/// Exports are read-only, as for pinned memory: importers get the frame to read, never a way
/// into the producer's pages.
#[derive(Debug)]
pub struct VmemexpPool(Vmemexp);

impl Backend for VmemexpPool {
    fn export(&self, memfd: BorrowedFd<'_>, size: u64) -> Result<OwnedFd, Refusal> {
        let refused =
            |e: kernel::Error| Refusal::Pin(format!("vmemexp refused the pool's memfd: {e}"));
        let len = usize::try_from(size)
            .map_err(|_| Refusal::Pin(format!("{size} bytes overflow the address space")))?;
        // SAFETY: the mapping is only handed to vmemexp, never read or written from here.
        let map = unsafe { kernel::Mapping::new(memfd, 0, len, true) }.map_err(refused)?;
        // SAFETY: read-only exports of pool memory that only consumers import; no Rust
        // reference to the pages exists (the mapping's bytes are never borrowed).
        let dmabuf = unsafe {
            self.0
                .export(map.as_ptr() as usize, len, PinAccess::ReadOnly)
        }
        .map_err(refused)?;
        // The pin holds the pages; the mapping was only the way to name them.
        drop(map);
        Ok(dmabuf)
    }

    fn size_limit(&self) -> Option<u64> {
        Some(self.0.max_size())
    }

    fn names_exports(&self) -> bool {
        true
    }
}

/// `backing=heap` (or `auto` without udmabuf): upstream writes into dma-heap buffers, which
/// leave as they are; memfds (of a pool upstream made from an older proposal) cannot leave.
#[derive(Debug)]
pub struct HeapPool;

impl Backend for HeapPool {
    fn export(&self, _memfd: BorrowedFd<'_>, _size: u64) -> Result<OwnedFd, Refusal> {
        Err(Refusal::NoExporter)
    }

    fn size_limit(&self) -> Option<u64> {
        None
    }
}

/// For tests only: udmabuf's rules (seals, alignment, size limit, shmem only), then the memfd
/// itself, duplicated, as the "dma-buf". Downstream sees dma-buf memory of the very pages
/// upstream wrote, as with udmabuf, and the tests can tell an export from a copy by the file
/// (same inode as the pool memfd). What it cannot show: `DMA_BUF_IOCTL_SYNC` fails on a
/// memfd (so `stats` counts no syncs), it has no name, and no device can import it.
#[derive(Debug)]
pub struct FakeUdmabuf {
    limits: UdmabufLimits,
}

impl FakeUdmabuf {
    /// A stand-in with the kernel's default limits (64 MiB), whatever the machine's udmabuf
    /// module says, so that tests behave the same on every machine.
    pub fn new() -> FakeUdmabuf {
        FakeUdmabuf {
            limits: UdmabufLimits::KERNEL_DEFAULTS,
        }
    }
}

/// `f_type` of shmem (memfds) and hugetlbfs files: udmabuf refuses any other file (EBADFD).
const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

impl Backend for FakeUdmabuf {
    fn export(&self, memfd: BorrowedFd<'_>, size: u64) -> Result<OwnedFd, Refusal> {
        let refused = |e: kernel::Error| Refusal::Udmabuf(e.to_string());
        let fs_type = rustix::fs::fstatfs(memfd)
            .map_err(|e| refused(kernel::Error::from_io("fstatfs", e.into())))?
            .f_type as u64;
        if fs_type != TMPFS_MAGIC && fs_type != HUGETLBFS_MAGIC {
            return Err(refused(kernel::Error::NotMemfd));
        }
        self.limits
            .check(&[UdmabufRange {
                memfd,
                offset: 0,
                size,
            }])
            .map_err(refused)?;
        rustix::io::fcntl_dupfd_cloexec(memfd, 0)
            .map_err(|e| refused(kernel::Error::from_io("F_DUPFD_CLOEXEC", e.into())))
    }

    fn size_limit(&self) -> Option<u64> {
        Some(self.limits.size_limit)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::SealFlags;

    use super::*;
    use crate::kernel::Memfd;

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn fake_udmabuf_exports_the_memfd_itself() {
        let page = kernel::page_size();
        let memfd = Memfd::new("fake", 2 * page).unwrap();
        let dmabuf = FakeUdmabuf::new().export(memfd.as_fd(), 2 * page).unwrap();
        assert_eq!(inode(dmabuf.as_fd()), inode(memfd.as_fd()));
        let flags = rustix::io::fcntl_getfd(&dmabuf).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn fake_udmabuf_refuses_what_udmabuf_refuses() {
        let fake = FakeUdmabuf::new();
        let page = kernel::page_size();
        let refusal = |memfd: &Memfd, size| fake.export(memfd.as_fd(), size).unwrap_err();

        let unsealed = Memfd::new_unsealed("fake", page).unwrap();
        assert_eq!(
            refusal(&unsealed, page),
            Refusal::Udmabuf(kernel::Error::NotSealedShrink.to_string())
        );
        let sealed = Memfd::new("fake", 2 * page).unwrap();
        assert!(
            matches!(refusal(&sealed, page + 1), Refusal::Udmabuf(why) if why.contains("page size"))
        );
        assert!(
            matches!(refusal(&sealed, 4 * page), Refusal::Udmabuf(why) if why.contains("outside"))
        );
        assert_eq!(
            refusal(&sealed, 0),
            Refusal::Udmabuf(kernel::Error::Empty.to_string())
        );
        let write_sealed = Memfd::new("fake", page).unwrap();
        write_sealed.add_seals(SealFlags::WRITE).unwrap();
        assert_eq!(
            refusal(&write_sealed, page),
            Refusal::Udmabuf(kernel::Error::WriteSealed.to_string())
        );
        let limit = fake.size_limit().unwrap();
        let huge = Memfd::new("fake", limit + page).unwrap();
        assert!(
            matches!(refusal(&huge, limit + page), Refusal::Udmabuf(why) if why.contains("64 MiB"))
        );
        // Not shmem: a regular file (udmabuf answers EBADFD).
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(
            fake.export(file.as_fd(), page).unwrap_err(),
            Refusal::Udmabuf(kernel::Error::NotMemfd.to_string())
        );
    }
}
