// SPDX-License-Identifier: MPL-2.0
//! Output wrapping: each frame's pages as dma-buf memory in a new buffer, with the frame's
//! metas and timing, and a guard that returns the pages to upstream only when downstream is
//! done; else the counted copy.

use std::sync::Arc;
use std::time::Duration;

use gst::subclass::prelude::*;
use gst_base::subclass::base_transform::PrepareOutputBufferSuccess;
use gst_video::prelude::*;

use super::{CAT, Notices, Settings, VmemExport};
use crate::frame::FrameLayout;
use crate::kernel::{self, SyncAccess};
use crate::vmemexport::export::{Exporter, Outcome, Refusal};
use crate::vmemexport::layout;
use crate::vmemexport::stats::Stats;

/// What turning one frame into dma-buf memory needs, taken from the state in one lock.
struct Target {
    exporter: Arc<Exporter>,
    info: Option<gst_video::VideoInfo>,
    zero_offset_for: Option<String>,
    contiguous_for: Option<String>,
}

impl VmemExport {
    /// The output for `source` (the buffer whose pages leave): its dma-buf memory, metas,
    /// and a reference that returns `source` to its pool only when downstream is done.
    fn wrap(
        &self,
        target: &Target,
        settings: &Settings,
        source: &gst::Buffer,
        timing: &gst::BufferRef,
        stats: &mut Stats,
    ) -> Result<gst::Buffer, Refusal> {
        if let Some(consumer) = &target.contiguous_for
            && !crate::memory::is_all_dmabuf(source)
        {
            return Err(Refusal::NeedsContiguous {
                consumer: consumer.clone(),
            });
        }
        if let (Some(consumer), Some(info)) = (&target.zero_offset_for, &target.info)
            && let Some(refusal) = layout::natural_layout_refusal(source, info, consumer)
        {
            return Err(refusal);
        }
        let (dmabuf, outcome) = target
            .exporter
            .dmabuf_of(source, target.zero_offset_for.as_deref())?;
        match outcome {
            Outcome::Exported => stats.exported += 1,
            Outcome::Pinned => {
                stats.exported += 1;
                stats.pinned_exports += 1;
            }
            Outcome::CacheHit => stats.export_cache_hits += 1,
            Outcome::AlreadyDmabuf => {}
        }
        if settings.sync && outcome != Outcome::AlreadyDmabuf {
            // The CPU wrote these pages through another mapping: make the writes visible to
            // devices (DMA_BUF_IOCTL_SYNC needs a begin before the end on udmabuf).
            // The writes are done already, so waiting for devices that still read the pages
            // (a fence a client holds past the release guard's timeout) gains nothing and
            // would stall the stream: a busy dma-buf skips the bracket.
            let fd = crate::memory::dmabuf_fd(&dmabuf).expect("exports are dma-buf memory");
            let synced = kernel::sync_start_within(fd, SyncAccess::Write, Duration::ZERO)
                .and_then(|_| kernel::sync_end(fd, SyncAccess::Write));
            match synced {
                Ok(()) => stats.syncs += 1,
                Err(e) => gst::warning!(CAT, imp = self, "DMA_BUF_IOCTL_SYNC: {e}"),
            }
        }
        let mut out = gst::Buffer::new();
        {
            let outm = out.get_mut().unwrap();
            outm.append_memory(dmabuf);
            // Metas describe the pages, so they come from `source`; flags and timestamps from
            // the frame as it arrived. A plain meta copy skips VideoMeta (it is tagged as
            // describing memory), so that one is carried over explicitly.
            source
                .copy_into(outm, gst::BufferCopyFlags::META, ..)
                .map_err(|e| Refusal::Metadata(e.to_string()))?;
            copy_video_meta(source, outm, target.info.as_ref());
            timing
                .copy_into(
                    outm,
                    gst::BufferCopyFlags::FLAGS | gst::BufferCopyFlags::TIMESTAMPS,
                    ..,
                )
                .map_err(|e| Refusal::Metadata(e.to_string()))?;
            gst::ParentBufferMeta::add(outm, source);
            crate::vmemexport::release::guard_release(
                outm,
                crate::memory::memory_ref(outm.peek_memory(0)),
                source.clone(),
            );
        }
        Ok(out)
    }

    /// The output buffer for `inbuf`: its own pages as dma-buf memory, else a counted copy.
    pub(super) fn output_for(
        &self,
        inbuf: &gst::BufferRef,
        settings: &Settings,
        stats: &mut Stats,
        notices: &mut Notices,
    ) -> Result<PrepareOutputBufferSuccess, gst::FlowError> {
        if self.obj().is_passthrough() {
            stats.passthrough += 1;
            return Ok(PrepareOutputBufferSuccess::InputBuffer);
        }
        let contiguous_for = self.contiguous_for.lock().unwrap().clone();
        let target = {
            let guard = self.state.lock().unwrap();
            let state = guard.as_ref().ok_or(gst::FlowError::Flushing)?;
            Target {
                exporter: state.exporter.clone(),
                info: state.in_info.clone(),
                zero_offset_for: state.zero_offset_for.clone(),
                contiguous_for,
            }
        };
        let source = crate::memory::buffer_ref(inbuf);
        // Input that already is dma-buf memory never comes here: generate_output sends it on.
        let why = match self.wrap(&target, settings, &source, inbuf, stats) {
            Ok(out) => return Ok(PrepareOutputBufferSuccess::Buffer(out)),
            Err(why) => why,
        };
        gst::debug!(CAT, imp = self, "copy: {why}");
        self.refuse(settings, &why, notices)?;
        let mut copied = self.copy_to_pool(inbuf, notices)?;
        stats.count_copy(
            why.reason(),
            target.info.as_ref().map_or(0, |i| i.size() as u64),
        );
        if crate::memory::is_all_dmabuf(&copied) {
            // A dma-heap copy leaves as it is, with the frame's timing and metas (its own
            // VideoMeta stays: a meta copy skips that one).
            inbuf
                .copy_into(
                    copied.make_mut(),
                    gst::BufferCopyFlags::FLAGS
                        | gst::BufferCopyFlags::TIMESTAMPS
                        | gst::BufferCopyFlags::META,
                    ..,
                )
                .map_err(|_| gst::FlowError::Error)?;
            return Ok(PrepareOutputBufferSuccess::Buffer(copied));
        }
        self.wrap(&target, settings, &copied, inbuf, stats)
            .map(PrepareOutputBufferSuccess::Buffer)
            .map_err(|why| {
                notices.error(gst::error_msg!(
                    gst::ResourceError::Failed,
                    ("Cannot export the copy: {why}")
                ))
            })
    }
}

/// Gives `out` the layout of `source`: its VideoMeta, or one for the default layout of `info`,
/// since dma-buf importers (DMA_DRM caps above all) expect the layout spelled out.
fn copy_video_meta(
    source: &gst::BufferRef,
    out: &mut gst::BufferRef,
    info: Option<&gst_video::VideoInfo>,
) {
    if let Some(layout) = FrameLayout::of(source, info)
        && let Err(e) = layout.add_meta(out)
    {
        gst::warning!(CAT, "cannot add VideoMeta: {e}");
    }
}
