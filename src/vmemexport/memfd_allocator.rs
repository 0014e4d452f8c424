// SPDX-License-Identifier: MPL-2.0
//! The memory vmemexport proposes upstream: one sealed memfd per memory, page-granular, kept
//! mapped. It is GstFdMemory, so any element can map and write it, and udmabuf can export it.

use gst::glib;

use crate::kernel::Memfd;
use crate::memory;

glib::wrapper! {
    pub struct MemfdAllocator(ObjectSubclass<imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

impl MemfdAllocator {
    /// An allocator whose failures are errors of `owner` (see [`memory::AllocOwner`]).
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
}

mod imp {
    use std::sync::LazyLock;

    use gst::glib;
    use gst::subclass::prelude::*;
    use gst_allocators::subclass::prelude::*;
    use rustix::fs::SealFlags;

    use super::*;

    static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
        gst::DebugCategory::new(
            "vmemfdalloc",
            gst::DebugColorFlags::empty(),
            Some("memfd allocator"),
        )
    });

    #[derive(Default)]
    pub struct MemfdAllocator {
        pub(super) owner: memory::AllocOwner,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for MemfdAllocator {
        const NAME: &'static str = "GstVmemMemfdAllocator";
        type Type = super::MemfdAllocator;
        type ParentType = gst_allocators::FdAllocator;
    }

    impl ObjectImpl for MemfdAllocator {}
    impl GstObjectImpl for MemfdAllocator {}
    impl FdAllocatorImpl for MemfdAllocator {}

    // SAFETY: `alloc` returns NULL or a memory made by this allocator via
    // `gst_fd_allocator_alloc`, which the parent's `free` releases.
    unsafe impl AllocatorImpl for MemfdAllocator {
        unsafe fn alloc(
            &self,
            size: usize,
            params: &gst::AllocationParams,
        ) -> *mut gst::ffi::GstMemory {
            let flags = gst_allocators::FdMemoryFlags::KEEP_MAPPED;
            memory::alloc_fd_memory(
                &*self.obj(),
                *CAT,
                &self.owner,
                size,
                params,
                flags,
                |maxsize| {
                    let memfd = Memfd::new("vmemexport", maxsize as u64)?;
                    // Neither shrinking (udmabuf's rule) nor growing: the export covers the whole file.
                    memfd.add_seals(SealFlags::GROW)?;
                    Ok(memfd.into_fd())
                },
            )
        }
    }
}
