// SPDX-License-Identifier: MPL-2.0
//! vmemexp (`/dev/vmemexp`, this project's kernel module in `vmemexp/`): any page-aligned range
//! of the calling process's memory as a dma-buf, its pages pinned until the last reference goes.
//!
//! The module's errnos become errors that say what to change: `EACCES` a mapping that is not
//! read-write, `EOPNOTSUPP` device memory or page cache, `ENOMEM` usually the user's
//! `RLIMIT_MEMLOCK`, `ENOSPC` the module's `max_total_mb`, `EFAULT` a hole, `E2BIG` the
//! module's `max_size_mb`, `EBADF` a device fd not open for writing.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;
use rustix::ioctl::{Updater, opcode};

use super::{Error, Result, open_device, page_size};

pub const VMEMEXP_PATH: &str = "/dev/vmemexp";
const PARAMS: &str = "/sys/module/vmemexp/parameters";
/// `max_size_mb`'s default in vmemexp.c.
const DEFAULT_MAX_SIZE_MB: u64 = 4096;

const VMEMEXP_EXPORT_WRITE: u32 = 1 << 0;

/// `struct vmemexp_export` (include/uapi/linux/vmemexp.h).
#[repr(C)]
#[derive(Default)]
struct VmemexpExport {
    addr: u64,
    len: u64,
    flags: u32,
    fd: i32,
    reserved: [u64; 2],
}

const VMEMEXP_IOC_EXPORT: rustix::ioctl::Opcode = opcode::read_write::<VmemexpExport>(0xDB, 0xD0);

/// What importers may do with an export's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAccess {
    /// An `O_RDONLY` dma-buf: CPU mappings of it can only read.
    ReadOnly,
    /// An `O_RDWR` dma-buf.
    ReadWrite,
}

/// An open `/dev/vmemexp`. Exports outlive it; one open device serves a whole element.
#[derive(Debug)]
pub struct Vmemexp {
    dev: OwnedFd,
    max_size: u64,
}

impl Vmemexp {
    pub fn open() -> Result<Vmemexp> {
        Vmemexp::open_path(Path::new(VMEMEXP_PATH))
    }

    pub fn open_path(path: &Path) -> Result<Vmemexp> {
        let dev = open_device(
            path,
            "load the vmemexp module (vmemexp/README.md: DKMS, or `make module` and insmod)",
        )?;
        let max_size = std::fs::read_to_string(Path::new(PARAMS).join("max_size_mb"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_MAX_SIZE_MB)
            << 20;
        Ok(Vmemexp { dev, max_size })
    }

    /// Largest range one export may cover, in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Exports the pages of `[addr, addr + len)` of this process as a new dma-buf
    /// (`O_CLOEXEC`). `addr` and `len` must be page aligned.
    ///
    /// # Safety
    ///
    /// While the dma-buf lives, importers read the pages, and devices may write them whatever
    /// `access` says (a V4L2 capture queue writes through an `O_RDONLY` dma-buf): the caller
    /// must not hand out dma-bufs of memory that Rust code holds as immutable and that an
    /// importer may write.
    pub unsafe fn export(&self, addr: usize, len: usize, access: PinAccess) -> Result<OwnedFd> {
        let page = page_size();
        for (what, value) in [("vmemexp start address", addr), ("vmemexp length", len)] {
            if !(value as u64).is_multiple_of(page) {
                return Err(Error::Unaligned {
                    what,
                    value: value as u64,
                    page_size: page,
                });
            }
        }
        if len == 0 {
            return Err(Error::Empty);
        }
        let mut arg = VmemexpExport {
            addr: addr as u64,
            len: len as u64,
            flags: match access {
                PinAccess::ReadOnly => 0,
                PinAccess::ReadWrite => VMEMEXP_EXPORT_WRITE,
            },
            ..Default::default()
        };
        // SAFETY: VMEMEXP_IOC_EXPORT takes a `struct vmemexp_export`, which `VmemexpExport`
        // mirrors; the kernel reads it and writes `fd` back.
        let done = unsafe {
            rustix::ioctl::ioctl(
                &self.dev,
                Updater::<{ VMEMEXP_IOC_EXPORT }, VmemexpExport>::new(&mut arg),
            )
        };
        match done {
            // SAFETY: on success `fd` is a new dma-buf fd that nothing else owns.
            Ok(()) => Ok(unsafe { OwnedFd::from_raw_fd(arg.fd) }),
            Err(errno) => Err(self.refusal(len as u64, errno)),
        }
    }

    fn refusal(&self, len: u64, errno: Errno) -> Error {
        let why = match errno {
            Errno::ACCESS => "part of it is not mapped read-write (vmemexp pins only memory its \
                              owner may write)"
                .to_string(),
            Errno::OPNOTSUPP => "part of it is device memory (VM_IO/VM_PFNMAP) or page cache of a \
                                 file that is not shmem, which cannot be pinned long-term"
                .to_string(),
            Errno::BADF => "/dev/vmemexp is not open for writing".to_string(),
            Errno::NOSPC => "all vmemexp exports together would exceed the module's \
                             max_total_mb (/sys/module/vmemexp/parameters/max_total_mb)"
                .to_string(),
            Errno::FAULT => "part of it is not mapped in this process".to_string(),
            Errno::TOOBIG => format!(
                "it exceeds vmemexp's max_size_mb ({} MiB)",
                self.max_size >> 20
            ),
            Errno::NOMEM => match memlock_limit() {
                Some(limit) => format!(
                    "pinning it would exceed RLIMIT_MEMLOCK ({limit} bytes, counted over every \
                     live vmemexp export of this user, from any of its processes, living or \
                     not, as long as someone holds the dma-buf): raise it (ulimit -l, \
                     systemd's LimitMEMLOCK=) or grant CAP_IPC_LOCK; or the kernel is out of \
                     memory"
                ),
                None => "the kernel is out of memory".to_string(),
            },
            Errno::MFILE | Errno::NFILE => {
                return Error::FdExhausted {
                    op: "vmemexp export",
                };
            }
            other => other.to_string(),
        };
        Error::PinRefused {
            len,
            errno: errno.raw_os_error(),
            why,
        }
    }
}

/// The soft RLIMIT_MEMLOCK, if it binds this process (no CAP_IPC_LOCK check: the kernel's
/// answer already told that it did).
fn memlock_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Memlock).current
}

/// Whether `fd` could be a vmemexp export (for tests and diagnostics): its dma-buf exporter
/// name, as fdinfo shows it, is the module's.
pub fn is_vmemexp_dmabuf(fd: super::DmaBuf<'_>) -> bool {
    super::dmabuf_exporter(fd).is_some_and(|e| e == "vmemexp")
}
