// SPDX-License-Identifier: MPL-2.0
//! `dmabufsrc`: the receiving end of dmabufsink's socket, as an element.
//!
//! It connects to a dmabufsink's `socket-path`, checks that the server runs as the expected
//! user, and produces each frame's dma-bufs as DmaBufMemory (one memory per fd, read-only,
//! with a VideoMeta), stamped with the running time at arrival. When the last buffer holding a
//! frame is freed, the frame is released to the server. The caps are the frame's own, in the
//! first form downstream accepts: `format=DMA_DRM` (GStreamer >= 1.24), the legacy
//! `memory:DMABuf` form, or plain `video/x-raw`.
//!
//! The server's goodbye is EOS. A server that goes away without one (a crash, a restart) is
//! connected to again, with a growing delay, for `retry-timeout`.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! vmemexport ! dmabufsink socket-path=/tmp/frames.sock
//! gst-launch-1.0 dmabufsrc socket-path=/tmp/frames.sock ! kmssink
//! ```

use gst::glib;
use gst::prelude::*;

mod caps;
mod imp;

glib::wrapper! {
    pub struct DmabufSrc(ObjectSubclass<imp::DmabufSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "dmabufsrc",
        gst::Rank::NONE,
        DmabufSrc::static_type(),
    )
}
