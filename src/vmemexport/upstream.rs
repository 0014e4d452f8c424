// SPDX-License-Identifier: MPL-2.0
//! What vmemexport must know about the element that fills its proposed pool.
//!
//! A decoder that pushes frames of its own memory whenever downstream reads VideoMeta: vpxdec
//! (vp8dec, vp9dec; gst-plugins-good's `gst_vpx_dec_get_buffer_cb`, 1.22 to 1.28) makes its
//! frame pool for libvpx at the first frame, before it negotiates, with the default allocator
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
//! active, failing with "Failed to allocate required memory"), so vmemexport asks the element.

use gst::prelude::*;

use super::walk;

/// The properties by which GStreamer's V4L2 elements choose how their capture queue gets its
/// buffers (`GstV4l2IOMode`): `io-mode` on v4l2src, `capture-io-mode` on the memory-to-memory
/// elements (decoders, encoders, converters).
const IO_MODE_PROPERTIES: &[&str] = &["capture-io-mode", "io-mode"];

/// The `GstV4l2IOMode` value that imports downstream's dma-bufs.
const DMABUF_IMPORT: &str = "dmabuf-import";

/// The element upstream of `sink` (through queues, capsfilters, tees and bins) that will
/// import the buffers of the pool vmemexport proposes as dma-bufs, if any.
pub fn dmabuf_importer(sink: &gst::Pad) -> Option<String> {
    walk::find_beyond(sink, |element| {
        imports_dmabufs(element).then(|| walk::describe(element))
    })
}

/// Whether `element`'s capture side is set to import dma-bufs.
fn imports_dmabufs(element: &gst::Element) -> bool {
    let Some(pspec) = IO_MODE_PROPERTIES
        .iter()
        .find_map(|name| element.find_property(name))
    else {
        return false;
    };
    if !pspec.flags().contains(gst::glib::ParamFlags::READABLE) {
        return false;
    }
    let value = element.property_value(pspec.name());
    gst::glib::EnumValue::from_value(&value).is_some_and(|(_, v)| v.nick() == DMABUF_IMPORT)
}

/// GStreamer base classes of decoders that push their own frames when VideoMeta is offered.
const OWN_FRAME_DECODERS: &[&str] = &["GstVPXDec"];

/// The decoder upstream of `sink` that pushes frames from its own memory when it may use
/// VideoMeta (see the module's doc), if any.
pub fn own_frame_decoder(sink: &gst::Pad) -> Option<String> {
    walk::find_kind_beyond(sink, |t| OWN_FRAME_DECODERS.contains(&t))
}
