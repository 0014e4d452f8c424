// SPDX-License-Identifier: MPL-2.0
//! gst-vmem: zero-copy dma-buf plugins for GStreamer (vmemexport, heapalloc, dmabufsink).

use gst::glib;

pub mod kernel;

fn plugin_init(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Ok(())
}

gst::plugin_define!(
    vmem,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "gst-vmem",
    env!("BUILD_REL_DATE")
);
