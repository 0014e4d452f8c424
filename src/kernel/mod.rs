// SPDX-License-Identifier: MPL-2.0
//! The kernel interfaces this project drives, as one thin layer of safe wrappers: memfd and
//! seals, udmabuf, vmemexp, dma-heaps, dma-buf (sync, name, mmap), DRM PRIME import, a V4L2 queue's
//! import trial, fd passing and socket peer credentials.
//!
//! Nothing outside this module issues a raw `ioctl`. Every fd it creates is `O_CLOEXEC`.
//! Errors are typed and their text says what to do about them.

mod dmabuf;
mod drm;
mod fdpass;
mod heap;
mod memfd;
mod mmap;
mod peer;
mod udmabuf;
mod v4l2;
mod vmemexp;

use std::io;
use std::path::PathBuf;

pub use self::dmabuf::{
    DmaBuf, SYNC_TIMEOUT, SyncAccess, dmabuf_exporter, dmabuf_name, dmabuf_size, fdinfo_field,
    idle_dmabufs, is_dmabuf, read_dmabuf, set_dmabuf_name, sync_end, sync_start, sync_start_within,
    wait_idle,
};
pub use self::drm::{DrmNode, DrmUse, FbPlane, GemHandle, VgemFence};
pub use self::fdpass::{MAX_FDS, recv_with_fds, send_with_fds};
pub use self::heap::{CMA_HEAP_NAMES, Heap, available_heaps};
pub use self::memfd::Memfd;
pub use self::mmap::Mapping;
pub use self::peer::{PeerCred, group_id, peer_credentials, peer_groups};
pub use self::udmabuf::{UDMABUF_PATH, Udmabuf, UdmabufLimits, UdmabufRange};
pub use self::v4l2::{ImportTrial, output_import_trial};
pub use self::vmemexp::{PinAccess, VMEMEXP_PATH, Vmemexp, is_vmemexp_dmabuf};

