// SPDX-License-Identifier: MPL-2.0
//! What vmemexport must know about the element that fills its proposed pool.
//!
//! A decoder that pushes frames of its own memory whenever downstream reads VideoMeta (the
//! quirks module's `vpxdec-own-frames`): vpxdec (vp8dec, vp9dec; gst-plugins-good's
//! `gst_vpx_dec_get_buffer_cb`, 1.22 to 1.28) makes its frame pool for libvpx at the first frame, before it negotiates, with the default allocator
//! and no alignment, and pushes those frames as they are while VideoMeta is allowed (up to
//! 1.28 that choice sticks after a renegotiation). Such a frame is GstSystemMemory with the
//! GstMemory header in its first page, so vmemexp may not export it (`export::owned_pages`)
//! and vmemexport would copy it; told that VideoMeta is not read, vpxdec copies each frame
//! into the proposed pool instead (the same one copy, into exportable memory, exports bounded
//! by the pool).
//!
//! An element that imports dma-bufs into a device (a V4L2 capture device with
//! `io-mode=dmabuf-import`: v4l2src, or the capture side of a V4L2 decoder or converter)
//! takes the pool vmemexport proposes and hands the fds of its buffers to the kernel, so the
//! buffers must be dma-buf memory. The ALLOCATION query does not say so (its caps are plain
//! `video/x-raw`; GStreamer's V4L2 elements only check the memory type once the pool is
//! active, failing with "Failed to allocate required memory"), so vmemexport asks the element
//! (the quirks module's `v4l2-capture-import`).

use super::walk;
use crate::quirks;

/// The element upstream of `sink` (through queues, capsfilters, tees and bins) that will
/// import the buffers of the pool vmemexport proposes as dma-bufs, if any.
pub fn dmabuf_importer(sink: &gst::Pad) -> Option<String> {
    walk::find_beyond(sink, |element| {
        quirks::imports_into_capture_queue(element).then(|| walk::describe(element))
    })
}

/// The decoder upstream of `sink` that pushes frames from its own memory when it may use
/// VideoMeta (see the module's doc), if any.
pub fn own_frame_decoder(sink: &gst::Pad) -> Option<String> {
    walk::find_beyond(sink, |element| {
        quirks::pushes_own_frames_with_video_meta(element).then(|| walk::describe(element))
    })
}
