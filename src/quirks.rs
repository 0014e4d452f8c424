// SPDX-License-Identifier: MPL-2.0
//! What this plugin knows about other elements that neither caps nor the ALLOCATION query
//! tell it, in one place. Each quirk names the upstream element and the behaviour relied on,
//! where upstream implements it, the GStreamer versions it applies to (checked at run time
//! where upstream has changed it), and the VM test that shows the pipeline it rescues. The
//! README's "Quirks" table lists them; no other module reads a GType name or another element's
//! property to decide what to do.

use std::path::PathBuf;

use gst::prelude::*;

/// One entry of the table below: for the README and for the test that keeps the two in step.
pub struct Quirk {
    pub name: &'static str,
    pub elements: &'static str,
    pub behaviour: &'static str,
    pub upstream: &'static str,
    pub versions: &'static str,
    pub test: &'static str,
}

/// Every quirk this module implements.
pub const QUIRKS: &[Quirk] = &[
    Quirk {
        name: "forwarders",
        elements: "queue, queue2, multiqueue, tee, capsfilter, identity, valve, input-selector, output-selector",
        behaviour: "hand the very buffers they receive to their other side: the walks for \
                    consumers and producers go through them",
        upstream: "gstreamer plugins/elements/ (coreelements)",
        versions: "all",
        test: "vm_contiguous::a_tee_into_contiguous_and_scattered_importers_serves_the_stricter",
    },
    Quirk {
        name: "v4l2-zero-offset",
        elements: "all V4L2 elements (GstV4l2*)",
        behaviour: "single-planar V4L2 reads a dma-buf from its first byte in the natural layout, \
                    whatever the memory's offset or VideoMeta",
        upstream: "gst-plugins-good sys/v4l2/gstv4l2allocator.c, gst_v4l2_allocator_import_dmabuf",
        versions: "1.22-1.28",
        test: "vm_pinned::unaligned_frames_are_copied_for_v4l2_with_the_reason",
    },
    Quirk {
        name: "v4l2-output-import",
        elements: "v4l2sink (io-mode), V4L2 encoders, decoders, converters (output-io-mode)",
        behaviour: "dmabuf-import (or auto with memory:DMABuf caps) imports the dma-bufs they \
                    receive into the device's output queue; the device node is `device`",
        upstream: "gst-plugins-good sys/v4l2/gstv4l2object.c, gst_v4l2_object_setup_pool",
        versions: "1.22-1.28",
        test: "vm_contiguous::a_contiguous_only_v4l2_output_gets_cma_frames_by_default",
    },
    Quirk {
        name: "v4l2-capture-import",
        elements: "v4l2src (io-mode), V4L2 decoders, encoders, converters (capture-io-mode)",
        behaviour: "dmabuf-import hands the fds of downstream's pool to the driver, which fails \
                    (\"Failed to allocate required memory\") unless they are dma-bufs; the \
                    ALLOCATION query's plain caps do not say so",
        upstream: "gst-plugins-good sys/v4l2/gstv4l2bufferpool.c, gst_v4l2_buffer_pool_import_dmabuf",
        versions: "1.22-1.28",
        test: "vm_vmemexport::v4l2src_captures_into_our_dmabufs",
    },
    Quirk {
        name: "vpxdec-own-frames",
        elements: "vp8dec, vp9dec (GstVPXDec)",
        behaviour: "pushes frames of its own libvpx pool (GstMemory header in the first page, \
                    so not exportable) whenever downstream reads VideoMeta; told it does not, \
                    it copies into the proposed pool",
        upstream: "gst-plugins-good ext/vpx/gstvpxdec.c, gst_vpx_dec_get_buffer_cb",
        versions: "1.22-1.28 (fixed after 1.28: off from 1.29 on)",
        test: "vm_pinned::libvpx_frames_share_their_pages",
    },
    Quirk {
        name: "kmssink-fd",
        elements: "kmssink (GstKMSSink)",
        behaviour: "imports the dma-bufs it receives (PRIME) into the DRM device it opened at \
                    start; its readable `fd` property is that device's fd from READY on",
        upstream: "gst-plugins-bad sys/kms/gstkmssink.c, gst_kms_sink_start and \
                   gst_kms_sink_get_property (PROP_FD)",
        versions: "1.22-1.28 (`fd` since 1.22)",
        test: "vm_contiguous::a_display_that_imports_scattered_pages_keeps_udmabuf",
    },
];

