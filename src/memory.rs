// SPDX-License-Identifier: MPL-2.0
//! GstMemory plumbing shared by the allocators and elements: wrapping fds as memories, and
//! attaching per-memory data (a memory's dma-buf export) the way kmssink caches framebuffers.

use std::ffi::c_void;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::glib;
use gst::glib::translate::*;

use gst_allocators::prelude::*;

use crate::kernel;

/// The size to allocate for `size` bytes with `params`' prefix and padding, in whole pages:
/// udmabuf exports and dma-heap buffers are page-granular.
pub fn backing_size(size: usize, params: &gst::AllocationParams) -> Option<usize> {
    let total = size
        .checked_add(params.prefix())?
        .checked_add(params.padding())?;
    usize::try_from(kernel::page_align(total as u64)?).ok()
}

/// The element an allocator works for. A pool whose allocation fails returns only
/// `GST_FLOW_ERROR` to the element that asked for a buffer (often upstream, which then reports
/// "Internal data stream error"), so the allocator posts the reason as this element's error.
#[derive(Default)]
pub struct AllocOwner(Mutex<glib::WeakRef<gst::Element>>);

impl AllocOwner {
    pub fn set(&self, element: &gst::Element) {
        *self.0.lock().unwrap() = element.downgrade();
    }

    pub fn get(&self) -> Option<gst::Element> {
        self.0.lock().unwrap().upgrade()
    }
}

/// The body of an fd-backed allocator's `alloc`: `make_fd(maxsize)` creates the backing fd
/// of `maxsize` bytes (whole pages, room for `params`' prefix and padding), which becomes a
/// memory of `allocator` whose data starts at the prefix and is `size` bytes long. Failures
/// (a zero or absurd size included) are logged on `cat`, posted as an error of `owner` if
/// there is one, and give NULL, as GstAllocator's `alloc` reports them. It is called from C
/// (`gst_allocator_alloc`), so a panic is caught here and becomes NULL too.
pub fn alloc_fd_memory(
    allocator: &impl IsA<gst_allocators::FdAllocator>,
    cat: gst::DebugCategory,
    owner: &AllocOwner,
    size: usize,
    params: &gst::AllocationParams,
    flags: gst_allocators::FdMemoryFlags,
    make_fd: impl FnOnce(usize) -> Result<OwnedFd, kernel::Error>,
) -> *mut gst::ffi::GstMemory {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        alloc_fd(allocator, size, params, flags, make_fd)
    }));
    let err = match attempt {
        Ok(Ok(mem)) => return mem.into_glib_ptr(),
        Ok(Err(err)) => err,
        Err(_) => AllocError::Bug,
    };
    gst::error!(cat, obj = allocator, "cannot allocate {size} bytes: {err}");
    // A request no one can satisfy is the caller's bug, reported to it by NULL; an element
    // error is for what the system lacks (memory, fds, permissions), which the user can fix.
    if !matches!(err, AllocError::Size(_))
        && let Some(owner) = owner.get()
    {
        let text = format!("Cannot allocate a {size}-byte frame: {err}");
        match err.resource_error() {
            gst::ResourceError::NotAuthorized => {
                gst::element_error!(owner, gst::ResourceError::NotAuthorized, ("{text}"))
            }
            gst::ResourceError::NotFound => {
                gst::element_error!(owner, gst::ResourceError::NotFound, ("{text}"))
            }
            gst::ResourceError::NoSpaceLeft => {
                gst::element_error!(owner, gst::ResourceError::NoSpaceLeft, ("{text}"))
            }
            _ => gst::element_error!(owner, gst::ResourceError::Failed, ("{text}")),
        }
    }
    std::ptr::null_mut()
}

/// Why an fd-backed allocation failed.
#[derive(Debug, thiserror::Error)]
enum AllocError {
    #[error("{0}")]
    Size(String),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error("{0}")]
    Gst(String),
    #[error("internal error (a panic in the allocator); please report it")]
    Bug,
}

impl AllocError {
    /// The GStreamer error domain code that says what failed.
    fn resource_error(&self) -> gst::ResourceError {
        match self {
            AllocError::Kernel(e) => match e {
                kernel::Error::PermissionDenied { .. } => gst::ResourceError::NotAuthorized,
                kernel::Error::DeviceMissing { .. } | kernel::Error::HeapNotFound { .. } => {
                    gst::ResourceError::NotFound
                }
                kernel::Error::OutOfMemory { .. } | kernel::Error::TooLarge { .. } => {
                    gst::ResourceError::NoSpaceLeft
                }
                // Fd exhaustion and the rest: the text names the cause and the fix.
                _ => gst::ResourceError::Failed,
            },
            _ => gst::ResourceError::Failed,
        }
    }
}

