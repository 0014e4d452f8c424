// SPDX-License-Identifier: MPL-2.0
//! GstMemory plumbing shared by the allocators and elements: fds wrapped as memories, and
//! telling dma-buf memory apart.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::Mutex;

use gst::glib;
use gst::glib::translate::*;
use gst::subclass::prelude::*;

use gst_allocators::prelude::*;

use crate::kernel;

/// The size to allocate for `size` bytes with `params`' prefix and padding, in whole pages:
/// udmabuf exports and dma-heap buffers are page-granular.
pub(crate) fn backing_size(size: usize, params: &gst::AllocationParams) -> Option<usize> {
    let total = size
        .checked_add(params.prefix())?
        .checked_add(params.padding())?;
    usize::try_from(kernel::page_align(total as u64)?).ok()
}

/// The element an allocator works for. A pool whose allocation fails returns only
/// `GST_FLOW_ERROR` to the element that asked for a buffer (often upstream, which then reports
/// "Internal data stream error"), so the allocator posts the reason as this element's error.
#[derive(Default)]
pub(crate) struct AllocOwner(Mutex<glib::WeakRef<gst::Element>>);

impl AllocOwner {
    pub fn set(&self, element: &gst::Element) {
        *self.0.lock().unwrap() = element.downgrade();
    }

    pub fn get(&self) -> Option<gst::Element> {
        self.0.lock().unwrap().upgrade()
    }
}

/// What sets one of this crate's fd-backed allocators apart (`Self` is its imp struct):
/// [`fd_allocator_subclass!`] makes the GObject type around it, and its `alloc` is
/// [`alloc_fd_memory`].
pub(crate) trait FdSource: ObjectSubclass {
    /// How its memories are mapped.
    const FLAGS: gst_allocators::FdMemoryFlags;

    /// Where its failures are logged.
    fn category() -> gst::DebugCategory;

    /// The element its failures are errors of.
    fn owner(&self) -> &AllocOwner;

    /// A new fd of `maxsize` bytes (whole pages).
    fn make_fd(&self, maxsize: usize) -> Result<OwnedFd, kernel::Error>;

    /// A released memory kept for reuse that fits `size` bytes with `params`, resized to
    /// them, to hand out instead of a new one. None by default: nothing is kept.
    fn reuse(&self, _size: usize, _params: &gst::AllocationParams) -> Option<gst::Memory> {
        None
    }

    /// Prepares a new memory, not yet seen by anyone, before it is handed out.
    fn adopt(&self, _mem: &mut gst::Memory) {}
}

/// The body of an [`FdSource`] allocator's `alloc`: a kept memory if [`FdSource::reuse`] has
/// one, else [`FdSource::make_fd`] creates the backing fd of `maxsize` bytes (whole pages,
/// room for `params`' prefix and padding), which becomes a memory whose data starts at the
/// prefix and is `size` bytes long. Failures (a zero or absurd size included) are logged,
/// posted as an error of the owner if there is one, and give NULL, as GstAllocator's `alloc`
/// reports them. It is called from C (`gst_allocator_alloc`), so a panic is caught here and
/// becomes NULL too.
pub(crate) fn alloc_fd_memory<A>(
    imp: &A,
    size: usize,
    params: &gst::AllocationParams,
) -> *mut gst::ffi::GstMemory
where
    A: FdSource,
    A::Type: IsA<gst_allocators::FdAllocator>,
{
    let allocator = imp.obj();
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(mem) = imp.reuse(size, params) {
            return Ok(mem);
        }
        let mut mem = alloc_fd(&*allocator, size, params, A::FLAGS, |maxsize| {
            imp.make_fd(maxsize)
        })?;
        imp.adopt(&mut mem);
        Ok(mem)
    }));
    let err = match attempt {
        Ok(Ok(mem)) => return mem.into_glib_ptr(),
        Ok(Err(err)) => err,
        Err(_) => AllocError::Bug,
    };
    gst::error!(
        A::category(),
        obj = &*allocator,
        "cannot allocate {size} bytes: {err}"
    );
    // A request no one can satisfy is the caller's bug, reported to it by NULL; an element
    // error is for what the system lacks (memory, fds, permissions), which the user can fix.
    if !matches!(err, AllocError::Size(_))
        && let Some(owner) = imp.owner().get()
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