/// What went wrong talking to the kernel, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is missing: {hint}")]
    DeviceMissing { path: PathBuf, hint: &'static str },
    #[error("permission denied on {path}: {hint}")]
    PermissionDenied { path: PathBuf, hint: String },
    #[error("heap '{name}' not found; available: {available}")]
    HeapNotFound { name: String, available: String },
    #[error("{what} {value} is not a multiple of the page size ({page_size} bytes)")]
    Unaligned {
        what: &'static str,
        value: u64,
        page_size: u64,
    },
    #[error("a udmabuf of size 0 is not possible")]
    Empty,
    #[error(
        "{size} bytes exceed udmabuf's limit of {limit_mb} MiB per dma-buf \
         (raise it with udmabuf.size_limit_mb=N on the kernel command line)"
    )]
    TooLarge { size: u64, limit_mb: u64 },
    #[error(
        "{count} memfd ranges exceed udmabuf's limit of {limit} per dma-buf \
         (udmabuf.list_limit)"
    )]
    ListTooLong { count: usize, limit: u64 },
    #[error("range {offset}+{size} lies outside the memfd ({file_size} bytes)")]
    OutOfRange {
        offset: u64,
        size: u64,
        file_size: u64,
    },
    #[error("fd is not a memfd (udmabuf exports only shmem or hugetlbfs memory)")]
    NotMemfd,
    #[error("memfd is not sealed against shrinking: udmabuf requires F_SEAL_SHRINK")]
    NotSealedShrink,
    #[error(
        "memfd is sealed against writing (F_SEAL_WRITE/F_SEAL_FUTURE_WRITE): udmabuf refuses it"
    )]
    WriteSealed,
    #[error("out of file descriptors during {op}: raise the limit (ulimit -n) or release buffers")]
    FdExhausted { op: &'static str },
    #[error("{op} failed: out of memory{hint}")]
    OutOfMemory { op: &'static str, hint: String },
    #[error(
        "{op}: a device was still using the dma-buf after {waited_ms} ms (its fences did not \
         signal)"
    )]
    Busy { op: &'static str, waited_ms: u64 },
    #[error("vmemexp cannot pin these {len} bytes: {why}")]
    PinRefused { len: u64, errno: i32, why: String },
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Maps an errno from an operation that created an fd or memory to the most helpful variant.
    pub(crate) fn from_io(op: &'static str, err: io::Error) -> Error {
        match err.raw_os_error() {
            Some(errno::EMFILE) | Some(errno::ENFILE) => Error::FdExhausted { op },
            Some(errno::ENOMEM) => Error::OutOfMemory {
                op,
                hint: String::new(),
            },
            _ => Error::Io { op, source: err },
        }
    }

    /// The errno behind this error, if the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::FdExhausted { .. } => Some(errno::EMFILE),
            Error::OutOfMemory { .. } => Some(errno::ENOMEM),
            Error::PermissionDenied { .. } => Some(errno::EACCES),
            Error::DeviceMissing { .. } | Error::HeapNotFound { .. } => Some(errno::ENOENT),
            Error::PinRefused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.raw_os_error() {
            Some(e) => io::Error::from_raw_os_error(e).kind(),
            None => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// errno values used to classify errors, taken from rustix like the rest of this module's
/// system calls (libc is only for what rustix lacks: see peer.rs).
mod errno {
    use rustix::io::Errno;
    pub const EMFILE: i32 = Errno::MFILE.raw_os_error();
    pub const ENFILE: i32 = Errno::NFILE.raw_os_error();
    pub const ENOMEM: i32 = Errno::NOMEM.raw_os_error();
    pub const EACCES: i32 = Errno::ACCESS.raw_os_error();
    pub const ENOENT: i32 = Errno::NOENT.raw_os_error();
}

/// The system page size: udmabuf offsets and sizes must be multiples of it.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// `value` rounded up to a whole number of pages; `None` if that does not fit in a u64.
pub fn page_align(value: u64) -> Option<u64> {
    let page = page_size();
    value.div_ceil(page).checked_mul(page)
}

/// Opens a device node read-write with `O_CLOEXEC`, turning the usual failures into errors
/// that name the device and the fix.
pub(crate) fn open_device(
    path: &std::path::Path,
    missing_hint: &'static str,
) -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::NODEV)
        | Err(rustix::io::Errno::NXIO) => Err(Error::DeviceMissing {
            path: path.into(),
            hint: missing_hint,
        }),
        Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => {
            Err(Error::PermissionDenied {
                path: path.into(),
                hint: access_hint(path),
            })
        }
        Err(e) => Err(Error::from_io("open", e.into())),
    }
}

fn access_hint(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(md) => format!(
            "read-write access is needed (mode {:o}, owner uid {} gid {}); add the user to the \
             device's group or install a udev rule",
            md.mode() & 0o777,
            md.uid(),
            md.gid()
        ),
        Err(_) => "read-write access is needed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_align_rounds_up() {
        let page = page_size();
        assert_eq!(page_align(0), Some(0));
        assert_eq!(page_align(1), Some(page));
        assert_eq!(page_align(page), Some(page));
        assert_eq!(page_align(page + 1), Some(2 * page));
        assert_eq!(
            page_align(u64::MAX / page * page),
            Some(u64::MAX / page * page)
        );
        assert_eq!(page_align(u64::MAX), None);
        assert_eq!(page_align(u64::MAX - page + 2), None);
    }

    #[test]
    fn errors_read_as_instructions() {
        let e = Error::HeapNotFound {
            name: "linux,cma".into(),
            available: "system, reserved".into(),
        };
        assert_eq!(
            e.to_string(),
            "heap 'linux,cma' not found; available: system, reserved"
        );
        let e = Error::TooLarge {
            size: 132_710_400,
            limit_mb: 64,
        };
        assert!(e.to_string().contains("udmabuf.size_limit_mb"), "{e}");
    }

    #[test]
    fn fd_exhaustion_is_recognised() {
        let e = Error::from_io("memfd_create", io::Error::from_raw_os_error(errno::EMFILE));
        assert!(matches!(e, Error::FdExhausted { .. }), "{e:?}");
    }
}
