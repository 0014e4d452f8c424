// SPDX-License-Identifier: MPL-2.0
//! The copy fallback: frames that cannot leave as they are, copied into pooled dma-buf memory,
//! and the policy (`copy-fallback`) that allows or forbids it.

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::{CAT, Notices, Settings, VmemExport};
use crate::kernel;
use crate::vmemexport::MemfdAllocator;
use crate::vmemexport::export::Refusal;

impl VmemExport {
    /// The pool frames are copied into, made on first use, and the input's video info. The
    /// pool is made and started without the state lock: choosing its heap allocates from it.
    pub(super) fn copy_pool(
        &self,
        notices: &mut Notices,
    ) -> Result<(gst::BufferPool, gst_video::VideoInfo), gst::FlowError> {
        let (info, fits, heap) = {
            let guard = self.state.lock().unwrap();
            let state = guard.as_ref().ok_or(gst::FlowError::Flushing)?;
            let info = state.in_info.clone().ok_or(gst::FlowError::NotNegotiated)?;
            if let Some(pool) = &state.copy_pool {
                return Ok((pool.clone(), info));
            }
            // Frames over udmabuf's limit can only be copied into heap memory.
            let fits = state
                .exporter
                .size_limit()
                .is_some_and(|l| kernel::page_align(info.size() as u64).is_some_and(|s| s <= l));
            (info, fits, state.heap_allocator.clone())
        };
        let contiguous_for = self.contiguous_for.lock().unwrap().clone();
        // A consumer that imports only contiguous memory gets copies in the CMA heap.
        let contiguous = match &contiguous_for {
            Some(consumer) => Some(
                self.contiguous_allocator(heap.as_ref(), consumer, info.size())
                    .map_err(|e| notices.error(e))?,
            ),
            None => None,
        };
        let memfd =
            (fits && contiguous.is_none()).then(|| MemfdAllocator::new(self.obj().upcast_ref()));
        let allocator: gst::Allocator = if let Some(cma) = contiguous {
            cma.upcast()
        } else if let Some(memfd) = &memfd {
            memfd.clone().upcast()
        } else if let Some(heap) = heap.and_then(|h| self.oversize_heap(&h, info.size())) {
            heap
        } else {
            let size = info.size();
            return Err(notices.error(gst::error_msg!(
                gst::ResourceError::NoSpaceLeft,
                ("Frames of {size} bytes exceed udmabuf's size limit and no dma-heap is usable")
            )));
        };
        let caps = info.to_caps().map_err(|_| gst::FlowError::NotNegotiated)?;
        // No buffers allocated up front: GstBufferPool's start leaks them when a later one
        // fails; on demand, a failure is the allocator's error message and nothing leaks.
        let pool = self.make_pool(&allocator, &caps, &info, 0).map_err(|e| {
            gst::error!(CAT, imp = self, "copy pool: {e}");
            gst::FlowError::Error
        })?;
        pool.set_active(true).map_err(|e| {
            notices.error(gst::error_msg!(
                gst::ResourceError::Failed,
                ("Cannot start the pool of dma-buf copies: {e}")
            ))
        })?;
        let (kept, ours) = {
            let mut guard = self.state.lock().unwrap();
            match guard.as_mut() {
                None => (None, false),
                Some(state) => match &state.copy_pool {
                    Some(other) => (Some(other.clone()), false),
                    None => {
                        state.copy_pool = Some(pool.clone());
                        state.allocators.extend(memfd);
                        (Some(pool.clone()), true)
                    }
                },
            }
        };
        if !ours {
            // Stopped meanwhile, or another pool was kept: nothing would ever stop this one.
            let _ = pool.set_active(false);
        }
        kept.map(|pool| (pool, info))
            .ok_or(gst::FlowError::Flushing)
    }

    /// Copies `inbuf` into a pooled buffer that can leave as a dma-buf. No lock is held while
    /// the pool allocates: its allocator posts its failures itself.
    pub(super) fn copy_to_pool(
        &self,
        inbuf: &gst::BufferRef,
        notices: &mut Notices,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let (pool, info) = self.copy_pool(notices)?;
        let mut outbuf = pool.acquire_buffer(None)?;
        let outm = outbuf.get_mut().unwrap();
        let Ok(src) = gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, &info) else {
            return Err(notices.error(gst::error_msg!(
                gst::StreamError::Format,
                ("Cannot map the input frame")
            )));
        };
        let Ok(mut dst) = gst_video::VideoFrameRef::from_buffer_ref_writable(outm, &info) else {
            return Err(notices.error(gst::error_msg!(
                gst::ResourceError::Write,
                ("Cannot map a dma-buf for writing")
            )));
        };
        src.copy(&mut dst).map_err(|_| gst::FlowError::Error)?;
        drop(dst);
        Ok(outbuf)
    }

    /// Whether a frame refused for `why` may be copied; the first refusal of each kind is
    /// a warning, a forbidden copy an error.
    pub(super) fn refuse(
        &self,
        settings: &Settings,
        why: &Refusal,
        notices: &mut Notices,
    ) -> Result<(), gst::FlowError> {
        if !settings.copy_fallback {
            return Err(notices.error(gst::error_msg!(
                gst::StreamError::Failed,
                ("Zero-copy is impossible: {why}"),
                [
                    "copy-fallback=false forbids copying; put vmemexport right after the producer so it can use the proposed pool, or allow copies"
                ]
            )));
        }
        let first = {
            let mut guard = self.state.lock().unwrap();
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            state.warned.insert(why.reason())
        };
        if first {
            let why = why.to_string();
            notices.add(move |imp| {
                gst::element_imp_warning!(
                    imp,
                    gst::CoreError::Negotiation,
                    ("Copying frames into dma-buf memory: {why}"),
                    ["Every such frame costs a copy; see the stats property"]
                )
            });
        }
        Ok(())
    }
}
