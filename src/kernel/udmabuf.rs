// SPDX-License-Identifier: MPL-2.0
//! udmabuf (`/dev/udmabuf`): mainline's exporter of user memory as a dma-buf.
//!
//! The kernel's rules (drivers/dma-buf/udmabuf.c) are checked here first, so callers get an
//! error naming the broken rule instead of a bare EINVAL: offsets and sizes page aligned, total
//! size > 0 and within `size_limit_mb`, at most `list_limit` ranges, shmem/hugetlbfs memory only,
//! `F_SEAL_SHRINK` present, `F_SEAL_WRITE`/`F_SEAL_FUTURE_WRITE` absent.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::SealFlags;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

use super::{Error, Result, memfd::seals_of, open_device, page_size};

pub const UDMABUF_PATH: &str = "/dev/udmabuf";
const PARAMS: &str = "/sys/module/udmabuf/parameters";
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

// The defaults of drivers/dma-buf/udmabuf.c, used when the module exposes no parameters.
const DEFAULT_SIZE_LIMIT_MB: u64 = 64;
const DEFAULT_LIST_LIMIT: u64 = 1024;

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

#[repr(C)]
struct UdmabufCreateItem {
    memfd: u32,
    pad: u32,
    offset: u64,
    size: u64,
}

/// `struct udmabuf_create_list` without its flexible array: the opcode encodes only this.
#[repr(C)]
struct UdmabufCreateListHeader {
    flags: u32,
    count: u32,
}

const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
const UDMABUF_CREATE_LIST: Opcode = opcode::write::<UdmabufCreateListHeader>(b'u', 0x43);

/// An ioctl whose argument is a struct it only reads and whose return value is a new fd.
struct FdReturning<'a> {
    opcode: Opcode,
    arg: *mut std::ffi::c_void,
    _arg: std::marker::PhantomData<&'a mut ()>,
}

// SAFETY: the opcodes used with this are udmabuf's, whose argument is the struct `arg` points
// to; the kernel only reads it; a successful call returns a new fd that nothing else owns.
unsafe impl Ioctl for FdReturning<'_> {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<OwnedFd> {
        // SAFETY: per the trait contract `out` is the fd a successful ioctl returned.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// What the running udmabuf module accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdmabufLimits {
    /// Largest dma-buf in bytes.
    pub size_limit: u64,
    /// Most memfd ranges in one `UDMABUF_CREATE_LIST`.
    pub list_limit: u64,
}

impl UdmabufLimits {
    /// The defaults of drivers/dma-buf/udmabuf.c.
    pub const KERNEL_DEFAULTS: UdmabufLimits = UdmabufLimits {
        size_limit: DEFAULT_SIZE_LIMIT_MB << 20,
        list_limit: DEFAULT_LIST_LIMIT,
    };

    /// Reads the module parameters, falling back to the kernel's defaults.
    pub fn from_sysfs() -> UdmabufLimits {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new(PARAMS).join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        UdmabufLimits {
            size_limit: read("size_limit_mb").unwrap_or(DEFAULT_SIZE_LIMIT_MB) << 20,
            list_limit: read("list_limit").unwrap_or(DEFAULT_LIST_LIMIT),
        }
    }

    /// udmabuf's rules for exporting `ranges` within these limits, checked before the ioctl
    /// so that each failure has a name (and by stand-ins for udmabuf, so that they refuse
    /// what it refuses).
    pub fn check(&self, ranges: &[UdmabufRange<'_>]) -> Result<()> {
        if ranges.len() as u64 > self.list_limit {
            return Err(Error::ListTooLong {
                count: ranges.len(),
                limit: self.list_limit,
            });
        }
        let page = page_size();
        let mut total = 0u64;
        for r in ranges {
            for (what, value) in [("offset", r.offset), ("size", r.size)] {
                if value % page != 0 {
                    return Err(Error::Unaligned {
                        what,
                        value,
                        page_size: page,
                    });
                }
            }
            let seals = seals_of(r.memfd)?;
            if !seals.contains(SealFlags::SHRINK) {
                return Err(Error::NotSealedShrink);
            }
            if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
                return Err(Error::WriteSealed);
            }
            let file_size = rustix::fs::fstat(r.memfd)
                .map_err(|e| Error::from_io("fstat", e.into()))?
                .st_size as u64;
            if r.offset
                .checked_add(r.size)
                .is_none_or(|end| end > file_size)
            {
                return Err(Error::OutOfRange {
                    offset: r.offset,
                    size: r.size,
                    file_size,
                });
            }
            total = total.saturating_add(r.size);
        }
        if total == 0 {
            return Err(Error::Empty);
        }
        if total > self.size_limit {
            return Err(Error::TooLarge {
                size: total,
                limit_mb: self.size_limit >> 20,
            });
        }
        Ok(())
    }
}

