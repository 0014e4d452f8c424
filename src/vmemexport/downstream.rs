// SPDX-License-Identifier: MPL-2.0
//! What vmemexport must know about the elements that receive its buffers.

use gst::prelude::*;

/// Elements that hand the very buffers they receive to their source pads: the consumers
/// behind them see vmemexport's memory.
pub(super) const FORWARDERS: &[&str] = &[
    "GstQueue",
    "GstQueue2",
    "GstMultiQueue",
    "GstTee",
    "GstCapsFilter",
    "GstIdentity",
    "GstValve",
    "GstInputSelector",
    "GstOutputSelector",
];

/// How deep the walk goes through forwarders and bins before giving up.
pub(super) const MAX_HOPS: usize = 32;

/// The first element downstream of `src` that reads a dma-buf from its first byte whatever
/// the memory's offset, in the natural layout whatever the VideoMeta: GStreamer's V4L2
/// elements with the single-planar API (`gst_v4l2_allocator_import_dmabuf` asserts a zero
/// offset; the driver finds the planes from bytesperline and height). The V4L2 elements cannot
/// be asked which API their device uses, so every V4L2 element counts.
pub fn zero_offset_consumer(src: &gst::Pad) -> Option<String> {
    let mut todo: Vec<(gst::Pad, usize)> = src.peer().into_iter().map(|p| (p, 0)).collect();
    while let Some((pad, hops)) = todo.pop() {
        if hops > MAX_HOPS {
            continue;
        }
        // Into a bin: follow its ghost pad to the element inside.
        if let Some(ghost) = pad.downcast_ref::<gst::GhostPad>() {
            if let Some(target) = ghost.target() {
                todo.push((target, hops + 1));
            }
            continue;
        }
        // Out of a bin: an element's src pad is linked to the ghost pad's internal proxy.
        if let Some(proxy) = pad.downcast_ref::<gst::ProxyPad>()
            && let Some(ghost) = proxy.parent().and_downcast::<gst::GhostPad>()
        {
            todo.extend(ghost.peer().map(|p| (p, hops + 1)));
            continue;
        }
        let Some(element) = pad.parent_element() else {
            continue;
        };
        let type_name = element.type_().name();
        // Device-specific V4L2 elements (v4l2fwhtenc, v4l2video0h264enc) are subclasses of
        // GstV4l2VideoEnc, GstV4l2VideoDec, GstV4l2Transform...
        let v4l2 = std::iter::successors(Some(element.type_()), |t| t.parent())
            .any(|t| t.name().starts_with("GstV4l2"));
        if v4l2 {
            return Some(format!("{} ({type_name})", element.name()));
        }
        if FORWARDERS.contains(&type_name) {
            for src in element.src_pads() {
                todo.extend(src.peer().map(|p| (p, hops + 1)));
            }
        }
    }
    None
}