/// The elements of the `forwarders` quirk, by GType name.
const FORWARDERS: &[&str] = &[
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

/// The `forwarders` quirk: whether `element` hands the buffers it receives on as they are.
pub fn forwards_buffers(element: &gst::Element) -> bool {
    FORWARDERS.contains(&element.type_().name())
}

/// The prefix of the GType names of GStreamer's V4L2 elements (v4l2sink, v4l2src,
/// `GstV4l2VideoEnc`, `GstV4l2VideoDec`, `GstV4l2Transform` and their per-device subclasses
/// such as v4l2fwhtenc).
const V4L2_TYPE_PREFIX: &str = "GstV4l2";

/// Whether `element` is one of GStreamer's V4L2 elements (any device-specific subclass): the
/// `v4l2-zero-offset` quirk.
pub fn is_v4l2(element: &gst::Element) -> bool {
    derives_from(element, |name| name.starts_with(V4L2_TYPE_PREFIX))
}

/// Whether `element`'s type or one of its parent types has a name `is_kind` accepts.
fn derives_from(element: &gst::Element, is_kind: impl Fn(&str) -> bool) -> bool {
    std::iter::successors(Some(element.type_()), |t| t.parent()).any(|t| is_kind(t.name()))
}

/// The `GstV4l2IOMode` value of `element`'s first readable property among `names`.
fn io_mode(element: &gst::Element, names: &[&str]) -> Option<String> {
    let pspec = names.iter().find_map(|name| element.find_property(name))?;
    if !pspec.flags().contains(gst::glib::ParamFlags::READABLE) {
        return None;
    }
    let value = element.property_value(pspec.name());
    gst::glib::EnumValue::from_value(&value).map(|(_, v)| v.nick().to_string())
}

/// The `GstV4l2IOMode` value that imports dma-bufs.
const DMABUF_IMPORT: &str = "dmabuf-import";

/// The `v4l2-output-import` quirk: the device node whose output queue (the queue frames are
/// written to) `element` fills by importing the dma-bufs it receives, if it does.
pub fn v4l2_import_device(element: &gst::Element) -> Option<PathBuf> {
    if !is_v4l2(element) {
        return None;
    }
    let imports = match io_mode(element, &["output-io-mode", "io-mode"])?.as_str() {
        DMABUF_IMPORT => true,
        "auto" => element.sink_pads().iter().any(|pad| {
            pad.current_caps().is_some_and(|caps| {
                caps.features(0)
                    .is_some_and(|f| f.contains(crate::formats::CAPS_FEATURE_DMABUF))
            })
        }),
        _ => false,
    };
    if !imports {
        return None;
    }
    element
        .find_property("device")
        .and_then(|_| element.property::<Option<String>>("device"))
        .map(PathBuf::from)
}

/// The `kmssink-fd` quirk: the DRM device `element` imports the dma-bufs it receives into,
/// as a duplicate of its own fd, if it is kmssink and has its device open.
pub fn drm_import_device(element: &gst::Element) -> Option<crate::kernel::DrmNode> {
    if !derives_from(element, |name| name == "GstKMSSink") {
        return None;
    }
    let pspec = element.find_property("fd")?;
    if !pspec.flags().contains(gst::glib::ParamFlags::READABLE) {
        return None;
    }
    let fd = element.property::<i32>("fd");
    if fd < 0 {
        return None;
    }
    // SAFETY: kmssink keeps `fd` open from start to stop; it is duplicated at once, and a
    // stop racing this read at worst makes the duplicate fail or name another file, which
    // the DRM version query then refuses or the trial answers for that file.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    crate::kernel::DrmNode::from_shared_fd(borrowed).ok()
}

/// The `v4l2-capture-import` quirk: whether `element`'s capture side imports the dma-bufs of
/// the pool downstream proposes.
pub fn imports_into_capture_queue(element: &gst::Element) -> bool {
    is_v4l2(element)
        && io_mode(element, &["capture-io-mode", "io-mode"]).as_deref() == Some(DMABUF_IMPORT)
}

/// The `vpxdec-own-frames` quirk: whether `element` pushes frames of its own memory when
/// VideoMeta is allowed. Upstream fixed vpxdec's pool after 1.28; the quirk is off from 1.29.
pub fn pushes_own_frames_with_video_meta(element: &gst::Element) -> bool {
    let (major, minor, _, _) = gst::version();
    (major, minor) < (1, 29) && derives_from(element, |name| name == "GstVPXDec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quirk_names_its_upstream_source_versions_and_test() {
        for q in QUIRKS {
            assert!(q.upstream.contains('/'), "{}: a source file", q.name);
            assert!(!q.versions.is_empty(), "{}", q.name);
            let (file, test) = q.test.split_once("::").expect("binary::test");
            let source =
                std::fs::read_to_string(format!("{}/tests/{file}.rs", env!("CARGO_MANIFEST_DIR")))
                    .unwrap_or_else(|e| panic!("{}: tests/{file}.rs: {e}", q.name));
            assert!(
                source.contains(&format!("fn {test}()")),
                "{}: no test {test} in tests/{file}.rs",
                q.name
            );
        }
    }

    #[test]
    fn the_readme_lists_every_quirk() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for q in QUIRKS {
            assert!(
                readme.contains(&format!("| `{}` |", q.name)),
                "README's quirks table lacks {}",
                q.name
            );
        }
    }
}
