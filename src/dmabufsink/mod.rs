// SPDX-License-Identifier: MPL-2.0
//! `dmabufsink`: the consuming end of a dma-buf pipeline.
//!
//! It verifies that every buffer is dma-buf memory (the tool that tells whether a pipeline's
//! buffers really are dma-bufs), optionally PRIME-imports each new dma-buf into a DRM node and
//! checks that it could be scanned out (AddFB2), and shares the frames with other processes
//! over a Unix socket, passing the dma-buf fds (see docs/protocol.md and [`Client`]).
//!
//! `drm-device=driver:NAME` opens the driver's render node, or its card node with `drm-addfb`
//! (AddFB2 needs one); DRM master, which opening a card node may grant, is dropped at once and
//! never kept. The socket file's mode, group and lock file, and how clients are checked, are
//! in docs/protocol.md.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! vmemexport ! dmabufsink drm-device=driver:vkms drm-addfb=true
//! gst-launch-1.0 videotestsrc ! vmemexport ! dmabufsink socket-path=/tmp/frames.sock
//! cargo run --example dmabuf_client -- /tmp/frames.sock
//! ```

use gst::glib;
use gst::prelude::*;

mod client;
mod imp;
mod layout;
pub mod protocol;
mod server;
mod socket_file;

pub use client::{Client, Received, ReceivedFrame};
pub use protocol::RefusedReason;

glib::wrapper! {
    pub struct DmabufSink(ObjectSubclass<imp::DmabufSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// What to do with a client that holds `max-pending` unreleased frames.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDmabufSinkDropPolicy")]
pub enum DropPolicy {
    /// The client misses frames until it releases some (it sees gaps in frame numbers).
    #[default]
    #[enum_value(name = "Skip: the busy client misses frames", nick = "skip")]
    Skip,
    /// The client is disconnected.
    #[enum_value(name = "Disconnect: the busy client is dropped", nick = "disconnect")]
    Disconnect,
    /// Lossless: the pipeline waits for the client to release a frame, at most until the
    /// client's oldest frame reaches `hold-timeout`; then the client is disconnected.
    #[enum_value(
        name = "Wait: the pipeline waits for the busy client, up to hold-timeout",
        nick = "wait"
    )]
    Wait,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // gst-inspect and the plugin docs list the enum's values.
    DropPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "dmabufsink",
        gst::Rank::NONE,
        DmabufSink::static_type(),
    )
}