fn alloc_fd(
    allocator: &impl IsA<gst_allocators::FdAllocator>,
    size: usize,
    params: &gst::AllocationParams,
    flags: gst_allocators::FdMemoryFlags,
    make_fd: impl FnOnce(usize) -> Result<OwnedFd, kernel::Error>,
) -> Result<gst::Memory, AllocError> {
    if size == 0 {
        return Err(AllocError::Size("0 bytes: nothing to allocate".into()));
    }
    // Real frames are far below this; anything larger is a corrupt size, not a request.
    let maxsize = backing_size(size, params)
        .filter(|&m| m <= isize::MAX as usize)
        .ok_or_else(|| {
            AllocError::Size(format!(
                "{size} bytes (with prefix and padding, in whole pages) exceed the address space"
            ))
        })?;
    let fd = make_fd(maxsize)?;
    // SAFETY: the fd is valid and owned; the memory takes it over and closes it when freed.
    let mut mem = unsafe { allocator.alloc_fd(fd.into_raw_fd(), maxsize, flags) }
        .map_err(|e| AllocError::Gst(e.to_string()))?;
    mem.get_mut()
        .ok_or_else(|| AllocError::Gst("a fresh memory is not writable".into()))?
        .resize(params.prefix()..params.prefix() + size);
    Ok(mem)
}

/// The one quark under which vmemexport caches a memory's dma-buf export.
static EXPORT_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("GstVmemExport"));

/// A memory's dma-buf export, and the memory's offset and size it was made for: a memory that
/// was resized since holds its frame elsewhere, so the export no longer describes it.
struct CachedExport {
    export: gst::Memory,
    offset: usize,
    size: usize,
}

/// The dma-buf memory cached on `mem`, if any and it still describes `mem`'s bytes.
pub fn cached_export(mem: &gst::MemoryRef) -> Option<gst::Memory> {
    // SAFETY: the qdata under this quark is only ever set by `cache_export`, as a
    // `Box<CachedExport>` that lives as long as `mem` (or until replaced).
    let cached = unsafe {
        let ptr =
            gst::ffi::gst_mini_object_get_qdata(mem.as_mut_ptr().cast(), EXPORT_QUARK.into_glib());
        (ptr as *const CachedExport).as_ref()?
    };
    (cached.offset == mem.offset() && cached.size == mem.size()).then(|| cached.export.clone())
}

/// Caches `export` on `mem`: it is released when `mem` is freed (its pool buffer destroyed,
/// the producer's frame freed) or a new export replaces it.
pub fn cache_export(mem: &gst::MemoryRef, export: gst::Memory) {
    unsafe extern "C" fn release(data: *mut c_void) {
        // SAFETY: `data` is the box `cache_export` stored; GLib calls this once. Dropping
        // memory cannot panic across this boundary: it only unrefs.
        drop(unsafe { Box::from_raw(data as *mut CachedExport) });
    }
    let cached = Box::new(CachedExport {
        export,
        offset: mem.offset(),
        size: mem.size(),
    });
    // SAFETY: the stored box is released by `release` when the qdata is replaced or `mem` is
    // finalized.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            mem.as_mut_ptr().cast(),
            EXPORT_QUARK.into_glib(),
            Box::into_raw(cached).cast(),
            Some(release),
        );
    }
}

static FENCE_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("GstVmemFenceGuard"));

/// How long a released buffer's pages are kept from recycling while devices still use them.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Released buffers the reaper holds at most; past it pages are let go at once.
const MAX_HELD: usize = 256;

/// What a guarded buffer keeps from recycling until devices are done with `dmabuf`.
struct Held {
    dmabuf: gst::Memory,
    _keep: gst::Buffer,
}

/// Makes `buffer`'s release keep `keep` (the upstream buffer whose pages `dmabuf` exports)
/// from going back to its pool until devices are done with `dmabuf` (its fences signalled), at
/// most [`FENCE_TIMEOUT`]: what GStreamer 1.28's VideoDmabufPool does with a sync file.
/// GStreamer runs this notify before it frees the buffer's metas. The release itself never
/// waits: a busy dma-buf is handed to the reaper thread, so whichever thread drops the last
/// reference (streaming, the socket thread under its lock, stop()) goes on at once.
pub fn guard_release(buffer: &mut gst::BufferRef, dmabuf: gst::Memory, keep: gst::Buffer) {
    unsafe extern "C" fn release(data: *mut c_void) {
        // SAFETY: `data` is the box `guard_release` stored, released once, here.
        let held = unsafe { Box::from_raw(data.cast::<Held>()) };
        let idle = dmabuf_fd(&held.dmabuf).is_none_or(|fd| kernel::wait_idle(fd, Duration::ZERO));
        if !idle {
            reaper_hold(*held);
        }
    }
    let held = Box::new(Held {
        dmabuf,
        _keep: keep,
    });
    // SAFETY: the stored pointer owns the box, consumed by `release`.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            buffer.as_mut_ptr().cast(),
            FENCE_QUARK.into_glib(),
            Box::into_raw(held).cast(),
            Some(release),
        );
    }
}

