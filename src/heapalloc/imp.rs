// SPDX-License-Identifier: MPL-2.0

use std::os::fd::OwnedFd;
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::kernel::{self, Heap};
use crate::memory;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmaheap",
        gst::DebugColorFlags::empty(),
        Some("dma-heap allocator"),
    )
});

const DEFAULT_HEAP: &str = "auto";

#[derive(Default)]
struct State {
    spec: Option<String>,
    heap: Option<Arc<Heap>>,
}

#[derive(Default)]
pub struct DmaHeapAllocator {
    state: Mutex<State>,
    pub(super) owner: memory::AllocOwner,
}

impl DmaHeapAllocator {
    /// The selected heap, opened on first use and kept until the `heap` property changes. It
    /// is opened without the lock: allocations and property reads from other threads do not
    /// wait for the device.
    pub(super) fn heap(&self) -> Result<Arc<Heap>, kernel::Error> {
        let spec = {
            let state = self.state.lock().unwrap();
            if let Some(heap) = &state.heap {
                return Ok(heap.clone());
            }
            state.spec.clone().unwrap_or_else(|| DEFAULT_HEAP.into())
        };
        let opened = Arc::new(super::open_heap(&spec)?);
        let heap = {
            let mut state = self.state.lock().unwrap();
            let current = state.spec.as_deref().unwrap_or(DEFAULT_HEAP) == spec;
            match &state.heap {
                // Another thread opened it meanwhile.
                Some(heap) => heap.clone(),
                None if current => state.heap.insert(opened.clone()).clone(),
                // The property changed meanwhile: this heap serves this call only.
                None => opened.clone(),
            }
        };
        if Arc::ptr_eq(&heap, &opened) {
            gst::info!(
                CAT,
                imp = self,
                "heap '{spec}' -> {} ({})",
                heap.path().display(),
                if heap.is_contiguous() {
                    "contiguous"
                } else {
                    "scattered pages"
                }
            );
        }
        Ok(heap)
    }
}

memory::fd_allocator_subclass! {
    imp: DmaHeapAllocator,
    name: "GstDmaHeapAllocator",
    wrapper: super::DmaHeapAllocator,
    parent: DmaBufAllocator,
    through_gst_allocator_alloc: false,
}

impl memory::FdSource for DmaHeapAllocator {
    const FLAGS: gst_allocators::FdMemoryFlags = gst_allocators::FdMemoryFlags::NONE;

    fn category() -> gst::DebugCategory {
        *CAT
    }

    fn owner(&self) -> &memory::AllocOwner {
        &self.owner
    }

    fn make_fd(&self, maxsize: usize) -> Result<OwnedFd, kernel::Error> {
        let heap = self.heap()?;
        let fd = heap.allocate(maxsize)?;
        memory::name_dmabuf(&fd, &format!("heapalloc:{}", heap.name()));
        Ok(fd)
    }
}

impl ObjectImpl for DmaHeapAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("heap")
                    .nick("Heap")
                    .blurb(
                        "dma-heap to allocate from: a name in /dev/dma_heap (system, linux,cma, \
                         reserved, ...), an ordered comma-separated list of names (the first \
                         that exists wins), 'cma' for any CMA heap, or 'auto' (a contiguous CMA \
                         heap if present, else system)",
                    )
                    .default_value(Some(DEFAULT_HEAP))
                    .build(),
                glib::ParamSpecString::builder("heap-name")
                    .nick("Heap name")
                    .blurb("The heap in use (opened on first allocation); empty if none could be opened")
                    .read_only()
                    .build(),
                glib::ParamSpecBoolean::builder("contiguous")
                    .nick("Contiguous")
                    .blurb("Whether the heap in use hands out physically contiguous memory (CMA)")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "heap" => {
                let mut state = self.state.lock().unwrap();
                state.spec = value.get::<Option<String>>().unwrap();
                // Memories already handed out keep their own fds; new ones use the new heap.
                state.heap = None;
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "heap" => self
                .state
                .lock()
                .unwrap()
                .spec
                .clone()
                .unwrap_or_else(|| DEFAULT_HEAP.into())
                .to_value(),
            "heap-name" => self
                .heap()
                .map(|h| h.name().to_string())
                .unwrap_or_default()
                .to_value(),
            "contiguous" => self
                .heap()
                .map(|h| h.is_contiguous())
                .unwrap_or(false)
                .to_value(),
            _ => unimplemented!(),
        }
    }
}
