// SPDX-License-Identifier: MPL-2.0
//! The backing choice: what `start` resolves `backing`, `heap` and `pin-system-memory` into,
//! and the allocators and pools made from it.

use std::collections::HashSet;
use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::{CAT, Settings, VmemExport};
use crate::heapalloc::{DmaHeapAllocator, HeapSelection};
use crate::kernel;
use crate::vmemexport::Backing;
use crate::vmemexport::backend::HeapPool;
use crate::vmemexport::export::{CopyReason, Exporter};
use crate::vmemexport::layout;
use crate::vmemexport::memfd_allocator::MemfdAllocator;
use crate::vmemexport::udmabuf_allocator::UdmabufAllocator;

/// What `start` resolved, and what the stream needs.
pub(super) struct State {
    pub(super) backing: Backing,
    /// Shared with the streaming thread's work outside the state lock.
    pub(super) exporter: Arc<Exporter>,
    pub(super) heap_allocator: Option<DmaHeapAllocator>,
    pub(super) in_info: Option<gst_video::VideoInfo>,
    /// Where frames are copied when they cannot leave as they are.
    pub(super) copy_pool: Option<gst::BufferPool>,
    /// The consumer downstream that needs frames at offset 0 of their dma-buf, if any.
    pub(super) zero_offset_for: Option<String>,
    pub(super) warned: HashSet<CopyReason>,
    /// The pool last proposed upstream and the caps it was proposed for. A decoder asks again
    /// on every renegotiation (avdec_h264 at sizes it pads: every frame); a new pool each time
    /// would give every frame new memory, hence a new export that importers cannot cache.
    pub(super) proposed: Option<(gst::Caps, gst::BufferPool, gst::Allocator)>,
    /// The consumer downstream the proposed pool keeps the natural layout for, if any.
    pub(super) natural_for: Option<String>,
    /// Every memfd allocator made for this run: each keeps released memories for reuse until
    /// flushed at stop.
    pub(super) allocators: Vec<MemfdAllocator>,
}

impl VmemExport {
    /// Resolves `backing` into what this run uses, with errors that say how to fix the system.
    pub(super) fn open_backing(&self, settings: &Settings) -> Result<State, gst::ErrorMessage> {
        let name = format!("vmemexport:{}", self.obj().name());
        // What exports the memfd pool: udmabuf, else vmemexp (Debian 12's kernel has neither
        // udmabuf nor dma-heaps), and why neither does, for the error if no heap can stand in.
        let mut pool_why = String::new();
        let pool_exporter = match settings.backing {
            Backing::Heap => None,
            Backing::Memfd | Backing::Auto => match settings.devices.udmabuf() {
                Ok(u) => Some(u),
                Err(e) => match settings.devices.vmemexp_pool() {
                    Ok(pool) => {
                        gst::info!(
                            CAT,
                            imp = self,
                            "no udmabuf ({e}): exporting the memfd pool through vmemexp"
                        );
                        Some(pool)
                    }
                    Err(why) if settings.backing == Backing::Memfd => {
                        return Err(gst::error_msg!(
                            gst::ResourceError::OpenReadWrite,
                            (
                                "backing=memfd needs {} or {}: {e}; {why}",
                                kernel::UDMABUF_PATH,
                                kernel::VMEMEXP_PATH
                            )
                        ));
                    }
                    Err(why) => {
                        gst::info!(
                            CAT,
                            imp = self,
                            "no udmabuf ({e}) nor vmemexp ({why}), trying dma-heaps"
                        );
                        pool_why = format!("{e}; {why}; and ");
                        None
                    }
                },
            },
        };
        let backing = match (settings.backing, &pool_exporter) {
            (Backing::Heap, _) | (Backing::Auto, None) => Backing::Heap,
            _ => Backing::Memfd,
        };
        // The heap is needed for backing=heap, and as the copy target for frames over udmabuf's
        // size limit; only the former makes a missing heap fatal.
        let heap_allocator = match settings.devices.heap(&settings.heap) {
            Ok(a) => {
                a.set_owner(&*self.obj());
                Some(a)
            }
            Err(e) if backing == Backing::Heap => {
                return Err(gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("No way to make dma-bufs: {pool_why}{e}")
                ));
            }
            Err(e) => {
                gst::info!(CAT, imp = self, "no dma-heap for oversized frames: {e}");
                None
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "backing {backing:?}{}",
            heap_allocator
                .as_ref()
                .and_then(|a| a.heap_name().ok())
                .map(|h| format!(", heap {h}"))
                .unwrap_or_default()
        );
        // Other system memory is exported in place when vmemexp is there (own pool first, then
        // vmemexp, then a copy).
        let vmemexp = if settings.pin_system_memory {
            settings.devices.vmemexp().inspect_err(|e| {
                gst::info!(
                    CAT,
                    imp = self,
                    "frames from other memory will be copied: {e}"
                );
            })
        } else {
            Err("pin-system-memory=false".to_string())
        };
        Ok(State {
            backing,
            exporter: Arc::new(Exporter::new(
                pool_exporter.unwrap_or_else(|| Box::new(HeapPool)),
                vmemexp,
                name,
            )),
            heap_allocator,
            in_info: None,
            copy_pool: None,
            zero_offset_for: None,
            warned: HashSet::new(),
            proposed: None,
            natural_for: None,
            allocators: Vec::new(),
        })
    }

