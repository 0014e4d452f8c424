// SPDX-License-Identifier: MPL-2.0
//! What vmemexport must know about the elements that receive its buffers.

use super::walk;

/// The first element downstream of `src` that reads a dma-buf from its first byte whatever
/// the memory's offset, in the natural layout whatever the VideoMeta: GStreamer's V4L2
/// elements with the single-planar API (`gst_v4l2_allocator_import_dmabuf` asserts a zero
/// offset; the driver finds the planes from bytesperline and height). The V4L2 elements cannot
/// be asked which API their device uses, so every V4L2 element counts.
pub fn zero_offset_consumer(src: &gst::Pad) -> Option<String> {
    // Device-specific V4L2 elements (v4l2fwhtenc, v4l2video0h264enc) are subclasses of
    // GstV4l2VideoEnc, GstV4l2VideoDec, GstV4l2Transform...
    walk::find_beyond(src, |element| {
        crate::quirks::is_v4l2(element).then(|| walk::describe(element))
    })
}

/// Every element downstream of `src` (through forwarders, into every branch of a tee) that
/// imports the dma-bufs it receives into a V4L2 device's output queue, with that device's
/// node. Whether the device can import scattered pages is the kernel's to answer
/// ([`crate::kernel::output_import_trial`]).
pub fn v4l2_importers(src: &gst::Pad) -> Vec<(String, std::path::PathBuf)> {
    walk::collect_beyond(src, |element| {
        crate::quirks::v4l2_import_device(element).map(|dev| (walk::describe(element), dev))
    })
}

/// Every element downstream of `src` that imports the dma-bufs it receives into a DRM device
/// (kmssink), with that device: the owner's fd duplicated, for
/// [`crate::kernel::DrmNode::import_trial`].
pub fn drm_importers(src: &gst::Pad) -> Vec<(String, crate::kernel::DrmNode)> {
    walk::collect_beyond(src, |element| {
        crate::quirks::drm_import_device(element).map(|node| (walk::describe(element), node))
    })
}
