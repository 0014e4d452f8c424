// SPDX-License-Identifier: MPL-2.0
//! The backing choice: what `start` resolves `backing`, `heap` and `pin-system-memory` into,
//! and the allocators and pools made from it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;

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
    /// What each importing device's trial answered (or why there was none), by device node,
    /// so that a renegotiation does not ask again while the device streams.
    pub(super) contiguity: HashMap<PathBuf, Result<kernel::ImportTrial, String>>,
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
            contiguity: HashMap::new(),
        })
    }

    /// With `backing=auto`, the first consumer downstream (in any branch) whose device imports
    /// only physically contiguous memory. Each device that imports vmemexport's dma-bufs is
    /// asked once, with a scattered trial buffer: a V4L2 device on its idle output queue
    /// ([`kernel::output_import_trial`]), a display (kmssink) by a PRIME import into the DRM
    /// device it has open ([`kernel::DrmNode::import_trial`]; drivers on the GEM DMA helpers
    /// refuse scattered pages there). This opens devices and allocates: call it without the
    /// state lock.
    pub(super) fn contiguous_consumer(&self, settings: &Settings) -> Option<String> {
        if settings.backing != Backing::Auto {
            return None;
        }
        let src = self.obj().src_pad().clone();
        for (consumer, device) in crate::vmemexport::downstream::v4l2_importers(&src) {
            let contiguous_only = self.contiguous_only(&consumer, &device, || {
                kernel::Udmabuf::open()
                    .and_then(|u| kernel::output_import_trial(&device, |size| u.scattered(size)))
            });
            if contiguous_only {
                return Some(consumer);
            }
        }
        for (consumer, node) in crate::vmemexport::downstream::drm_importers(&src) {
            let node = std::sync::Arc::new(node);
            let device = node.path().to_path_buf();
            let contiguous_only = self.contiguous_only(&consumer, &device, || {
                kernel::Udmabuf::open().and_then(|u| node.import_trial(|size| u.scattered(size)))
            });
            if contiguous_only {
                return Some(consumer);
            }
        }
        None
    }

    /// Whether `device` (the node of `consumer`) refuses scattered pages: `trial` asks it once
    /// a run, and the answer is remembered; said in the debug log when asked.
    fn contiguous_only(
        &self,
        consumer: &str,
        device: &std::path::Path,
        trial: impl FnOnce() -> Result<kernel::ImportTrial, kernel::Error>,
    ) -> bool {
        let known = self
            .state
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.contiguity.get(device).cloned());
        if let Some(answer) = known {
            return answer == Ok(kernel::ImportTrial::ContiguousOnly);
        }
        let answer = trial().map_err(|e| e.to_string());
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state
                .contiguity
                .insert(device.to_path_buf(), answer.clone());
        }
        match answer {
            Ok(kernel::ImportTrial::ContiguousOnly) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{consumer}: {} refused a scattered dma-buf: it imports only contiguous \
                     memory, so its frames come from the CMA heap",
                    device.display()
                );
                true
            }
            Ok(kernel::ImportTrial::Scattered) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{consumer}: {} imports scattered pages",
                    device.display()
                );
                false
            }
            Ok(kernel::ImportTrial::Unknown(why)) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{consumer}: cannot tell whether {} needs contiguous memory ({why}): \
                     assuming it does not",
                    device.display()
                );
                false
            }
            Err(e) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{consumer}: no import trial on {} ({e}): assuming scattered pages do",
                    device.display()
                );
                false
            }
        }
    }

    /// The CMA heap allocator for frames of `size` bytes for `consumer`, which imports only
    /// contiguous memory; checked by allocating the frames the pipeline holds at once
    /// ([`CMA_FRAMES`]), so that a CMA area too small is an error before any frame flows,
    /// naming the `cma=` size that would do. It allocates: call it without the state lock.
    pub(super) fn contiguous_allocator(
        &self,
        heap: Option<&DmaHeapAllocator>,
        consumer: &str,
        size: usize,
    ) -> Result<DmaHeapAllocator, gst::ErrorMessage> {
        let Some(heap) = heap.filter(|h| h.is_contiguous().unwrap_or(false)) else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "{consumer} imports only physically contiguous memory, and no CMA heap is \
                     available (heap={}): reserve a CMA area (cma={}M on the kernel command \
                     line) and enable CONFIG_DMABUF_HEAPS_CMA",
                    self.settings().heap,
                    cma_megabytes_for(size, 0)
                )
            ));
        };
        heap.check_capacity_for(size, CMA_FRAMES).map_err(|e| {
            let used = cma_in_use();
            gst::error_msg!(
                gst::ResourceError::NoSpaceLeft,
                (
                    "{consumer} imports only physically contiguous memory, and the CMA heap \
                     cannot hold {CMA_FRAMES} frames of {size} bytes: {e}; boot with cma={}M \
                     or more",
                    cma_megabytes_for(size, used)
                )
            )
        })?;
        Ok(heap.clone())
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

/// Frames a pipeline holds at once in a contiguous-only consumer's pool: the V4L2 queue's
/// two, one being written and one on its way.
pub(super) const CMA_FRAMES: usize = 4;

/// Bytes of the CMA area in use now (`CmaTotal - CmaFree` in /proc/meminfo), 0 if unknown.
fn cma_in_use() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    match (field("CmaTotal:"), field("CmaFree:")) {
        (Some(total), Some(free)) => total.saturating_sub(free),
        _ => 0,
    }
}

/// The CMA area, in MiB, that holds [`CMA_FRAMES`] frames of `size` bytes beside `used` bytes
/// in use.
fn cma_megabytes_for(size: usize, used: u64) -> u64 {
    let frame = kernel::page_align(size as u64).unwrap_or(size as u64);
    (used + frame * CMA_FRAMES as u64).div_ceil(1 << 20)
}