    /// A video pool of `info` frames whose memory comes from `allocator`, one memory per buffer.
    pub(super) fn make_pool(
        &self,
        allocator: &gst::Allocator,
        caps: &gst::Caps,
        info: &gst_video::VideoInfo,
        min: u32,
    ) -> Result<gst::BufferPool, glib::BoolError> {
        layout::configure_pool(
            gst_video::VideoBufferPool::new().upcast(),
            allocator,
            caps,
            info,
            min,
            &[gst_video::BUFFER_POOL_OPTION_VIDEO_META],
        )
    }

    /// The allocator whose memory leaves without a copy for `backing`; dma-bufs already when
    /// upstream `importer` hands the buffers' fds to a device (this opens udmabuf: call it
    /// without the state lock). A new [`MemfdAllocator`] is for the caller to keep in
    /// [`State::allocators`].
    pub(super) fn zero_copy_allocator(
        &self,
        backing: Backing,
        heap_allocator: Option<&DmaHeapAllocator>,
        importer: Option<&str>,
    ) -> Option<gst::Allocator> {
        match (backing, importer) {
            (Backing::Heap, _) => heap_allocator.map(|a| a.clone().upcast()),
            (_, Some(importer)) => match UdmabufAllocator::for_element(self.obj().upcast_ref()) {
                Ok(a) => {
                    gst::info!(
                        CAT,
                        imp = self,
                        "{importer} imports dma-bufs: proposing udmabuf exports"
                    );
                    Some(a.upcast())
                }
                Err(e) => {
                    gst::warning!(CAT, imp = self, "no udmabuf for {importer}: {e}");
                    Some(MemfdAllocator::new(self.obj().upcast_ref()).upcast())
                }
            },
            (_, None) => Some(MemfdAllocator::new(self.obj().upcast_ref()).upcast()),
        }
    }

    /// The heap that copies of frames over udmabuf's size limit go to: the configured one, or
    /// with `heap=auto` the system heap when the CMA area cannot hold two such frames (one
    /// downstream while the next is copied). It allocates to find out, and may open the system
    /// heap: call it without the state lock.
    pub(super) fn oversize_heap(
        &self,
        heap: &DmaHeapAllocator,
        size: usize,
    ) -> Option<gst::Allocator> {
        if heap.check_capacity_for(size, 2).is_err()
            && HeapSelection::parse(&self.settings().heap) == HeapSelection::Auto
            && let Ok(system) = DmaHeapAllocator::new("system")
        {
            gst::info!(
                CAT,
                imp = self,
                "{size}-byte frames do not fit in heap {}: copying into the system heap",
                heap.heap_name().unwrap_or_default()
            );
            system.set_owner(&*self.obj());
            return Some(system.upcast());
        }
        Some(heap.clone().upcast())
    }
}