/// One range of a memfd to export.
#[derive(Debug, Clone, Copy)]
pub struct UdmabufRange<'a> {
    pub memfd: BorrowedFd<'a>,
    pub offset: u64,
    pub size: u64,
}

/// An open `/dev/udmabuf`. Open it once and export many buffers through it.
#[derive(Debug)]
pub struct Udmabuf {
    dev: OwnedFd,
    limits: UdmabufLimits,
}

impl Udmabuf {
    pub fn open() -> Result<Udmabuf> {
        Udmabuf::open_path(Path::new(UDMABUF_PATH))
    }

    pub fn open_path(path: &Path) -> Result<Udmabuf> {
        let dev = open_device(path, "load the udmabuf module (CONFIG_UDMABUF=y or m)")?;
        Ok(Udmabuf {
            dev,
            limits: UdmabufLimits::from_sysfs(),
        })
    }

    /// Whether the device node exists (it may still be unusable: use `open` to know).
    pub fn is_present() -> bool {
        Path::new(UDMABUF_PATH).exists()
    }

    pub fn limits(&self) -> UdmabufLimits {
        self.limits
    }

    /// Exports `size` bytes of `memfd` from `offset` as a new dma-buf (`O_CLOEXEC`).
    pub fn create(&self, memfd: BorrowedFd<'_>, offset: u64, size: u64) -> Result<OwnedFd> {
        self.limits.check(&[UdmabufRange {
            memfd,
            offset,
            size,
        }])?;
        self.create_unchecked(memfd, offset, size)
    }

    /// Exports several memfd ranges, concatenated in order, as one dma-buf (`O_CLOEXEC`).
    pub fn create_list(&self, ranges: &[UdmabufRange<'_>]) -> Result<OwnedFd> {
        self.limits.check(ranges)?;
        const HEADER: usize = std::mem::size_of::<UdmabufCreateListHeader>();
        const ITEM: usize = std::mem::size_of::<UdmabufCreateItem>();
        const _: () = assert!(HEADER == 8 && ITEM == 24);
        // u64 words keep the header and the items 8-byte aligned, as the kernel's struct is.
        let mut arg = vec![0u64; (HEADER + ITEM * ranges.len()) / 8];
        let base = arg.as_mut_ptr().cast::<u8>();
        // SAFETY: `arg` is large and aligned enough for the header followed by the items.
        unsafe {
            base.cast::<UdmabufCreateListHeader>()
                .write(UdmabufCreateListHeader {
                    flags: UDMABUF_FLAGS_CLOEXEC,
                    count: ranges.len() as u32,
                });
            let items = base.add(HEADER).cast::<UdmabufCreateItem>();
            for (i, r) in ranges.iter().enumerate() {
                items.add(i).write(UdmabufCreateItem {
                    memfd: fd_u32(r.memfd),
                    pad: 0,
                    offset: r.offset,
                    size: r.size,
                });
            }
        }
        self.ioctl(UDMABUF_CREATE_LIST, base.cast())
    }

    /// A dma-buf of at least `size` bytes whose pages are never physically contiguous: one
    /// memfd's pages listed twice, so that its last page is followed by its first. A trial
    /// buffer for importers that may need contiguous memory (see [`super::output_import_trial`]);
    /// it costs half its size in memory.
    pub fn scattered(&self, size: u64) -> Result<OwnedFd> {
        let half = super::page_align(size.div_ceil(2).max(1)).ok_or(Error::TooLarge {
            size,
            limit_mb: self.limits.size_limit >> 20,
        })?;
        let memfd = super::Memfd::new("vmem-contiguity-trial", half)?;
        let range = UdmabufRange {
            memfd: memfd.as_fd(),
            offset: 0,
            size: half,
        };
        self.create_list(&[range, range])
    }

    /// `create` without this layer's checks, so tests can show the kernel enforces the same
    /// rules.
    #[doc(hidden)]
    pub fn create_unchecked(
        &self,
        memfd: BorrowedFd<'_>,
        offset: u64,
        size: u64,
    ) -> Result<OwnedFd> {
        let mut arg = UdmabufCreate {
            memfd: fd_u32(memfd),
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset,
            size,
        };
        self.ioctl(UDMABUF_CREATE, (&raw mut arg).cast())
    }

    fn ioctl(&self, opcode: Opcode, arg: *mut std::ffi::c_void) -> Result<OwnedFd> {
        let call = FdReturning {
            opcode,
            arg,
            _arg: std::marker::PhantomData,
        };
        // SAFETY: `arg` points to the udmabuf struct for `opcode`, alive for the call.
        unsafe { rustix::ioctl::ioctl(&self.dev, call) }.map_err(|e| match e {
            rustix::io::Errno::BADFD => Error::NotMemfd,
            e => Error::from_io("UDMABUF_CREATE", e.into()),
        })
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd() as u32
}