/// Hands `held` to the reaper thread, which lets it go once its dma-buf is idle or
/// [`FENCE_TIMEOUT`] has passed. Never blocks.
fn reaper_hold(held: Held) {
    static REAPER: LazyLock<Option<mpsc::SyncSender<(Held, Instant)>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::sync_channel(MAX_HELD);
        std::thread::Builder::new()
            .name("vmem-fence-reaper".into())
            .spawn(move || reap(rx))
            .ok()
            .map(|_| tx)
    });
    let deadline = Instant::now() + FENCE_TIMEOUT;
    if let Some(Err(e)) = REAPER.as_ref().map(|tx| tx.try_send((held, deadline))) {
        // Dropping it here recycles pages a device may still read: better than blocking a
        // thread that must not wait, and only reached with MAX_HELD buffers already held.
        gst::warning!(
            gst::CAT_RUST,
            "{MAX_HELD} released buffers already wait for devices: letting one go early ({})",
            if matches!(e, mpsc::TrySendError::Full(_)) {
                "queue full"
            } else {
                "reaper gone"
            }
        );
    }
}

/// The reaper: holds busy buffers and lets each go when its fences signal or its deadline
/// passes, waiting on all of them at once.
fn reap(rx: mpsc::Receiver<(Held, Instant)>) {
    /// How long new arrivals may wait to be looked at while others are being waited for.
    const SLICE: Duration = Duration::from_millis(20);
    let mut held: Vec<(Held, Instant)> = Vec::new();
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(h) => held.push(h),
                Err(_) => return,
            }
        }
        held.extend(rx.try_iter());
        let now = Instant::now();
        let first = held.iter().map(|(_, d)| *d).min().unwrap_or(now);
        let wait = first.saturating_duration_since(now).min(SLICE);
        // Only dma-buf memory is ever handed over (see `guard_release`).
        held.retain(|(h, _)| dmabuf_fd(&h.dmabuf).is_some());
        let idle = {
            let fds: Vec<_> = held
                .iter()
                .filter_map(|(h, _)| dmabuf_fd(&h.dmabuf))
                .collect();
            kernel::idle_dmabufs(&fds, wait)
        };
        let now = Instant::now();
        let mut i = 0;
        held.retain(|(_, deadline)| {
            let keep = !idle[i] && now < *deadline;
            i += 1;
            keep
        });
    }
}

/// The dma-buf fd of `mem`, if it is dma-buf memory.
pub fn dmabuf_fd(mem: &gst::MemoryRef) -> Option<std::os::fd::BorrowedFd<'_>> {
    let fd = mem
        .downcast_memory_ref::<gst_allocators::DmaBufMemory>()?
        .fd();
    // SAFETY: the fd belongs to `mem`, which outlives the borrow.
    Some(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Whether every memory of `buffer` is dma-buf memory.
pub fn is_all_dmabuf(buffer: &gst::BufferRef) -> bool {
    buffer.n_memory() > 0
        && buffer.iter_memories().all(|m| {
            m.downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                .is_some()
        })
}

/// A new reference to `buffer` (not a copy: `ToOwned` on a `BufferRef` copies).
pub fn buffer_ref(buffer: &gst::BufferRef) -> gst::Buffer {
    // SAFETY: `buffer` is a valid buffer; from_glib_none takes a new reference.
    unsafe { from_glib_none(buffer.as_ptr()) }
}

/// A new reference to `mem` (not a copy, which for dma-buf memory would be a pixel copy).
pub fn memory_ref(mem: &gst::MemoryRef) -> gst::Memory {
    // SAFETY: `mem` is a valid memory; from_glib_none takes a new reference.
    unsafe { from_glib_none(mem.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_are_classified_by_cause() {
        let err = |e: kernel::Error| AllocError::Kernel(e).resource_error();
        assert_eq!(
            err(kernel::Error::FdExhausted { op: "memfd_create" }),
            gst::ResourceError::Failed
        );
        assert_eq!(
            err(kernel::Error::PermissionDenied {
                path: "/dev/dma_heap/system".into(),
                hint: String::new()
            }),
            gst::ResourceError::NotAuthorized
        );
        assert_eq!(
            err(kernel::Error::OutOfMemory {
                op: "DMA_HEAP_IOCTL_ALLOC",
                hint: String::new()
            }),
            gst::ResourceError::NoSpaceLeft
        );
        assert_eq!(
            AllocError::Size("0 bytes".into()).resource_error(),
            gst::ResourceError::Failed
        );
    }
}