/// The GObject type of an fd-backed allocator whose imp struct is an [`FdSource`]: registered
/// as `name`, a subclass of `parent` (`FdAllocator` or `DmaBufAllocator`), allocating through
/// [`alloc_fd_memory`]. With `through_gst_allocator_alloc: true` its `ObjectImpl` is made too,
/// and marks it as [`allocate_through_gst_allocator_alloc`] says; with `false` the allocator
/// writes its own (properties, say).
macro_rules! fd_allocator_subclass {
    (
        imp: $imp:ident,
        name: $name:literal,
        wrapper: $wrapper:ty,
        parent: $parent:ident,
        through_gst_allocator_alloc: $through:tt $(,)?
    ) => {
        #[gst::glib::object_subclass]
        impl gst::glib::subclass::types::ObjectSubclass for $imp {
            const NAME: &'static str = $name;
            type Type = $wrapper;
            type ParentType = gst_allocators::$parent;
        }

        impl gst::subclass::prelude::GstObjectImpl for $imp {}
        impl gst_allocators::subclass::prelude::FdAllocatorImpl for $imp {}
        $crate::memory::fd_allocator_subclass!(@parent $parent $imp);
        $crate::memory::fd_allocator_subclass!(@object $through $imp);

        // SAFETY: `alloc` returns NULL or a memory made by this allocator via
        // `gst_fd_allocator_alloc` (or one it made earlier and kept), which the parent's
        // `free` releases.
        unsafe impl gst::subclass::prelude::AllocatorImpl for $imp {
            unsafe fn alloc(
                &self,
                size: usize,
                params: &gst::AllocationParams,
            ) -> *mut gst::ffi::GstMemory {
                $crate::memory::alloc_fd_memory(self, size, params)
            }
        }
    };
    (@parent FdAllocator $imp:ident) => {};
    (@parent DmaBufAllocator $imp:ident) => {
        impl gst_allocators::subclass::prelude::DmaBufAllocatorImpl for $imp {}
    };
    (@object false $imp:ident) => {};
    (@object true $imp:ident) => {
        impl gst::glib::subclass::object::ObjectImpl for $imp {
            fn constructed(&self) {
                use gst::glib::prelude::*;
                use gst::glib::subclass::prelude::*;
                self.parent_constructed();
                $crate::memory::allocate_through_gst_allocator_alloc(self.obj().upcast_ref());
            }
        }
    };
}
pub(crate) use fd_allocator_subclass;

/// A memfd of `size` bytes for udmabuf to export: sealed against shrinking (udmabuf's rule)
/// and growing, so an export of the whole file covers it for good.
pub(crate) fn export_memfd(size: usize) -> Result<kernel::Memfd, kernel::Error> {
    let memfd = kernel::Memfd::new("vmemexport", size as u64)?;
    memfd.add_seals(rustix::fs::SealFlags::GROW)?;
    Ok(memfd)
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

/// Marks `allocator` (a GstFdAllocator subclass, which GStreamer flags as allocating only
/// through its own API) as one that allocates through `gst_allocator_alloc` like any other:
/// a pool's allocator, and where a deep copy of its memory lands (GstVideoDecoder makes one
/// when a decoder still holds the frame mapped for writing), so the copy is exportable too.
pub(crate) fn allocate_through_gst_allocator_alloc(allocator: &gst::Allocator) {
    allocator.unset_object_flags(gst::ObjectFlags::from_bits_retain(
        gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC,
    ));
}

/// Names a fresh dma-buf, so it can be recognised in debugfs and fdinfo: a debugging aid, so
/// a kernel that cannot name it changes nothing.
pub(crate) fn name_dmabuf(fd: &std::os::fd::OwnedFd, name: &str) {
    use std::os::fd::AsFd;
    let _ = kernel::set_dmabuf_name(kernel::DmaBuf::known(fd.as_fd()), name);
}

/// A Rust value GStreamer keeps on a memory or buffer (as its qdata under a quark) until the
/// object is finalized or the value replaced; then [`Attached::released`] gets it back.
pub(crate) trait Attached: Sized + Send + 'static {
    /// Takes the value back when GStreamer lets it go; drops it unless said otherwise. It runs
    /// inside a C callback on whichever thread drops the object: it must not block, and a
    /// panic is caught there.
    fn released(self) {}
}

