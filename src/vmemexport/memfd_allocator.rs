// SPDX-License-Identifier: MPL-2.0
//! The memory vmemexport proposes upstream: one sealed memfd per memory, page-granular, kept
//! mapped. It is GstFdMemory, so any element can map and write it, and udmabuf can export it.

use gst::glib;

use crate::memory;

glib::wrapper! {
    pub struct MemfdAllocator(ObjectSubclass<imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

impl MemfdAllocator {
    /// An allocator whose failures are errors of `owner`.
    pub fn new(owner: &gst::Element) -> MemfdAllocator {
        use gst::subclass::prelude::ObjectSubclassIsExt;
        let allocator: MemfdAllocator = glib::Object::new();
        allocator.imp().owner.set(owner);
        allocator
    }

    /// Whether `mem` came from a MemfdAllocator (and so is a sealed memfd from offset 0).
    pub fn owns(mem: &gst::MemoryRef) -> bool {
        use gst::prelude::*;
        mem.allocator().is_some_and(|a| a.is::<MemfdAllocator>())
    }

    /// Frees the memories kept for reuse and stops keeping more: the element that made this
    /// allocator is done with it (the kept memories hold a reference to the allocator, so
    /// nothing else would ever free them).
    pub fn flush(&self) {
        use gst::subclass::prelude::ObjectSubclassIsExt;
        let imp = self.imp();
        imp.recycling.store(false, Ordering::SeqCst);
        let kept = std::mem::take(&mut *imp.free.lock().unwrap());
        drop(kept);
    }
}

/// Memories a MemfdAllocator keeps for reuse once released, at most: as many as a decoder's
/// pool holds. A released memory keeps its memfd and its cached dma-buf export, so the next
/// allocation of that size is the same pages under the same export, which importers (kmssink,
/// dmabufsink's clients) have cached.
const MAX_KEPT: usize = 16;

use std::sync::atomic::Ordering;

mod imp {
    use std::sync::atomic::AtomicBool;
    use std::sync::{LazyLock, Mutex};

    use std::os::fd::OwnedFd;

    use gst::glib;
    use gst::glib::translate::*;
    use gst::prelude::*;
    use gst::subclass::prelude::*;

    use super::*;
    use crate::kernel;

    static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
        gst::DebugCategory::new(
            "vmemfdalloc",
            gst::DebugColorFlags::empty(),
            Some("memfd allocator"),
        )
    });

    pub struct MemfdAllocator {
        pub(super) owner: memory::AllocOwner,
        /// Released memories kept for reuse, with their exports.
        pub(super) free: Mutex<Vec<gst::Memory>>,
        pub(super) recycling: AtomicBool,
    }

    impl Default for MemfdAllocator {
        fn default() -> Self {
            MemfdAllocator {
                owner: Default::default(),
                free: Mutex::new(Vec::new()),
                recycling: AtomicBool::new(true),
            }
        }
    }

    /// The memory's last reference is gone: keep it for reuse (return FALSE: GStreamer then
    /// does not free it) if its allocator still recycles and has room. Called from C on
    /// whichever thread drops the memory; takes one short lock and never panics across.
    unsafe extern "C" fn recycle(obj: *mut gst::ffi::GstMiniObject) -> glib::ffi::gboolean {
        let kept = std::panic::catch_unwind(|| {
            // SAFETY: `obj` is a GstMemory of a MemfdAllocator (only `adopt` sets this
            // dispose function), alive for the duration of this call.
            let mem = obj as *mut gst::ffi::GstMemory;
            let allocator = unsafe { (*mem).allocator };
            if allocator.is_null() || unsafe { !(*mem).parent.is_null() } {
                return false;
            }
            // SAFETY: the memory holds a reference to its allocator.
            let allocator: Borrowed<gst::Allocator> = unsafe { from_glib_borrow(allocator) };
            let Some(allocator) = allocator.downcast_ref::<super::MemfdAllocator>() else {
                return false;
            };
            let imp = allocator.imp();
            if !imp.recycling.load(Ordering::SeqCst) {
                return false;
            }
            let mut free = imp.free.lock().unwrap();
            if free.len() >= MAX_KEPT {
                return false;
            }
            // SAFETY: resurrect the memory with a new reference the list owns; GStreamer
            // does not free a memory whose dispose returns FALSE.
            free.push(unsafe { from_glib_full(gst::ffi::gst_memory_ref(mem)) });
            true
        });
        // A panic or a full list: let GStreamer free it.
        (!kept.unwrap_or(false)).into_glib()
    }

    memory::fd_allocator_subclass! {
        imp: MemfdAllocator,
        name: "GstVmemMemfdAllocator",
        wrapper: super::MemfdAllocator,
        parent: FdAllocator,
        through_gst_allocator_alloc: true,
    }

    impl memory::FdSource for MemfdAllocator {
        const FLAGS: gst_allocators::FdMemoryFlags = gst_allocators::FdMemoryFlags::KEEP_MAPPED;

        fn category() -> gst::DebugCategory {
            *CAT
        }

        fn owner(&self) -> &memory::AllocOwner {
            &self.owner
        }

        fn make_fd(&self, maxsize: usize) -> Result<OwnedFd, kernel::Error> {
            Ok(memory::export_memfd(maxsize)?.into_fd())
        }

        fn reuse(&self, size: usize, params: &gst::AllocationParams) -> Option<gst::Memory> {
            let maxsize = memory::backing_size(size, params)?;
            let mut mem = {
                let mut free = self.free.lock().unwrap();
                let i = free.iter().position(|m| m.maxsize() == maxsize)?;
                free.swap_remove(i)
            };
            mem.get_mut()?
                .resize(params.prefix()..params.prefix() + size);
            Some(mem)
        }

        fn adopt(&self, mem: &mut gst::Memory) {
            // SAFETY: a new memory no one else sees yet.
            unsafe { (*mem.as_mut_ptr()).mini_object.dispose = Some(recycle) };
        }
    }
}
