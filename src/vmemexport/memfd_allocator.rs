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

impl Default for MemfdAllocator {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl MemfdAllocator {
    /// Whether `mem` came from a MemfdAllocator (and so is a sealed memfd from offset 0).
    pub fn owns(mem: &gst::MemoryRef) -> bool {
        use gst::prelude::*;
        mem.allocator().is_some_and(|a| a.is::<MemfdAllocator>())
    }
}

mod imp {
    use std::sync::LazyLock;

    use gst::glib;
    use gst::glib::translate::*;
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
    pub struct MemfdAllocator;

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
            match self.alloc_memory(size, params) {
                Ok(mem) => mem.into_glib_ptr(),
                Err(err) => {
                    gst::error!(CAT, imp = self, "cannot allocate {size} bytes: {err}");
                    std::ptr::null_mut()
                }
            }
        }
    }

    impl MemfdAllocator {
        fn alloc_memory(
            &self,
            size: usize,
            params: &gst::AllocationParams,
        ) -> Result<gst::Memory, glib::BoolError> {
            let maxsize = memory::backing_size(size, params)
                .ok_or_else(|| glib::bool_error!("size overflows"))?;
            let memfd =
                Memfd::new("vmemexport", maxsize as u64).map_err(|e| glib::bool_error!("{e}"))?;
            // Neither shrinking (udmabuf's rule) nor growing: the export covers the whole file.
            memfd
                .add_seals(SealFlags::GROW)
                .map_err(|e| glib::bool_error!("{e}"))?;
            gst::trace!(CAT, imp = self, "memfd of {maxsize} bytes for {size}");
            memory::wrap_fd(
                &*self.obj(),
                memfd.into_fd(),
                maxsize,
                size,
                params,
                gst_allocators::FdMemoryFlags::KEEP_MAPPED,
            )
        }
    }
}