/// Attaches `value` to `obj` under `quark`, releasing what was attached there before.
pub(crate) fn attach<T: Attached>(obj: &gst::MiniObjectRef, quark: glib::Quark, value: T) {
    unsafe extern "C" fn release<T: Attached>(data: glib::ffi::gpointer) {
        // SAFETY: `data` is the box `attach` stored for this `T`; GLib calls this once.
        let value = unsafe { Box::from_raw(data.cast::<T>()) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || value.released()));
    }
    // SAFETY: `obj` is a valid mini object; the qdata owns the box until `release` takes it
    // back (the qdata replaced or `obj` finalized).
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            obj.as_mut_ptr(),
            quark.into_glib(),
            Box::into_raw(Box::new(value)).cast(),
            Some(release::<T>),
        );
    }
}

/// The value attached to `obj` under `quark`, if any.
///
/// # Safety
/// Only [`attach`] with this `T` attaches anything to such objects under `quark`, and nothing
/// replaces it while the returned borrow lives (the caller holds the only use of `obj`).
pub(crate) unsafe fn attached<T: Attached>(
    obj: &gst::MiniObjectRef,
    quark: glib::Quark,
) -> Option<&T> {
    // SAFETY: by the caller's promise the qdata is NULL or a live `Box<T>` owned by `obj`.
    unsafe {
        gst::ffi::gst_mini_object_get_qdata(obj.as_mut_ptr(), quark.into_glib())
            .cast::<T>()
            .as_ref()
    }
}

/// The dma-buf fd of `mem`, if it is dma-buf memory.
pub fn dmabuf_fd(mem: &gst::MemoryRef) -> Option<kernel::DmaBuf<'_>> {
    let fd = mem
        .downcast_memory_ref::<gst_allocators::DmaBufMemory>()?
        .fd();
    // SAFETY: the fd belongs to `mem`, which outlives the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Some(kernel::DmaBuf::known(fd))
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
pub(crate) fn buffer_ref(buffer: &gst::BufferRef) -> gst::Buffer {
    // SAFETY: `buffer` is a valid buffer; from_glib_none takes a new reference.
    unsafe { from_glib_none(buffer.as_ptr()) }
}

/// A new reference to `mem` (not a copy, which for dma-buf memory would be a pixel copy).
pub(crate) fn memory_ref(mem: &gst::MemoryRef) -> gst::Memory {
    // SAFETY: `mem` is a valid memory; from_glib_none takes a new reference.
    unsafe { from_glib_none(mem.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attached_value_is_released_once_when_replaced_or_its_object_freed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RELEASED: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
        struct Tag(usize);
        impl Attached for Tag {
            fn released(self) {
                RELEASED[self.0].fetch_add(1, Ordering::SeqCst);
            }
        }
        gst::init().unwrap();
        let quark = glib::Quark::from_str("GstVmemAttachTest");
        let count = |i: usize| RELEASED[i].load(Ordering::SeqCst);
        let mem = gst::Memory::with_size(16);
        attach(mem.upcast_ref(), quark, Tag(0));
        // SAFETY: only this test attaches under `quark`, always a Tag.
        assert_eq!(
            unsafe { attached::<Tag>(mem.upcast_ref(), quark) }.map(|t| t.0),
            Some(0)
        );
        attach(mem.upcast_ref(), quark, Tag(1));
        assert_eq!((count(0), count(1)), (1, 0), "the replaced value, released");
        // SAFETY: as above.
        assert_eq!(
            unsafe { attached::<Tag>(mem.upcast_ref(), quark) }.map(|t| t.0),
            Some(1)
        );
        drop(mem);
        assert_eq!((count(0), count(1)), (1, 1), "released with its memory");
        let other = gst::Memory::with_size(16);
        // SAFETY: as above.
        assert!(unsafe { attached::<Tag>(other.upcast_ref(), quark) }.is_none());
    }

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
