// SPDX-License-Identifier: MPL-2.0
//! `dmaheap`: a GstAllocator handing out DmaBufMemory from `/dev/dma_heap/<name>`.
//!
//! It is a GstDmaBufAllocator subclass, so its memory is ordinary dma-buf memory to every
//! downstream element (`gst_is_dmabuf_memory()` is true) and maps through GStreamer's dma-buf
//! map, which brackets CPU access with `DMA_BUF_IOCTL_SYNC` in the mapped direction.
//!
//! The plugin registers one instance under the name `dmaheap` (heap `auto`):
//! `gst_allocator_find("dmaheap")` from C, `Gst.Allocator.find("dmaheap")` from Python.
//! Create more with [`DmaHeapAllocator::new`] (Rust) or
//! `g_object_new(g_type_from_name("GstDmaHeapAllocator"), "heap", "system", NULL)` (C).
//!
//! The `heap` property takes a heap name, an ordered list ("linux,cma,reserved,system") or
//! `auto`: a physically contiguous CMA heap if there is one, else `system`.

use gst::glib;
use gst::subclass::prelude::ObjectSubclassIsExt;

use crate::kernel;

mod imp;
mod selection;

pub use selection::{HeapSelection, open_heap};

glib::wrapper! {
    pub struct DmaHeapAllocator(ObjectSubclass<imp::DmaHeapAllocator>)
        @extends gst_allocators::DmaBufAllocator, gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

/// The name the plugin registers its allocator under.
pub const ALLOCATOR_NAME: &str = "dmaheap";

impl DmaHeapAllocator {
    /// An allocator for `heap` (a name, an ordered comma-separated list, or "auto"). The heap is
    /// opened now, so a missing heap is reported here, listing the heaps that exist.
    pub fn new(heap: &str) -> Result<DmaHeapAllocator, kernel::Error> {
        let allocator: DmaHeapAllocator = glib::Object::builder().property("heap", heap).build();
        allocator.imp().heap()?;
        Ok(allocator)
    }

    /// The heap memory comes from, opening it if that has not happened yet.
    pub fn heap_name(&self) -> Result<String, kernel::Error> {
        Ok(self.imp().heap()?.name().to_string())
    }

    /// Checks that the heap can supply `size` bytes right now, by allocating and freeing them:
    /// the error says what is short (e.g. an exhausted CMA area) while a pipeline can still
    /// report it clearly.
    pub fn check_capacity(&self, size: usize) -> Result<(), kernel::Error> {
        self.check_capacity_for(size, 1)
    }

    /// Like [`check_capacity`](Self::check_capacity), for `count` buffers held at once.
    pub fn check_capacity_for(&self, size: usize, count: usize) -> Result<(), kernel::Error> {
        let heap = self.imp().heap()?;
        let size = kernel::page_align(size as u64)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| kernel::Error::OutOfMemory {
                op: "dma-heap allocation",
                hint: format!(": {size} bytes cannot be rounded up to whole pages"),
            })?;
        let held = (0..count)
            .map(|_| heap.allocate(size))
            .collect::<Result<Vec<_>, _>>()?;
        drop(held);
        Ok(())
    }

    /// Makes allocation failures errors of `element` (the element whose pool this allocator
    /// fills), not only log lines: the element asking the pool for a buffer may be another.
    pub fn set_owner(&self, element: &impl glib::prelude::IsA<gst::Element>) {
        use glib::prelude::Cast;
        self.imp().owner.set(element.upcast_ref());
    }

    /// Whether the chosen heap is physically contiguous (a CMA heap).
    pub fn is_contiguous(&self) -> Result<bool, kernel::Error> {
        Ok(self.imp().heap()?.is_contiguous())
    }
}

pub fn register() {
    // Registration hands a reference to GStreamer's allocator table, which keeps it for the life
    // of the process; find it again with `gst::Allocator::find(Some("dmaheap"))`.
    let allocator: DmaHeapAllocator = glib::Object::new();
    gst::Allocator::register(ALLOCATOR_NAME, allocator);
}
