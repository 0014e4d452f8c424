// SPDX-License-Identifier: MPL-2.0
//! What this plugin knows about other elements that neither caps nor the ALLOCATION query
//! tell it. Each item names the upstream element, the behaviour it relies on, where upstream
//! implements it, and the GStreamer versions it was checked against.

use std::path::PathBuf;

use gst::prelude::*;

/// The base type that all of GStreamer's V4L2 elements derive from a type named after
/// (gst-plugins-good sys/v4l2/: v4l2sink, v4l2src, `GstV4l2VideoEnc`, `GstV4l2VideoDec`,
/// `GstV4l2Transform`, and their per-device subclasses such as v4l2fwhtenc).
const V4L2_TYPE_PREFIX: &str = "GstV4l2";

/// Whether `element` is one of GStreamer's V4L2 elements (any device-specific subclass).
pub fn is_v4l2(element: &gst::Element) -> bool {
    std::iter::successors(Some(element.type_()), |t| t.parent())
        .any(|t| t.name().starts_with(V4L2_TYPE_PREFIX))
}

/// **V4L2 output queues import dma-bufs (1.22 to 1.28).** The device node whose output queue
/// (the queue frames are written to) `element` fills by importing the dma-bufs it receives.
/// v4l2sink names the queue's mode `io-mode`, the memory-to-memory elements (encoders,
/// decoders, converters) `output-io-mode` (gstv4l2object.c, `PROP_IO_MODE` and
/// `PROP_OUTPUT_IO_MODE`); `dmabuf-import` imports, and so does `auto` when the negotiated caps
/// carry `memory:DMABuf` (`gst_v4l2_object_setup_pool`). The node is the `device` property.
pub fn v4l2_import_device(element: &gst::Element) -> Option<PathBuf> {
    if !is_v4l2(element) {
        return None;
    }
    let mode = ["output-io-mode", "io-mode"]
        .iter()
        .find(|name| element.find_property(name).is_some())
        .map(|name| element.property_value(name))
        .and_then(|v| gst::glib::EnumValue::from_value(&v).map(|(_, e)| e.nick().to_string()))?;
    let imports = match mode.as_str() {
        "dmabuf-import" => true,
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
